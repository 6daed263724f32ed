"""The due-time index behind the deadline sweep: a sweep costs O(due), whatever the number of open entries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from streams.due import Due, DueIndex, report_due

pytestmark = pytest.mark.unit


class CountingTable(dict[str, Any]):
    """A timer table that counts how often it is read and refuses to be listed once ``listing_allowed`` is off."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.listing_allowed = True

    def get(self, key: str, default: Any = None) -> Any:
        self.reads += 1
        return super().get(key, default)

    def items(self) -> Any:
        assert self.listing_allowed, "a sweep listed the table"
        return super().items()


def filled(open_entries: int, due: dict[str, int]) -> tuple[CountingTable, DueIndex]:
    """A table with ``open_entries`` far-off entries plus ``due``, each tracked as its agent writes it."""
    table = CountingTable()
    index = DueIndex(table)
    for n in range(open_entries):
        table[f"o-{n}"] = 10_000_000 + n
        index.track(f"o-{n}", 10_000_000 + n, n % 8)
    for key, due_ms in due.items():
        table[key] = due_ms
        index.track(key, due_ms, 0)
    table.listing_allowed = False
    table.reads = 0
    return table, index


def test_taking_the_due_reads_only_the_due_entries() -> None:
    table, index = filled(10_000, {"late-2": 200, "late-1": 100, "late-3": 300})
    assert [d.key for d in index.take_due(now_ms=1_000, limit=100)] == ["late-1", "late-2", "late-3"]
    assert table.reads == 3, "one check against the table per entry taken, none for the 10,000 not due"
    assert len(index) == 10_003


def test_at_most_limit_are_taken_the_earliest_first_and_the_rest_stay_due() -> None:
    _, index = filled(0, {f"d-{n}": 100 + n for n in range(5)})
    assert [d.key for d in index.take_due(1_000, limit=2)] == ["d-0", "d-1"]
    assert [d.key for d in index.take_due(1_000, limit=10)] == ["d-2", "d-3", "d-4"]


def test_an_ended_or_moved_entry_is_skipped() -> None:
    table, index = filled(0, {"ended": 100, "moved": 100, "kept": 100})
    del table["ended"]
    index.track("ended", None, 0)
    table["moved"] = 5_000
    index.track("moved", 5_000, 0)
    assert [d.key for d in index.take_due(1_000, limit=10)] == ["kept"]
    assert [d.key for d in index.take_due(5_000, limit=10)] == ["moved"]


def test_an_entry_the_table_no_longer_holds_is_dropped_and_one_it_holds_at_another_time_follows_the_table() -> None:
    table, index = filled(0, {"gone": 100, "changed": 100})
    del table["gone"]  # e.g. the in-memory store after a recovery
    table["changed"] = 2_000
    assert index.take_due(1_000, limit=10) == []
    assert [d.key for d in index.take_due(2_000, limit=10)] == ["changed"]
    assert len(index) == 1


def test_a_report_is_repeated_after_a_delay_that_doubles_up_to_a_cap() -> None:
    table = CountingTable()
    index = DueIndex(table, resend_s=1.0, resend_cap_s=3.0)
    table["o"] = 0
    index.track("o", 0, 0)
    now, times = 0, list[int]()
    while len(times) < 5:
        taken = index.take_due(now, limit=10)
        if taken:
            times.append(now)
            index.reported(taken, now)
        now += 100
    assert times == [0, 1_000, 3_000, 6_000, 9_000]


def test_a_rebuild_keeps_the_owned_partitions_and_what_recovery_brought_back() -> None:
    table = CountingTable()
    index = DueIndex(table)
    for key, partition in (("mine", 0), ("moved", 3)):
        table[key] = 100
        index.track(key, 100, partition)
    table["recovered"] = 100  # read from the changelog: no agent wrote it here
    index.rebuild(owned={0, 1})
    assert sorted(d.key for d in index.take_due(1_000, limit=10)) == ["mine", "recovered"]


def test_reports_that_could_not_be_sent_are_due_again() -> None:
    _, index = filled(0, {"a": 100, "b": 200})

    async def broker_down(due: Sequence[Due]) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        asyncio.run(report_due(index, 1_000, 10, broker_down))
    sent: list[str] = []

    async def send(due: Sequence[Due]) -> None:
        sent.extend(d.key for d in due)

    assert [d.key for d in asyncio.run(report_due(index, 1_000, 10, send))] == ["a", "b"]
    assert sent == ["a", "b"]
    assert asyncio.run(report_due(index, 1_001, 10, send)) == [], "sent: not again before the resend delay"
