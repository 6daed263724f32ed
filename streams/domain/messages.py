"""Every message of the saga and the user service: one frozen dataclass per Avro record, shaped exactly like it.

Class name == Avro short name, field name == Avro field name; times are aware UTC datetimes, nested records
frozen dataclasses, arrays tuples, maps dicts, optional fields ``X | None``. Fields a later schema version
added carry that version's default, so data written with an older version still loads.

:func:`from_record` takes a decoded Avro value (unknown fields ignored, so newer writers still load) and
:func:`to_record` gives back a value :class:`schemas.AvroCodec` encodes. States keep messages as JSON through
:func:`to_jsonable` / :func:`from_jsonable`, which also serve every state's ``to_json`` / ``from_json``.
Only the standard library is imported here: the domain knows nothing of Avro, Kafka or Faust.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, ClassVar, Self, TypeVar, Union, get_args, get_origin, get_type_hints

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_millis(when: datetime) -> datetime:
    """``when`` in UTC, cut to whole milliseconds: what an Avro timestamp-millis keeps."""
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: the domain only takes timezone-aware times")
    when = when.astimezone(UTC)
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


# --- base ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Message:
    """An Avro record a step reads or writes. ``KEY_FIELD`` names the field holding its Kafka key."""

    KEY_FIELD: ClassVar[str] = "order_id"
    TIME_FIELD: ClassVar[str] = ""

    @property
    def key(self) -> str:
        """The message key on its topic (order id, SKU, user id or e-mail address)."""
        return str(getattr(self, self.KEY_FIELD))

    @property
    def record_name(self) -> str:
        """The Avro short name, e.g. ``OrderPlaced``."""
        return type(self).__name__

    @property
    def occurred_at(self) -> datetime | None:
        """When the fact happened (or the command was sent), if the record says."""
        return getattr(self, self.TIME_FIELD) if self.TIME_FIELD else None


# --- orders -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OrderLine:
    """One ordered SKU with its quantity and unit price (cents)."""

    sku: str
    quantity: int
    unit_price_cents: int


@dataclass(frozen=True, kw_only=True)
class PaymentDetails:
    """How the customer pays: a method and an opaque provider token."""

    method: str
    token: str


@dataclass(frozen=True, kw_only=True)
class PlaceOrder(Message):
    """Command: a customer asks to place an order; keyed by user id (admission is per customer)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    payment: PaymentDetails
    idempotency_key: str
    requested_at: datetime
    user_version: int | None = None
    """Decide only once the customer is known at least at this version (v2; None: no such wish)."""


@dataclass(frozen=True, kw_only=True)
class ReleaseHeldOrders(Message):
    """Command from the orders worker's timer: decide the customer's held orders that are due."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "requested_at"
    user_id: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderPlaced(Message):
    """Event: an order was admitted and its saga started."""

    TIME_FIELD: ClassVar[str] = "placed_at"
    order_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    total_cents: int
    currency: str
    placed_at: datetime
    deadline_at: datetime
    channel: str = "api"
    note: str | None = None
    payment_method: str = ""
    payment_token: str = ""


@dataclass(frozen=True, kw_only=True)
class OrderRejected(Message):
    """Event: a PlaceOrder was refused before any saga step ran."""

    TIME_FIELD: ClassVar[str] = "rejected_at"
    order_id: str
    user_id: str
    reason: str
    rejected_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderConfirmed(Message):
    """Event: terminal; stock reserved and payment taken."""

    TIME_FIELD: ClassVar[str] = "confirmed_at"
    order_id: str
    payment_id: str
    confirmed_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderCancelled(Message):
    """Event: terminal; the saga failed or timed out, compensation follows."""

    TIME_FIELD: ClassVar[str] = "cancelled_at"
    order_id: str
    reason: str
    cancelled_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderCompensationFailed(Message):
    """Event: a cancelled order could not be compensated; it needs a person."""

    TIME_FIELD: ClassVar[str] = "failed_at"
    order_id: str
    failed_step: str
    reason: str
    attempts: int
    payment_id: str | None = None
    amount_cents: int | None = None
    failed_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderDeadlineReached(Message):
    """Event: the timer saw an unfinished order's deadline pass (may repeat)."""

    TIME_FIELD: ClassVar[str] = "observed_at"
    order_id: str
    deadline_at: datetime
    observed_at: datetime


