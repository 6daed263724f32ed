"""Inventory per order: all-or-nothing across SKUs, commit on confirmation, release on any cancellation."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    CommitStock,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    Message,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    ReleaseStock,
    ReserveStock,
    ShortLine,
    StockLine,
    StockLineCommitted,
    StockLineRejected,
    StockLineReleased,
    StockLineReserved,
)
from streams.domain.reservations import LineStatus, OrderReservation, Progress, decide

pytestmark = pytest.mark.unit

T0 = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
LEVELS = {"available": 0, "reserved": 0, "sold": 0, "stock_version": 1}

PLACED = OrderPlaced(
    order_id="o-1",
    user_id="u-1",
    lines=(OrderLine(sku="a", quantity=2, unit_price_cents=1), OrderLine(sku="b", quantity=1, unit_price_cents=1)),
    total_cents=3,
    currency="EUR",
    placed_at=T0,
    deadline_at=T0 + timedelta(minutes=5),
)
CONFIRMED = OrderConfirmed(order_id="o-1", payment_id="p-1", confirmed_at=T0)


def cancelled(reason: str = "deadline_exceeded") -> OrderCancelled:
    return OrderCancelled(order_id="o-1", reason=reason, cancelled_at=T0)


def reserved(sku: str, quantity: int) -> StockLineReserved:
    return StockLineReserved(order_id="o-1", sku=sku, quantity=quantity, **LEVELS, reserved_at=T0)


def rejected(sku: str, requested: int, available: int, reason: str = "insufficient_stock") -> StockLineRejected:
    return StockLineRejected(
        order_id="o-1",
        sku=sku,
        requested=requested,
        **{**LEVELS, "available": available},
        reason=reason,
        rejected_at=T0,
    )


def released(sku: str, quantity: int) -> StockLineReleased:
    return StockLineReleased(order_id="o-1", sku=sku, quantity=quantity, **LEVELS, released_at=T0)


def committed(sku: str, quantity: int) -> StockLineCommitted:
    return StockLineCommitted(order_id="o-1", sku=sku, quantity=quantity, **LEVELS, committed_at=T0)


def at(seconds: int) -> StepContext:
    return StepContext(now=T0 + timedelta(seconds=seconds))


def run(*messages: Message, state: OrderReservation | None = None) -> tuple[OrderReservation, list[Message]]:
    """Feed ``messages`` in order, checking on the way that each redelivery changes nothing."""
    emitted: list[Message] = []
    for n, message in enumerate(messages, start=1):
        decision = decide(state, message, at(n))
        assert decide(decision.state, message, at(n + 100)) == decision, f"redelivery of {message} differs"
        state = decision.state
        emitted.extend(decision.events)
    assert state is not None
    return state, emitted


def names(events: list[Message]) -> list[str]:
    return [f"{e.record_name}:{getattr(e, 'sku', '')}" for e in events]


def test_an_order_asks_every_sku() -> None:
    state, events = run(PLACED)
    assert events == [
        ReserveStock(order_id="o-1", sku="a", quantity=2, requested_at=at(1).now),
        ReserveStock(order_id="o-1", sku="b", quantity=1, requested_at=at(1).now),
    ]
    assert [line.status for line in state.lines] == [LineStatus.PENDING, LineStatus.PENDING]


def test_lines_of_one_sku_are_merged() -> None:
    twice = replace(PLACED, lines=(*PLACED.lines, OrderLine(sku="a", quantity=3, unit_price_cents=1)))
    _, events = run(twice)
    assert [(e.sku, e.quantity) for e in events if isinstance(e, ReserveStock)] == [("a", 5), ("b", 1)]


def test_the_order_is_reserved_only_when_every_line_is() -> None:
    state, events = run(PLACED, reserved("a", 2))
    assert len(events) == 2 and state.reserved is None, "only the two ReserveStock commands so far"
    state, events = run(reserved("b", 1), state=state)
    assert events == [
        InventoryReserved(
            order_id="o-1",
            lines=(StockLine(sku="a", quantity=2), StockLine(sku="b", quantity=1)),
            reserved_at=at(1).now,
        )
    ]
    assert state.reserved is True


def test_one_short_line_fails_the_order_and_releases_the_others() -> None:
    state, events = run(PLACED, rejected("b", 1, 0), reserved("a", 2))
    assert names(events)[2:] == ["ReleaseStock:a", "InventoryReservationFailed:"]
    assert events[2] == ReleaseStock(
        order_id="o-1", sku="a", quantity=2, reason="reservation failed", requested_at=at(3).now
    )
    assert events[3] == InventoryReservationFailed(
        order_id="o-1",
        failed_lines=(ShortLine(sku="b", requested=1, available=0),),
        reason="insufficient_stock",
        failed_at=at(3).now,
    )
    assert state.reserved is False
    # the saga cancels; the release already asked for is not asked again, and its answer ends the story
    state, events = run(cancelled("out_of_stock"), state=state)
    assert events == []
    state, events = run(released("a", 2), state=state)
    assert events == [
        InventoryReleased(
            order_id="o-1", lines=(StockLine(sku="a", quantity=2),), reason="out_of_stock", released_at=at(1).now
        )
    ]


def test_a_release_answered_before_the_cancellation_is_reported_on_the_cancellation() -> None:
    state, _ = run(PLACED, reserved("a", 2), rejected("b", 1, 0), released("a", 2))
    state, events = run(cancelled("out_of_stock"), state=state)
    assert names(events) == ["InventoryReleased:"] and state.released


def test_every_line_short_releases_nothing() -> None:
    state, events = run(PLACED, rejected("a", 2, 1), rejected("b", 1, 0), cancelled("out_of_stock"))
    assert names(events)[2:] == ["InventoryReservationFailed:", "InventoryReleased:"]
    assert events[-1] == InventoryReleased(order_id="o-1", lines=(), reason="out_of_stock", released_at=at(4).now)


def test_confirmation_commits_every_line() -> None:
    state, _ = run(PLACED, reserved("a", 2), reserved("b", 1))
    state, events = run(CONFIRMED, state=state)
    assert events == [
        CommitStock(order_id="o-1", sku="a", quantity=2, requested_at=at(1).now),
        CommitStock(order_id="o-1", sku="b", quantity=1, requested_at=at(1).now),
    ]
    state, events = run(committed("a", 2), committed("b", 1), state=state)
    assert names(events) == ["InventoryCommitted:"] and state.committed
    assert [line.commit for line in state.lines] == [Progress.DONE, Progress.DONE]


def test_cancelled_while_reservations_are_in_flight_releases_every_line() -> None:
    state, events = run(PLACED, reserved("a", 2), cancelled())
    assert names(events)[2:] == ["ReleaseStock:a", "ReleaseStock:b"]
    assert events[-1] == ReleaseStock(
        order_id="o-1", sku="b", quantity=1, reason="order cancelled: deadline_exceeded", requested_at=at(3).now
    )
    # b's reservation was overtaken by its release: the SKU refuses it and releases nothing
    state, events = run(rejected("b", 1, 5, "order_released"), released("a", 2), state=state)
    assert events == []
    state, events = run(released("b", 0), state=state)
    assert events == [
        InventoryReleased(
            order_id="o-1", lines=(StockLine(sku="a", quantity=2),), reason="deadline_exceeded", released_at=at(1).now
        )
    ]
    assert state.reserved is None, "no verdict once cancelled: nobody waits for it"


def test_a_reservation_completing_after_the_cancellation_has_no_verdict() -> None:
    state, events = run(PLACED, cancelled(), reserved("a", 2), reserved("b", 1), released("a", 2), released("b", 1))
    assert names(events) == [
        "ReserveStock:a",
        "ReserveStock:b",
        "ReleaseStock:a",
        "ReleaseStock:b",
        "InventoryReleased:",
    ]
    assert events[-1] == InventoryReleased(
        order_id="o-1",
        lines=(StockLine(sku="a", quantity=2), StockLine(sku="b", quantity=1)),
        reason="deadline_exceeded",
        released_at=at(6).now,
    )


def test_redelivered_answers_re_emit_what_they_emitted() -> None:
    state, first = run(PLACED, reserved("a", 2), reserved("b", 1))
    again = decide(state, reserved("b", 1), at(50))
    assert again.state == state and list(again.events) == first[2:]
    assert decide(state, reserved("a", 2), at(50)) == Decision(state)
    assert decide(state, PLACED, at(50)) == Decision(state, tuple(first[:2]))


def test_a_second_answer_for_an_answered_line_is_stale() -> None:
    state, _ = run(PLACED, reserved("a", 2))
    assert decide(state, rejected("a", 2, 0, "order_released"), at(9)) == Decision(state)
    assert decide(state, released("a", 2), at(9)) == Decision(state), "no release was asked for"
    assert decide(state, committed("a", 2), at(9)) == Decision(state), "no commit was asked for"


def test_the_first_verdict_wins() -> None:
    state, _ = run(PLACED, reserved("a", 2), reserved("b", 1), CONFIRMED)
    assert decide(state, cancelled(), at(9)) == Decision(state)


def test_events_for_an_unknown_order_are_ignored() -> None:
    for message in (reserved("a", 1), CONFIRMED, cancelled()):
        assert decide(None, message, at(1)) == Decision(None)


def test_state_survives_json() -> None:
    state, _ = run(PLACED, reserved("a", 2), rejected("b", 1, 0), cancelled("out_of_stock"))
    assert OrderReservation.from_json(json.loads(json.dumps(state.to_json()))) == state
