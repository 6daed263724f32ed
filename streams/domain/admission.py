"""Order admission, keyed by user id: turns a PlaceOrder into OrderPlaced or OrderRejected.

It keeps its own view of the customer (known, active) from the user events, so it never asks the user
service. Idempotency: the first answer to an idempotency key is remembered and a repeated command gets the
very same event back. A command reusing an order id under a new idempotency key is treated as a repeat of
that order too (its first event again, no second order): an order id names one order, and answering
``OrderRejected`` on that order's own stream would contradict the ``OrderPlaced`` already there. Order ids
are checked per customer only, so the gateway must make them globally unique (UUIDs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    JsonState,
    Message,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
    UserDeactivated,
    UserReactivated,
    UserRegistered,
)

UNKNOWN_USER = "unknown_user"
USER_INACTIVE = "user_inactive"
INVALID_ORDER = "invalid_order"

HANDLES = frozenset({"PlaceOrder", "UserRegistered", "UserDeactivated", "UserReactivated"})


@dataclass(frozen=True, kw_only=True)
class CustomerState(JsonState):
    """What admission knows of one customer: whether they may order, and every order they asked for."""

    user_id: str
    known: bool = False
    active: bool = False
    user_version: int = 0
    """Version of the last user event applied; older or repeated ones are skipped."""
    outcomes: dict[str, OrderPlaced | OrderRejected] = field(default_factory=dict)
    """Idempotency key → the event answered the first time."""
    order_keys: dict[str, str] = field(default_factory=dict)
    """Order id → the idempotency key it was first asked with."""


def decide(state: CustomerState | None, message: Message, ctx: StepContext) -> Decision[CustomerState]:
    """Route ``message`` to its handler; anything else leaves the state as it is."""
    match message:
        case PlaceOrder():
            return on_place_order(state, message, ctx)
        case UserRegistered():
            return on_user_registered(state, message, ctx)
        case UserDeactivated():
            return on_user_deactivated(state, message, ctx)
        case UserReactivated():
            return on_user_reactivated(state, message, ctx)
    return Decision(state)


def on_place_order(state: CustomerState | None, command: PlaceOrder, ctx: StepContext) -> Decision[CustomerState]:
    """Admit or refuse an order; a repeat (same idempotency key or order id) gets the first answer again."""
    state = state or CustomerState(user_id=command.user_id)
    earlier = state.outcomes.get(command.idempotency_key)
    if earlier is None and (first_key := state.order_keys.get(command.order_id)) is not None:
        earlier = state.outcomes[first_key]
    if earlier is not None:
        return Decision(state, (earlier,))
    reason = refusal(state, command)
    event: OrderPlaced | OrderRejected
    if reason is not None:
        event = OrderRejected(order_id=command.order_id, user_id=command.user_id, reason=reason, rejected_at=ctx.now)
    else:
        event = OrderPlaced(
            order_id=command.order_id,
            user_id=command.user_id,
            lines=command.lines,
            total_cents=sum(line.quantity * line.unit_price_cents for line in command.lines),
            currency=ctx.config.default_currency,
            placed_at=ctx.now,
            deadline_at=ctx.now + ctx.config.saga_timeout,
            channel=ctx.config.default_channel,
            payment_method=command.payment.method,
            payment_token=command.payment.token,
        )
    new = replace(
        state,
        outcomes={**state.outcomes, command.idempotency_key: event},
        order_keys={**state.order_keys, command.order_id: command.idempotency_key},
    )
    return Decision(new, (event,))


def refusal(state: CustomerState, command: PlaceOrder) -> str | None:
    """Why ``command`` cannot be admitted, or None: unknown user, inactive user, then invalid lines."""
    if not state.known:
        return UNKNOWN_USER
    if not state.active:
        return USER_INACTIVE
    skus = [line.sku for line in command.lines]
    if (
        not command.lines
        or any(not line.sku or line.quantity <= 0 or line.unit_price_cents < 0 for line in command.lines)
        or len(set(skus)) != len(skus)
    ):
        return INVALID_ORDER
    return None


def on_user_registered(state: CustomerState | None, event: UserRegistered, ctx: StepContext) -> Decision[CustomerState]:
    """The customer exists and may order."""
    return _apply_user_event(state, event.user_id, event.version, active=True)


def on_user_deactivated(
    state: CustomerState | None, event: UserDeactivated, ctx: StepContext
) -> Decision[CustomerState]:
    """The customer may no longer order."""
    return _apply_user_event(state, event.user_id, event.version, active=False)


def on_user_reactivated(
    state: CustomerState | None, event: UserReactivated, ctx: StepContext
) -> Decision[CustomerState]:
    """The customer may order again."""
    return _apply_user_event(state, event.user_id, event.version, active=True)


def _apply_user_event(
    state: CustomerState | None, user_id: str, version: int, *, active: bool
) -> Decision[CustomerState]:
    """Any user event proves the user exists; versions skip redeliveries and stale events."""
    state = state or CustomerState(user_id=user_id)
    if version <= state.user_version:
        return Decision(state)
    return Decision(replace(state, known=True, active=active, user_version=version))
