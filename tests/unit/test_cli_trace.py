"""The trace waterfall is computed from an order view's timeline alone."""

from __future__ import annotations

import pytest

from pipeline.cli.queries import waterfall

pytestmark = pytest.mark.unit


def test_rows_show_offsets_gaps_and_bars_in_time_order() -> None:
    timeline = [
        {"at": 1000, "event": "OrderPlaced", "service": "orders"},
        {"at": 1010, "event": "InventoryReserved", "service": "inventory"},
        {"at": 1100, "event": "OrderConfirmed", "service": "orders"},
    ]
    rows = waterfall(timeline, 10)
    assert [r.split()[0] for r in rows] == ["0", "10", "100"]
    assert [r.split()[2] for r in rows] == ["+0", "+10", "+90"]
    bars = [r.split("|")[1] for r in rows]
    assert all(len(b) == 10 for b in bars)
    assert bars[-1].rstrip().endswith("█") and bars[-1].count("█") == 9, "the last step took 90 % of the time"


def test_an_empty_timeline_says_so() -> None:
    assert waterfall([], 10) == ["(no events yet)"]
