"""The order saga, keyed by order id: decides each order's single terminal outcome and keeps its story.

No orchestrator: the saga only listens. OrderPlaced starts it; InventoryReserved then PaymentSucceeded confirm
it; a failed reservation, a failed payment or the deadline cancel it, and inventory and payments compensate
on their own when they see ``OrderCancelled``. Their compensation reports (InventoryReleased, PaymentRefunded)
land in the timeline; a refund that failed for good turns the order COMPENSATION_FAILED, the state a person
must look at.

Events from different topics arrive in any order (a PaymentSucceeded may beat InventoryReserved, or even
OrderPlaced), so every step accepts its event in any state: it acts if the order is still open and only
records it otherwise. A PaymentSucceeded after cancellation is not a confirmation (payments refunds it).

The deadline: **a saga is never confirmed after its deadline; a charge that lands late is refunded.** The
decision is made by the times the events carry, never by the moment the saga happens to read them, so a
backlog of any size, or a replay of the log, decides the same:

* a PaymentSucceeded whose ``charged_at`` is after the order's ``deadline_at`` cancels the order as
  ``deadline_exceeded`` (payments refunds every charge of a cancelled order); one charged by the deadline
  confirms, however late the saga reads it;
* a PaymentSucceeded that arrives before OrderPlaced (so before the deadline is known) is recorded, and
  OrderPlaced decides it;
* OrderDeadlineReached (the orders worker's timer, ``observed_at`` at or after the deadline) cancels an order
  still open when the saga reads it; a charge that arrives after that, on time or not, finds the order
  cancelled and is refunded.

Payments, for its part, does not charge an order whose stock was reserved only after its deadline (see
:mod:`streams.domain.payments`); the deadline then cancels it with nothing to refund.

Redelivery: each record type happens at most once in an order's story, so a second message of a type the
saga already applied is a duplicate; it changes nothing and re-emits what the first one emitted
(``outputs``). The deadline timer may repeat OrderDeadlineReached: the repeats re-emit the same OrderCancelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    JsonState,
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
)

OUT_OF_STOCK = "out_of_stock"
PAYMENT_FAILED = "payment_failed"
DEADLINE_EXCEEDED = "deadline_exceeded"
REFUND_STEP = "refund_payment"

HANDLES = frozenset(
    {
        "OrderPlaced",
        "InventoryReserved",
        "InventoryReservationFailed",
        "PaymentSucceeded",
        "PaymentFailed",
        "OrderDeadlineReached",
        "InventoryReleased",
        "InventoryCommitted",
        "PaymentRefunded",
        "PaymentRefundFailed",
    }
)


class SagaStatus(StrEnum):
    """Where an order stands. PLACED and STOCK_RESERVED are open; the rest are final for the saga."""

    PLACED = "PLACED"
    STOCK_RESERVED = "STOCK_RESERVED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"

    @property
    def is_open(self) -> bool:
        return self in (SagaStatus.PLACED, SagaStatus.STOCK_RESERVED)


REJECTED = "REJECTED"
"""The status of an order admission refused (OrderRejected): no saga starts, so SagaStatus has no such member."""

TERMINAL_STATUSES: frozenset[str] = frozenset({*(s.value for s in SagaStatus if not s.is_open), REJECTED})
"""The order statuses (the strings the read views show) of an order whose outcome is decided: the saga's final
ones and REJECTED. A CANCELLED order may still turn COMPENSATION_FAILED if its refund fails for good."""


@dataclass(frozen=True, kw_only=True)
class TimelineEntry:
    """One step of an order's story, for the read side."""

    step: str
    at: datetime
    """When the event happened (its own timestamp)."""
    event_type: str
    detail: str


@dataclass(frozen=True, kw_only=True)
class OrderSaga(JsonState):
    """One order's saga. Order details stay empty until OrderPlaced arrives (other events may come first)."""

    order_id: str
    status: SagaStatus = SagaStatus.PLACED
    user_id: str = ""
    lines: tuple[OrderLine, ...] = ()
    total_cents: int = 0
    currency: str = ""
    placed_at: datetime | None = None
    deadline_at: datetime | None = None
    payment_id: str | None = None
    charged_at: datetime | None = None
    """When the charge PaymentSucceeded reports was taken (held until OrderPlaced tells the deadline)."""
    cancel_reason: str | None = None
    stock_reserved: bool = False
    stock_committed: bool = False
    inventory_released: bool = False
    payment_refunded: bool = False
    timeline: tuple[TimelineEntry, ...] = ()
    outputs: dict[str, tuple[Message, ...]] = field(default_factory=dict)
    """Record name of each event applied → what it emitted; a redelivery re-emits it."""


def pending_deadline(state: OrderSaga | None) -> datetime | None:
    """When the timer should cancel this order: its deadline while open, else None (drop it from the table)."""
    if state is None or not state.status.is_open:
        return None
    return state.deadline_at


