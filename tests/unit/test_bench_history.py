"""The bench stage ``history``: one customer's and one SKU's long history, no broker."""

from __future__ import annotations

import io
from contextlib import ExitStack
from typing import Any

import pytest
from rich.console import Console

from bench import history
from bench import stack as containers
from bench.figures import check_result
from bench.report import print_summary
from bench.run import BenchOptions, _stack

pytestmark = pytest.mark.unit


def test_the_stage_reports_every_figure_and_values_stay_small() -> None:
    figures = history.run_history(entries=200, samples=5)

    assert (figures["orders"], figures["additions"], figures["samples"]) == (200, 200, 5)
    for step in ("place_order", "reserve_stock", "add_stock"):
        assert set(figures[f"{step}_us"]) == {"new", "long"} and figures[f"{step}_ratio"] > 0
    assert 0 < figures["largest_value_bytes"] <= 4096
    assert figures["largest_value_key"].split(" ")[0] in figures["largest_by_table"]
    assert figures["entries_by_table"]["orders_customers"] > 2 * 200, "an entry per answer, one per key index"
    doc: dict[str, Any] = {"meta": {"stages": ["history"]}, "history": figures, "ratios": {}}
    assert [p for p in check_result(doc) if not p.startswith(("meta:", "ratios:"))] == []


def test_a_table_keeps_values_as_json_bytes_and_notes_the_largest() -> None:
    table = history.JsonTable("t")
    table["a"] = {"x": [1, 2, 3]}
    table["b"] = {"x": 1}
    assert table.get("a") == {"x": [1, 2, 3]} and isinstance(table.data["a"], bytes)
    assert table.largest == (len(table.data["a"]), "a") and "b" in table and table.get("c") is None


def test_stages_without_a_broker_start_no_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_container() -> None:
        raise AssertionError("no container may be started")

    monkeypatch.setattr(containers, "kafka_node", no_container)
    meta: dict[str, Any] = {}
    with ExitStack() as stack:
        _, container = _stack(BenchOptions(stages=("history", "codec")), stack, Console(file=io.StringIO()), meta)
    assert container is None and meta["own_stack"] is False


def test_the_summary_prints_the_history_table() -> None:
    out = io.StringIO()
    figures = history.run_history(entries=10, samples=3)
    print_summary({"history": figures}, Console(file=out, width=200))
    text = out.getvalue()
    assert "place_order" in text and f"largest table value: {figures['largest_value_bytes']} B" in text
