"""Reading the query side's views (``view:*``, mirrored by :mod:`streams.view_service`) for the gateway and the CLI.

Every function takes a Redis client (bytes or ``decode_responses=True``, either works) and only reads.
The ``*_async`` twins take a ``redis.asyncio`` client and return the same shapes.

User search (:class:`UserSearch`) intersects the indexes :mod:`streams.views.users` keeps: username prefix,
registration time and one profile attribute's value; the matches come in username order, read in batches until
``limit`` of them pass the active filter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.views.keys import (
    ATTENTION_KEY,
    MIRRORED_KEY,
    PROFILES_KEY,
    REGISTERED_KEY,
    SKUS_KEY,
    USERNAMES_KEY,
    VIEW_PREFIX,
    command_key,
    notifications_key,
    order_key,
    stock_key,
    user_email_key,
    user_key,
    user_order_summaries_key,
    user_orders_key,
    user_rejections_key,
)
from streams.views.stock import STOCK_FIELDS
from streams.views.tables import MIRRORED_FIELDS

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

_INT_STOCK_FIELDS = frozenset({*STOCK_FIELDS, "updated_at"})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _json(value: Any) -> Any:
    return None if value is None else json.loads(value)


def _stock(raw: dict[Any, Any]) -> dict[str, Any] | None:
    if not raw:
        return None
    view = {_text(k): _text(v) for k, v in raw.items()}
    return {k: int(v) if k in _INT_STOCK_FIELDS else v for k, v in view.items()}


def _summaries(raw: list[Any]) -> list[dict[str, Any]]:
    return [_json(value) for value in raw if value is not None]


def _attention(raw: dict[Any, Any]) -> list[dict[str, Any]]:
    entries = [json.loads(v) for v in raw.values()]
    return sorted(entries, key=lambda e: (-int(e.get("failed_at") or 0), str(e["order_id"])))


# --- user search --------------------------------------------------------------------------------------------

SEARCH_BATCH = 100
"""How many matching user views one search reads per round trip (MGET)."""


@dataclass(frozen=True)
class UserSearch:
    """What a user search matches: every criterion given must hold."""

    username_prefix: str = ""
    """Usernames starting with this, case-insensitive ("" matches every user)."""
    registered_after: int | None = None
    """Registered strictly after this (epoch ms)."""
    registered_before: int | None = None
    """Registered strictly before this (epoch ms)."""
    profile: tuple[str, str] | None = None
    """A profile attribute and its value (the value case-insensitive, whole)."""
    active: bool | None = None
    limit: int = 50

    def username_range(self) -> tuple[str | bytes, str | bytes]:
        return _prefix_range(self.username_prefix.lower())

    def registered_range(self) -> tuple[str, str] | None:
        if self.registered_after is None and self.registered_before is None:
            return None
        low = "-inf" if self.registered_after is None else f"({self.registered_after}"
        high = "+inf" if self.registered_before is None else f"({self.registered_before}"
        return low, high

    def profile_range(self) -> tuple[str | bytes, str | bytes] | None:
        if self.profile is None:
            return None
        name, value = self.profile
        return _prefix_range(f"{name}\x00{value.lower()}\x00")

    def candidates(self, usernames: Sequence[Any], *allowed: set[str] | None) -> list[str]:
        """The user ids of the username index's ``usernames`` (in their order) that every other index allows."""
        ids = [_text(m).split("\x00", 1)[1] for m in usernames]
        for only in allowed:
            if only is not None:
                ids = [user_id for user_id in ids if user_id in only]
        return ids

    def picked(self, raw: Sequence[Any]) -> Iterator[dict[str, Any]]:
        """The user views among ``raw`` (values as MGET answered them) that pass the active filter."""
        for value in raw:
            user: Any = _json(value)
            if isinstance(user, dict) and (self.active is None or bool(user.get("active")) == self.active):
                yield user


def _prefix_range(prefix: str) -> tuple[str | bytes, str | bytes]:
    """ZRANGEBYLEX bounds of the members that start with ``prefix``.

    The upper bound is the byte 0xFF, above every byte of UTF-8 text: the text ``"\xff"`` would be sent as
    the two bytes C3 BF, below the members that go on with a letter past U+00FF (``ada中`` for ``ada``).
    """
    if not prefix:
        return "-", "+"
    raw = prefix.encode()
    return b"[" + raw, b"[" + raw + b"\xff"


def _member_ids(members: Sequence[Any]) -> set[str]:
    """The user ids that end the members of a profile index range."""
    return {_text(m).rsplit("\x00", 1)[1] for m in members}


# --- sync ---------------------------------------------------------------------------------------------------