def decide(state: OrderSaga | None, message: Message, ctx: StepContext) -> Decision[OrderSaga]:
    """Apply one event to the saga; a record type seen before is a duplicate and re-emits its events."""
    if message.record_name not in HANDLES:
        return Decision(state)
    if state is not None and (earlier := state.outputs.get(message.record_name)) is not None:
        return Decision(state, earlier)
    match message:
        case OrderPlaced():
            return on_order_placed(state, message, ctx)
        case InventoryReserved():
            return on_inventory_reserved(state, message, ctx)
        case InventoryReservationFailed():
            return on_inventory_reservation_failed(state, message, ctx)
        case PaymentSucceeded():
            return on_payment_succeeded(state, message, ctx)
        case PaymentFailed():
            return on_payment_failed(state, message, ctx)
        case OrderDeadlineReached():
            return on_order_deadline_reached(state, message, ctx)
        case InventoryReleased():
            return on_inventory_released(state, message, ctx)
        case InventoryCommitted():
            return on_inventory_committed(state, message, ctx)
        case PaymentRefunded():
            return on_payment_refunded(state, message, ctx)
        case PaymentRefundFailed():
            return on_payment_refund_failed(state, message, ctx)
    return Decision(state)  # pragma: no cover - HANDLES and the cases above list the same records


def on_order_placed(state: OrderSaga | None, event: OrderPlaced, ctx: StepContext) -> Decision[OrderSaga]:
    """Start the saga, or fill in the order's details if other events got here first (a charge that came
    first is decided now, against the deadline this event brings)."""
    current = state or OrderSaga(order_id=event.order_id)
    detail = (
        f"{len(event.lines)} line(s), {event.total_cents} {event.currency} cents, deadline {_iso(event.deadline_at)}"
    )
    if state is not None:
        detail += f" (arrived after the order was {state.status})"
    placed = _record(
        current,
        event,
        ctx,
        "placed",
        detail,
        user_id=event.user_id,
        lines=event.lines,
        total_cents=event.total_cents,
        currency=event.currency,
        placed_at=event.placed_at,
        deadline_at=event.deadline_at,
    )
    saga = placed.state
    if saga is None or not saga.status.is_open or saga.payment_id is None or saga.charged_at is None:
        return placed
    return _settle(saga, event, ctx, saga.payment_id, saga.charged_at)


def on_inventory_reserved(state: OrderSaga | None, event: InventoryReserved, ctx: StepContext) -> Decision[OrderSaga]:
    """Stock is held; now the saga waits for the payment (which payments starts on this same event)."""
    state = state or OrderSaga(order_id=event.order_id)
    if state.status is SagaStatus.PLACED:
        return _record(
            state,
            event,
            ctx,
            "stock_reserved",
            "every line reserved; waiting for payment",
            status=SagaStatus.STOCK_RESERVED,
            stock_reserved=True,
        )
    return _record(state, event, ctx, "stock_reserved", f"reserved while {state.status}", stock_reserved=True)


def on_inventory_reservation_failed(
    state: OrderSaga | None, event: InventoryReservationFailed, ctx: StepContext
) -> Decision[OrderSaga]:
    """Some line could not be reserved: cancel (inventory releases whatever it held)."""
    state = state or OrderSaga(order_id=event.order_id)
    short = ", ".join(f"{s.sku} {s.requested}>{s.available}" for s in event.failed_lines)
    if state.status.is_open:
        return _cancel(state, event, ctx, OUT_OF_STOCK, "stock_unavailable", f"{event.reason}: {short}")
    return _record(state, event, ctx, "stock_unavailable", f"after the order was {state.status}: {short}")


def on_payment_succeeded(state: OrderSaga | None, event: PaymentSucceeded, ctx: StepContext) -> Decision[OrderSaga]:
    """Payment is taken only after stock was reserved: an open order is confirmed if it was charged by its
    deadline and cancelled (``deadline_exceeded``) if not; a cancelled one is not confirmed (payments refunds)."""
    state = state or OrderSaga(order_id=event.order_id)
    if not state.status.is_open:
        return _record(
            state,
            event,
            ctx,
            "late_payment",
            f"charge {event.payment_id} arrived after the order was {state.status}; payments refunds it",
            payment_id=state.payment_id or event.payment_id,
            charged_at=state.charged_at or event.charged_at,
        )
    if state.deadline_at is None:
        detail = f"charge {event.payment_id} at {_iso(event.charged_at)}; the order's deadline is not known yet"
        return _record(
            state, event, ctx, "payment_received", detail, payment_id=event.payment_id, charged_at=event.charged_at
        )
    return _settle(state, event, ctx, event.payment_id, event.charged_at)


def on_payment_failed(state: OrderSaga | None, event: PaymentFailed, ctx: StepContext) -> Decision[OrderSaga]:
    """The charge failed: cancel (inventory releases the stock)."""
    state = state or OrderSaga(order_id=event.order_id)
    if state.status.is_open:
        return _cancel(state, event, ctx, PAYMENT_FAILED, "payment_failed", event.reason)
    return _record(state, event, ctx, "payment_failed", f"after the order was {state.status}: {event.reason}")


