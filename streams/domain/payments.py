"""Payments, keyed by order id: one charge per order once its stock is reserved; refunds for cancelled orders.

The step never calls the provider: it returns effects (:class:`ChargePayment`, :class:`RefundPayment`) and
the edge feeds the provider's answers back through :func:`on_charge_result` and :func:`on_refund_result`.

* OrderPlaced (amount, currency, payment method, token and deadline) and InventoryReserved come from two topics
  in either order; the charge is asked for once both are known, unless the order was cancelled by then.
* No charge after the deadline, when the records show it: stock reserved after the order's deadline
  (``InventoryReserved.reserved_at`` > ``OrderPlaced.deadline_at``), or a parked charge asked for again after it
  (``RetryPayment.requested_at``), is not charged (EXPIRED, nothing emitted): the saga's deadline cancels the
  order with nothing to refund. Deciding by the records' own times, not by the clock, a replay decides the same
  (a charge made before a crash is asked for again, with its idempotency key, never forgotten). A charge that
  still lands after the deadline cancels the order (see :mod:`streams.domain.orders`) and is refunded.
* At most one ChargePayment per order, always with ``idempotency_key = order_id``: repeating it (a replay,
  a crash before the answer was recorded) makes the provider answer what it answered the first time.
* Every successful charge of a cancelled order is refunded, also when the cancellation overtook the charge
  (the success is still reported as PaymentSucceeded, and the refund follows). A failed refund is retried
  with exponential backoff (``RefundPayment.retry_at``) up to ``max_refund_attempts``, then
  PaymentRefundFailed tells the saga the order needs a person.
* :func:`pending_effects` lists the effect still waiting for an answer, so the edge can re-drive it after
  a restart.
* A charge the provider did not take (it is down, or the edge's circuit breaker is open) is **parked**: the
  charge becomes UNAVAILABLE and PaymentPending says so (once). RetryPayment, from the payments worker's timer
  once the provider looks available again, asks for the charge again; a cancellation meanwhile (the saga's
  deadline) ends it with nothing to refund, since nothing was charged.

Redelivery: each input kind is applied once (OrderPlaced, InventoryReserved, OrderCancelled). Applied again,
it changes nothing and re-emits what its chain produced so far: the ChargePayment effect while the charge is
unanswered, then the PaymentSucceeded/PaymentFailed it led to (and likewise for the refund chain). An answer
of the provider that does not match the waiting request (a duplicate, an old attempt) is treated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from streams.domain.core import (
    ChargeOutcome,
    ChargePayment,
    Decision,
    Effect,
    RefundOutcome,
    RefundPayment,
    StepContext,
)
from streams.domain.messages import (
    InventoryReserved,
    JsonState,
    Message,
    OrderCancelled,
    OrderPlaced,
    PaymentFailed,
    PaymentPending,
    PaymentRefunded,
    PaymentRefundFailed,
    PaymentSucceeded,
    RetryPayment,
)

__all__ = [
    "HANDLES",
    "ChargeOutcome",
    "ChargePayment",
    "ChargeStatus",
    "PaymentState",
    "RefundOutcome",
    "RefundPayment",
    "RefundStatus",
    "decide",
    "on_charge_result",
    "on_inventory_reserved",
    "on_order_cancelled",
    "on_order_placed",
    "is_parked",
    "on_refund_result",
    "on_retry_payment",
    "pending_effects",
]

HANDLES = frozenset({"OrderPlaced", "InventoryReserved", "OrderCancelled", "RetryPayment"})

CHARGE_RESULT = "charge_result"
"""``refund_trigger`` when the charge's own answer found the order cancelled."""


class ChargeStatus(StrEnum):
    NONE = "NONE"
    REQUESTED = "REQUESTED"
    UNAVAILABLE = "UNAVAILABLE"
    """Parked: the provider did not take the charge; RetryPayment asks again."""
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    """Not charged: the stock was reserved, or the parked charge asked for again, after the order's deadline."""


class RefundStatus(StrEnum):
    NONE = "NONE"
    PENDING = "PENDING"
    REFUNDED = "REFUNDED"
    FAILED = "FAILED"


@dataclass(frozen=True, kw_only=True)
class PaymentState(JsonState):
    """One order's payment: what to charge, the charge, and its refund."""

    order_id: str
    placed: bool = False
    amount_cents: int = 0
    currency: str = ""
    payment_method: str = ""
    payment_token: str = ""
    deadline_at: datetime | None = None
    """The order's deadline (OrderPlaced): no charge is asked for after it."""
    stock_reserved: bool = False
    reserved_at: datetime | None = None
    """When the order's stock was reserved (InventoryReserved)."""
    cancelled: bool = False
    cancel_reason: str | None = None
    charge: ChargeStatus = ChargeStatus.NONE
    charge_trigger: str | None = None
    """Record name of the input that asked for the charge (its redelivery re-emits the charge chain)."""
    payment_id: str | None = None
    charge_result: PaymentSucceeded | PaymentFailed | None = None
    pending: PaymentPending | None = None
    """The PaymentPending emitted when the charge was first parked (re-emitted on redelivery)."""
    refund: RefundStatus = RefundStatus.NONE
    refund_trigger: str | None = None
    """``OrderCancelled``, or :data:`CHARGE_RESULT` when a late successful charge started the refund."""
    refund_attempt: int = 0
    refund_retry_at: datetime | None = None
    refund_result: PaymentRefunded | PaymentRefundFailed | None = None