def get_order(client: redis.Redis, order_id: str) -> dict[str, Any] | None:
    """The order view with its saga timeline, or None for an order the views do not know."""
    value: Any = _json(client.get(order_key(order_id)))
    return value if isinstance(value, dict) else None


def recent_orders(client: redis.Redis, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """A user's orders, newest first: ``{order_id, status, total_cents, currency, placed_at, updated_at, …}``."""
    if limit <= 0:
        return []
    ids = list(client.zrevrange(user_orders_key(user_id), 0, limit - 1))
    if not ids:
        return []
    return _summaries(list(client.hmget(user_order_summaries_key(user_id), ids)))  # type: ignore[arg-type]


def stock(client: redis.Redis, sku: str) -> dict[str, Any] | None:
    """``{sku, available, reserved, sold, stock_version, updated_at, last_event, event_id}`` or None."""
    return _stock(dict(client.hgetall(stock_key(sku))))


def skus(client: redis.Redis) -> list[str]:
    """Every SKU that has a stock view, sorted."""
    return sorted(_text(s) for s in client.smembers(SKUS_KEY))


def needs_attention(client: redis.Redis) -> list[dict[str, Any]]:
    """Orders whose compensation failed and is not refunded yet, newest failure first.

    Each entry holds the OrderCompensationFailed fields (``failed_step``, ``reason``, ``attempts``,
    ``payment_id``, ``amount_cents``, ``failed_at``), ``order_id`` and ``order`` (the full order view).
    """
    return _attention(dict(client.hgetall(ATTENTION_KEY)))


def notifications(client: redis.Redis, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """A user's notices, newest first (the NotificationSent values; times in epoch ms)."""
    if limit <= 0:
        return []
    return [json.loads(v) for v in client.lrange(notifications_key(user_id), 0, limit - 1)]


def dump_views(client: redis.Redis) -> dict[str, Any]:
    """Every ``view:*`` key with its value, by type (a comparison aid: a rebuild must reproduce it exactly)."""
    out: dict[str, Any] = {}
    typed: Any = client  # redis stubs leave TYPE untyped
    for raw_key in client.scan_iter(match=f"{VIEW_PREFIX}*", count=1000):
        key = _text(raw_key)
        kind = _text(typed.type(raw_key))
        if kind == "string":
            out[key] = ("string", _text(client.get(raw_key)))
        elif kind == "hash":
            out[key] = ("hash", {_text(k): _text(v) for k, v in client.hgetall(raw_key).items()})
        elif kind == "list":
            out[key] = ("list", [_text(v) for v in client.lrange(raw_key, 0, -1)])
        elif kind == "set":
            out[key] = ("set", sorted(_text(v) for v in client.smembers(raw_key)))
        elif kind == "zset":
            out[key] = ("zset", [(_text(m), s) for m, s in client.zrange(raw_key, 0, -1, withscores=True)])  # type: ignore[str-unpack]
        else:
            out[key] = (kind, None)
    return dict(sorted(out.items()))


def get_user(client: redis.Redis, user_id: str) -> dict[str, Any] | None:
    """The user view (profile, e-mail, active flag, ``version``, login stats), or None for an unknown user."""
    value: Any = _json(client.get(user_key(user_id)))
    return value if isinstance(value, dict) else None


def find_user_by_email(client: redis.Redis, email: str) -> dict[str, Any] | None:
    """The user whose current address is ``email`` (case-insensitive), or None."""
    for user_id in sorted(_text(u) for u in client.smembers(user_email_key(email))):
        user = get_user(client, user_id)
        if user is not None and str(user.get("email", "")).lower() == email.strip().lower():
            return user
    return None


def search_users(
    client: redis.Redis,
    *,
    username_prefix: str = "",
    active: bool | None = None,
    registered_after: int | None = None,
    registered_before: int | None = None,
    profile: tuple[str, str] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Users matching every given criterion (see :class:`UserSearch`), by username."""
    query = UserSearch(username_prefix, registered_after, registered_before, profile, active, limit)
    if query.limit <= 0:
        return []
    registered = query.registered_range()
    profiled = query.profile_range()
    ids = query.candidates(
        client.zrangebylex(USERNAMES_KEY, *query.username_range()),
        None if registered is None else {_text(u) for u in client.zrangebyscore(REGISTERED_KEY, *registered)},
        None if profiled is None else _member_ids(client.zrangebylex(PROFILES_KEY, *profiled)),
    )
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), SEARCH_BATCH):
        batch = ids[start : start + SEARCH_BATCH]
        found += query.picked(client.mget([user_key(u) for u in batch]))
        if len(found) >= query.limit:
            break
    return found[: query.limit]


def user_stats(client: redis.Redis, user_id: str) -> dict[str, Any] | None:
    """``{user_id, login_count, last_login_at, orders_placed}`` or None for an unknown user."""
    user = get_user(client, user_id)
    if user is None:
        return None
    return _stats(user, int(client.zcard(user_orders_key(user_id))))


def user_rejections(client: redis.Redis, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The user's refused commands, newest first (UserCommandRejected values with ``event_id``)."""
    if limit <= 0:
        return []
    return [json.loads(v) for v in client.lrange(user_rejections_key(user_id), 0, limit - 1)]


def get_command_outcome(client: redis.Redis, command_id: str) -> dict[str, Any] | None:
    """What became of the user command ``command_id`` (:mod:`streams.views.commands`), or None: not decided yet,
    or decided more than a day ago."""
    value: Any = _json(client.get(command_key(command_id)))
    return value if isinstance(value, dict) else None


def _stats(user: dict[str, Any], orders_placed: int) -> dict[str, Any]:
    return {
        "user_id": user["user_id"],
        "login_count": int(user.get("login_count") or 0),
        "last_login_at": user.get("last_login_at"),
        "orders_placed": orders_placed,
    }


# --- async --------------------------------------------------------------------------------------------------


async def get_order_async(client: aioredis.Redis, order_id: str) -> dict[str, Any] | None:
    value: Any = _json(await client.get(order_key(order_id)))
    return value if isinstance(value, dict) else None


async def recent_orders_async(client: aioredis.Redis, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    ids = list(await client.zrevrange(user_orders_key(user_id), 0, limit - 1))
    if not ids:
        return []
    return _summaries(list(await client.hmget(user_order_summaries_key(user_id), ids)))  # type: ignore[arg-type]


async def stock_async(client: aioredis.Redis, sku: str) -> dict[str, Any] | None:
    return _stock(dict(await client.hgetall(stock_key(sku))))


async def needs_attention_async(client: aioredis.Redis) -> list[dict[str, Any]]:
    return _attention(dict(await client.hgetall(ATTENTION_KEY)))


async def notifications_async(client: aioredis.Redis, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    return [json.loads(v) for v in await client.lrange(notifications_key(user_id), 0, limit - 1)]


async def get_user_async(client: aioredis.Redis, user_id: str) -> dict[str, Any] | None:
    value: Any = _json(await client.get(user_key(user_id)))
    return value if isinstance(value, dict) else None


async def user_stats_async(client: aioredis.Redis, user_id: str) -> dict[str, Any] | None:
    user = await get_user_async(client, user_id)
    if user is None:
        return None
    return _stats(user, int(await client.zcard(user_orders_key(user_id))))


async def search_users_async(client: aioredis.Redis, query: UserSearch) -> list[dict[str, Any]]:
    if query.limit <= 0:
        return []
    registered = query.registered_range()
    profiled = query.profile_range()
    ids = query.candidates(
        await client.zrangebylex(USERNAMES_KEY, *query.username_range()),
        None if registered is None else {_text(u) for u in await client.zrangebyscore(REGISTERED_KEY, *registered)},
        None if profiled is None else _member_ids(await client.zrangebylex(PROFILES_KEY, *profiled)),
    )
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), SEARCH_BATCH):
        batch = ids[start : start + SEARCH_BATCH]
        found += query.picked(await client.mget([user_key(u) for u in batch]))
        if len(found) >= query.limit:
            break
    return found[: query.limit]


async def get_command_outcome_async(client: aioredis.Redis, command_id: str) -> dict[str, Any] | None:
    value: Any = _json(await client.get(command_key(command_id)))
    return value if isinstance(value, dict) else None


async def user_rejections_async(client: aioredis.Redis, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    return [json.loads(v) for v in await client.lrange(user_rejections_key(user_id), 0, limit - 1)]


def views_whole(client: redis.Redis) -> bool:
    """Whether Redis holds every view table partition (the view service marked each one mirrored)."""
    return int(client.hlen(MIRRORED_KEY)) >= len(MIRRORED_FIELDS)


async def mirrored_async(client: aioredis.Redis) -> tuple[int, int]:
    """How many view table partitions Redis holds whole (marked mirrored), of how many there are."""
    return int(await client.hlen(MIRRORED_KEY)), len(MIRRORED_FIELDS)


async def rebuilding_async(client: aioredis.Redis) -> bool:
    """True while the views are not whole (Redis flushed and being re-mirrored, or being rebuilt): what they show
    may be missing or behind."""
    held, wanted = await mirrored_async(client)
    return held < wanted