# --- inventory ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StockLine:
    """A quantity of one SKU."""

    sku: str
    quantity: int


@dataclass(frozen=True, kw_only=True)
class ShortLine:
    """A SKU with less stock than an order asked for."""

    sku: str
    requested: int
    available: int


@dataclass(frozen=True, kw_only=True)
class AddStock(Message):
    """Command: put units of a SKU into available stock."""

    KEY_FIELD: ClassVar[str] = "sku"
    sku: str
    quantity: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class StockAdded(Message):
    """Event: units arrived for a SKU; carries the SKU's levels after the change."""

    KEY_FIELD: ClassVar[str] = "sku"
    TIME_FIELD: ClassVar[str] = "added_at"
    sku: str
    quantity: int
    reason: str
    available: int
    reserved: int
    sold: int
    stock_version: int
    added_at: datetime


@dataclass(frozen=True, kw_only=True)
class ReserveStock(Message):
    """Command: hold units of one SKU for one order."""

    KEY_FIELD: ClassVar[str] = "sku"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    sku: str
    quantity: int
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class ReleaseStock(Message):
    """Command: give back whatever one order holds of one SKU (possibly nothing yet)."""

    KEY_FIELD: ClassVar[str] = "sku"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    sku: str
    quantity: int
    reason: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class CommitStock(Message):
    """Command: one order's reservation of one SKU is sold."""

    KEY_FIELD: ClassVar[str] = "sku"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    sku: str
    quantity: int
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class StockLineReserved(Message):
    """Event: one SKU reserved units for one order."""

    TIME_FIELD: ClassVar[str] = "reserved_at"
    order_id: str
    sku: str
    quantity: int
    available: int
    reserved: int
    sold: int
    stock_version: int
    reserved_at: datetime


@dataclass(frozen=True, kw_only=True)
class StockLineRejected(Message):
    """Event: one SKU could not reserve units for one order."""

    TIME_FIELD: ClassVar[str] = "rejected_at"
    order_id: str
    sku: str
    requested: int
    available: int
    reserved: int
    sold: int
    stock_version: int
    reason: str
    rejected_at: datetime


@dataclass(frozen=True, kw_only=True)
class StockLineReleased(Message):
    """Event: one SKU released what one order held there (0 when it held nothing)."""

    TIME_FIELD: ClassVar[str] = "released_at"
    order_id: str
    sku: str
    quantity: int
    available: int
    reserved: int
    sold: int
    stock_version: int
    released_at: datetime


@dataclass(frozen=True, kw_only=True)
class StockLineCommitted(Message):
    """Event: one order's reservation of one SKU was sold."""

    TIME_FIELD: ClassVar[str] = "committed_at"
    order_id: str
    sku: str
    quantity: int
    available: int
    reserved: int
    sold: int
    stock_version: int
    committed_at: datetime


@dataclass(frozen=True, kw_only=True)
class InventoryReserved(Message):
    """Event: every line of an order is reserved."""

    TIME_FIELD: ClassVar[str] = "reserved_at"
    order_id: str
    lines: tuple[StockLine, ...]
    reserved_at: datetime


@dataclass(frozen=True, kw_only=True)
class InventoryReservationFailed(Message):
    """Event: the order could not be reserved as a whole; partial holds are being released."""

    TIME_FIELD: ClassVar[str] = "failed_at"
    order_id: str
    failed_lines: tuple[ShortLine, ...]
    reason: str
    failed_at: datetime


@dataclass(frozen=True, kw_only=True)
class InventoryReleased(Message):
    """Event: compensation done; everything the order held went back to available."""

    TIME_FIELD: ClassVar[str] = "released_at"
    order_id: str
    lines: tuple[StockLine, ...]
    reason: str
    released_at: datetime


@dataclass(frozen=True, kw_only=True)
class InventoryCommitted(Message):
    """Event: the order's reservation became sold stock."""

    TIME_FIELD: ClassVar[str] = "committed_at"
    order_id: str
    lines: tuple[StockLine, ...]
    committed_at: datetime


