"""What every step takes and returns: the context of a step, its decision, and the payment effects.

A step is ``decide(state, message, ctx) -> Decision``: pure, deterministic given its arguments, and the only
clock it reads is ``ctx.now``. Effects are requests for I/O the edge performs (a charge, a refund, an e-mail);
their outcomes come back through ``payments.on_charge_result`` / ``payments.on_refund_result`` /
``deliveries.on_mail_result``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from streams.domain.mail import Mail, MailConfig
from streams.domain.messages import Message, utc_millis

S = TypeVar("S")


@dataclass(frozen=True)
class SagaConfig:
    """Tunables of the saga; the defaults suit a laptop run."""

    saga_timeout: timedelta = timedelta(minutes=5)
    """How long an order may stay unfinished before its deadline cancels it."""
    default_currency: str = "EUR"
    """Currency of an order whose command names none (PlaceOrder v1 names none)."""
    admission_hold: timedelta = timedelta(seconds=10)
    """How long admission holds an order for a user event it has not seen (see ``admission``)."""
    default_channel: str = "api"
    """``OrderPlaced.channel`` of orders admitted from ``orders.commands.v1``."""
    max_refund_attempts: int = 5
    """Refund tries before ``PaymentRefundFailed``; at least 1."""
    refund_backoff_base: timedelta = timedelta(seconds=1)
    """Delay before the second refund attempt; doubles per further attempt."""
    refund_backoff_cap: timedelta = timedelta(minutes=5)
    """Longest delay between two refund attempts."""

    def __post_init__(self) -> None:
        if self.max_refund_attempts < 1:
            raise ValueError("max_refund_attempts must be at least 1")

    def refund_delay(self, attempt: int) -> timedelta:
        """Wait before refund ``attempt`` (2, 3…): base, 2×base, 4×base… capped; attempt 1 runs at once."""
        if attempt <= 1:
            return timedelta(0)
        delay: timedelta = self.refund_backoff_base * 2 ** (attempt - 2)
        return min(self.refund_backoff_cap, delay)


@dataclass(frozen=True)
class UsersConfig:
    """Tunables of the user service (event sourcing and e-mail claims)."""

    snapshot_every: int = 5
    """A UserSnapshot is taken at registration and whenever the aggregate's version reaches a multiple of this;
    at least 1 (:meth:`snapshot_due`)."""
    remembered_inputs: int = 50
    """How many recently handled input ids (``StepContext.message_id``) each user remembers to spot a
    redelivery; at least 1."""
    remembered_claims: int = 50
    """How many recent claim answers each e-mail address remembers to answer a repeated claim alike."""
    default_preferences: tuple[tuple[str, str], ...] = (
        ("pref.language", "en"),
        ("pref.newsletter", "false"),
        ("pref.notifications", "email"),
    )
    """Profile attributes a new user gets unless they registered with them (see ``users.react``)."""

    def __post_init__(self) -> None:
        if self.snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        if self.remembered_inputs < 1 or self.remembered_claims < 1:
            raise ValueError("remembered_inputs and remembered_claims must be at least 1")

    def snapshot_due(self, version: int) -> bool:
        """Whether the event that brings a user to ``version`` is followed by a snapshot: at registration, so that
        every user has one and a reader knows where each history begins, and every ``snapshot_every`` events."""
        return version == 1 or version % self.snapshot_every == 0


@dataclass(frozen=True)
class StepContext:
    """What a step may know besides its state and message: the time, the config, the input's id.

    ``now`` is kept in UTC and cut to milliseconds (what Avro timestamps hold), so an event and its copy
    stored in a state are equal after a round trip through Kafka.
    """

    now: datetime
    config: SagaConfig = field(default_factory=SagaConfig)
    message_id: str = ""
    """The input's event id (``ce_id``), or "" if unknown; AddStock, which has no id of its own, and the user
    service use it to recognise a redelivery."""
    users: UsersConfig = field(default_factory=UsersConfig)
    """The user service's tunables; other steps ignore them."""
    mail: MailConfig = field(default_factory=MailConfig)
    """E-mail delivery's tunables; other steps ignore them."""
    trace: str = ""
    """Where the input's trace goes on (a W3C ``traceparent``), opaque to steps: one that puts work off keeps it,
    so the work, when done, continues the trace it belongs to (see :attr:`Decision.traces`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", utc_millis(self.now))


@dataclass(frozen=True, kw_only=True)
class ChargePayment:
    """Effect: charge the order's total once; the provider deduplicates by ``idempotency_key`` (the order id)."""

    order_id: str
    amount_cents: int
    currency: str
    method: str
    token: str
    idempotency_key: str


@dataclass(frozen=True, kw_only=True)
class RefundPayment:
    """Effect: refund a charge, try number ``attempt``; run it no earlier than ``retry_at`` (None: now).

    ``idempotency_key`` is the charge's own key (the order id): a provider refunds one charge at most once, so
    a repeated or retried refund never pays back twice.
    """

    order_id: str
    payment_id: str
    amount_cents: int
    currency: str
    reason: str
    attempt: int = 1
    retry_at: datetime | None = None
    idempotency_key: str


@dataclass(frozen=True, kw_only=True)
class SendMail:
    """Effect: hand one e-mail to the mail server (its Message-ID is the notice's, so a resend is the same mail)."""

    mail: Mail


Effect = ChargePayment | RefundPayment | SendMail


@dataclass(frozen=True)
class ChargeOutcome:
    """What the provider answered to a :class:`ChargePayment`."""

    ok: bool
    payment_id: str | None = None
    reason: str = ""
    unavailable: bool = False
    """The provider did not take the call (down, or its circuit breaker open): nothing was charged."""


@dataclass(frozen=True)
class RefundOutcome:
    """What the provider answered to a :class:`RefundPayment`; ``attempt`` (if given) says which try it answers,
    so a late answer to an old try is recognised as a duplicate."""

    ok: bool
    reason: str = ""
    attempt: int | None = None


@dataclass(frozen=True)
class MailOutcome:
    """What became of a :class:`SendMail`: taken by the mail server, or not (``reason``) after the edge's retries."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class Decision(Generic[S]):
    """A step's result: the new state (None: nothing to keep), events to send in order, effects to run."""

    state: S | None
    events: tuple[Message, ...] = ()
    effects: tuple[Effect, ...] = ()
    traces: tuple[str, ...] = ()
    """Per event (in order; missing or "": the input's), the trace it continues: an order held at admission and
    decided later continues its PlaceOrder's trace, not that of the user event that released it."""
    causes: tuple[str, ...] = ()
    """Per event (in order; missing or "": the input's id), the id of the input the event answers, its
    ``ce_causationid``: a registration or an e-mail change put off until its address is claimed ends in an event
    that names the command it finishes, not the claim's answer that let it finish (the command-status view,
    :mod:`streams.views.commands`, finds a command's outcome by it)."""
    refusal: str | None = None
    """Why the input is refused outright (None: it is not), for an input with no rejection record of its own (an
    AddStock whose SKU is not clean text): the edge dead-letters it with this reason, parking nothing. A refusing
    decision keeps the state it was given and emits nothing."""
