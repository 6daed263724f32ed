"""Reading the query side's views (``view:*``, mirrored by :mod:`streams.view_service`) for the gateway and the CLI.

Every function takes a Redis client (bytes or ``decode_responses=True``, either works) and only reads.
The ``*_async`` twins take a ``redis.asyncio`` client and return the same shapes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from streams.views.keys import (
    ATTENTION_KEY,
    MIRRORED_KEY,
    REGISTERED_KEY,
    SKUS_KEY,
    USERNAMES_KEY,
    VIEW_PREFIX,
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
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Users matching every given criterion, by username: prefix (case-insensitive), active flag, and
    ``registered_after`` (epoch ms, exclusive)."""
    if limit <= 0:
        return []
    prefix = username_prefix.lower()
    low, high = (f"[{prefix}", f"[{prefix}\xff") if prefix else ("-", "+")
    members = [_text(m) for m in client.zrangebylex(USERNAMES_KEY, low, high)]
    if registered_after is not None:
        recent = {_text(u) for u in client.zrangebyscore(REGISTERED_KEY, f"({registered_after}", "+inf")}
        members = [m for m in members if m.split("\x00", 1)[1] in recent]
    found: list[dict[str, Any]] = []
    for member in members:
        user = get_user(client, member.split("\x00", 1)[1])
        if user is None or (active is not None and bool(user.get("active")) != active):
            continue
        found.append(user)
        if len(found) >= limit:
            break
    return found


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


async def user_rejections_async(client: aioredis.Redis, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    if limit <= 0:
        return []
    return [json.loads(v) for v in await client.lrange(user_rejections_key(user_id), 0, limit - 1)]


def views_whole(client: redis.Redis) -> bool:
    """Whether Redis holds every view table partition (the view service marked each one mirrored)."""
    return int(client.hlen(MIRRORED_KEY)) >= len(MIRRORED_FIELDS)


async def rebuilding_async(client: aioredis.Redis) -> bool:
    """True while the views are not whole (Redis flushed and being re-mirrored, or being rebuilt): what they show
    may be missing or behind."""
    return int(await client.hlen(MIRRORED_KEY)) < len(MIRRORED_FIELDS)
