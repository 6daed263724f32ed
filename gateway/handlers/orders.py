"""``/api/orders``: place an order, read one's own order view (optionally waiting for a status).

A ``PlaceOrder`` command on ``orders.commands.v1`` is answered ``202`` once the broker acknowledged it, with the
command's status (admitted or refused) at ``Location``; the order's progress is read from the Redis order view,
which ``?wait_for`` waits on (bounded) until the order reaches a status or any terminal one.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.errors import ApiError, is_redis_error
from gateway.models import PlaceOrderRequest
from gateway.parsing import read_body
from gateway.responses import Reply, json_response
from gateway.service import GATEWAY, principal_of
from schemas.topics import ORDER_COMMANDS
from streams.views import read as views
from streams.views.orders import STATUS_RANK, TERMINAL_RANK

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("gateway")

WAIT_TARGETS = frozenset({*STATUS_RANK, "TERMINAL"})


async def place_order(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    body = await read_body(request, PlaceOrderRequest)
    user_id = principal_of(request).subject

    async def act() -> Reply:
        order_id = str(uuid.uuid4())
        # the customer as this gateway sees it: admission waits until it has seen that version too, so an order
        # never overtakes the registration or deactivation the caller already saw (None: not in the view yet)
        seen = await _user_version(gateway.redis, user_id)
        value = {
            "order_id": order_id,
            "user_id": user_id,
            "lines": [line.model_dump() for line in body.lines],
            "payment": body.payment.model_dump(),
            "idempotency_key": request.headers.get("Idempotency-Key") or order_id,
            "requested_at": _now_ms(),
            "user_version": seen,
        }
        receipt = await gateway.submit(request, ORDER_COMMANDS, "PlaceOrder", value, user_id=user_id, order_id=order_id)
        return receipt.accepted(order_id=order_id)

    return await gateway.idempotent(request, body, act)


async def get_order(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    order_id = request.match_info["order_id"]
    subject = principal_of(request).subject
    raw_target = request.query.get("wait_for")
    target = None if raw_target is None else raw_target.strip().upper()
    if target is not None and target not in WAIT_TARGETS:
        raise ApiError(400, f"wait_for must be one of {', '.join(sorted(WAIT_TARGETS))} (or terminal)")

    def reached(view: dict[str, Any]) -> bool:
        if target == "TERMINAL":
            return _rank(view) >= TERMINAL_RANK
        return view.get("status") == target

    def final(view: dict[str, Any]) -> bool:
        return _rank(view) >= TERMINAL_RANK

    async def own_view() -> dict[str, Any] | None:
        # another customer's order reads exactly as an unknown one (same answer, same wait), so the answers
        # do not tell a caller which order ids exist
        view = await views.get_order_async(gateway.redis, order_id)
        return view if view is not None and view.get("user_id") == subject else None

    view, stale = await gateway.read_until(own_view, None if target is None else reached, final)
    if view is None:
        raise ApiError(404, f"Order {order_id} not found")
    return json_response({**view, "stale": stale})


async def _user_version(redis: aioredis.Redis, user_id: str) -> int | None:
    """The user's version in the view, or None when the view does not know the user (or Redis is down)."""
    try:
        view = await views.get_user_async(redis, user_id)
    except Exception as exc:
        if not is_redis_error(exc):
            raise
        log.warning("user view unavailable (%s); the order goes without the user's version", exc)
        return None
    return int(view["version"]) if view is not None else None


def _rank(view: dict[str, Any]) -> int:
    return STATUS_RANK.get(str(view.get("status")), 0)


def _now_ms() -> int:
    return int(time.time() * 1000)
