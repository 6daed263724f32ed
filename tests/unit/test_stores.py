"""A SKU's state is table entries (its levels, each order's hold, its additions) written together but not atomically.

Each entry goes to its own changelog record, and a worker killed while they are on their way may leave only
one of them stored. The input is then replayed against that torn state; it must come out as if the crash
had not happened: applied once, its answer re-emitted unchanged, the levels and the holds agreeing. Seen in
the crash test as one unit left ``reserved`` with no order holding it (the levels record of a reservation
was stored, its hold record was not, and the replay reserved the units a second time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from streams.domain import stock
from streams.domain.core import SagaConfig, StepContext
from streams.domain.messages import (
    AddStock,
    CommitStock,
    Message,
    ReleaseStock,
    ReserveStock,
    to_jsonable,
)
from streams.domain.stock import HoldStatus
from streams.stores import StockStore, additions_key, hold_key

pytestmark = pytest.mark.unit

SKU = "sku-1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Sku:
    """A SKU's two tables (plain dicts, as Faust's memory store holds them) and the step run over them."""

    levels: dict[str, Any] = field(default_factory=dict)
    holds: dict[str, Any] = field(default_factory=dict)

    def handle(self, command: Message, message_id: str = "m") -> tuple[Message, ...]:
        """What the edge does for one command: load, decide, save what changed; returns the events."""
        store = StockStore(self.levels, self.holds)
        state = store.load(SKU, command)
        ctx = StepContext(now=T0, config=SagaConfig(), message_id=message_id)
        decision = stock.decide(state, command, ctx)
        if decision.state != state:
            store.save(SKU, state, decision.state)
        return decision.events

    def state(self) -> tuple[int, int, int, int]:
        level = self.levels[SKU]
        return level["available"], level["reserved"], level["sold"], level["version"]

    def held(self) -> int:
        return sum(h["quantity"] for k, h in self.holds.items() if h["status"] == HoldStatus.RESERVED.value)


def _stocked() -> Sku:
    sku = Sku()
    sku.handle(AddStock(sku=SKU, quantity=10, reason="restock"), message_id="add-1")
    return sku


RESERVE = ReserveStock(order_id="o-1", sku=SKU, quantity=3, requested_at=T0)
RELEASE = ReleaseStock(order_id="o-1", sku=SKU, quantity=3, reason="cancelled", requested_at=T0)
COMMIT = CommitStock(order_id="o-1", sku=SKU, quantity=3, requested_at=T0)


@pytest.mark.parametrize("command", [RESERVE, RELEASE, COMMIT], ids=lambda c: c.record_name)
def test_levels_stored_without_the_hold_then_replayed_apply_once(command: Message) -> None:
    sku = _stocked()
    if command is not RESERVE:
        sku.handle(RESERVE)
    before_holds = dict(sku.holds)
    first = sku.handle(command)
    after = sku.state()
    sku.holds.clear()
    sku.holds.update(before_holds)  # the hold's record was lost, the levels' record was stored

    again = sku.handle(command)

    assert again == first, "the replay re-emits the answer the first attempt decided"
    assert sku.state() == after, "applied once"
    assert sku.held() == sku.state()[1], "the holds account for every reserved unit"


@pytest.mark.parametrize("command", [RESERVE, RELEASE, COMMIT], ids=lambda c: c.record_name)
def test_the_hold_stored_without_the_levels_then_replayed_brings_the_levels_forward(command: Message) -> None:
    sku = _stocked()
    if command is not RESERVE:
        sku.handle(RESERVE)
    before_levels = dict(sku.levels[SKU])
    first = sku.handle(command)
    after = sku.state()
    sku.levels[SKU] = before_levels  # the levels' record was lost, the hold's record was stored

    again = sku.handle(command)

    assert again == first
    assert sku.state() == after
    assert sku.held() == sku.state()[1]


def test_after_a_repair_the_next_order_starts_from_the_right_levels() -> None:
    sku = _stocked()
    before_levels = dict(sku.levels[SKU])
    sku.handle(RESERVE)
    sku.levels[SKU] = before_levels  # torn: the reservation's levels record lost
    sku.handle(RESERVE)  # the replay

    sku.handle(ReserveStock(order_id="o-2", sku=SKU, quantity=2, requested_at=T0))

    assert sku.state() == (5, 5, 0, 3)
    assert sku.held() == 5


def test_a_replay_of_an_intact_write_changes_nothing() -> None:
    sku = _stocked()
    first = sku.handle(RESERVE)
    levels, holds = dict(sku.levels), dict(sku.holds)

    assert sku.handle(RESERVE) == first
    assert (sku.levels, sku.holds) == (levels, holds)


def test_the_levels_entry_carries_only_the_last_changed_hold() -> None:
    sku = _stocked()
    sku.handle(RESERVE)
    sku.handle(ReserveStock(order_id="o-2", sku=SKU, quantity=1, requested_at=T0))

    assert sku.levels[SKU]["last_change"]["order_id"] == "o-2"
    assert sku.levels[SKU]["last_change"]["hold"] == sku.holds[hold_key(SKU, "o-2")]
    assert "orders" not in sku.levels[SKU] or not sku.levels[SKU]["orders"]


# --- a SKU's additions: an entry of their own, read by AddStock only ------------------------------------------


def _added(sku: Sku, n: int, first: int = 0) -> list[Message]:
    events: list[Message] = []
    for i in range(first, first + n):
        events.extend(sku.handle(AddStock(sku=SKU, quantity=1, reason="restock"), message_id=f"add-{i:06d}"))
    return events


def test_a_sku_s_entries_stay_small_however_many_additions_it_took() -> None:
    sku = Sku()
    _added(sku, 2 * stock.REMEMBERED_ADDITIONS)
    sku.handle(RESERVE)
    sizes = {key: len(json.dumps(value)) for key, value in sku.levels.items()}

    _added(sku, 500, first=2 * stock.REMEMBERED_ADDITIONS)
    sku.handle(ReserveStock(order_id="o-2", sku=SKU, quantity=3, requested_at=T0))

    now = {key: len(json.dumps(value)) for key, value in sku.levels.items()}
    assert now[SKU] == pytest.approx(sizes[SKU], abs=8), "the levels entry carries no history"
    assert len(sku.levels[additions_key(SKU)]["additions"]) == stock.REMEMBERED_ADDITIONS
    assert now[additions_key(SKU)] - sizes[additions_key(SKU)] <= 2 * stock.REMEMBERED_ADDITIONS, (
        "the additions entry grows only with the width of its numbers"
    )
    assert max(now.values()) <= 4096


def test_a_reservation_neither_reads_nor_writes_the_additions() -> None:
    sku = Sku()
    _added(sku, 3)
    window = sku.levels[additions_key(SKU)]
    sku.levels[additions_key(SKU)] = "not read by a reservation"
    sku.handle(RESERVE)
    assert sku.levels[additions_key(SKU)] == "not read by a reservation"
    sku.levels[additions_key(SKU)] = window


def test_additions_replayed_after_a_crash_add_nothing_within_the_window() -> None:
    sku = Sku()
    first = _added(sku, stock.REMEMBERED_ADDITIONS)
    entries = json.dumps(sku.levels, sort_keys=True)

    assert _added(sku, stock.REMEMBERED_ADDITIONS) == first, "each answered as the first time"
    assert json.dumps(sku.levels, sort_keys=True) == entries, "nothing written"


@pytest.mark.parametrize("lost", ["levels", "additions"])
def test_an_addition_half_stored_then_replayed_applies_once(lost: str) -> None:
    sku = Sku()
    _added(sku, 2)
    before = dict(sku.levels)
    first = sku.handle(AddStock(sku=SKU, quantity=5, reason="restock"), message_id="add-x")
    after = sku.state()
    key = SKU if lost == "levels" else additions_key(SKU)
    sku.levels[key] = before[key]  # that record was lost, the other was stored

    again = sku.handle(AddStock(sku=SKU, quantity=5, reason="restock"), message_id="add-x")

    assert again == first and sku.state() == after
    assert sku.levels[SKU]["total_added"] == 7
    assert [a[0] for a in sku.levels[additions_key(SKU)]["additions"]] == ["add-000000", "add-000001", "add-x"]


def test_a_levels_entry_of_the_older_shape_is_moved_and_its_additions_still_recognised() -> None:
    sku = Sku()
    first = sku.handle(AddStock(sku=SKU, quantity=5, reason="restock"), message_id="add-1")
    (added,) = first
    older = {**sku.levels[SKU], "orders": {}, "additions": [{"message_id": "add-1", "event": to_jsonable(added)}]}
    older.pop("last_change")
    sku.levels.clear()
    sku.levels[SKU] = older

    assert sku.handle(AddStock(sku=SKU, quantity=5, reason="restock"), message_id="add-1") == first
    assert "additions" not in sku.levels[SKU] and sku.state() == (5, 0, 0, 1)
    assert sku.handle(RESERVE) and sku.state() == (2, 3, 0, 2)


def test_unreadable_additions_of_the_older_shape_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    sku = _stocked()
    sku.levels[SKU] = {**sku.levels[SKU], "additions": [{"message_id": "add-1", "event": "garbage"}]}
    sku.levels.pop(additions_key(SKU))

    sku.handle(RESERVE)

    assert sku.state() == (7, 3, 0, 2)
    assert "unreadable" in caplog.text