# --- payments -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PaymentSucceeded(Message):
    """Event: the order's total was charged."""

    TIME_FIELD: ClassVar[str] = "charged_at"
    order_id: str
    payment_id: str
    amount_cents: int
    charged_at: datetime


@dataclass(frozen=True, kw_only=True)
class PaymentFailed(Message):
    """Event: the charge was declined or could not be made."""

    TIME_FIELD: ClassVar[str] = "failed_at"
    order_id: str
    reason: str
    failed_at: datetime


@dataclass(frozen=True, kw_only=True)
class PaymentPending(Message):
    """Event: the provider is unavailable; the charge waits (nothing charged) and is retried later."""

    KEY_FIELD: ClassVar[str] = "order_id"
    TIME_FIELD: ClassVar[str] = "pending_at"
    order_id: str
    reason: str
    pending_at: datetime


@dataclass(frozen=True, kw_only=True)
class RetryPayment(Message):
    """Command from the payments worker's timer: try the order's parked charge again."""

    KEY_FIELD: ClassVar[str] = "order_id"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class PaymentRefunded(Message):
    """Event: compensation; the charge of a cancelled order was refunded."""

    TIME_FIELD: ClassVar[str] = "refunded_at"
    order_id: str
    payment_id: str
    amount_cents: int
    reason: str
    refunded_at: datetime


@dataclass(frozen=True, kw_only=True)
class PaymentRefundFailed(Message):
    """Event: the refund failed for good after every retry."""

    TIME_FIELD: ClassVar[str] = "failed_at"
    order_id: str
    payment_id: str
    amount_cents: int
    reason: str
    attempts: int
    failed_at: datetime


