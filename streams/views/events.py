"""What every read view folds and what a fold yields: an :class:`Event` in, :class:`Op` Redis writes out.

An event reaches the views as plain JSON values, with its id and its event time. Times in views are the events'
own ``*_at`` fields (epoch milliseconds): no processing time, so a rebuild is identical to what the live
view service built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

TIME_FIELDS: Mapping[str, str] = {
    "OrderPlaced": "placed_at",
    "OrderRejected": "rejected_at",
    "OrderConfirmed": "confirmed_at",
    "OrderCancelled": "cancelled_at",
    "OrderCompensationFailed": "failed_at",
    "InventoryReserved": "reserved_at",
    "InventoryReservationFailed": "failed_at",
    "InventoryReleased": "released_at",
    "InventoryCommitted": "committed_at",
    "PaymentSucceeded": "charged_at",
    "PaymentFailed": "failed_at",
    "PaymentPending": "pending_at",
    "PaymentRefunded": "refunded_at",
    "PaymentRefundFailed": "failed_at",
    "StockLineReserved": "reserved_at",
    "StockLineRejected": "rejected_at",
    "StockLineReleased": "released_at",
    "StockLineCommitted": "committed_at",
    "StockAdded": "added_at",
    "NotificationSent": "sent_at",
    "UserRegistered": "registered_at",
    "UserProfileUpdated": "updated_at",
    "UserEmailChanged": "changed_at",
    "UserDeactivated": "deactivated_at",
    "UserReactivated": "reactivated_at",
    "UserLoggedIn": "logged_in_at",
    "UserOnboardingStarted": "started_at",
    "UserCommandRejected": "rejected_at",
}
"""Each record's event-time field; others use their first ``*_at`` field but ``deadline_at`` (future records)."""

HIDDEN_FIELDS = frozenset({"payment_token"})
"""Fields never copied into a view (secrets)."""


class CannotProject(ValueError):
    """A well-formed event the views cannot apply (a field it needs is missing); it is dead-lettered."""


@dataclass(frozen=True)
class Event:
    """A decoded message as the projection sees it: plain JSON values, times as epoch milliseconds."""

    record: str
    value: Mapping[str, Any]
    event_id: str
    """The envelope's ``ce_id``, or ``topic:partition:offset`` for a message without an envelope."""
    at: int
    """Event time (epoch ms) from the record's own time field."""
    service: str = ""
    """The producing service: the last segment of ``ce_source``."""
    causation_id: str = ""
    """The envelope's ``ce_causationid`` ("" without one): for a user event, the command it answers."""


def to_millis(moment: datetime) -> int:
    """Epoch milliseconds of an aware (or UTC-naive) datetime, exactly."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def plain(value: Any) -> Any:
    """A JSON-ready copy of a decoded Avro value: datetimes as epoch ms, bytes as hex, decimals as text."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return to_millis(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Decimal):
        return str(value)
    return value


def time_field(record: str, value: Mapping[str, Any]) -> str | None:
    """The field holding ``record``'s event time, if it has one."""
    known = TIME_FIELDS.get(record)
    if known is not None and known in value:
        return known
    return next(
        (name for name, v in value.items() if name.endswith("_at") and name != "deadline_at" and v is not None),
        None,
    )


def service_name(source: str | None) -> str:
    """``/order-pipeline/inventory`` → ``inventory``."""
    return (source or "").rstrip("/").rsplit("/", 1)[-1]


def make_event(
    record: str,
    value: Mapping[str, Any],
    *,
    event_id: str | None,
    position: str,
    source: str | None,
    fallback_time_ms: int,
    causation_id: str | None = None,
) -> Event:
    """Normalise a decoded record: plain values, its id (``position`` when no envelope), its event time."""
    data = plain(value)
    field = time_field(record, data)
    at = data.get(field) if field else None
    return Event(
        record=record,
        value=data,
        event_id=event_id or position,
        at=at if isinstance(at, int) else fallback_time_ms,
        service=service_name(source),
        causation_id=causation_id or "",
    )


def required_str(event: Event, name: str) -> str:
    """``event``'s non-empty text field ``name``, or :class:`CannotProject`."""
    value = event.value.get(name)
    if not isinstance(value, str) or not value:
        raise CannotProject(f"{event.record} has no {name!r}; it cannot be placed in a view")
    return value


@dataclass(frozen=True)
class Op:
    """One Redis write: ``command key *args``; a list of them runs in one MULTI/EXEC."""

    command: str
    key: str
    args: tuple[str | int, ...] = ()


def canonical_json(value: Any) -> str:
    """One byte-exact JSON form per value, so equal views are equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
