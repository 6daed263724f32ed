"""Routes an event to the read views it touches: the event and those views before → the views after, as Redis ops.

Nothing here talks to Kafka or Redis. :mod:`consumers.projector` decodes a message into an
:class:`~streams.views.events.Event` (:func:`~streams.views.events.make_event`), reads the :class:`Snapshot` that
:func:`reads` names, calls :func:`project` and applies the returned :class:`~streams.views.events.Op` list in one
MULTI/EXEC. The key space is in :mod:`streams.views.keys`.

The views converge to the log whatever the interleaving of topics: a live projector and a rebuild read the topics
in different orders, so no view may depend on it. Each view module says why its fold does not:
:mod:`~streams.views.orders` (a fold of the set of an order's events; status only moves forward),
:mod:`~streams.views.stock` (the newest ``stock_version`` wins), :mod:`~streams.views.users` (one partition per
user, version-gated), :mod:`~streams.views.notifications` (one partition per user, each id taken once); and
:mod:`~streams.views.events` keeps only event times, so a rebuild is identical to what the live projector built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.views.events import Event, Op, required_str
from streams.views.keys import notification_ids_key, order_key, stock_key, user_key, user_rejection_ids_key
from streams.views.notifications import notification_entry, notification_ops
from streams.views.orders import order_ops
from streams.views.stock import STOCK_LINE_RECORDS, stock_ops
from streams.views.users import USER_RECORDS, rejection_ops, user_ops

__all__ = ["Reads", "Snapshot", "project", "reads"]


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
    """Which views ``event`` touches; raises :class:`~streams.views.events.CannotProject` when it names none."""
    if event.record == "NotificationSent":
        user_id, notification_id, _ = notification_entry(event)
        return Reads(notification=(user_id, notification_id))
    if event.record == "UserCommandRejected":
        return Reads(rejection=(required_str(event, "user_id"), event.event_id))
    if event.record in USER_RECORDS:
        return Reads(user_id=required_str(event, "user_id"))
    if event.record == "StockAdded":
        return Reads(sku=required_str(event, "sku"))
    order_id = required_str(event, "order_id")
    sku = required_str(event, "sku") if event.record in STOCK_LINE_RECORDS else None
    return Reads(order_id=order_id, sku=sku)


def project(event: Event, before: Snapshot) -> list[Op]:
    """The writes that bring the views from ``before`` to after ``event``; empty when nothing changes."""
    need = reads(event)
    ops: list[Op] = []
    if need.order_id is not None:
        ops += order_ops(need.order_id, before.order, event)
    if need.sku is not None:
        ops += stock_ops(before.stock, event)
    if need.user_id is not None:
        ops += user_ops(before.user, event)
    if need.rejection is not None and not before.rejection_seen:
        user_id, event_id = need.rejection
        ops += rejection_ops(user_id, event_id, event)
    if need.notification is not None and not before.notification_seen:
        ops += notification_ops(event)
    return ops