# --- notifications and users --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NotificationSent(Message):
    """Event: a notice was recorded for a user; keyed by user id."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "sent_at"
    notification_id: str
    user_id: str
    order_id: str | None = None
    kind: str
    message: str
    sent_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserRegistered(Message):
    """Event: a user exists (the admission step's view of customers starts here)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "registered_at"
    user_id: str
    version: int
    username: str
    email: str
    profile: dict[str, str] = field(default_factory=dict)
    registered_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserDeactivated(Message):
    """Event: a user may no longer order."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "deactivated_at"
    user_id: str
    version: int
    reason: str
    deactivated_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserReactivated(Message):
    """Event: a deactivated user may order again."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "reactivated_at"
    user_id: str
    version: int
    reactivated_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserProfileUpdated(Message):
    """Event: profile attributes of a user were set (merged into the profile; others stay)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "updated_at"
    user_id: str
    version: int
    changes: dict[str, str]
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserEmailChanged(Message):
    """Event: a user's e-mail address changed (the new one was claimed first)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "changed_at"
    user_id: str
    version: int
    old_email: str
    new_email: str
    changed_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserLoggedIn(Message):
    """Event: a user logged in."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "logged_in_at"
    user_id: str
    version: int
    logged_in_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserOnboardingStarted(Message):
    """Event: the welcome flow of a newly registered user started (a reaction; not part of the aggregate)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "started_at"
    user_id: str
    started_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserCommandRejected(Message):
    """Event: a user command was refused; the aggregate is unchanged."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "rejected_at"
    user_id: str
    command: str
    reason: str
    expected_version: int | None = None
    actual_version: int | None = None
    rejected_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserSnapshot(Message):
    """The user aggregate at ``version``; loading resumes with the events after it. v2 added the last four
    fields, so a v1 snapshot loads with them defaulted."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "taken_at"
    user_id: str
    version: int
    username: str
    email: str
    profile: dict[str, str] = field(default_factory=dict)
    active: bool
    taken_at: datetime
    registered_at: datetime | None = None
    deactivation_reason: str | None = None
    login_count: int = 0
    last_login_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class RegisterUser(Message):
    """Command: create a user; its address is claimed first (ClaimEmail), so it may still be refused."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    username: str
    email: str
    profile: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class UpdateUserProfile(Message):
    """Command: set profile attributes; ``expected_version`` None means no concurrency check."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    expected_version: int | None = None
    changes: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class ChangeEmail(Message):
    """Command: change a user's address; the new one is claimed first."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    expected_version: int | None = None
    new_email: str


@dataclass(frozen=True, kw_only=True)
class DeactivateUser(Message):
    """Command: deactivate a user."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    expected_version: int | None = None
    reason: str


@dataclass(frozen=True, kw_only=True)
class ReactivateUser(Message):
    """Command: reactivate a deactivated user."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    expected_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class RecordLogin(Message):
    """Command: record that a user logged in."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "logged_in_at"
    user_id: str
    logged_in_at: datetime


@dataclass(frozen=True, kw_only=True)
class ClaimEmail(Message):
    """Command: a user asks to own an address; keyed by the normalised address."""

    KEY_FIELD: ClassVar[str] = "email"
    TIME_FIELD: ClassVar[str] = "requested_at"
    email: str
    user_id: str
    request_id: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class ReleaseEmail(Message):
    """Command: a user gives up an address it owns under claim ``request_id``; keyed by the address."""

    KEY_FIELD: ClassVar[str] = "email"
    TIME_FIELD: ClassVar[str] = "requested_at"
    email: str
    user_id: str
    request_id: str
    reason: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class EmailClaimed(Message):
    """Answer: the address is the user's; keyed by user id."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "claimed_at"
    user_id: str
    email: str
    request_id: str
    claimed_at: datetime


@dataclass(frozen=True, kw_only=True)
class EmailClaimRefused(Message):
    """Answer: another user owns the address; keyed by the asking user's id."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "refused_at"
    user_id: str
    email: str
    request_id: str
    reason: str
    refused_at: datetime


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.__name__: cls
    for cls in (
        PlaceOrder,
        ReleaseHeldOrders,
        OrderPlaced,
        OrderRejected,
        OrderConfirmed,
        OrderCancelled,
        OrderCompensationFailed,
        OrderDeadlineReached,
        AddStock,
        StockAdded,
        ReserveStock,
        ReleaseStock,
        CommitStock,
        StockLineReserved,
        StockLineRejected,
        StockLineReleased,
        StockLineCommitted,
        InventoryReserved,
        InventoryReservationFailed,
        InventoryReleased,
        InventoryCommitted,
        PaymentSucceeded,
        PaymentFailed,
        PaymentPending,
        RetryPayment,
        PaymentRefunded,
        PaymentRefundFailed,
        NotificationSent,
        UserRegistered,
        UserDeactivated,
        UserReactivated,
        UserProfileUpdated,
        UserEmailChanged,
        UserLoggedIn,
        UserOnboardingStarted,
        UserCommandRejected,
        UserSnapshot,
        RegisterUser,
        UpdateUserProfile,
        ChangeEmail,
        DeactivateUser,
        ReactivateUser,
        RecordLogin,
        ClaimEmail,
        ReleaseEmail,
        EmailClaimed,
        EmailClaimRefused,
    )
}
"""Avro short name → message class, for every record a step reads or writes."""


class UnknownMessage(KeyError):
    """A record name no message class carries (a programming error at the edge: check ``HANDLES`` first)."""


def message_type(name: str) -> type[Message]:
    """The class of a record given by short (``OrderPlaced``) or full (``pipeline.orders.OrderPlaced``) name."""
    try:
        return MESSAGE_TYPES[name.rpartition(".")[2]]
    except KeyError:
        raise UnknownMessage(name) from None


def from_record(name: str, value: Mapping[str, Any]) -> Message:
    """The message of a decoded Avro value; fields the class does not know are ignored."""
    return _load_dataclass(message_type(name), value)


def to_record(message: Message) -> dict[str, Any]:
    """The Avro value of a message: lists for tuples, dicts for nested records, aware datetimes."""
    return _dump_fields(message, as_json=False)


# --- JSON for states ----------------------------------------------------------------------------------------

T = TypeVar("T")


def to_jsonable(obj: Any) -> Any:
    """A JSON-serialisable copy of a dataclass tree: ISO-8601 times, enum values, and every message wrapped
    as ``{"record": name, "value": fields}`` so it loads back as the right class."""
    return _dump(obj, as_json=True)


