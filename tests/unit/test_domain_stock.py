"""Inventory per SKU: levels never negative, stock conserved, each order's hold answered once and re-sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    AddStock,
    CommitStock,
    Message,
    OrderConfirmed,
    ReleaseStock,
    ReserveStock,
    StockAdded,
    StockLineCommitted,
    StockLineRejected,
    StockLineReleased,
    StockLineReserved,
)
from streams.domain.stock import REMEMBERED_ADDITIONS, HoldStatus, Stock, decide
from streams.domain.text import text_problem

pytestmark = pytest.mark.unit

T0 = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)


def at(seconds: int, message_id: str = "") -> StepContext:
    return StepContext(now=T0 + timedelta(seconds=seconds), message_id=message_id)


def stock(available: int) -> Stock:
    state = decide(None, AddStock(sku="a", quantity=available, reason="initial"), at(0, "add-0")).state
    assert state is not None
    return state


def reserve(order_id: str = "o-1", quantity: int = 2) -> ReserveStock:
    return ReserveStock(order_id=order_id, sku="a", quantity=quantity, requested_at=T0)


def release(order_id: str = "o-1", quantity: int = 2) -> ReleaseStock:
    return ReleaseStock(order_id=order_id, sku="a", quantity=quantity, reason="order cancelled: x", requested_at=T0)


def commit(order_id: str = "o-1", quantity: int = 2) -> CommitStock:
    return CommitStock(order_id=order_id, sku="a", quantity=quantity, requested_at=T0)


def levels(state: Stock | None) -> tuple[int, int, int, int]:
    assert state is not None
    return state.available, state.reserved, state.sold, state.version


def test_added_stock_is_available_and_reported_with_its_levels() -> None:
    decision = decide(stock(3), AddStock(sku="a", quantity=4, reason="restock"), at(1, "add-1"))
    assert decision.events == (
        StockAdded(
            sku="a", quantity=4, reason="restock", available=7, reserved=0, sold=0, stock_version=2, added_at=at(1).now
        ),
    )
    assert levels(decision.state) == (7, 0, 0, 2)
    assert decision.state is not None and decision.state.total_added == 7


def test_a_redelivered_addition_is_not_added_twice() -> None:
    first = decide(stock(3), AddStock(sku="a", quantity=4, reason="restock"), at(1, "add-1"))
    again = decide(first.state, AddStock(sku="a", quantity=4, reason="restock"), at(5, "add-1"))
    assert again == first
    other = decide(first.state, AddStock(sku="a", quantity=4, reason="restock"), at(5, "add-2"))
    assert levels(other.state)[0] == 11, "a different AddStock with the same content is a new delivery"


def test_only_the_latest_additions_are_remembered() -> None:
    state: Stock | None = stock(0)
    for n in range(REMEMBERED_ADDITIONS + 5):
        state = decide(state, AddStock(sku="a", quantity=1, reason="r"), at(n, f"m-{n}")).state
    assert state is not None and len(state.additions) == REMEMBERED_ADDITIONS
    assert state.additions[0].message_id == "m-5"


@pytest.mark.parametrize("quantity", [0, -3])
def test_a_non_positive_addition_changes_nothing(quantity: int) -> None:
    state = stock(3)
    assert decide(state, AddStock(sku="a", quantity=quantity, reason="r"), at(1, "x")) == Decision(state)


def test_a_reservation_holds_units_when_enough_are_available() -> None:
    decision = decide(stock(2), reserve(quantity=2), at(1))
    assert decision.events == (
        StockLineReserved(
            order_id="o-1", sku="a", quantity=2, available=0, reserved=2, sold=0, stock_version=2, reserved_at=at(1).now
        ),
    )
    assert decision.state is not None and decision.state.orders["o-1"].status is HoldStatus.RESERVED


def test_a_reservation_beyond_what_is_available_is_refused_and_changes_no_level() -> None:
    state = stock(1)
    decision = decide(state, reserve(quantity=2), at(1))
    assert decision.events == (
        StockLineRejected(
            order_id="o-1",
            sku="a",
            requested=2,
            available=1,
            reserved=0,
            sold=0,
            stock_version=1,
            reason="insufficient_stock",
            rejected_at=at(1).now,
        ),
    )
    assert levels(decision.state) == levels(state)


def test_a_redelivered_reservation_is_answered_again_and_held_once() -> None:
    first = decide(stock(5), reserve(quantity=2), at(1))
    again = decide(first.state, reserve(quantity=2), at(9))
    assert again.state == first.state and again.events == first.events
    assert levels(again.state) == (3, 2, 0, 2)


def test_a_refused_reservation_stays_refused_after_a_restock() -> None:
    refused = decide(stock(1), reserve(quantity=2), at(1))
    restocked = decide(refused.state, AddStock(sku="a", quantity=10, reason="r"), at(2, "add-2")).state
    again = decide(restocked, reserve(quantity=2), at(3))
    assert again.events == refused.events and again.state == restocked


def test_a_release_gives_the_units_back() -> None:
    held = decide(stock(5), reserve(quantity=2), at(1)).state
    first = decide(held, release(), at(2))
    assert first.events == (
        StockLineReleased(
            order_id="o-1", sku="a", quantity=2, available=5, reserved=0, sold=0, stock_version=3, released_at=at(2).now
        ),
    )
    again = decide(first.state, release(), at(9))
    assert again.state == first.state and again.events == first.events


def test_a_release_before_the_reservation_leaves_a_tombstone() -> None:
    tombstone = decide(stock(5), release(), at(1))
    assert tombstone.events == (
        StockLineReleased(
            order_id="o-1", sku="a", quantity=0, available=5, reserved=0, sold=0, stock_version=1, released_at=at(1).now
        ),
    )
    late = decide(tombstone.state, reserve(), at(2))
    (answer,) = late.events
    assert isinstance(answer, StockLineRejected) and answer.reason == "order_released"
    assert levels(late.state) == (5, 0, 0, 1)
    assert decide(late.state, reserve(), at(9)).events == late.events
    assert decide(late.state, release(), at(9)).events == tombstone.events


def test_releasing_a_refused_order_releases_nothing() -> None:
    refused = decide(stock(1), reserve(quantity=2), at(1)).state
    decision = decide(refused, release(), at(2))
    (answer,) = decision.events
    assert isinstance(answer, StockLineReleased) and answer.quantity == 0
    assert levels(decision.state) == (1, 0, 0, 1)


def test_a_commit_sells_the_held_units() -> None:
    held = decide(stock(5), reserve(quantity=2), at(1)).state
    first = decide(held, commit(), at(2))
    assert first.events == (
        StockLineCommitted(
            order_id="o-1",
            sku="a",
            quantity=2,
            available=3,
            reserved=0,
            sold=2,
            stock_version=3,
            committed_at=at(2).now,
        ),
    )
    assert decide(first.state, commit(), at(9)) == Decision(first.state, first.events)
    assert decide(first.state, release(), at(9)) == Decision(first.state), "sold stock is not released"


def test_a_commit_without_a_hold_is_ignored() -> None:
    state = stock(5)
    assert decide(state, commit(), at(1)) == Decision(state)
    released = decide(decide(state, reserve(), at(1)).state, release(), at(2)).state
    assert decide(released, commit(), at(3)) == Decision(released)


def test_a_non_positive_reservation_is_refused() -> None:
    (answer,) = decide(stock(5), reserve(quantity=0), at(1)).events
    assert isinstance(answer, StockLineRejected) and answer.reason == "invalid_quantity"


def test_other_messages_leave_the_state_alone() -> None:
    state = stock(1)
    assert decide(state, OrderConfirmed(order_id="o", payment_id="p", confirmed_at=T0), at(1)) == Decision(state)


def test_state_survives_json() -> None:
    state = decide(decide(stock(5), reserve(), at(1)).state, release("o-2"), at(2)).state
    assert state is not None
    assert Stock.from_json(json.loads(json.dumps(state.to_json()))) == state


COMMANDS = st.lists(
    st.tuples(
        st.sampled_from(["add", "reserve", "release", "commit"]),
        st.sampled_from(["o-1", "o-2", "o-3", "o-4"]),
        st.integers(-1, 4),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(commands=COMMANDS)
def test_levels_are_never_negative_and_stock_is_conserved(commands: list[tuple[str, str, int, bool]]) -> None:
    """Any sequence of commands, each perhaps delivered twice: the invariant holds after every step, and an
    order's units are held by at most one reservation."""
    state: Stock | None = None
    for n, (kind, order_id, quantity, twice) in enumerate(commands):
        message: Message = {
            "add": AddStock(sku="a", quantity=quantity, reason="r"),
            "reserve": reserve(order_id, quantity),
            "release": release(order_id, quantity),
            "commit": commit(order_id, quantity),
        }[kind]
        for _ in range(2 if twice else 1):
            decision = decide(state, message, at(n, f"m-{n}"))
            state = decision.state
            assert state is not None and state.consistent, state
            for event in decision.events:
                assert min(event.available, event.reserved, event.sold) >= 0  # type: ignore[attr-defined]
    if state is not None:
        held = sum(h.quantity for h in state.orders.values() if h.status is HoldStatus.RESERVED)
        sold = sum(h.quantity for h in state.orders.values() if h.status is HoldStatus.COMMITTED)
        assert (held, sold) == (state.reserved, state.sold)


