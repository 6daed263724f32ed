"""The query side's decisions, pure: an event and the views it touches before → the views after, as Redis ops.

Nothing here talks to Kafka or Redis. :mod:`consumers.projector` decodes a message into an :class:`Event`,
reads the :class:`Snapshot` that :func:`reads` names, calls :func:`project` and applies the returned
:class:`Op` list in one MULTI/EXEC. The key space is in :mod:`streams.views.keys`.

Why the views converge to the log whatever the interleaving of topics (a live projector and a rebuild read
the five topics in different orders, so each order view must not depend on it):

* An order view is a **fold of the set of its events**: the timeline holds one entry per distinct event id,
  sorted by event time, and every other field (status, placement data, payment, cancel reason, compensation)
  is recomputed from that timeline by :func:`summarize`. Applying the same event twice is a no-op; applying
  events in another order gives the same view.
* Status only moves forward: the derived status is the highest-ranked one any event implies
  (``PLACED`` < ``STOCK_RESERVED`` < ``PAYMENT_PENDING`` < ``CONFIRMED`` | ``CANCELLED`` | ``REJECTED`` <
  ``COMPENSATION_FAILED``),
  so a late ``OrderPlaced`` after ``OrderConfirmed`` changes nothing. Terminal states never revert: of two
  conflicting terminal events (a saga bug), the earliest by event time stays.
* The secondary views (a user's order summaries, needs-attention) are functions of the order view, rewritten
  in the same transaction whenever they change.
* Stock is applied only when the event's ``stock_version`` is newer than the view's, so it converges to the
  newest version whatever order the per-order inventory events and ``StockAdded`` arrive in (of several events
  reporting the same version, the earliest is kept).
* Notifications are keyed by user id, so one user's notices arrive in log order in every run; each
  ``notification_id`` is taken once.

Times in views are the events' own ``*_at`` fields (epoch milliseconds): no processing time, so a rebuild is
identical to what the live projector built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from streams.views.keys import (
    ATTENTION_KEY,
    REGISTERED_KEY,
    SKUS_KEY,
    USERNAMES_KEY,
    notification_ids_key,
    notifications_key,
    order_key,
    stock_key,
    user_email_key,
    user_key,
    user_order_summaries_key,
    user_orders_key,
    user_rejection_ids_key,
    user_rejections_key,
)

NOTIFICATIONS_KEPT = 100
"""How many notices a user's list keeps (the newest)."""
REJECTIONS_KEPT = 20
USER_RECORDS = frozenset(
    {
        "UserRegistered",
        "UserProfileUpdated",
        "UserEmailChanged",
        "UserDeactivated",
        "UserReactivated",
        "UserLoggedIn",
        "UserOnboardingStarted",
        "UserCommandRejected",
    }
)


# --- records ------------------------------------------------------------------------------------------------

STATUS_BY_RECORD: Mapping[str, str] = {
    "OrderPlaced": "PLACED",
    "InventoryReserved": "STOCK_RESERVED",
    "OrderConfirmed": "CONFIRMED",
    "OrderCancelled": "CANCELLED",
    "OrderRejected": "REJECTED",
    "OrderCompensationFailed": "COMPENSATION_FAILED",
    "PaymentPending": "PAYMENT_PENDING",
}
STATUS_RANK: Mapping[str, int] = {
    "PLACED": 1,
    "STOCK_RESERVED": 2,
    "PAYMENT_PENDING": 3,
    "CONFIRMED": 4,
    "CANCELLED": 4,
    "REJECTED": 4,
    "COMPENSATION_FAILED": 5,
}
TERMINAL_RANK = 4

SAGA_ORDER: tuple[str, ...] = (
    "OrderPlaced",
    "OrderRejected",
    "StockLineReserved",
    "StockLineRejected",
    "InventoryReserved",
    "InventoryReservationFailed",
    "PaymentPending",
    "PaymentSucceeded",
    "PaymentFailed",
    "OrderDeadlineReached",
    "StockLineCommitted",
    "InventoryCommitted",
    "OrderConfirmed",
    "StockLineReleased",
    "InventoryReleased",
    "PaymentRefunded",
    "PaymentRefundFailed",
    "OrderCancelled",
    "OrderCompensationFailed",
)
"""Tie-break of timeline entries with the same event time: the saga's natural order."""
_SAGA_INDEX = {name: i for i, name in enumerate(SAGA_ORDER)}