def from_jsonable(tp: type[T], value: Any) -> T:
    """Load ``value`` (made by :func:`to_jsonable`) as ``tp``; unknown fields ignored, missing ones defaulted."""
    loaded: T = _load(tp, value)
    return loaded


class JsonState:
    """Mixin for a frozen state dataclass: ``to_json`` / ``from_json`` for a Faust table holding JSON."""

    def to_json(self) -> dict[str, Any]:
        """The state as plain JSON values."""
        return _dump_fields(self, as_json=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The state ``to_json`` wrote."""
        return _load_dataclass(cls, data)


_SCALARS = frozenset({str, int, float, bool, type(None)})
"""Types stored as they are: most fields are, so they are recognised first, by exact type."""

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, computed once per class (``dataclasses.fields`` builds a tuple each call)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _dump_fields(obj: Any, *, as_json: bool) -> dict[str, Any]:
    return {name: _dump(getattr(obj, name), as_json=as_json) for name in _field_names(type(obj))}


def _dump(value: Any, *, as_json: bool) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, datetime):
        return value.isoformat() if as_json else value
    if isinstance(value, Enum):
        return _dump(value.value, as_json=as_json)
    if isinstance(value, Message) and as_json:
        return {"record": value.record_name, "value": _dump_fields(value, as_json=True)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dump_fields(value, as_json=as_json)
    if isinstance(value, tuple | list):
        return [_dump(v, as_json=as_json) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _dump(v, as_json=as_json) for k, v in value.items()}
    return value


_HINTS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _hints(cls: type) -> tuple[tuple[str, Any], ...]:
    """A dataclass's init fields with their resolved types, computed once per class."""
    hints = _HINTS.get(cls)
    if hints is None:
        resolved = get_type_hints(cls)
        hints = _HINTS[cls] = tuple((f.name, resolved[f.name]) for f in dataclasses.fields(cls) if f.init)
    return hints


def _load_dataclass(cls: type[T], value: Mapping[str, Any]) -> T:
    if not isinstance(value, Mapping):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {value!r}")
    kwargs = {name: _load(tp, value[name]) for name, tp in _hints(cls) if name in value}
    return cls(**kwargs)


def _load(tp: Any, value: Any) -> Any:
    if type(value) is tp and tp in _SCALARS and tp is not type(None):
        return value  # a plain field of its own type (``int`` and ``bool`` are told apart by the exact type)
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if len(options) < len(get_args(tp)):
                return None
            raise TypeError(f"None for non-optional {tp}")
        if all(isinstance(o, type) and issubclass(o, Message) for o in options):
            return _load_message(tuple(options), value)
        if len(options) != 1:
            raise TypeError(f"unsupported union {tp}")
        return _load(options[0], value)
    if origin is tuple:
        item = get_args(tp)[0]
        return tuple(_load(item, v) for v in value)
    if origin is dict:
        item = get_args(tp)[1]
        return {str(k): _load(item, v) for k, v in value.items()}
    if tp is datetime:
        return _load_datetime(value)
    if isinstance(tp, type):
        if issubclass(tp, Message):
            return _load_message((tp,), value)
        if issubclass(tp, Enum):
            return tp(value)
        if dataclasses.is_dataclass(tp):
            return _load_dataclass(tp, value)
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, tp):
            return value
    if tp is Any:
        return value
    raise TypeError(f"cannot load {value!r} as {tp}")


def _load_message(allowed: tuple[type[Message], ...], value: Any) -> Message:
    """A message nested in a state: ``{"record": name, "value": fields}``."""
    if not isinstance(value, Mapping) or "record" not in value:
        raise TypeError(f"expected a wrapped message, got {value!r}")
    cls = message_type(str(value["record"]))
    if not issubclass(cls, allowed):
        raise TypeError(f"{cls.__name__} is not one of {[a.__name__ for a in allowed]}")
    return _load_dataclass(cls, value["value"])


def _load_datetime(value: Any) -> datetime:
    """An aware UTC datetime from a datetime, epoch milliseconds or ISO-8601 text."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        return value.astimezone(UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        return EPOCH + timedelta(milliseconds=value)
    if isinstance(value, str):
        return _load_datetime(datetime.fromisoformat(value))
    raise TypeError(f"not a timestamp: {value!r}")