def test_a_redelivered_addition_re_emits_its_event_after_the_levels_moved_on() -> None:
    """An addition is remembered by its levels and time; the rest of its event is the command's, which a
    redelivery repeats, so the event re-emitted is the one first sent."""
    add = AddStock(sku="a", quantity=4, reason="restock")
    first = decide(stock(3), add, at(1, "add-1"))
    moved_on = decide(first.state, reserve(quantity=5), at(2)).state
    again = decide(moved_on, add, at(9, "add-1"))
    assert again.events == first.events and again.state == moved_on


def test_a_replay_of_every_remembered_addition_adds_nothing() -> None:
    """A crash redelivers everything after the last committed offset, in order: within the window, each
    addition is recognised and answered as before, and the levels do not move."""
    state: Stock | None = stock(0)
    sent = []
    for n in range(REMEMBERED_ADDITIONS):
        decision = decide(state, AddStock(sku="a", quantity=n + 1, reason="r"), at(n, f"m-{n}"))
        state, sent = decision.state, [*sent, *decision.events]
    replayed = []
    for n in range(REMEMBERED_ADDITIONS):
        decision = decide(state, AddStock(sku="a", quantity=n + 1, reason="r"), at(100 + n, f"m-{n}"))
        assert decision.state == state
        replayed.extend(decision.events)
    assert replayed == sent
    assert state is not None and state.total_added == sum(range(1, REMEMBERED_ADDITIONS + 1))