STOCK_LINE_RECORDS = frozenset({"StockLineReserved", "StockLineRejected", "StockLineReleased", "StockLineCommitted"})
STOCK_RECORDS = STOCK_LINE_RECORDS | {"StockAdded"}
STOCK_FIELDS = ("available", "reserved", "sold", "stock_version")

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

_PLACEMENT_FIELDS = ("user_id", "lines", "total_cents", "currency", "deadline_at", "channel", "note", "payment_method")


class CannotProject(ValueError):
    """A well-formed event the projector cannot apply (a field it needs is missing); it is dead-lettered."""


# --- events -------------------------------------------------------------------------------------------------


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
    )


def _required_str(event: Event, name: str) -> str:
    value = event.value.get(name)
    if not isinstance(value, str) or not value:
        raise CannotProject(f"{event.record} has no {name!r}; the projector cannot place it in a view")
    return value


# --- order view ---------------------------------------------------------------------------------------------


def timeline_entry(event: Event) -> dict[str, Any]:
    """One saga step: when, what, which service, and its detail (the event's fields but the id and time)."""
    skip = {"order_id", time_field(event.record, event.value), *HIDDEN_FIELDS}
    return {
        "at": event.at,
        "event": event.record,
        "service": event.service,
        "id": event.event_id,
        "detail": {k: v for k, v in event.value.items() if k not in skip},
    }


def _timeline_sort_key(entry: Mapping[str, Any]) -> tuple[int, int, str]:
    return (int(entry["at"]), _SAGA_INDEX.get(str(entry["event"]), len(SAGA_ORDER)), str(entry["id"]))


def apply_to_order(doc: Mapping[str, Any] | None, order_id: str, event: Event) -> dict[str, Any] | None:
    """The order view after ``event``, or None when it changes nothing (the event is already in it)."""
    timeline: list[dict[str, Any]] = list(doc.get("timeline", ())) if doc else []
    if any(entry["id"] == event.event_id for entry in timeline):
        return None
    timeline.append(timeline_entry(event))
    return summarize(order_id, timeline)


def _first(timeline: Sequence[Mapping[str, Any]], *records: str) -> Mapping[str, Any] | None:
    return next((e for e in timeline if e["event"] in records), None)


def _last(timeline: Sequence[Mapping[str, Any]], *records: str) -> Mapping[str, Any] | None:
    return next((e for e in reversed(timeline) if e["event"] in records), None)


def derive_status(timeline: Sequence[Mapping[str, Any]]) -> tuple[str | None, Mapping[str, Any] | None]:
    """The status the events imply and the entry that decided it (timeline in time order).

    The highest rank wins; among equal ranks the earliest event stays, so a terminal state never reverts.
    """
    best: tuple[str, Mapping[str, Any]] | None = None
    for entry in timeline:
        status = STATUS_BY_RECORD.get(str(entry["event"]))
        if status is not None and (best is None or STATUS_RANK[status] > STATUS_RANK[best[0]]):
            best = (status, entry)
    return (best[0], best[1]) if best else (None, None)


