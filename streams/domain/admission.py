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

What is remembered stays small per message: the answers are keyed by what the command carries (its order
id and idempotency key), so the edge keeps each in a table entry of its own (:class:`streams.stores.
CustomerStore`) and loads only those the message names; ``outcomes`` and ``order_keys`` hold that subset
(or, kept whole in one value as the tests and the simulation do, everything). A PlaceOrder therefore costs
the same for a customer's ten-thousandth order as for their first. An input that decides held orders is
remembered with its answers among the customer's last :data:`REMEMBERED_RELEASES` such inputs: its events
can be unsent only while the batch it came in is handled (a batch is decided, made durable, then sent),
and a batch holds at most that many inputs (``PIPELINE_STREAM_BATCH_MAX``, 16 by default); an older one
redelivered finds its orders decided and its user version seen, and changes nothing.

Text: every string of a PlaceOrder (order id, user id, SKUs, payment method and token, idempotency key) must be
clean text (:mod:`streams.domain.text`: no control character, no unpaired surrogate). One that is not, as a
command published straight to Kafka may carry, is refused at once, before any hold, with OrderRejected and the
reason ``invalid_text: <field>`` (the field only: a rejection's reason is a metrics label, so its values stay
few). The refusal is remembered as any answer is, unless the unclean string is the user id, the order id or the
idempotency key: those name the customer's stored entries, so such a command is answered and nothing is kept (a
redelivery is answered again, with its own time), and no stored key ever holds such a string.
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
from streams.domain.text import is_clean_text, unclean_field

UNKNOWN_USER = "unknown_user"
USER_INACTIVE = "user_inactive"
INVALID_ORDER = "invalid_order"
INVALID_TEXT = "invalid_text"

ACTIVITY_EVENTS = frozenset({"UserProfileUpdated", "UserEmailChanged", "UserLoggedIn"})
"""User events that change nothing admission cares about but advance the user's version (which a held
order may be waiting for)."""
HANDLES = frozenset(
    {"PlaceOrder", "ReleaseHeldOrders", "UserRegistered", "UserDeactivated", "UserReactivated", *ACTIVITY_EVENTS}
)
REMEMBERED_RELEASES = 16
"""How many recent inputs that decided held orders a customer remembers, with their answers (see above)."""

Answer = OrderPlaced | OrderRejected


@dataclass(frozen=True, kw_only=True)
class HeldOrder:
    """A PlaceOrder waiting for the user event its sender saw, since ``held_at``."""

    command: PlaceOrder
    held_at: datetime
    trace: str = ""
    """The PlaceOrder's trace (:attr:`StepContext.trace` when held): deciding it later continues that trace."""


@dataclass(frozen=True, kw_only=True)
class Release:
    """An input (a user event or ReleaseHeldOrders, by its id) that decided held orders, and its answers."""

    message_id: str
    answers: tuple[Answer, ...]
    keys: tuple[str, ...] = ()
    """Each answer's idempotency key, in the same order (the edge also keeps each answer under its key)."""


@dataclass(frozen=True, kw_only=True)
class CustomerState(JsonState):
    """What admission knows of one customer: whether they may order, and the answers a message may repeat."""

    user_id: str
    known: bool = False
    active: bool = False
    user_version: int = 0
    """Version of the last user event applied; older or repeated ones are skipped."""
    outcomes: dict[str, Answer] = field(default_factory=dict)
    """Idempotency key → the event answered the first time (split state: those of the message's key and
    order id only)."""
    order_keys: dict[str, str] = field(default_factory=dict)
    """Order id → the idempotency key it was first asked with (split state: as ``outcomes``)."""
    held: tuple[HeldOrder, ...] = ()
    """Orders waiting for a user event, oldest first."""
    releases: tuple[Release, ...] = ()
    """The last :data:`REMEMBERED_RELEASES` inputs that decided held orders, oldest first: a redelivery of one
    re-emits its answers."""

    def hold_expires_at(self, hold: timedelta) -> datetime | None:
        """When the oldest held order is due to be decided anyway (None: nothing held)."""
        return self.held[0].held_at + hold if self.held else None


def decide(state: CustomerState | None, message: Message, ctx: StepContext) -> Decision[CustomerState]:
    """Route ``message`` to its handler; anything else leaves the state as it is."""
    if state is not None and ctx.message_id:
        for release in state.releases:
            if release.message_id == ctx.message_id:
                return Decision(state, release.answers)
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


def on_place_order(given: CustomerState | None, command: PlaceOrder, ctx: StepContext) -> Decision[CustomerState]:
    """Admit, refuse or hold an order; a repeat (same idempotency key or order id) gets the first answer again."""
    state = given or CustomerState(user_id=command.user_id)
    earlier = state.outcomes.get(command.idempotency_key)
    if earlier is None and (first_key := state.order_keys.get(command.order_id)) is not None:
        earlier = state.outcomes[first_key]
    if earlier is not None:
        return Decision(state, (earlier,))
    if any(h.command.idempotency_key == command.idempotency_key or h.command.order_id == command.order_id
           for h in state.held):  # fmt: skip
        return Decision(state)  # a repeat of an order still waiting: it is answered once, when decided
    if (unclean := unclean_field(command)) is not None:
        return _refuse_unclean(given, state, command, unclean.field, ctx)
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
    answers: list[Answer] = []
    keys: list[str] = []
    traces: list[str] = []
    waiting: list[HeldOrder] = []
    for held in state.held:
        if due(held):
            state, answer = _decided(state, held.command, ctx)
            answers.append(answer)
            keys.append(held.command.idempotency_key)
            traces.append(held.trace)
        else:
            waiting.append(held)
    state = replace(state, held=tuple(waiting))
    if answers and ctx.message_id:
        release = Release(message_id=ctx.message_id, answers=tuple(answers), keys=tuple(keys))
        state = replace(state, releases=(*state.releases, release)[-REMEMBERED_RELEASES:])
    return Decision(state, tuple(answers), traces=tuple(traces))


def _admit(state: CustomerState, command: PlaceOrder, ctx: StepContext) -> Decision[CustomerState]:
    """Decide ``command`` now: OrderPlaced, or OrderRejected with the reason; remembered for repeats."""
    new, answer = _decided(state, command, ctx)
    return Decision(new, (answer,))


def _refuse_unclean(
    given: CustomerState | None, state: CustomerState, command: PlaceOrder, field: str, ctx: StepContext
) -> Decision[CustomerState]:
    """Refuse a command holding a string that is not clean text; remembered only if its entries' names are clean."""
    reason = f"{INVALID_TEXT}: {field}"
    event = OrderRejected(order_id=command.order_id, user_id=command.user_id, reason=reason, rejected_at=ctx.now)
    if is_clean_text(command.user_id) and is_clean_text(command.order_id) and is_clean_text(command.idempotency_key):
        return Decision(_remembered(state, command, event), (event,))
    return Decision(given, (event,))


def _decided(state: CustomerState, command: PlaceOrder, ctx: StepContext) -> tuple[CustomerState, Answer]:
    reason = refusal(state, command)
    event: Answer
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
    return _remembered(state, command, event), event


def _remembered(state: CustomerState, command: PlaceOrder, answer: Answer) -> CustomerState:
    """``state`` keeping ``answer`` for the command's idempotency key and order id (a repeat gets it again)."""
    return replace(
        state,
        outcomes={**state.outcomes, command.idempotency_key: answer},
        order_keys={**state.order_keys, command.order_id: command.idempotency_key},
    )


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
