"""The command-status view, pure: what became of each user command, by the command's id.

A user command ends in exactly one event on ``users.events.v1``: the fact it asked for (one of the aggregate's
events) or UserCommandRejected with its reason, a concurrency conflict included. That event names the command as
its cause: ``ce_causationid`` is the command's ``ce_id``, also for a registration or an e-mail change that waited
for its address (:mod:`streams.domain.users`). So one event decides one command, and :func:`outcome_of` needs
nothing but the event.

The outcomes live in the user's entry of the user view table (``commands``, newest first), because every view in
Redis is a mirror of a table entry that a flushed Redis is re-mirrored from (:mod:`streams.views.tables`). The
entry keeps what a sender can still ask about, bounded two ways: the outcomes decided within
:data:`COMMAND_TTL_MS` of the newest one (the gateway keeps its receipts as long), and at most
:data:`COMMANDS_KEPT` of them. Each kept outcome is mirrored to ``view:command:{command_id}``, expiring
:data:`COMMAND_TTL_MS` after the event's own time (``PXAT``), so a re-mirror or a rebuild sets the same deadline
as the first write; one that leaves the entry is deleted.

A user event without a cause (published by hand) and the events no command asks for (UserOnboardingStarted)
decide nothing. Orders are not folded here: a PlaceOrder's outcome is its order's admission, which the order view
already holds, keyed by the order id the command carries (so it also holds for an order held at admission and
released by a later user event, whose OrderPlaced is not caused by the command): :func:`order_outcome` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args

from streams.domain.user_aggregate import UserEvent
from streams.views.events import Event, Op, canonical_json
from streams.views.keys import command_key

APPLIED_RECORDS = frozenset(cls.__name__ for cls in get_args(UserEvent))
"""The aggregate's events: each is the fact a user command asked for."""
REFUSED_RECORD = "UserCommandRejected"
COMMAND_TTL_MS = 24 * 60 * 60 * 1000
"""How long after its decision a command's outcome is kept (the gateway keeps its receipts as long)."""
COMMANDS_KEPT = 100
"""At most this many outcomes per user (the newest): a user's commands of a day, unless it sends more."""

ACCEPTED, APPLIED, REFUSED = "accepted", "applied", "refused"
"""A command's statuses: on its topic and not decided yet (as far as the views know), or decided either way."""


def outcome_of(event: Event) -> dict[str, Any] | None:
    """The outcome ``event`` records for the command that caused it, or None when it decides no command."""
    value = event.value
    if not event.causation_id:
        return None
    base = {
        "command_id": event.causation_id,
        "event": event.record,
        "event_id": event.event_id,
        "decided_at": event.at,
        "user_id": value.get("user_id"),
    }
    if event.record in APPLIED_RECORDS:
        return {"status": APPLIED, **base, "version": value.get("version")}
    if event.record == REFUSED_RECORD:
        return {
            "status": REFUSED,
            **base,
            "command": value.get("command"),
            "reason": value.get("reason"),
            "expected_version": value.get("expected_version"),
            "actual_version": value.get("actual_version"),
        }
    return None


def remember(kept: Sequence[Mapping[str, Any]], event: Event) -> tuple[list[dict[str, Any]], list[Op]] | None:
    """The outcomes after ``event`` and the Redis writes that show them, or None when nothing changes (the event
    decides no command, or its command's outcome is kept already: a redelivery)."""
    outcome = outcome_of(event)
    if outcome is None or any(entry.get("command_id") == outcome["command_id"] for entry in kept):
        return None
    since = int(outcome["decided_at"]) - COMMAND_TTL_MS
    recent = [dict(entry) for entry in kept if int(entry.get("decided_at") or 0) > since]
    after = [outcome, *recent][:COMMANDS_KEPT]
    staying = {entry["command_id"] for entry in after}
    gone = [command_key(str(entry["command_id"])) for entry in kept if entry.get("command_id") not in staying]
    ops = [_show(outcome), *(Op("DEL", key) for key in gone)]
    return after, ops


def commands_diff(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> list[Op]:
    """The writes that bring the shown outcomes from ``before`` to ``after``: new ones shown, dropped ones gone."""
    shown = {entry.get("command_id"): entry for entry in before}
    staying = {entry.get("command_id") for entry in after}
    ops = [_show(entry) for entry in after if shown.get(entry.get("command_id")) != entry]
    return ops + [Op("DEL", command_key(str(cid))) for cid in shown if cid not in staying]


def command_mirror(kept: Sequence[Mapping[str, Any]]) -> list[Op]:
    """Every Redis write that shows the kept outcomes (re-mirroring a flushed Redis): the same as their first."""
    return [_show(entry) for entry in kept]


def _show(outcome: Mapping[str, Any]) -> Op:
    key = command_key(str(outcome["command_id"]))
    return Op("SET", key, (canonical_json(dict(outcome)), "PXAT", int(outcome["decided_at"]) + COMMAND_TTL_MS))


def order_outcome(order: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A PlaceOrder's outcome as its order view shows it, or None while the view knows nothing of the order.

    Admission decides a PlaceOrder once, into OrderRejected (refused, with its reason) or OrderPlaced (applied).
    Every other event of an order follows its OrderPlaced, so a view that holds any of them, even before the
    OrderPlaced itself is folded (topics are folded independently), shows an admitted order.
    """
    timeline: list[Mapping[str, Any]] = list((order or {}).get("timeline") or [])
    if order is None or not timeline:
        return None
    rejected = next((entry for entry in timeline if entry.get("event") == "OrderRejected"), None)
    if rejected is not None:
        return {
            "status": REFUSED,
            "event": "OrderRejected",
            "event_id": rejected.get("id"),
            "decided_at": rejected.get("at"),
            "user_id": order.get("user_id"),
            "command": "PlaceOrder",
            "reason": (rejected.get("detail") or {}).get("reason"),
        }
    placed = next((entry for entry in timeline if entry.get("event") == "OrderPlaced"), None)
    return {
        "status": APPLIED,
        "event": "OrderPlaced",
        "event_id": placed.get("id") if placed else None,
        "decided_at": placed.get("at") if placed else None,
        "user_id": order.get("user_id"),
    }
