"""The read views as table entries, pure: an event and the entries it touches → the entries after and the Redis
writes that mirror them.

The view service (:mod:`streams.view_service`) keeps each view in a Faust table of its own, keyed like the topic
that feeds it, so every entry lives on the partition of the events that change it:

=====================  ==========  ======================================================================
table                  key         entry
=====================  ==========  ======================================================================
``views_orders``       order id    the order view (:mod:`~streams.views.orders`), timeline included
``views_stock``        SKU         the stock view (:mod:`~streams.views.stock`), string fields
``views_users``        user id     ``{"user": user view | None, "rejections": [newest first, ≤ 20],
                                   "commands": [command outcomes, newest first]}``
                                   (:mod:`~streams.views.commands`)
``views_notices``      user id     ``[NotificationSent entries, newest first, ≤ 100]``
=====================  ==========  ======================================================================

:func:`fold` decides; :func:`mirror` writes one whole entry's Redis keys (a Redis flushed is re-mirrored from the
tables with it, O(keys)). Every Redis write is state-based (SET, HSET, ZADD, a list replaced whole), so writing
the same entry twice changes nothing: the view service writes Redis *before* the table, and a crash in between
replays the batch, which folds to the same entries and writes the same keys.

Idempotency is bounded: an order event already in its timeline, a stock version not newer, a user version not
newer, a notice or rejection id among the kept ones changes nothing. The kept lists are the views' own length (a
redelivery comes from the uncommitted tail of a partition, far younger than a user's hundredth notice).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.topics import PARTITIONS
from streams.views.commands import commands_diff, remember
from streams.views.events import CannotProject, Event, Op, canonical_json, required_str
from streams.views.keys import (
    mirrored_field,
    notifications_key,
    user_rejections_key,
)
from streams.views.notifications import NOTIFICATIONS_KEPT, notification_entry
from streams.views.orders import apply_to_order, order_diff
from streams.views.stock import STOCK_LINE_RECORDS, apply_to_stock, stock_writes
from streams.views.users import (
    REJECTIONS_KEPT,
    USER_RECORDS,
    apply_to_user,
    user_diff,
)

__all__ = [
    "ORDER_VIEWS",
    "STOCK_VIEWS",
    "USER_VIEWS",
    "NOTICE_VIEWS",
    "VIEW_TABLES",
    "MIRRORED_FIELDS",
    "Change",
    "fold",
    "mirror",
    "mirror_ops",
    "table_of",
]

ORDER_VIEWS = "views_orders"
STOCK_VIEWS = "views_stock"
USER_VIEWS = "views_users"
NOTICE_VIEWS = "views_notices"
VIEW_TABLES = (ORDER_VIEWS, STOCK_VIEWS, USER_VIEWS, NOTICE_VIEWS)
MIRRORED_FIELDS = tuple(mirrored_field(name, p) for name in VIEW_TABLES for p in range(PARTITIONS))
"""Every mark of :data:`~streams.views.keys.MIRRORED_KEY`: the views are whole when Redis holds them all."""

Lookup = Callable[[str, str], Any]
"""``(table, key)`` → the entry as it stands (None: none yet)."""


@dataclass(frozen=True)
class Change:
    """One table entry an event changed: as it was before the event and after it."""

    table: str
    key: str
    before: Any
    after: Any

    @property
    def ops(self) -> list[Op]:
        """The Redis writes that bring what Redis shows of this entry from ``before`` to ``after``."""
        return mirror_ops(self.table, self.key, self.before, self.after)


def table_of(event: Event) -> str:
    """The view table ``event`` folds into (stock lines: the stock table; their order's timeline is the order
    table's, folded from the order-keyed topic, see :func:`fold`'s ``as_stock``)."""
    if event.record == "NotificationSent":
        return NOTICE_VIEWS
    if event.record in USER_RECORDS:
        return USER_VIEWS
    if event.record == "StockAdded":
        return STOCK_VIEWS
    return ORDER_VIEWS


def fold(event: Event, lookup: Lookup, *, as_stock: bool = False) -> list[Change]:
    """The entries ``event`` changes (empty: a duplicate, or nothing new); raises :class:`CannotProject`.

    A stock line (``StockLine*``) counts twice: in its order's timeline (read from the order-keyed topic) and in
    its SKU's stock (read again, keyed by SKU: ``as_stock``)."""
    if as_stock:
        if event.record not in STOCK_LINE_RECORDS:
            raise CannotProject(f"{event.record} is not a stock line")
        return _fold_stock(event, lookup)
    table = table_of(event)
    if table == NOTICE_VIEWS:
        return _fold_notice(event, lookup)
    if table == USER_VIEWS:
        return _with_outcome(event, _fold_user(event, lookup), lookup)
    if table == STOCK_VIEWS:
        return _fold_stock(event, lookup)
    order_id = required_str(event, "order_id")
    before = lookup(ORDER_VIEWS, order_id)
    after = apply_to_order(before, order_id, event)
    return [] if after is None else [Change(ORDER_VIEWS, order_id, before, after)]


