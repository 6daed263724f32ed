"""Reading the query side's views (``view:*``, written by :mod:`consumers.projector`) for the gateway and the CLI.

Every function takes a Redis client (bytes or ``decode_responses=True``, either works) and only reads.
The ``*_async`` twins take a ``redis.asyncio`` client and return the same shapes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from consumers.projection import (
    ATTENTION_KEY,
    SKUS_KEY,
    STOCK_FIELDS,
    VIEW_PREFIX,
    notifications_key,
    order_key,
    stock_key,
    user_order_summaries_key,
    user_orders_key,
)

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
