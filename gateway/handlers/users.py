"""``/api/users``: register a user and search users; read, change, deactivate and reactivate one's own user, record
its logins, read its statistics.

Writes are user commands on ``users.commands.v1`` (RegisterUser, UpdateUserProfile, ChangeEmail, DeactivateUser,
ReactivateUser, RecordLogin), answered ``202`` once the broker acknowledged them, with the command's status at
``Location`` (:mod:`gateway.handlers.commands`). The POSTs honour ``Idempotency-Key``. A user acts only on itself
(403 otherwise); ``If-Match``, where a command takes it, becomes its ``expected_version``, which the user service
checks (PATCH, whose ``If-Match`` is required, also checks it against the view first: a fast 409). Reads come
from the Redis views, the user view optionally waiting (bounded) for a version.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway.errors import ApiError
from gateway.models import (
    MAX_SEARCH_LIMIT,
    ChangeEmailRequest,
    DeactivateUserRequest,
    EmptyRequest,
    RegisterUserRequest,
    UpdateProfileRequest,
)
from gateway.parsing import (
    if_match,
    optional_if_match,
    query_flag,
    query_int,
    query_text,
    read_body,
    read_optional_body,
)
from gateway.responses import Reply, json_response
from gateway.service import GATEWAY, principal_of
from schemas.topics import USER_COMMANDS
from streams.views import read as views

SEARCH_LIMIT = 20
"""Matches a search answers unless it asks for another ``limit`` (at most :data:`MAX_SEARCH_LIMIT`)."""
PUBLIC_FIELDS = ("user_id", "username", "registered_at", "active")
"""What a search shows of each user: every caller may search every user."""


async def register_user(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    body = await read_body(request, RegisterUserRequest)

    async def act() -> Reply:
        user_id = str(uuid.uuid4())
        value = {"user_id": user_id, "username": body.username, "email": body.email, "profile": dict(body.profile)}
        receipt = await gateway.submit(request, USER_COMMANDS, "RegisterUser", value, user_id=user_id)
        return receipt.accepted(user_id=user_id)

    return await gateway.idempotent(request, body, act)


async def search_users(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    key = query_text(request, "profile_key", max_length=64)
    value = query_text(request, "profile_value", max_length=1024)
    if (key is None) != (value is None):
        raise ApiError(400, "profile_key and profile_value go together: the attribute and the value it must have")
    limit = query_int(request, "limit")
    if limit is not None and not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise ApiError(400, f"limit must be between 1 and {MAX_SEARCH_LIMIT}")
    query = views.UserSearch(
        username_prefix=query_text(request, "username_prefix", max_length=64) or "",
        registered_after=query_int(request, "registered_after"),
        registered_before=query_int(request, "registered_before"),
        profile=None if key is None or value is None else (key, value),
        active=query_flag(request, "active"),
        limit=SEARCH_LIMIT if limit is None else limit,
    )
    found = await views.search_users_async(gateway.redis, query)
    users = [{name: user.get(name) for name in PUBLIC_FIELDS} for user in found]
    return json_response({"users": users, "count": len(users), "stale": await views.rebuilding_async(gateway.redis)})


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


async def get_user_stats(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    user_id = request.match_info["user_id"]
    _own_user(request, user_id)
    stats = await views.user_stats_async(gateway.redis, user_id)
    if stats is None:
        raise ApiError(404, f"User {user_id} not found")
    return json_response(stats)


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
    receipt = await gateway.submit(request, USER_COMMANDS, "UpdateUserProfile", value, user_id=user_id)
    poll = f"/api/users/{user_id}?min_version={expected + 1}"
    return receipt.accepted(user_id=user_id, expected_version=expected, version=expected + 1, poll=poll).response()


async def change_email(request: web.Request) -> web.StreamResponse:
    user_id = _own_user(request, request.match_info["user_id"])
    expected = optional_if_match(request)
    body = await read_body(request, ChangeEmailRequest)
    value = {"user_id": user_id, "expected_version": expected, "new_email": body.email}
    return await _command(request, body, "ChangeEmail", value, expected)


async def deactivate_user(request: web.Request) -> web.StreamResponse:
    user_id = _own_user(request, request.match_info["user_id"])
    expected = optional_if_match(request)
    body = await read_body(request, DeactivateUserRequest)
    value = {"user_id": user_id, "expected_version": expected, "reason": body.reason}
    return await _command(request, body, "DeactivateUser", value, expected)


async def reactivate_user(request: web.Request) -> web.StreamResponse:
    user_id = _own_user(request, request.match_info["user_id"])
    expected = optional_if_match(request)
    body = await read_optional_body(request, EmptyRequest)
    return await _command(request, body, "ReactivateUser", {"user_id": user_id, "expected_version": expected}, expected)


async def record_login(request: web.Request) -> web.StreamResponse:
    user_id = _own_user(request, request.match_info["user_id"])
    body = await read_optional_body(request, EmptyRequest)
    value = {"user_id": user_id, "logged_in_at": int(time.time() * 1000)}
    return await _command(request, body, "RecordLogin", value, None)


async def _command(
    request: web.Request, body: BaseModel, record: str, value: dict[str, Any], expected: int | None
) -> web.StreamResponse:
    """Submit one user command, once per ``Idempotency-Key`` (the ``If-Match`` is part of the request)."""
    gateway = request.app[GATEWAY]
    user_id = str(value["user_id"])

    async def act() -> Reply:
        receipt = await gateway.submit(request, USER_COMMANDS, record, value, user_id=user_id)
        return receipt.accepted(user_id=user_id)

    return await gateway.idempotent(request, body, act, also={"if_match": expected})


def _own_user(request: web.Request, user_id: str) -> str:
    if principal_of(request).subject != user_id:
        raise ApiError(403, "You may only access your own user")
    return user_id


def _version(view: dict[str, Any]) -> int:
    try:
        return int(view.get("version") or 0)
    except (TypeError, ValueError):
        return 0