def _fold_stock(event: Event, lookup: Lookup) -> list[Change]:
    sku = required_str(event, "sku")
    before = lookup(STOCK_VIEWS, sku)
    after = apply_to_stock(before, event)
    return [] if after is None else [Change(STOCK_VIEWS, sku, before, after)]


def _user_entry(lookup: Lookup, user_id: str) -> Any:
    return lookup(USER_VIEWS, user_id) or {"user": None, "rejections": []}


def _fold_user(event: Event, lookup: Lookup) -> list[Change]:
    user_id = required_str(event, "user_id")
    stored = lookup(USER_VIEWS, user_id)
    before = stored or {"user": None, "rejections": []}
    if event.record == "UserCommandRejected":
        kept: list[dict[str, Any]] = list(before.get("rejections") or ())
        if any(entry.get("event_id") == event.event_id for entry in kept):
            return []
        entry = {k: v for k, v in event.value.items() if k != "user_id"} | {"event_id": event.event_id}
        rejections = [entry, *kept][:REJECTIONS_KEPT]
        return [Change(USER_VIEWS, user_id, stored, {**before, "rejections": rejections})]
    user = apply_to_user(before.get("user"), event)
    if user is None:
        return []
    return [Change(USER_VIEWS, user_id, stored, {**before, "user": user})]


def _with_outcome(event: Event, changes: list[Change], lookup: Lookup) -> list[Change]:
    """A user event that decides a command also keeps the command's outcome in the user's entry."""
    if not event.causation_id:
        return changes
    user_id = required_str(event, "user_id")
    stored = changes[0].before if changes else lookup(USER_VIEWS, user_id)
    entry = changes[0].after if changes else _user_entry(lookup, user_id)
    remembered = remember(entry.get("commands") or (), event)
    if remembered is None:
        return changes
    kept, _ = remembered
    return [Change(USER_VIEWS, user_id, stored, {**entry, "commands": kept})]


def _fold_notice(event: Event, lookup: Lookup) -> list[Change]:
    user_id, notification_id, entry = notification_entry(event)
    stored = lookup(NOTICE_VIEWS, user_id)
    kept: list[dict[str, Any]] = list(stored or ())
    if any(e.get("notification_id") == notification_id for e in kept):
        return []
    return [Change(NOTICE_VIEWS, user_id, stored, [entry, *kept][:NOTIFICATIONS_KEPT])]


def _list_ops(key: str, entries: Sequence[Mapping[str, Any]]) -> list[Op]:
    """A list view replaced whole (newest first): the same entries give the same list however often written."""
    ops = [Op("DEL", key)]
    if entries:
        ops.append(Op("RPUSH", key, tuple(canonical_json(e) for e in entries)))
    return ops


def mirror_ops(table: str, key: str, before: Any, after: Any) -> list[Op]:
    """The Redis writes that bring what Redis shows of entry ``key`` of ``table`` from ``before`` (None: nothing)
    to ``after``. State-based: writing them twice, or after a crash, shows the same. The view service writes,
    once per batch, each changed entry's diff from the batch's start to its end."""
    if after is None or after == before:
        return []
    if table == ORDER_VIEWS:
        return order_diff(key, before, after)
    if table == STOCK_VIEWS:
        return stock_writes(after)
    if table == USER_VIEWS:
        before = before or {}
        ops: list[Op] = []
        if after.get("user") is not None and after.get("user") != before.get("user"):
            ops += user_diff(before.get("user"), after["user"])
        if after.get("rejections") and after.get("rejections") != before.get("rejections"):
            ops += _list_ops(user_rejections_key(key), after["rejections"])
        return ops + commands_diff(before.get("commands") or (), after.get("commands") or ())
    if table == NOTICE_VIEWS:
        return _list_ops(notifications_key(key), after)
    raise ValueError(f"no view table {table!r}")


def mirror(table: str, key: str, entry: Any) -> list[Op]:
    """Every Redis write that shows ``entry`` of ``table`` whole (re-mirroring a flushed Redis)."""
    return mirror_ops(table, key, None, entry)
