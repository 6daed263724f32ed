"""``/api/users``: register a user, read one's own user view, change one's own profile (optimistic, by version).

Writes are ``RegisterUser`` / ``UpdateUserProfile`` commands on ``users.commands.v1`` answered ``202`` once the
broker acknowledged them; reads come from the Redis user view, optionally waiting (bounded) for a version.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from gateway.errors import ApiError
from gateway.models import RegisterUserRequest, UpdateProfileRequest
from gateway.parsing import if_match, query_int, read_body
from gateway.responses import Reply, json_response
from gateway.service import GATEWAY, principal_of
from schemas.topics import USER_COMMANDS
from streams.views import read as views


async def register_user(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    body = await read_body(request, RegisterUserRequest)

    async def act() -> Reply:
        user_id = str(uuid.uuid4())
        value = {"user_id": user_id, "username": body.username, "email": body.email, "profile": dict(body.profile)}
        await gateway.publish(request, USER_COMMANDS, "RegisterUser", user_id, value, correlation_id=user_id)
        return Reply(202, {"user_id": user_id, "status": "accepted"}, {"Location": f"/api/users/{user_id}"})

    return await gateway.idempotent(request, body, act)


async def get_user(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    user_id = request.match_info["user_id"]
    _own_user(request, user_id)
    min_version = query_int(request, "min_version")
    reached = None if min_version is None else (lambda v: _version(v) >= min_version)
    view, stale = await gateway.read_until(lambda: views.get_user_async(gateway.redis, user_id), reached)
    if view is None:
        raise ApiError(404, f"User {user_id} not found")
    return json_response({**view, "stale": stale}, headers={"ETag": f'"{_version(view)}"'})


async def update_user_profile(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    user_id = request.match_info["user_id"]
    _own_user(request, user_id)
    expected = if_match(request)
    body = await read_body(request, UpdateProfileRequest)
    view = await views.get_user_async(gateway.redis, user_id)
    if view is None:
        raise ApiError(404, f"User {user_id} not found")
    actual = _version(view)
    if actual != expected:
        raise ApiError(409, "Version conflict", extra={"expected": expected, "actual": actual})
    value = {"user_id": user_id, "expected_version": expected, "changes": dict(body.profile)}
    await gateway.publish(request, USER_COMMANDS, "UpdateUserProfile", user_id, value, correlation_id=user_id)
    poll = f"/api/users/{user_id}?min_version={expected + 1}"
    return json_response(
        {"user_id": user_id, "expected_version": expected, "version": expected + 1, "poll": poll},
        status=202,
        headers={"Location": poll},
    )


def _own_user(request: web.Request, user_id: str) -> None:
    if principal_of(request).subject != user_id:
        raise ApiError(403, "You may only access your own user")


def _version(view: dict[str, Any]) -> int:
    try:
        return int(view.get("version") or 0)
    except (TypeError, ValueError):
        return 0
