"""Payments: one charge per order, after its stock is reserved; every charge of a cancelled order refunded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from streams.domain import payments
from streams.domain.core import (
    ChargeOutcome,
    ChargePayment,
    Decision,
    RefundOutcome,
    RefundPayment,
    SagaConfig,
    StepContext,
)
from streams.domain.messages import (
    InventoryReserved,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    PaymentFailed,
    PaymentPending,
    PaymentRefunded,
    PaymentRefundFailed,
    PaymentSucceeded,
    RetryPayment,
    StockLine,
)
from streams.domain.payments import ChargeStatus, PaymentState, RefundStatus, decide, on_charge_result, on_refund_result

pytestmark = pytest.mark.unit

T0 = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
CONFIG = SagaConfig(
    max_refund_attempts=3, refund_backoff_base=timedelta(seconds=2), refund_backoff_cap=timedelta(seconds=3)
)

PLACED = OrderPlaced(
    order_id="o-1",
    user_id="u-1",
    lines=(OrderLine(sku="a", quantity=2, unit_price_cents=250),),
    total_cents=500,
    currency="EUR",
    placed_at=T0,
    deadline_at=T0 + timedelta(minutes=5),
    payment_method="card",
    payment_token="tok-1",
)
RESERVED = InventoryReserved(order_id="o-1", lines=(StockLine(sku="a", quantity=2),), reserved_at=T0)
CANCELLED = OrderCancelled(order_id="o-1", reason="deadline_exceeded", cancelled_at=T0)
CHARGE = ChargePayment(
    order_id="o-1", amount_cents=500, currency="EUR", method="card", token="tok-1", idempotency_key="o-1"
)
OK = ChargeOutcome(ok=True, payment_id="p-1")


def at(seconds: int) -> StepContext:
    return StepContext(now=T0 + timedelta(seconds=seconds), config=CONFIG)


def refund(attempt: int = 1, retry_at: datetime | None = None) -> RefundPayment:
    return RefundPayment(
        order_id="o-1",
        payment_id="p-1",
        amount_cents=500,
        currency="EUR",
        reason="order cancelled: deadline_exceeded",
        attempt=attempt,
        retry_at=retry_at,
        idempotency_key="o-1",
    )


def charged(state: PaymentState | None = None) -> PaymentState:
    """Placed, reserved and charged successfully."""
    asked = decide(decide(state, PLACED, at(1)).state, RESERVED, at(2)).state
    result = on_charge_result(asked, OK, at(3)).state
    assert result is not None
    return result


def test_the_charge_is_asked_for_once_the_stock_is_reserved() -> None:
    placed = decide(None, PLACED, at(1))
    assert placed.effects == () and placed.events == ()
    asked = decide(placed.state, RESERVED, at(2))
    assert asked.effects == (CHARGE,) and asked.events == ()
    assert asked.state is not None and asked.state.charge is ChargeStatus.REQUESTED
    assert payments.pending_effects(asked.state) == (CHARGE,)


def test_the_reservation_may_arrive_before_the_order() -> None:
    early = decide(None, RESERVED, at(1))
    assert early.effects == ()
    asked = decide(early.state, PLACED, at(2))
    assert asked.effects == (CHARGE,)


def test_a_successful_charge_is_reported() -> None:
    asked = decide(decide(None, PLACED, at(1)).state, RESERVED, at(2)).state
    decision = on_charge_result(asked, OK, at(3))
    assert decision.events == (
        PaymentSucceeded(order_id="o-1", payment_id="p-1", amount_cents=500, charged_at=at(3).now),
    )
    assert decision.effects == () and payments.pending_effects(decision.state) == ()


def test_a_declined_charge_is_reported() -> None:
    asked = decide(decide(None, PLACED, at(1)).state, RESERVED, at(2)).state
    decision = on_charge_result(asked, ChargeOutcome(ok=False, reason="card declined"), at(3))
    assert decision.events == (PaymentFailed(order_id="o-1", reason="card declined", failed_at=at(3).now),)
    assert decision.state is not None and decision.state.charge is ChargeStatus.FAILED


def test_a_success_without_a_payment_id_is_a_bug() -> None:
    asked = decide(decide(None, PLACED, at(1)).state, RESERVED, at(2)).state
    with pytest.raises(ValueError, match="payment id"):
        on_charge_result(asked, ChargeOutcome(ok=True), at(3))


def test_redelivery_re_emits_the_charge_chain_and_never_asks_for_a_second_charge() -> None:
    asked = decide(decide(None, PLACED, at(1)).state, RESERVED, at(2)).state
    again = decide(asked, RESERVED, at(9))
    assert again == Decision(asked, (), (CHARGE,)), "unanswered: the same charge, same idempotency key"
    done = on_charge_result(asked, OK, at(3))
    assert decide(done.state, RESERVED, at(9)) == Decision(done.state, done.events)
    assert decide(done.state, PLACED, at(9)) == Decision(done.state), "OrderPlaced did not start the charge"
    assert on_charge_result(done.state, OK, at(9)) == Decision(done.state, done.events)
    assert on_charge_result(done.state, ChargeOutcome(ok=False), at(9)).events == done.events


def test_a_cancelled_order_is_never_charged() -> None:
    state = decide(decide(None, PLACED, at(1)).state, CANCELLED, at(2)).state
    decision = decide(state, RESERVED, at(3))
    assert decision.effects == () and decision.events == () and payments.pending_effects(decision.state) == ()


def test_cancelling_a_charged_order_refunds_it() -> None:
    cancelled = decide(charged(), CANCELLED, at(4))
    assert cancelled.effects == (refund(),) and cancelled.events == ()
    assert payments.pending_effects(cancelled.state) == (refund(),)
    done = on_refund_result(cancelled.state, RefundOutcome(ok=True, attempt=1), at(5))
    assert done.events == (
        PaymentRefunded(
            order_id="o-1",
            payment_id="p-1",
            amount_cents=500,
            reason="order cancelled: deadline_exceeded",
            refunded_at=at(5).now,
        ),
    )
    assert done.state is not None and done.state.refund is RefundStatus.REFUNDED
    assert decide(done.state, CANCELLED, at(9)) == Decision(done.state, done.events)
    assert decide(cancelled.state, CANCELLED, at(9)) == Decision(cancelled.state, (), (refund(),))


def test_a_charge_answered_after_the_cancellation_is_reported_and_refunded() -> None:
    asked = decide(decide(None, PLACED, at(1)).state, RESERVED, at(2)).state
    cancelled = decide(asked, CANCELLED, at(3))
    assert cancelled.effects == () and cancelled.events == (), "the answer is not known yet"
    late = on_charge_result(cancelled.state, OK, at(4))
    assert [type(e) for e in late.events] == [PaymentSucceeded]
    assert late.effects == (refund(),)
    # the charge's trigger, redelivered, re-emits the whole chain
    assert decide(late.state, RESERVED, at(9)) == Decision(late.state, late.events, late.effects)
    assert decide(late.state, CANCELLED, at(9)) == Decision(late.state)


def test_a_failing_refund_is_retried_with_backoff_then_given_up() -> None:
    state = decide(charged(), CANCELLED, at(4)).state
    second = on_refund_result(state, RefundOutcome(ok=False, reason="busy", attempt=1), at(5))
    assert second.effects == (refund(2, at(5).now + timedelta(seconds=2)),) and second.events == ()
    third = on_refund_result(second.state, RefundOutcome(ok=False, reason="busy"), at(8))
    assert third.effects == (refund(3, at(8).now + timedelta(seconds=3)),), "capped"
    assert payments.pending_effects(third.state) == third.effects
    given_up = on_refund_result(third.state, RefundOutcome(ok=False, reason="provider down"), at(12))
    assert given_up.events == (
        PaymentRefundFailed(
            order_id="o-1", payment_id="p-1", amount_cents=500, reason="provider down", attempts=3, failed_at=at(12).now
        ),
    )
    assert given_up.effects == () and payments.pending_effects(given_up.state) == ()
    assert decide(given_up.state, CANCELLED, at(20)).events == given_up.events


def test_an_answer_to_an_old_refund_attempt_changes_nothing() -> None:
    state = decide(charged(), CANCELLED, at(4)).state
    second = on_refund_result(state, RefundOutcome(ok=False, attempt=1), at(5))
    stale = on_refund_result(second.state, RefundOutcome(ok=True, attempt=1), at(6))
    assert stale == Decision(second.state, (), second.effects)
    assert on_refund_result(None, RefundOutcome(ok=True), at(6)) == Decision(None)
    assert on_charge_result(None, OK, at(6)) == Decision(None)


def test_a_refund_answer_without_a_refund_pending_changes_nothing() -> None:
    state = charged()
    assert on_refund_result(state, RefundOutcome(ok=True), at(9)) == Decision(state)


def test_other_messages_leave_the_state_alone() -> None:
    state = charged()
    assert decide(state, OrderConfirmed(order_id="o-1", payment_id="p-1", confirmed_at=T0), at(9)) == Decision(state)


def test_state_survives_json() -> None:
    state = on_refund_result(decide(charged(), CANCELLED, at(4)).state, RefundOutcome(ok=False), at(5)).state
    assert state is not None and state.refund_retry_at is not None
    assert PaymentState.from_json(json.loads(json.dumps(state.to_json()))) == state


DOWN = ChargeOutcome(ok=False, reason="payment provider unavailable (503)", unavailable=True)


def parked() -> PaymentState:
    asked = decide(decide(None, PLACED, at(1)).state, RESERVED, at(2)).state
    result = on_charge_result(asked, DOWN, at(3)).state
    assert result is not None
    return result


def test_a_charge_the_provider_did_not_take_is_parked_and_announced_once() -> None:
    asked = decide(decide(None, PLACED, at(1)).state, RESERVED, at(2)).state
    decision = on_charge_result(asked, DOWN, at(3))
    pending = PaymentPending(order_id="o-1", reason="payment provider unavailable (503)", pending_at=at(3).now)
    assert decision.events == (pending,) and decision.effects == ()
    assert payments.is_parked(decision.state) and payments.pending_effects(decision.state) == ()
    assert decide(decision.state, RESERVED, at(4)).events == (pending,), "a redelivered trigger re-announces it"

    retried = decide(decision.state, RetryPayment(order_id="o-1", requested_at=at(10).now), at(10))
    assert retried.effects == (CHARGE,) and not payments.is_parked(retried.state)
    again_down = on_charge_result(retried.state, DOWN, at(11))
    assert again_down.events == () and payments.is_parked(again_down.state), "announced once per order"
    back = on_charge_result(
        decide(again_down.state, RetryPayment(order_id="o-1", requested_at=at(20).now), at(20)).state, OK, at(21)
    )
    assert back.events == (PaymentSucceeded(order_id="o-1", payment_id="p-1", amount_cents=500, charged_at=at(21).now),)


def test_a_parked_charge_of_a_cancelled_order_is_dropped_with_nothing_to_refund() -> None:
    cancelled = decide(parked(), CANCELLED, at(30))
    assert cancelled.events == () and cancelled.effects == ()
    assert not payments.is_parked(cancelled.state)
    late = decide(cancelled.state, RetryPayment(order_id="o-1", requested_at=at(31).now), at(31))
    assert late.events == () and late.effects == (), "no charge for a cancelled order"


def test_a_retry_for_a_charge_that_is_not_parked_only_replays() -> None:
    done = charged()
    replay = decide(done, RetryPayment(order_id="o-1", requested_at=at(9).now), at(9))
    assert replay.state == done and replay.effects == ()
    assert [type(e) for e in replay.events] == [PaymentSucceeded]
    assert decide(None, RetryPayment(order_id="o-1", requested_at=at(9).now), at(9)).events == ()


# --- no charge after the deadline, by the records' own times ----------------------------------------------------

DEADLINE = PLACED.deadline_at
RESERVED_LATE = InventoryReserved(
    order_id="o-1", lines=(StockLine(sku="a", quantity=2),), reserved_at=DEADLINE + timedelta(milliseconds=1)
)


@pytest.mark.parametrize("first", ["placed", "reserved"])
def test_stock_reserved_after_the_deadline_is_not_charged(first: str) -> None:
    inputs = (PLACED, RESERVED_LATE) if first == "placed" else (RESERVED_LATE, PLACED)
    state = None
    for n, message in enumerate(inputs, start=1):
        decision = decide(state, message, at(n))
        assert decision.events == () and decision.effects == (), "no charge, nothing to say: the deadline cancels"
        state = decision.state
    assert state is not None and state.charge is ChargeStatus.EXPIRED
    assert not payments.is_parked(state) and payments.pending_effects(state) == ()
    assert decide(state, inputs[-1], at(9)) == Decision(state), "a redelivery asks for no charge either"
    cancelled = decide(state, CANCELLED, at(10))
    assert cancelled.events == () and cancelled.effects == (), "nothing was charged, so nothing is refunded"


def test_stock_reserved_by_the_deadline_is_charged_however_late_the_step_runs() -> None:
    on_time = InventoryReserved(order_id="o-1", lines=RESERVED.lines, reserved_at=DEADLINE)
    a_day_late = StepContext(now=DEADLINE + timedelta(days=1), config=CONFIG)
    asked = decide(decide(None, PLACED, a_day_late).state, on_time, a_day_late)
    assert asked.effects == (CHARGE,), "decided by the records' times, not the clock: a replay decides the same"


def test_a_parked_charge_is_not_retried_after_the_deadline() -> None:
    late = decide(parked(), RetryPayment(order_id="o-1", requested_at=DEADLINE + timedelta(seconds=1)), at(9))
    assert late.events == () and late.effects == ()
    assert late.state is not None and late.state.charge is ChargeStatus.EXPIRED and not payments.is_parked(late.state)
    pending = PaymentPending(order_id="o-1", reason="payment provider unavailable (503)", pending_at=at(3).now)
    assert decide(late.state, RESERVED, at(10)).events == (pending,), "a redelivered trigger still re-announces it"
    on_time = decide(parked(), RetryPayment(order_id="o-1", requested_at=DEADLINE), at(9))
    assert on_time.effects == (CHARGE,)


def test_a_charge_of_an_order_cancelled_meanwhile_is_refunded_whichever_comes_first() -> None:
    """The saga cancels an order whose charge landed late: payments refunds it, the cancellation before or after
    the charge's answer."""
    late = StepContext(now=DEADLINE + timedelta(seconds=1), config=CONFIG)
    answered_first = decide(on_charge_result(decide(decide(None, PLACED, at(1)).state, RESERVED, at(2)).state, OK,
                                             late).state, CANCELLED, late)  # fmt: skip
    assert [type(e) for e in answered_first.effects] == [RefundPayment]
    asked = decide(decide(None, PLACED, at(1)).state, RESERVED, at(2)).state
    cancelled_first = on_charge_result(decide(asked, CANCELLED, late).state, OK, late)
    assert [type(e) for e in cancelled_first.events] == [PaymentSucceeded]
    assert [type(e) for e in cancelled_first.effects] == [RefundPayment]
