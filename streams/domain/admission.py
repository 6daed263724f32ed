"""Order admission, keyed by user id: turns a PlaceOrder into OrderPlaced or OrderRejected.

It keeps its own view of the customer (known, active) from the user events, so it never asks the user
service. User events and orders travel on different topics, so an order can reach admission before the user
event its sender already saw (a registration a moment ago, a deactivation). Such an order is **held**, not
refused: a PlaceOrder for a customer admission does not know yet, or one whose ``user_version`` is newer than
the customer version admission has seen, waits in the customer's state. Every user event re-examines the held
orders and decides those it unblocks, in the order they came. An order held longer than
``SagaConfig.admission_hold`` is decided with what admission knows by then (an unknown customer is refused);
the orders worker's timer asks for that with ReleaseHeldOrders.

Idempotency: the first answer to an idempotency key is remembered and a repeated command gets the
very same event back. A command reusing an order id under a new idempotency key is treated as a repeat of
that order too (its first event again, no second order): an order id names one order, and answering
``OrderRejected`` on that order's own stream would contradict the ``OrderPlaced`` already there. Order ids
are checked per customer only, so the gateway must make them globally unique (UUIDs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    JsonState,
    Message,
    OrderPlaced,
    OrderRejected,
    PlaceOrder,
    ReleaseHeldOrders,
    UserDeactivated,
    UserEmailChanged,
    UserLoggedIn,
    UserProfileUpdated,
    UserReactivated,
    UserRegistered,
)

UNKNOWN_USER = "unknown_user"
USER_INACTIVE = "user_inactive"
INVALID_ORDER = "invalid_order"

ACTIVITY_EVENTS = frozenset({"UserProfileUpdated", "UserEmailChanged", "UserLoggedIn"})
"""User events that change nothing admission cares about but advance the user's version (which a held
order may be waiting for)."""
HANDLES = frozenset(
    {"PlaceOrder", "ReleaseHeldOrders", "UserRegistered", "UserDeactivated", "UserReactivated", *ACTIVITY_EVENTS}
)


@dataclass(frozen=True, kw_only=True)
class HeldOrder:
    """A PlaceOrder waiting for the user event its sender saw, since ``held_at``."""

    command: PlaceOrder
    held_at: datetime
    trace: str = ""
    """The PlaceOrder's trace (:attr:`StepContext.trace` when held): deciding it later continues that trace."""


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
    held: tuple[HeldOrder, ...] = ()
    """Orders waiting for a user event, oldest first."""
    released_by: str = ""
    """The id of the last input that decided held orders (a user event or ReleaseHeldOrders)…"""
    released: tuple[str, ...] = ()
    """…and the idempotency keys it decided: a redelivery of that input re-emits their answers. Only the last
    such input can be redelivered with its events unsent (the edge sends an input's events before the next)."""

    def hold_expires_at(self, hold: timedelta) -> datetime | None:
        """When the oldest held order is due to be decided anyway (None: nothing held)."""
        return self.held[0].held_at + hold if self.held else None


def decide(state: CustomerState | None, message: Message, ctx: StepContext) -> Decision[CustomerState]:
    """Route ``message`` to its handler; anything else leaves the state as it is."""
    if state is not None and ctx.message_id and ctx.message_id == state.released_by:
        return Decision(state, tuple(state.outcomes[key] for key in state.released))
    match message:
        case PlaceOrder():
            return on_place_order(state, message, ctx)
        case ReleaseHeldOrders():
            return on_release_held_orders(state, message, ctx)
        case UserRegistered():
            return on_user_registered(state, message, ctx)
        case UserDeactivated():
            return on_user_deactivated(state, message, ctx)
        case UserReactivated():
            return on_user_reactivated(state, message, ctx)
        case UserProfileUpdated() | UserEmailChanged() | UserLoggedIn():
            active = state.active if state is not None and state.known else True
            return _apply_user_event(state, message.user_id, message.version, ctx, active=active)
    return Decision(state)


def on_place_order(state: CustomerState | None, command: PlaceOrder, ctx: StepContext) -> Decision[CustomerState]:
    """Admit, refuse or hold an order; a repeat (same idempotency key or order id) gets the first answer again."""
    state = state or CustomerState(user_id=command.user_id)
    earlier = state.outcomes.get(command.idempotency_key)
    if earlier is None and (first_key := state.order_keys.get(command.order_id)) is not None:
        earlier = state.outcomes[first_key]
    if earlier is not None:
        return Decision(state, (earlier,))
    if any(h.command.idempotency_key == command.idempotency_key or h.command.order_id == command.order_id
           for h in state.held):  # fmt: skip
        return Decision(state)  # a repeat of an order still waiting: it is answered once, when decided
    if waits_for_user(state, command):
        held = HeldOrder(command=command, held_at=ctx.now, trace=ctx.trace)
        return Decision(replace(state, held=(*state.held, held)))
    return _admit(state, command, ctx)


def waits_for_user(state: CustomerState, command: PlaceOrder) -> bool:
    """The order needs a user event admission has not seen yet: the registration, or the version its sender saw."""
    return not state.known or (command.user_version is not None and command.user_version > state.user_version)


def on_release_held_orders(
    state: CustomerState | None, command: ReleaseHeldOrders, ctx: StepContext
) -> Decision[CustomerState]:
    """Decide the held orders that waited ``admission_hold`` or longer, with what admission knows now."""
    if state is None or not state.held:
        return Decision(state)
    return _decide_held(state, ctx, due=lambda held: held.held_at + ctx.config.admission_hold <= ctx.now)


def _decide_held(state: CustomerState, ctx: StepContext, due: Callable[[HeldOrder], bool]) -> Decision[CustomerState]:
    events: list[Message] = []
    traces: list[str] = []
    waiting: list[HeldOrder] = []
    decided: list[str] = []
    for held in state.held:
        if due(held):
            decision = _admit(replace(state, held=()), held.command, ctx)
            assert decision.state is not None
            state = replace(decision.state, held=state.held)
            events.extend(decision.events)
            traces.extend(held.trace for _ in decision.events)
            decided.append(held.command.idempotency_key)
        else:
            waiting.append(held)
    state = replace(state, held=tuple(waiting))
    if decided:
        state = replace(state, released_by=ctx.message_id, released=tuple(decided))
    return Decision(state, tuple(events), traces=tuple(traces))


def _admit(state: CustomerState, command: PlaceOrder, ctx: StepContext) -> Decision[CustomerState]:
    """Decide ``command`` now: OrderPlaced, or OrderRejected with the reason; remembered for repeats."""
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
    return _apply_user_event(state, event.user_id, event.version, ctx, active=True)


def on_user_deactivated(
    state: CustomerState | None, event: UserDeactivated, ctx: StepContext
) -> Decision[CustomerState]:
    """The customer may no longer order."""
    return _apply_user_event(state, event.user_id, event.version, ctx, active=False)


def on_user_reactivated(
    state: CustomerState | None, event: UserReactivated, ctx: StepContext
) -> Decision[CustomerState]:
    """The customer may order again."""
    return _apply_user_event(state, event.user_id, event.version, ctx, active=True)


def _apply_user_event(
    state: CustomerState | None, user_id: str, version: int, ctx: StepContext, *, active: bool
) -> Decision[CustomerState]:
    """Any user event proves the user exists; versions skip redeliveries and stale events. Held orders the event
    unblocks are decided now."""
    state = state or CustomerState(user_id=user_id)
    if version <= state.user_version:
        return Decision(state)
    state = replace(state, known=True, active=active, user_version=version)
    return _decide_held(state, ctx, due=lambda held: not waits_for_user(state, held.command))
