"""Notifications, keyed by order id: one notice to the customer when their order ends, never two.

OrderPlaced tells whom to notify; the first terminal event (OrderConfirmed or OrderCancelled) produces one
NotificationSent, keyed by user id, with a deterministic ``notification_id`` (``<order id>:<kind>``) so a
consumer that delivers it (mail, push) can drop copies. Should a terminal event ever come before OrderPlaced,
it waits in the state and the notice goes out when OrderPlaced arrives.

Redelivery: the input that produced the notice re-emits the very same NotificationSent; others change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from streams.domain.core import Decision, StepContext
from streams.domain.messages import JsonState, Message, NotificationSent, OrderCancelled, OrderConfirmed, OrderPlaced

HANDLES = frozenset({"OrderPlaced", "OrderConfirmed", "OrderCancelled"})

ORDER_CONFIRMED = "order_confirmed"
ORDER_CANCELLED = "order_cancelled"

_REASONS = {
    "out_of_stock": "some items are out of stock",
    "payment_failed": "the payment did not go through",
    "deadline_exceeded": "it could not be completed in time",
}


@dataclass(frozen=True, kw_only=True)
class NoticeState(JsonState):
    """Whom to tell about one order, and what they were told."""

    order_id: str
    user_id: str | None = None
    waiting: OrderConfirmed | OrderCancelled | None = None
    """A terminal event that arrived before OrderPlaced."""
    sent: NotificationSent | None = None
    sent_by: str | None = None
    """Record name of the input that produced ``sent``."""


def decide(state: NoticeState | None, message: Message, ctx: StepContext) -> Decision[NoticeState]:
    """Apply one order event."""
    match message:
        case OrderPlaced():
            return on_order_placed(state, message, ctx)
        case OrderConfirmed() | OrderCancelled():
            return on_order_finished(state, message, ctx)
    return Decision(state)


def on_order_placed(state: NoticeState | None, event: OrderPlaced, ctx: StepContext) -> Decision[NoticeState]:
    """Remember the customer; send a notice that was waiting for them."""
    if state is not None and state.user_id is not None:
        return _replay(state, event)
    state = replace(state or NoticeState(order_id=event.order_id), user_id=event.user_id)
    if state.waiting is not None:
        return _notify(replace(state, waiting=None), event.user_id, state.waiting, event, ctx)
    return Decision(state)


def on_order_confirmed(state: NoticeState | None, event: OrderConfirmed, ctx: StepContext) -> Decision[NoticeState]:
    """Tell the customer their order is confirmed."""
    return on_order_finished(state, event, ctx)


def on_order_cancelled(state: NoticeState | None, event: OrderCancelled, ctx: StepContext) -> Decision[NoticeState]:
    """Tell the customer their order was cancelled, and why."""
    return on_order_finished(state, event, ctx)


def on_order_finished(
    state: NoticeState | None, event: OrderConfirmed | OrderCancelled, ctx: StepContext
) -> Decision[NoticeState]:
    """The first terminal event of an order is notified once."""
    if state is not None and (state.sent is not None or state.waiting is not None):
        return _replay(state, event)
    if state is None or state.user_id is None:
        return Decision(replace(state or NoticeState(order_id=event.order_id), waiting=event))
    return _notify(state, state.user_id, event, event, ctx)


def _notify(
    state: NoticeState, user_id: str, terminal: OrderConfirmed | OrderCancelled, trigger: Message, ctx: StepContext
) -> Decision[NoticeState]:
    if isinstance(terminal, OrderConfirmed):
        kind, text = ORDER_CONFIRMED, f"Your order {terminal.order_id} is confirmed."
    else:
        why = _REASONS.get(terminal.reason, terminal.reason)
        kind, text = ORDER_CANCELLED, f"Your order {terminal.order_id} was cancelled: {why}."
    notice = NotificationSent(
        notification_id=f"{terminal.order_id}:{kind}",
        user_id=user_id,
        order_id=terminal.order_id,
        kind=kind,
        message=text,
        sent_at=ctx.now,
    )
    return Decision(replace(state, sent=notice, sent_by=trigger.record_name), (notice,))


def _replay(state: NoticeState, event: Message) -> Decision[NoticeState]:
    if state.sent is not None and state.sent_by == event.record_name:
        return Decision(state, (state.sent,))
    return Decision(state)