def on_order_deadline_reached(
    state: OrderSaga | None, event: OrderDeadlineReached, ctx: StepContext
) -> Decision[OrderSaga]:
    """Cancel an order still open at its deadline; a deadline for a finished order, or seen early, is ignored."""
    if state is None or state.deadline_at is None or not state.status.is_open or event.observed_at < state.deadline_at:
        return Decision(state)
    return _cancel(state, event, ctx, DEADLINE_EXCEEDED, "deadline", f"deadline {_iso(state.deadline_at)} passed")


def on_inventory_released(state: OrderSaga | None, event: InventoryReleased, ctx: StepContext) -> Decision[OrderSaga]:
    """Compensation progress: the stock is back."""
    if state is None:
        return Decision(state)
    released = ", ".join(f"{line.sku}×{line.quantity}" for line in event.lines) or "nothing was held"
    return _record(state, event, ctx, "inventory_released", released, inventory_released=True)


def on_inventory_committed(state: OrderSaga | None, event: InventoryCommitted, ctx: StepContext) -> Decision[OrderSaga]:
    """The confirmed order's stock is sold."""
    if state is None:
        return Decision(state)
    sold = ", ".join(f"{line.sku}×{line.quantity}" for line in event.lines)
    return _record(state, event, ctx, "stock_committed", sold, stock_committed=True)


def on_payment_refunded(state: OrderSaga | None, event: PaymentRefunded, ctx: StepContext) -> Decision[OrderSaga]:
    """Compensation progress: the money is back."""
    if state is None:
        return Decision(state)
    detail = f"charge {event.payment_id} of {event.amount_cents} cents refunded"
    return _record(state, event, ctx, "payment_refunded", detail, payment_refunded=True)


def on_payment_refund_failed(
    state: OrderSaga | None, event: PaymentRefundFailed, ctx: StepContext
) -> Decision[OrderSaga]:
    """The refund failed for good: the order needs a person (OrderCompensationFailed)."""
    if state is None:
        return Decision(state)
    detail = f"refund of {event.payment_id} failed after {event.attempts} attempt(s): {event.reason}"
    if state.status is not SagaStatus.CANCELLED:
        return _record(state, event, ctx, "refund_failed", detail)
    alert = OrderCompensationFailed(
        order_id=state.order_id,
        failed_step=REFUND_STEP,
        reason=event.reason,
        attempts=event.attempts,
        payment_id=event.payment_id,
        amount_cents=event.amount_cents,
        failed_at=ctx.now,
    )
    return _record(
        state, event, ctx, "compensation_failed", detail, events=(alert,), status=SagaStatus.COMPENSATION_FAILED
    )


def _settle(
    state: OrderSaga, event: Message, ctx: StepContext, payment_id: str, charged_at: datetime
) -> Decision[OrderSaga]:
    """Confirm an open order charged by its deadline; cancel one charged after it (payments refunds the charge)."""
    if state.deadline_at is not None and charged_at > state.deadline_at:
        detail = (
            f"charge {payment_id} at {_iso(charged_at)} landed after the deadline {_iso(state.deadline_at)};"
            " payments refunds it"
        )
        return _cancel(
            state, event, ctx, DEADLINE_EXCEEDED, "late_charge", detail, payment_id=payment_id, charged_at=charged_at
        )
    confirmed = OrderConfirmed(order_id=state.order_id, payment_id=payment_id, confirmed_at=ctx.now)
    return _record(
        state,
        event,
        ctx,
        "confirmed",
        f"charge {payment_id} at {_iso(charged_at)}",
        events=(confirmed,),
        status=SagaStatus.CONFIRMED,
        payment_id=payment_id,
        charged_at=charged_at,
    )


def _cancel(
    state: OrderSaga, event: Message, ctx: StepContext, reason: str, step: str, detail: str, **changes: Any
) -> Decision[OrderSaga]:
    cancelled = OrderCancelled(order_id=state.order_id, reason=reason, cancelled_at=ctx.now)
    return _record(
        state,
        event,
        ctx,
        step,
        f"cancelled ({reason}): {detail}",
        events=(cancelled,),
        status=SagaStatus.CANCELLED,
        cancel_reason=reason,
        **changes,
    )


def _record(
    state: OrderSaga,
    event: Message,
    ctx: StepContext,
    step: str,
    detail: str,
    *,
    events: tuple[Message, ...] = (),
    **changes: Any,
) -> Decision[OrderSaga]:
    """Apply ``changes``, add the timeline entry and remember what ``event`` emitted."""
    entry = TimelineEntry(step=step, at=event.occurred_at or ctx.now, event_type=event.record_name, detail=detail)
    new = replace(
        state,
        **changes,
        timeline=(*state.timeline, entry),
        outputs={**state.outputs, event.record_name: events},
    )
    return Decision(new, events)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")
