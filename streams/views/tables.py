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
from streams.views.commands import command_mirror, remember
from streams.views.events import CannotProject, Event, Op, canonical_json, required_str
from streams.views.keys import (
    ATTENTION_KEY,
    PROFILES_KEY,
    REGISTERED_KEY,
    SKUS_KEY,
    USERNAMES_KEY,
    mirrored_field,
    notifications_key,
    order_key,
    stock_key,
    user_email_key,
    user_key,
    user_order_summaries_key,
    user_orders_key,
    user_rejections_key,
)
from streams.views.notifications import NOTIFICATIONS_KEPT, notification_entry
from streams.views.orders import apply_to_order, attention_entry, order_ops, user_summary
from streams.views.stock import STOCK_LINE_RECORDS, apply_to_stock, stock_ops
from streams.views.users import (
    REJECTIONS_KEPT,
    USER_RECORDS,
    apply_to_user,
    profile_members,
    user_ops,
    username_member,
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
    """One table entry an event changed: its value after, and the Redis writes that mirror the change."""

    table: str
    key: str
    after: Any
    ops: tuple[Op, ...]


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
    if after is None:
        return []
    return [Change(ORDER_VIEWS, order_id, after, tuple(order_ops(order_id, before, event)))]


def _fold_stock(event: Event, lookup: Lookup) -> list[Change]:
    sku = required_str(event, "sku")
    before = lookup(STOCK_VIEWS, sku)
    after = apply_to_stock(before, event)
    if after is None:
        return []
    return [Change(STOCK_VIEWS, sku, after, tuple(stock_ops(before, event)))]


def _user_entry(lookup: Lookup, user_id: str) -> Any:
    return lookup(USER_VIEWS, user_id) or {"user": None, "rejections": []}


def _fold_user(event: Event, lookup: Lookup) -> list[Change]:
    user_id = required_str(event, "user_id")
    before = _user_entry(lookup, user_id)
    if event.record == "UserCommandRejected":
        kept: list[dict[str, Any]] = list(before.get("rejections") or ())
        if any(entry.get("event_id") == event.event_id for entry in kept):
            return []
        entry = {k: v for k, v in event.value.items() if k != "user_id"} | {"event_id": event.event_id}
        rejections = [entry, *kept][:REJECTIONS_KEPT]
        after = {**before, "rejections": rejections}
        return [Change(USER_VIEWS, user_id, after, tuple(_list_ops(user_rejections_key(user_id), rejections)))]
    user = apply_to_user(before.get("user"), event)
    if user is None:
        return []
    return [Change(USER_VIEWS, user_id, {**before, "user": user}, tuple(user_ops(before.get("user"), event)))]


def _with_outcome(event: Event, changes: list[Change], lookup: Lookup) -> list[Change]:
    """A user event that decides a command also keeps the command's outcome in the user's entry."""
    if not event.causation_id:
        return changes
    user_id = required_str(event, "user_id")
    entry = changes[0].after if changes else _user_entry(lookup, user_id)
    remembered = remember(entry.get("commands") or (), event)
    if remembered is None:
        return changes
    kept, ops = remembered
    earlier = changes[0].ops if changes else ()
    return [Change(USER_VIEWS, user_id, {**entry, "commands": kept}, (*earlier, *ops))]


def _fold_notice(event: Event, lookup: Lookup) -> list[Change]:
    user_id, notification_id, entry = notification_entry(event)
    kept: list[dict[str, Any]] = list(lookup(NOTICE_VIEWS, user_id) or ())
    if any(e.get("notification_id") == notification_id for e in kept):
        return []
    notices = [entry, *kept][:NOTIFICATIONS_KEPT]
    return [Change(NOTICE_VIEWS, user_id, notices, tuple(_list_ops(notifications_key(user_id), notices)))]


def _list_ops(key: str, entries: Sequence[Mapping[str, Any]]) -> list[Op]:
    """A list view replaced whole (newest first): the same entries give the same list however often written."""
    ops = [Op("DEL", key)]
    if entries:
        ops.append(Op("RPUSH", key, tuple(canonical_json(e) for e in entries)))
    return ops


def mirror(table: str, key: str, entry: Any) -> list[Op]:
    """Every Redis write that shows ``entry`` of ``table`` whole (re-mirroring a flushed Redis)."""
    if entry is None:
        return []
    if table == ORDER_VIEWS:
        ops = [Op("SET", order_key(key), (canonical_json(entry),))]
        if (summary := user_summary(entry)) is not None:
            user_id, score, value = summary
            ops += [
                Op("ZADD", user_orders_key(user_id), (score, key)),
                Op("HSET", user_order_summaries_key(user_id), (key, canonical_json(value))),
            ]
        if (attention := attention_entry(entry)) is not None:
            ops.append(Op("HSET", ATTENTION_KEY, (key, canonical_json(attention))))
        return ops
    if table == STOCK_VIEWS:
        fields: list[str | int] = []
        for name, value in entry.items():
            fields += [name, value]
        return [Op("HSET", stock_key(key), tuple(fields)), Op("SADD", SKUS_KEY, (key,))]
    if table == USER_VIEWS:
        ops = []
        if entry.get("user") is not None:
            ops += _user_mirror(entry["user"])
        if entry.get("rejections"):
            ops += _list_ops(user_rejections_key(key), entry["rejections"])
        return ops + command_mirror(entry.get("commands") or ())
    if table == NOTICE_VIEWS:
        return _list_ops(notifications_key(key), entry)
    raise ValueError(f"no view table {table!r}")


def _user_mirror(user: Mapping[str, Any]) -> list[Op]:
    """The user view and its search index entries."""
    user_id = str(user["user_id"])
    ops = [Op("SET", user_key(user_id), (canonical_json(dict(user)),))]
    if user.get("email"):
        ops.append(Op("SADD", user_email_key(str(user["email"])), (user_id,)))
    if user.get("username"):
        ops.append(Op("ZADD", USERNAMES_KEY, (0, username_member(str(user["username"]), user_id))))
    ops.append(Op("ZADD", REGISTERED_KEY, (int(user["registered_at"]), user_id)))
    if members := sorted(profile_members(user)):
        ops.append(Op("ZADD", PROFILES_KEY, tuple(arg for member in members for arg in (0, member))))
    return ops
