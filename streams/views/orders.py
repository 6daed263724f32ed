"""The order view and its secondary views, pure: an order's events folded into one document, and from it a
user's order summaries and the needs-attention list.

Why an order view converges to the log whatever the interleaving of topics (the view service and a fold of the log read
the topics in different orders, so the view must not depend on it):

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streams.domain.orders import TERMINAL_STATUSES
from streams.views.events import HIDDEN_FIELDS, Event, Op, canonical_json, time_field
from streams.views.keys import ATTENTION_KEY, order_key, user_order_summaries_key, user_orders_key

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
TERMINAL_RANK = min(STATUS_RANK[status] for status in TERMINAL_STATUSES)
"""Statuses ranked this high are terminal: exactly the domain's :data:`TERMINAL_STATUSES`."""

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

_PLACEMENT_FIELDS = ("user_id", "lines", "total_cents", "currency", "deadline_at", "channel", "note", "payment_method")


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


def order_ops(order_id: str, doc: Mapping[str, Any] | None, event: Event) -> list[Op]:
    """The writes that bring the order view and its secondary views from ``doc`` to after ``event``."""
    after = apply_to_order(doc, order_id, event)
    return [] if after is None else order_diff(order_id, doc, after)


def order_diff(order_id: str, doc: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Op]:
    """The writes that bring the order view and its secondary views from ``doc`` (None: nothing shown) to
    ``after``: the view whole, the user's summary and the needs-attention entry where they changed."""
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