def summarize(order_id: str, timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole order view, recomputed from its timeline (which this sorts by event time)."""
    timeline.sort(key=_timeline_sort_key)
    status, decided_by = derive_status(timeline)
    placed = _first(timeline, "OrderPlaced")
    placement: Mapping[str, Any] = placed["detail"] if placed else {}
    rejected = _first(timeline, "OrderRejected")
    user_id = placement.get("user_id") or (rejected["detail"].get("user_id") if rejected else None)

    cancel_reason = None
    if status in ("CANCELLED", "REJECTED") and decided_by is not None:
        cancel_reason = decided_by["detail"].get("reason")
    elif status == "COMPENSATION_FAILED" and (cancelled := _first(timeline, "OrderCancelled")) is not None:
        cancel_reason = cancelled["detail"].get("reason")

    charged = [e for e in timeline if e["event"] == "PaymentSucceeded"]
    confirmed = _first(timeline, "OrderConfirmed")
    payment_id = (charged[0]["detail"].get("payment_id") if charged else None) or (
        confirmed["detail"].get("payment_id") if confirmed else None
    )
    refunds = [e for e in timeline if e["event"] == "PaymentRefunded"]

    compensation = None
    failure = _last(timeline, "OrderCompensationFailed")
    if failure is not None:
        resolved_by = next((e for e in refunds if e["at"] >= failure["at"]), None)
        compensation = {
            **failure["detail"],
            "failed_at": failure["at"],
            "event_id": failure["id"],
            "resolved_at": resolved_by["at"] if resolved_by else None,
            "resolved_by": resolved_by["id"] if resolved_by else None,
        }

    return {
        "order_id": order_id,
        "status": status,
        "user_id": user_id,
        **{name: placement.get(name) for name in _PLACEMENT_FIELDS if name != "user_id"},
        "placed_at": placed["at"] if placed else None,
        "cancel_reason": cancel_reason,
        "payment_id": payment_id,
        "charged_cents": sum(int(e["detail"].get("amount_cents") or 0) for e in charged),
        "refunded_cents": sum(int(e["detail"].get("amount_cents") or 0) for e in refunds),
        "terminal_at": decided_by["at"] if decided_by and STATUS_RANK[str(status)] >= TERMINAL_RANK else None,
        "updated_at": max(int(e["at"]) for e in timeline),
        "compensation": compensation,
        "needs_attention": compensation is not None and compensation["resolved_at"] is None,
        "timeline": timeline,
    }


def user_summary(doc: Mapping[str, Any]) -> tuple[str, int, dict[str, Any]] | None:
    """(user id, score, summary) of an order for its user's recent-orders view; None before the user is known."""
    user_id = doc.get("user_id")
    if not user_id:
        return None
    timeline = doc.get("timeline") or ()
    since = doc.get("placed_at")
    if since is None:
        since = min((int(e["at"]) for e in timeline), default=0)
    summary = {
        "order_id": doc["order_id"],
        "status": doc.get("status"),
        "total_cents": doc.get("total_cents"),
        "currency": doc.get("currency"),
        "placed_at": since,
        "updated_at": doc.get("updated_at"),
        "cancel_reason": doc.get("cancel_reason"),
    }
    return str(user_id), int(since), summary


def attention_entry(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The needs-attention record of an order whose compensation failed and is not yet refunded, else None."""
    if not doc.get("needs_attention"):
        return None
    return {**dict(doc["compensation"]), "order_id": doc["order_id"], "order": dict(doc)}


# --- stock view ---------------------------------------------------------------------------------------------


def apply_to_stock(current: Mapping[str, str] | None, event: Event) -> dict[str, str] | None:
    """The SKU's stock after ``event``, or None unless its ``stock_version`` is newer than the view's.

    Several events can report one version (a rejected line reports the stock it found, unchanged); of those
    the earliest (event time, then id) is kept, so the view does not depend on which one arrives first.
    """
    sku = _required_str(event, "sku")
    counts: dict[str, int] = {}
    for name in STOCK_FIELDS:
        value = event.value.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CannotProject(f"{event.record} for {sku} has no {name!r}; stock views need absolute counts")
        counts[name] = value
    if current:
        held_version = int(current.get("stock_version", -1))
        held_since = (int(current.get("updated_at", 0)), current.get("event_id", ""))
        version = counts["stock_version"]
        if held_version > version or (held_version == version and held_since <= (event.at, event.event_id)):
            return None  # same version: the earliest event that reported it stays (e.g. not a later rejection)
    return {
        "sku": sku,
        **{name: str(v) for name, v in counts.items()},
        "updated_at": str(event.at),
        "last_event": event.record,
        "event_id": event.event_id,
    }


# --- notifications ------------------------------------------------------------------------------------------


def notification_entry(event: Event) -> tuple[str, str, dict[str, Any]]:
    """(user id, notification id, list entry) of a NotificationSent."""
    user_id = _required_str(event, "user_id")
    notification_id = _required_str(event, "notification_id")
    entry = {k: v for k, v in event.value.items() if k not in HIDDEN_FIELDS}
    return user_id, notification_id, entry


# --- operations ---------------------------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """One byte-exact JSON form per value, so equal views are equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Op:
    """One Redis write: ``command key *args``; a list of them runs in one MULTI/EXEC."""

    command: str
    key: str
    args: tuple[str | int, ...] = ()


@dataclass(frozen=True)
class Reads:
    """What :func:`project` needs to see before deciding: the keys the store reads and watches."""

    order_id: str | None = None
    sku: str | None = None
    notification: tuple[str, str] | None = None
    """(user id, notification id) whose membership in the user's seen ids is read."""
    user_id: str | None = None
    rejection: tuple[str, str] | None = None
    """(user id, event id) of a UserCommandRejected whose membership in the seen rejections is read."""

    def keys(self) -> list[str]:
        keys = []
        if self.user_id is not None:
            keys.append(user_key(self.user_id))
        if self.rejection is not None:
            keys.append(user_rejection_ids_key(self.rejection[0]))
        if self.order_id is not None:
            keys.append(order_key(self.order_id))
        if self.sku is not None:
            keys.append(stock_key(self.sku))
        if self.notification is not None:
            keys.append(notification_ids_key(self.notification[0]))
        return keys


@dataclass(frozen=True)
class Snapshot:
    """The views an event touches, as they are before it."""

    order: Mapping[str, Any] | None = None
    stock: Mapping[str, str] | None = None
    notification_seen: bool = False
    user: Mapping[str, Any] | None = None
    rejection_seen: bool = False


def reads(event: Event) -> Reads:
    """Which views ``event`` touches; raises :class:`CannotProject` when it names none."""
    if event.record == "NotificationSent":
        user_id, notification_id, _ = notification_entry(event)
        return Reads(notification=(user_id, notification_id))
    if event.record == "UserCommandRejected":
        return Reads(rejection=(_required_str(event, "user_id"), event.event_id))
    if event.record in USER_RECORDS:
        return Reads(user_id=_required_str(event, "user_id"))
    if event.record == "StockAdded":
        return Reads(sku=_required_str(event, "sku"))
    order_id = _required_str(event, "order_id")
    sku = _required_str(event, "sku") if event.record in STOCK_LINE_RECORDS else None
    return Reads(order_id=order_id, sku=sku)


def project(event: Event, before: Snapshot) -> list[Op]:
    """The writes that bring the views from ``before`` to after ``event``; empty when nothing changes."""
    need = reads(event)
    ops: list[Op] = []
    if need.order_id is not None:
        ops += _order_ops(need.order_id, before.order, event)
    if need.sku is not None:
        ops += _stock_ops(before.stock, event)
    if need.user_id is not None:
        ops += _user_ops(before.user, event)
    if need.rejection is not None and not before.rejection_seen:
        user_id, event_id = need.rejection
        key = user_rejections_key(user_id)
        entry = {k: v for k, v in event.value.items() if k != "user_id"} | {"event_id": event_id}
        ops += [
            Op("SADD", user_rejection_ids_key(user_id), (event_id,)),
            Op("LPUSH", key, (canonical_json(entry),)),
            Op("LTRIM", key, (0, REJECTIONS_KEPT - 1)),
        ]
    if need.notification is not None and not before.notification_seen:
        user_id, notification_id, entry = notification_entry(event)
        key = notifications_key(user_id)
        ops += [
            Op("SADD", notification_ids_key(user_id), (notification_id,)),
            Op("LPUSH", key, (canonical_json(entry),)),
            Op("LTRIM", key, (0, NOTIFICATIONS_KEPT - 1)),
        ]
    return ops


def _order_ops(order_id: str, doc: Mapping[str, Any] | None, event: Event) -> list[Op]:
    after = apply_to_order(doc, order_id, event)
    if after is None:
        return []
    ops = [Op("SET", order_key(order_id), (canonical_json(after),))]

    old_summary = user_summary(doc) if doc else None
    new_summary = user_summary(after)
    if old_summary is not None and (new_summary is None or old_summary[0] != new_summary[0]):
        ops += [
            Op("ZREM", user_orders_key(old_summary[0]), (order_id,)),
            Op("HDEL", user_order_summaries_key(old_summary[0]), (order_id,)),
        ]
    if new_summary is not None and new_summary != old_summary:
        user_id, score, summary = new_summary
        ops += [
            Op("ZADD", user_orders_key(user_id), (score, order_id)),
            Op("HSET", user_order_summaries_key(user_id), (order_id, canonical_json(summary))),
        ]

    old_attention = attention_entry(doc) if doc else None
    new_attention = attention_entry(after)
    if new_attention is not None and new_attention != old_attention:
        ops.append(Op("HSET", ATTENTION_KEY, (order_id, canonical_json(new_attention))))
    elif new_attention is None and old_attention is not None:
        ops.append(Op("HDEL", ATTENTION_KEY, (order_id,)))
    return ops


def _stock_ops(current: Mapping[str, str] | None, event: Event) -> list[Op]:
    after = apply_to_stock(current, event)
    if after is None:
        return []
    fields: list[str | int] = []
    for name, value in after.items():
        fields += [name, value]
    return [Op("HSET", stock_key(after["sku"]), tuple(fields)), Op("SADD", SKUS_KEY, (after["sku"],))]


# --- users ---------------------------------------------------------------------------------------------------


def apply_to_user(doc: Mapping[str, Any] | None, event: Event) -> dict[str, Any] | None:
    """The user view after ``event``, or None when it changes nothing.

    User events of one user share one partition, so they arrive in version order in every run; each carries
    the aggregate's version after it and is applied only if that is newer than the view's (a replay or a
    duplicate changes nothing). UserOnboardingStarted has no version: it only stamps the view once.
    """
    value = event.value
    if event.record == "UserOnboardingStarted":
        if doc is None or doc.get("onboarding_started_at") is not None:
            return None
        return {**doc, "onboarding_started_at": event.at}
    version = value.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CannotProject(f"{event.record} has no version; user views are version-gated")
    if event.record == "UserRegistered":
        if doc is not None and int(doc["version"]) >= version:
            return None
        return {
            "user_id": _required_str(event, "user_id"),
            "username": value.get("username"),
            "email": value.get("email"),
            "profile": dict(value.get("profile") or {}),
            "active": True,
            "deactivation_reason": None,
            "version": version,
            "registered_at": event.at,
            "updated_at": event.at,
            "login_count": 0,
            "last_login_at": None,
            "onboarding_started_at": None,
        }
    if doc is None or int(doc["version"]) >= version:
        return None  # before its registration (cannot happen on one partition) or already applied
    after = {**doc, "version": version, "updated_at": event.at}
    match event.record:
        case "UserProfileUpdated":
            after["profile"] = {**doc.get("profile", {}), **dict(value.get("changes") or {})}
        case "UserEmailChanged":
            after["email"] = value.get("new_email")
        case "UserDeactivated":
            after["active"] = False
            after["deactivation_reason"] = value.get("reason")
        case "UserReactivated":
            after["active"] = True
            after["deactivation_reason"] = None
        case "UserLoggedIn":
            after["login_count"] = int(doc.get("login_count") or 0) + 1
            after["last_login_at"] = event.at
    return after


def username_member(username: str, user_id: str) -> str:
    return f"{username.lower()}\x00{user_id}"


def _user_ops(doc: Mapping[str, Any] | None, event: Event) -> list[Op]:
    after = apply_to_user(doc, event)
    if after is None:
        return []
    user_id = str(after["user_id"])
    ops = [Op("SET", user_key(user_id), (canonical_json(after),))]
    old_email = doc.get("email") if doc else None
    if after.get("email") != old_email:  # a set per address: each user moves only itself, in any interleaving
        if old_email:
            ops.append(Op("SREM", user_email_key(str(old_email)), (user_id,)))
        ops.append(Op("SADD", user_email_key(str(after["email"])), (user_id,)))
    old_name = doc.get("username") if doc else None
    if after.get("username") != old_name:
        if old_name:
            ops.append(Op("ZREM", USERNAMES_KEY, (username_member(str(old_name), user_id),)))
        ops.append(Op("ZADD", USERNAMES_KEY, (0, username_member(str(after["username"]), user_id))))
    if doc is None or doc.get("registered_at") != after["registered_at"]:
        ops.append(Op("ZADD", REGISTERED_KEY, (int(after["registered_at"]), user_id)))
    return ops