@pytest.mark.parametrize(
    ("add", "field"),
    [
        (AddStock(sku="a\x00", quantity=3, reason="restock"), "sku"),
        (AddStock(sku="\ud800", quantity=3, reason="restock"), "sku"),
        (AddStock(sku="a", quantity=3, reason="re\x85stock"), "reason"),
    ],
)
def test_an_addition_with_unclean_text_is_refused_with_the_reason_and_adds_nothing(add: AddStock, field: str) -> None:
    before = stock(3)
    for state in (before, None):
        decision = decide(state, add, at(1, "add-1"))
        assert decision == Decision(state, refusal=f"invalid_text: {field} {text_problem(getattr(add, field))}")


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (ReserveStock(order_id="o-1", sku="a\x1b", quantity=1, requested_at=T0), "sku"),
        (ReserveStock(order_id="o-1\x9c", sku="a", quantity=1, requested_at=T0), "order_id"),
    ],
)
def test_a_reservation_with_unclean_text_is_rejected_and_holds_nothing(command: ReserveStock, field: str) -> None:
    states = (None,) if field == "sku" else (stock(3), None)  # no SKU is ever stored under an unclean name
    for state in states:
        decision = decide(state, command, at(1))
        (rejected,) = decision.events
        assert isinstance(rejected, StockLineRejected)
        assert (rejected.order_id, rejected.sku, rejected.reason) == (
            command.order_id,
            command.sku,
            f"invalid_text: {field}",
        )
        assert (rejected.requested, rejected.available, rejected.stock_version) == (
            1,
            state.available if state else 0,
            state.version if state else 0,
        )
        assert decision.state == state, "no hold and no SKU kept under what the command names"
