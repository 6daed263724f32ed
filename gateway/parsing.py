"""Reading what a client sent: the JSON body as a request model, integer query parameters, ``If-Match``.

Every malformed input becomes an :class:`gateway.errors.ApiError` with a message a client can act on: 400 for
what is not JSON or not an integer, 413 for a body over the limit, 422 (with each field's problem) for a body
the model refuses, 428 for a missing ``If-Match``.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.errors import ApiError
from gateway.service import GATEWAY

M = TypeVar("M", bound=BaseModel)


async def read_body(request: web.Request, model: type[M]) -> M:
    """The body as ``model``: 400 for malformed JSON or a non-object, 413 when too large, 422 when invalid."""
    limit = request.app[GATEWAY].settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"Request body too large (at most {limit} bytes)")
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "Request body is required: a JSON object")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ApiError(400, f"Malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, f"Request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [{"field": _field(err["loc"]), "message": err["msg"]} for err in exc.errors()]
        first = details[0]
        where = f"{first['field']}: " if first["field"] else ""
        raise ApiError(422, f"Invalid request body: {where}{first['message']}", extra={"details": details}) from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def query_int(request: web.Request, name: str) -> int | None:
    """The query parameter ``name`` as a non-negative integer (None when absent); 400 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(400, f"{name} must be a non-negative integer")
    return int(raw)


def if_match(request: web.Request) -> int:
    """The version ``If-Match`` names (``3``, ``"3"`` or ``W/"3"``): 428 when absent, 400 when not a version."""
    raw = request.headers.get("If-Match")
    if raw is None or not raw.strip():
        raise ApiError(428, 'If-Match is required: the user version your change is based on (e.g. If-Match: "3")')
    text = raw.strip()
    text = text.removeprefix("W/").strip('"')
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(400, f'If-Match must be a user version, an integer such as "3"; got {raw[:40]!r}')
    return int(text)
