"""The order saga: one terminal outcome per order, whatever the order of arrival, and its story kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import permutations

import pytest

from streams.domain import payments
from streams.domain.core import ChargeOutcome, Decision, RefundPayment, StepContext
from streams.domain.messages import (
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    Message,
    OrderCancelled,
    OrderCompensationFailed,
    OrderConfirmed,
    OrderDeadlineReached,
    OrderLine,
    OrderPlaced,
    PaymentFailed,
    PaymentRefunded,
    PaymentRefundFailed,
    PaymentSucceeded,
    ShortLine,
    StockLine,
    UserRegistered,
)
from streams.domain.orders import OrderSaga, SagaStatus, decide, pending_deadline

pytestmark = pytest.mark.unit

T0 = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
DEADLINE = T0 + timedelta(minutes=5)

PLACED = OrderPlaced(
    order_id="o-1",
    user_id="u-1",
    lines=(OrderLine(sku="a", quantity=2, unit_price_cents=250),),
    total_cents=500,
    currency="EUR",
    placed_at=T0,
    deadline_at=DEADLINE,
    payment_method="card",
    payment_token="tok",
)
RESERVED = InventoryReserved(order_id="o-1", lines=(StockLine(sku="a", quantity=2),), reserved_at=T0)
SHORT = InventoryReservationFailed(
    order_id="o-1",
    failed_lines=(ShortLine(sku="a", requested=2, available=1),),
    reason="insufficient_stock",
    failed_at=T0,
)
PAID = PaymentSucceeded(order_id="o-1", payment_id="p-1", amount_cents=500, charged_at=T0)
DECLINED = PaymentFailed(order_id="o-1", reason="card declined", failed_at=T0)
TIMER = OrderDeadlineReached(order_id="o-1", deadline_at=DEADLINE, observed_at=DEADLINE + timedelta(seconds=1))


def at(seconds: int) -> StepContext:
    return StepContext(now=T0 + timedelta(seconds=seconds))


def run(*messages: Message, state: OrderSaga | None = None) -> tuple[OrderSaga, list[Message]]:
    """Feed ``messages`` in order (one second apart); the final state and every event emitted."""
    emitted: list[Message] = []
    for n, message in enumerate(messages, start=1):
        decision = decide(state, message, at(n))
        state = decision.state
        emitted.extend(decision.events)
        assert decision.effects == ()
    assert state is not None
    return state, emitted


def test_placed_reserved_paid_is_confirmed() -> None:
    state, events = run(PLACED)
    assert (state.status, events, pending_deadline(state)) == (SagaStatus.PLACED, [], DEADLINE)
    state, events = run(RESERVED, state=state)
    assert (state.status, events, pending_deadline(state)) == (SagaStatus.STOCK_RESERVED, [], DEADLINE)
    state, events = run(PAID, state=state)
    assert events == [OrderConfirmed(order_id="o-1", payment_id="p-1", confirmed_at=at(1).now)]
    assert (state.status, state.payment_id, pending_deadline(state)) == (SagaStatus.CONFIRMED, "p-1", None)
    assert [e.step for e in state.timeline] == ["placed", "stock_reserved", "confirmed"]
    assert [e.event_type for e in state.timeline] == ["OrderPlaced", "InventoryReserved", "PaymentSucceeded"]
    assert state.timeline[0].at == T0 and "deadline" in state.timeline[0].detail


def test_the_order_details_are_kept_for_the_read_side() -> None:
    state, _ = run(PLACED)
    assert (state.user_id, state.lines, state.total_cents, state.currency) == ("u-1", PLACED.lines, 500, "EUR")
    assert (state.placed_at, state.deadline_at) == (T0, DEADLINE)


@pytest.mark.parametrize(
    ("failure", "reason", "step"),
    [
        (SHORT, "out_of_stock", "stock_unavailable"),
        (DECLINED, "payment_failed", "payment_failed"),
        (TIMER, "deadline_exceeded", "deadline"),
    ],
    ids=["out-of-stock", "payment-failed", "deadline"],
)
def test_failures_cancel_with_their_reason(failure: Message, reason: str, step: str) -> None:
    before = [RESERVED] if failure is DECLINED else []
    state, events = run(PLACED, *before, failure)
    assert events == [OrderCancelled(order_id="o-1", reason=reason, cancelled_at=at(len(before) + 2).now)]
    assert (state.status, state.cancel_reason, pending_deadline(state)) == (SagaStatus.CANCELLED, reason, None)
    assert state.timeline[-1].step == step and state.timeline[-1].detail.startswith(f"cancelled ({reason})")


def test_the_deadline_also_cancels_an_order_waiting_for_payment() -> None:
    state, events = run(PLACED, RESERVED, TIMER)
    assert [type(e) for e in events] == [OrderCancelled] and state.status is SagaStatus.CANCELLED


def test_an_early_or_late_deadline_is_ignored() -> None:
    placed, _ = run(PLACED)
    early = OrderDeadlineReached(order_id="o-1", deadline_at=DEADLINE, observed_at=DEADLINE - timedelta(seconds=1))
    assert decide(placed, early, at(9)) == Decision(placed)
    confirmed, _ = run(RESERVED, PAID, state=placed)
    assert decide(confirmed, TIMER, at(9)) == Decision(confirmed)
    assert decide(None, TIMER, at(9)) == Decision(None)


def test_redelivered_events_change_nothing_and_re_emit_the_same_events() -> None:
    state, first = run(PLACED, RESERVED, PAID)
    for message in (PLACED, RESERVED, PAID):
        again = decide(state, message, at(99))
        assert again.state == state
        assert list(again.events) == (first if message is PAID else [])


def test_a_repeated_deadline_re_emits_the_same_cancellation() -> None:
    state, first = run(PLACED, TIMER)
    later_timer = OrderDeadlineReached(
        order_id="o-1", deadline_at=DEADLINE, observed_at=DEADLINE + timedelta(minutes=1)
    )
    again = decide(state, later_timer, at(99))
    assert again.state == state and list(again.events) == first


def test_a_payment_after_the_deadline_is_not_a_confirmation() -> None:
    state, events = run(PLACED, RESERVED, TIMER, PAID)
    assert [type(e) for e in events] == [OrderCancelled]
    assert state.status is SagaStatus.CANCELLED and state.payment_id == "p-1"
    assert state.timeline[-1].step == "late_payment" and "refunds" in state.timeline[-1].detail


def test_a_payment_may_overtake_the_reservation_and_even_the_order() -> None:
    state, events = run(PLACED, PAID, RESERVED)
    assert [type(e) for e in events] == [OrderConfirmed] and state.status is SagaStatus.CONFIRMED
    assert state.stock_reserved and state.timeline[-1].detail == "reserved while CONFIRMED"
    early, events = run(PAID, RESERVED, PLACED)
    assert [type(e) for e in events] == [OrderConfirmed] and early.status is SagaStatus.CONFIRMED
    assert early.deadline_at == DEADLINE and pending_deadline(early) is None
    assert [e.step for e in early.timeline] == ["payment_received", "stock_reserved", "placed", "confirmed"]
    assert early.outputs["OrderPlaced"] == tuple(events), "OrderPlaced decided the charge: its redelivery re-emits"


def test_a_reservation_failure_before_the_order_still_cancels() -> None:
    state, events = run(SHORT, PLACED)
    assert [type(e) for e in events] == [OrderCancelled] and state.status is SagaStatus.CANCELLED
    assert pending_deadline(state) is None


def test_compensation_progress_lands_in_the_timeline() -> None:
    released = InventoryReleased(order_id="o-1", lines=(StockLine(sku="a", quantity=2),), reason="x", released_at=T0)
    refunded = PaymentRefunded(order_id="o-1", payment_id="p-1", amount_cents=500, reason="x", refunded_at=T0)
    state, events = run(PLACED, RESERVED, TIMER, PAID, released, refunded)
    assert [type(e) for e in events] == [OrderCancelled]
    assert state.status is SagaStatus.CANCELLED and state.inventory_released and state.payment_refunded
    assert [e.step for e in state.timeline][-2:] == ["inventory_released", "payment_refunded"]
    assert state.timeline[-2].detail == "a×2"


def test_a_refund_that_failed_for_good_needs_a_person() -> None:
    gave_up = PaymentRefundFailed(
        order_id="o-1", payment_id="p-1", amount_cents=500, reason="provider down", attempts=5, failed_at=T0
    )
    state, events = run(PLACED, RESERVED, TIMER, PAID, gave_up)
    alert = OrderCompensationFailed(
        order_id="o-1",
        failed_step="refund_payment",
        reason="provider down",
        attempts=5,
        payment_id="p-1",
        amount_cents=500,
        failed_at=at(5).now,
    )
    assert events[-1] == alert and state.status is SagaStatus.COMPENSATION_FAILED
    again = decide(state, gave_up, at(99))
    assert again.state == state and again.events == (alert,)


def test_a_confirmed_order_records_its_sold_stock() -> None:
    committed = InventoryCommitted(order_id="o-1", lines=(StockLine(sku="a", quantity=2),), committed_at=T0)
    state, _ = run(PLACED, RESERVED, PAID, committed)
    assert state.stock_committed and state.timeline[-1].step == "stock_committed"


def test_compensation_reports_for_an_unknown_order_are_ignored() -> None:
    released = InventoryReleased(order_id="o-9", lines=(), reason="x", released_at=T0)
    assert decide(None, released, at(1)) == Decision(None)


def test_other_messages_leave_the_state_alone() -> None:
    state, _ = run(PLACED)
    other = UserRegistered(user_id="u", version=1, username="u", email="e", registered_at=T0)
    assert decide(state, other, at(2)) == Decision(state)


def test_state_survives_json() -> None:
    state, _ = run(PLACED, RESERVED, TIMER, PAID)
    assert OrderSaga.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert state.to_json()["status"] == "CANCELLED"


# --- the deadline rule: decided by the times the events carry ---------------------------------------------------

LATE_PAID = PaymentSucceeded(
    order_id="o-1", payment_id="p-1", amount_cents=500, charged_at=DEADLINE + timedelta(milliseconds=1)
)
PAID_AT_DEADLINE = PaymentSucceeded(order_id="o-1", payment_id="p-1", amount_cents=500, charged_at=DEADLINE)


def test_a_charge_after_the_deadline_cancels_the_order() -> None:
    state, events = run(PLACED, RESERVED, LATE_PAID)
    assert events == [OrderCancelled(order_id="o-1", reason="deadline_exceeded", cancelled_at=at(3).now)]
    assert (state.status, state.cancel_reason, pending_deadline(state)) == (
        SagaStatus.CANCELLED,
        "deadline_exceeded",
        None,
    )
    assert (state.payment_id, state.charged_at) == ("p-1", LATE_PAID.charged_at)
    assert state.timeline[-1].step == "late_charge" and "payments refunds it" in state.timeline[-1].detail


def test_a_late_charge_cancels_and_payments_refunds_it() -> None:
    """The two steps together: the charge lands after the deadline; the saga's OrderCancelled makes payments refund."""
    ctx = StepContext(now=DEADLINE + timedelta(milliseconds=1))
    paying = payments.decide(payments.decide(None, PLACED, at(1)).state, RESERVED, at(2)).state
    charge = payments.on_charge_result(paying, ChargeOutcome(ok=True, payment_id="p-1"), ctx)
    (succeeded,) = charge.events
    assert isinstance(succeeded, PaymentSucceeded) and succeeded.charged_at > DEADLINE
    _, (cancelled,) = run(PLACED, RESERVED, succeeded)
    assert isinstance(cancelled, OrderCancelled)
    refund = payments.decide(charge.state, cancelled, ctx)
    assert [type(e) for e in refund.effects] == [RefundPayment]
    assert refund.effects[0].payment_id == "p-1" and refund.effects[0].reason == "order cancelled: deadline_exceeded"


