"""A SKU's state is two kinds of table entries (its levels, each order's hold) written together but not atomically.

Each entry goes to its own changelog record, and a worker killed while they are on their way may leave only
one of them stored. The input is then replayed against that torn state; it must come out as if the crash
had not happened: applied once, its answer re-emitted unchanged, the levels and the holds agreeing. Seen in
the crash test as one unit left ``reserved`` with no order holding it (the levels record of a reservation
was stored, its hold record was not, and the replay reserved the units a second time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from streams.domain import stock
from streams.domain.core import SagaConfig, StepContext
from streams.domain.messages import AddStock, CommitStock, Message, ReleaseStock, ReserveStock
from streams.domain.stock import HoldStatus
from streams.stores import StockStore, hold_key

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