def decide(state: PaymentState | None, message: Message, ctx: StepContext) -> Decision[PaymentState]:
    """Apply one event; effects in the decision are for the edge to run."""
    match message:
        case OrderPlaced():
            return on_order_placed(state, message, ctx)
        case InventoryReserved():
            return on_inventory_reserved(state, message, ctx)
        case OrderCancelled():
            return on_order_cancelled(state, message, ctx)
        case RetryPayment():
            return on_retry_payment(state, message, ctx)
    return Decision(state)


def on_order_placed(state: PaymentState | None, event: OrderPlaced, ctx: StepContext) -> Decision[PaymentState]:
    """Learn what to charge and how; charge now if the stock is already reserved."""
    if state is not None and state.placed:
        return _replay(state, "OrderPlaced")
    state = replace(
        state or PaymentState(order_id=event.order_id),
        placed=True,
        amount_cents=event.total_cents,
        currency=event.currency,
        payment_method=event.payment_method,
        payment_token=event.payment_token,
        deadline_at=event.deadline_at,
    )
    return _maybe_charge(state, "OrderPlaced")


def on_inventory_reserved(
    state: PaymentState | None, event: InventoryReserved, ctx: StepContext
) -> Decision[PaymentState]:
    """Stock is held: time to charge (once the order's amount is known)."""
    if state is not None and state.stock_reserved:
        return _replay(state, "InventoryReserved")
    state = replace(state or PaymentState(order_id=event.order_id), stock_reserved=True, reserved_at=event.reserved_at)
    return _maybe_charge(state, "InventoryReserved")


def on_order_cancelled(state: PaymentState | None, event: OrderCancelled, ctx: StepContext) -> Decision[PaymentState]:
    """No charge from now on; refund a charge already taken (one still in flight is refunded when answered)."""
    if state is not None and state.cancelled:
        return _replay(state, "OrderCancelled")
    state = replace(state or PaymentState(order_id=event.order_id), cancelled=True, cancel_reason=event.reason)
    if state.charge is ChargeStatus.SUCCEEDED:
        return _start_refund(state, "OrderCancelled", ())
    return Decision(state)


def on_charge_result(state: PaymentState | None, outcome: ChargeOutcome, ctx: StepContext) -> Decision[PaymentState]:
    """Record the provider's answer to the charge; a success for a cancelled order is refunded at once."""
    if state is None or state.charge is not ChargeStatus.REQUESTED:
        return _replay_charge(state) if state is not None else Decision(state)
    if outcome.unavailable:
        state = replace(state, charge=ChargeStatus.UNAVAILABLE)
        if state.cancelled or state.pending is not None:
            return Decision(state)  # announced once; a cancelled order needs no charge any more
        pending = PaymentPending(order_id=state.order_id, reason=outcome.reason or "provider unavailable",
                                 pending_at=ctx.now)  # fmt: skip
        return Decision(replace(state, pending=pending), (pending,))
    if not outcome.ok:
        failed = PaymentFailed(order_id=state.order_id, reason=outcome.reason or "charge declined", failed_at=ctx.now)
        return Decision(replace(state, charge=ChargeStatus.FAILED, charge_result=failed), (failed,))
    if not outcome.payment_id:
        raise ValueError(f"successful charge of {state.order_id} without a payment id")
    succeeded = PaymentSucceeded(
        order_id=state.order_id, payment_id=outcome.payment_id, amount_cents=state.amount_cents, charged_at=ctx.now
    )
    state = replace(state, charge=ChargeStatus.SUCCEEDED, payment_id=outcome.payment_id, charge_result=succeeded)
    if state.cancelled:
        return _start_refund(state, CHARGE_RESULT, (succeeded,))
    return Decision(state, (succeeded,))


def on_retry_payment(state: PaymentState | None, command: RetryPayment, ctx: StepContext) -> Decision[PaymentState]:
    """Ask for a parked charge again (not after the deadline); anything else (a late or repeated retry) replays
    the charge chain."""
    if state is None:
        return Decision(state)
    if state.charge is ChargeStatus.UNAVAILABLE and not state.cancelled:
        if _past_deadline(state, command.requested_at):
            return Decision(replace(state, charge=ChargeStatus.EXPIRED))
        state = replace(state, charge=ChargeStatus.REQUESTED)
        return Decision(state, (), (_charge_effect(state),))
    if state.charge is ChargeStatus.UNAVAILABLE:
        return Decision(state)
    return _replay_charge(state)


def is_parked(state: PaymentState | None) -> bool:
    """The charge waits for the provider to come back (the edge's timer retries it)."""
    return state is not None and state.charge is ChargeStatus.UNAVAILABLE and not state.cancelled