def test_a_charge_taken_by_the_deadline_confirms_however_late_it_is_read() -> None:
    for paid in (PAID, PAID_AT_DEADLINE):
        placed, _ = run(PLACED, RESERVED)
        a_day_late = StepContext(now=DEADLINE + timedelta(days=1))
        decision = decide(placed, paid, a_day_late)
        assert decision.events == (OrderConfirmed(order_id="o-1", payment_id="p-1", confirmed_at=a_day_late.now),)
        assert decision.state is not None and decision.state.status is SagaStatus.CONFIRMED


def test_a_charge_that_comes_before_the_order_waits_for_its_deadline() -> None:
    waiting, events = run(LATE_PAID)
    assert events == [] and waiting.status is SagaStatus.PLACED and pending_deadline(waiting) is None
    assert waiting.timeline[-1].step == "payment_received"
    state, events = run(PLACED, state=waiting)
    assert [(type(e), getattr(e, "reason", None)) for e in events] == [(OrderCancelled, "deadline_exceeded")]
    assert state.status is SagaStatus.CANCELLED
    assert decide(state, PLACED, at(9)).events == tuple(events), "a redelivered OrderPlaced re-emits the decision"


def outcome(events: list[Message], state: OrderSaga) -> tuple[object, ...]:
    """What was decided, without the moments it was decided at."""
    return state.status, state.cancel_reason, tuple((e.record_name, getattr(e, "reason", None)) for e in events)


@pytest.mark.parametrize("paid", [PAID, PAID_AT_DEADLINE, LATE_PAID], ids=["early", "at-deadline", "late"])
def test_a_replay_decides_the_same_in_any_order_at_any_time(paid: PaymentSucceeded) -> None:
    """The same inputs, in every order of arrival, read at once or a year later: the same outcome."""
    expected = SagaStatus.CANCELLED if paid is LATE_PAID else SagaStatus.CONFIRMED
    for inputs in permutations((PLACED, RESERVED, paid)):
        outcomes = set()
        for delay in (timedelta(0), timedelta(days=365)):
            state: OrderSaga | None = None
            emitted: list[Message] = []
            for n, message in enumerate(inputs):
                decision = decide(state, message, StepContext(now=T0 + delay + timedelta(seconds=n)))
                state, emitted = decision.state, emitted + list(decision.events)
            assert state is not None
            outcomes.add(outcome(emitted, state))
        (only,) = outcomes
        assert only[0] is expected, (inputs, only)
