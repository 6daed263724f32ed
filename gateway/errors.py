"""What the gateway answers when a request does not succeed, and how each failure maps to HTTP.

Handlers and the guard raise :class:`ApiError` for the answers they decide (400, 401, 403, 404, 409, 422, 428,
429, 503). :func:`error_response` maps everything a request can raise to a JSON ``{"error": ...}`` answer:
aiohttp's own HTTP errors (404, 405, 413) get the gateway's wording, an unreachable dependency (a connection,
timeout or Redis error) is a 503, anything else a logged 500 — never a stack trace, never a 5xx for client input.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.responses import json_response

log = logging.getLogger("gateway")

UNAVAILABLE = "Service temporarily unavailable"


class ApiError(Exception):
    """An answer other than success: status, the ``error`` message and optional extra fields and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}

    def response(self) -> web.Response:
        return json_response({"error": self.message, **self.extra}, status=self.status, headers=self.headers)


def error_response(request: web.Request, exc: Exception, *, max_body_bytes: int) -> web.Response:
    """The answer for ``exc`` raised while handling ``request`` (logged when it is the gateway's fault)."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, web.HTTPException):
        return http_error_response(exc, max_body_bytes=max_body_bytes)
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        log.warning("%s %s: dependency unavailable: %s: %s", request.method, request.path, type(exc).__name__, exc)
        return json_response({"error": UNAVAILABLE}, status=503)
    if is_redis_error(exc):
        log.warning("%s %s: Redis unavailable: %s: %s", request.method, request.path, type(exc).__name__, exc)
        return json_response({"error": UNAVAILABLE}, status=503)
    log.error("%s %s: unhandled error", request.method, request.path, exc_info=exc)
    return json_response({"error": "Internal server error"}, status=500)


def http_error_response(exc: web.HTTPException, *, max_body_bytes: int) -> web.Response:
    """aiohttp's routing and body-size errors in the gateway's JSON shape (``Allow`` kept for a 405)."""
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    if exc.status == 404:
        message = "Not found"
    elif exc.status == 405:
        message = "Method not allowed"
    elif exc.status == 413:
        message = f"Request body too large (at most {max_body_bytes} bytes)"
    else:
        message = exc.reason
    return json_response({"error": message}, status=exc.status, headers=headers)


def is_redis_error(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, redis.RedisError)
