"""Reading what a client sent: the JSON body as a request model, query parameters, ``If-Match``.

Every malformed input becomes an :class:`gateway.errors.ApiError` with a message a client can act on: 415 for a
body that is not declared JSON (``application/json`` or a ``+json`` type, UTF-8), 413 for a body over the limit,
400 for what is not UTF-8, not JSON, nested deeper than :data:`MAX_JSON_DEPTH`, and for a query parameter or
header that is not what it must be (an integer, a flag, clean text), 422 (with each field's problem) for a body
the model refuses, 428 for a missing ``If-Match`` where it is required.

The depth is counted before parsing, in one pass that skips string contents, so a body of ten thousand ``[``
never reaches the recursive parser; a ``RecursionError`` from it would be a 400 all the same.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.errors import ApiError
from gateway.service import GATEWAY
from streams.domain.text import is_clean_text, text_problem

M = TypeVar("M", bound=BaseModel)

MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays a body may have; the request models need 3."""

JSON_CHARSETS = frozenset({"utf-8", "utf8"})

_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


async def read_body(request: web.Request, model: type[M]) -> M:
    """The body as ``model``: 415, 413, 400 or 422 as the module says; nothing is acted on before it passes."""
    check_json_content_type(request)
    limit = request.app[GATEWAY].settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"Request body too large (at most {limit} bytes)")
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "Request body is required: a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"Request body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    if json_depth_exceeds(text, MAX_JSON_DEPTH):
        raise ApiError(400, f"JSON nested too deeply: at most {MAX_JSON_DEPTH} levels of objects and arrays")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ApiError(400, "JSON nested too deeply") from exc
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


async def read_optional_body(request: web.Request, model: type[M]) -> M:
    """The body as ``model`` as :func:`read_body` reads it, or the model's defaults when no body was sent."""
    if not (await request.read()).strip():  # aiohttp keeps what it read: read_body reads the same bytes
        return model()
    return await read_body(request, model)


def check_json_content_type(request: web.Request) -> None:
    """415 unless ``Content-Type`` is ``application/json`` or ``application/<x>+json`` in UTF-8."""
    declared = request.headers.get("Content-Type")
    media = request.content_type.lower()  # aiohttp: application/octet-stream when the header is absent
    is_json = media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
    charset = (request.charset or "utf-8").lower()
    if declared is None or not is_json or charset not in JSON_CHARSETS:
        got = "no Content-Type" if declared is None else f"Content-Type {declared[:80]!r}"
        accept = {"Accept-Patch" if request.method == "PATCH" else "Accept-Post": "application/json"}
        raise ApiError(415, f"Request body must be JSON (Content-Type: application/json, UTF-8); got {got}",
                       headers=accept)  # fmt: skip


def json_depth_exceeds(text: str, limit: int) -> bool:
    """True when ``text`` opens more than ``limit`` objects and arrays inside each other (strings skipped)."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and not is_clean_text(part):  # a refused profile key, shown escaped
            part = part.encode("ascii", "backslashreplace").decode()
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


def query_flag(request: web.Request, name: str) -> bool | None:
    """The query parameter ``name`` as ``true`` or ``false`` (None when absent); 400 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise ApiError(400, f"{name} must be true or false")
    return raw == "true"


def query_text(request: web.Request, name: str, *, max_length: int) -> str | None:
    """The query parameter ``name`` (None when absent); 400 when longer than ``max_length`` or not clean text."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if len(raw) > max_length:
        raise ApiError(400, f"{name} must be at most {max_length} characters")
    if (problem := text_problem(raw)) is not None:
        raise ApiError(400, f"{name} {problem}")
    return raw


def if_match(request: web.Request) -> int:
    """The version ``If-Match`` names (``3``, ``"3"`` or ``W/"3"``): 428 when absent, 400 when not a version."""
    expected = optional_if_match(request)
    if expected is None:
        raise ApiError(428, 'If-Match is required: the user version your change is based on (e.g. If-Match: "3")')
    return expected


def optional_if_match(request: web.Request) -> int | None:
    """The version ``If-Match`` names (None when absent); 400 when not a version."""
    raw = request.headers.get("If-Match")
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    text = text.removeprefix("W/").strip('"')
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(400, f'If-Match must be a user version, an integer such as "3"; got {raw[:40]!r}')
    return int(text)