def on_refund_result(state: PaymentState | None, outcome: RefundOutcome, ctx: StepContext) -> Decision[PaymentState]:
    """Record the provider's answer to a refund: done, retry later, or give up after the last attempt."""
    if state is None:
        return Decision(state)
    if state.refund is not RefundStatus.PENDING or outcome.attempt not in (None, state.refund_attempt):
        return Decision(state, *_refund_outputs(state))
    payment_id = state.payment_id or ""
    if outcome.ok:
        refunded = PaymentRefunded(
            order_id=state.order_id,
            payment_id=payment_id,
            amount_cents=state.amount_cents,
            reason=f"order cancelled: {state.cancel_reason}",
            refunded_at=ctx.now,
        )
        return Decision(replace(state, refund=RefundStatus.REFUNDED, refund_result=refunded), (refunded,))
    if state.refund_attempt < ctx.config.max_refund_attempts:
        attempt = state.refund_attempt + 1
        state = replace(state, refund_attempt=attempt, refund_retry_at=ctx.now + ctx.config.refund_delay(attempt))
        return Decision(state, (), (_refund_effect(state),))
    gave_up = PaymentRefundFailed(
        order_id=state.order_id,
        payment_id=payment_id,
        amount_cents=state.amount_cents,
        reason=outcome.reason or "refund failed",
        attempts=state.refund_attempt,
        failed_at=ctx.now,
    )
    return Decision(replace(state, refund=RefundStatus.FAILED, refund_result=gave_up), (gave_up,))


def pending_effects(state: PaymentState | None) -> tuple[Effect, ...]:
    """The effects still waiting for the provider's answer (to re-drive after a restart)."""
    if state is None:
        return ()
    effects: list[Effect] = []
    if state.charge is ChargeStatus.REQUESTED:
        effects.append(_charge_effect(state))
    if state.refund is RefundStatus.PENDING:
        effects.append(_refund_effect(state))
    return tuple(effects)


def _maybe_charge(state: PaymentState, trigger: str) -> Decision[PaymentState]:
    if state.placed and state.stock_reserved and not state.cancelled and state.charge is ChargeStatus.NONE:
        if state.reserved_at is not None and _past_deadline(state, state.reserved_at):
            return Decision(replace(state, charge=ChargeStatus.EXPIRED, charge_trigger=trigger))
        state = replace(state, charge=ChargeStatus.REQUESTED, charge_trigger=trigger)
        return Decision(state, (), (_charge_effect(state),))
    return Decision(state)


def _past_deadline(state: PaymentState, when: datetime) -> bool:
    """Whether ``when`` (a time a record carries) is after the order's deadline."""
    return state.deadline_at is not None and when > state.deadline_at


def _start_refund(state: PaymentState, trigger: str, events: tuple[Message, ...]) -> Decision[PaymentState]:
    state = replace(state, refund=RefundStatus.PENDING, refund_trigger=trigger, refund_attempt=1, refund_retry_at=None)
    return Decision(state, events, (_refund_effect(state),))


def _replay(state: PaymentState, trigger: str) -> Decision[PaymentState]:
    """A redelivered input: re-emit what the chain it started has produced so far."""
    if state.charge_trigger == trigger:
        return _replay_charge(state)
    if state.refund_trigger == trigger:
        return Decision(state, *_refund_outputs(state))
    return Decision(state)


def _replay_charge(state: PaymentState) -> Decision[PaymentState]:
    events: tuple[Message, ...] = ()
    effects: tuple[Effect, ...] = ()
    if state.charge is ChargeStatus.REQUESTED:
        effects = (_charge_effect(state),)
    elif state.charge_result is not None:
        events = (state.charge_result,)
    elif state.charge in (ChargeStatus.UNAVAILABLE, ChargeStatus.EXPIRED) and state.pending is not None:
        events = (state.pending,)
    if state.refund_trigger == CHARGE_RESULT:
        refund_events, refund_effects = _refund_outputs(state)
        events, effects = events + refund_events, effects + refund_effects
    return Decision(state, events, effects)


def _refund_outputs(state: PaymentState) -> tuple[tuple[Message, ...], tuple[Effect, ...]]:
    if state.refund is RefundStatus.PENDING:
        return (), (_refund_effect(state),)
    if state.refund_result is not None:
        return (state.refund_result,), ()
    return (), ()


def _charge_effect(state: PaymentState) -> ChargePayment:
    return ChargePayment(
        order_id=state.order_id,
        amount_cents=state.amount_cents,
        currency=state.currency,
        method=state.payment_method,
        token=state.payment_token,
        idempotency_key=state.order_id,
    )


def _refund_effect(state: PaymentState) -> RefundPayment:
    return RefundPayment(
        order_id=state.order_id,
        payment_id=state.payment_id or "",
        amount_cents=state.amount_cents,
        currency=state.currency,
        reason=f"order cancelled: {state.cancel_reason}",
        attempt=state.refund_attempt,
        retry_at=state.refund_retry_at,
        idempotency_key=state.order_id,
    )
