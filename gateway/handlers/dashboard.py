"""``/api/dashboard``: the caller's profile, recent orders and notifications in one answer.

The three views are read concurrently; ``stale`` is true while ``pipeline views rebuild`` runs (the views may
be missing or behind).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.responses import json_response
from gateway.service import GATEWAY, principal_of
from streams.views import read as views


async def dashboard(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    user_id = principal_of(request).subject
    profile, orders, notices, rebuilding = await asyncio.gather(
        views.get_user_async(gateway.redis, user_id),
        views.recent_orders_async(gateway.redis, user_id),
        views.notifications_async(gateway.redis, user_id),
        views.rebuilding_async(gateway.redis),
    )
    body = {"user_id": user_id, "profile": profile, "orders": orders, "notifications": notices, "stale": rebuilding}
    return json_response(body)
