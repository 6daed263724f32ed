"""The gateway's middlewares, one concern each; :func:`gateway.app.create_app` stacks them in this order.

1. :func:`access_log_middleware`: one JSON line per request on logger ``gateway.access`` (method, path, status,
   duration_ms, client, subject, trace_id).
2. :func:`metrics_middleware`: the request counter and duration histogram, by method, route and status.
3. :func:`rate_limit_headers_middleware`: the guard's rate-limit decision in ``RateLimit-*`` headers, on every
   answer the guard let through or refused.
4. :func:`tracing_middleware`: the caller's ``traceparent`` continued (or a new trace) in a server span, and the
   gateway's own ``traceparent`` on the answer.
5. :func:`errors_middleware`: whatever a request raises becomes a JSON answer (:func:`gateway.errors.error_response`),
   so everything above sees a response, never an exception.
6. :func:`guard_middleware` (every matched route but the public ones): the bearer token, then the per-client
   rate limit (by token subject, or by client address for requests without a valid token, so guessing tokens
   is limited too; the address a trusted proxy forwarded, see :mod:`gateway.clientaddr`), then ``401`` for a
   missing or invalid token.

Beside them, :func:`secure_headers` (an ``on_response_prepare`` signal, so it sees every answer the app
prepares) adds ``X-Content-Type-Options: nosniff`` everywhere and ``Cache-Control: no-store`` under ``/api``,
and names the server without versions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.telemetry import HTTP_REQUESTS, HTTP_SECONDS, tracer
from gateway.auth import AuthError, Principal, authenticate
from gateway.errors import ApiError, error_response
from gateway.service import GATEWAY, PRINCIPAL, RATE, TRACE, client_of
from gateway.tracing import TraceContext

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

PUBLIC_PATHS = frozenset({"/health", "/ready", "/live", "/openapi.json", "/docs", "/docs/{asset}", "/metrics"})
"""Routes anyone may call without a token, and which are never rate limited (probes, the document and its
interactive docs, metrics)."""


SERVER = "order-pipeline-gateway"
"""The ``Server`` header: a name, never aiohttp's and Python's versions."""


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every answer carries (``on_response_prepare``): no MIME sniffing, no caching of /api answers."""
    response.headers["Server"] = SERVER
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.path == "/api" or request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"


def route_of(request: web.Request) -> str:
    """The matched route's pattern (``/api/orders/{order_id}``), so metrics and spans do not fan out per id."""
    resource = request.match_info.route.resource
    return resource.canonical if resource else "(unmatched)"


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    principal = request.get(PRINCIPAL)
    access_log.info(
        json.dumps(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": client_of(request),
                "subject": principal.subject if principal else None,
                "trace_id": request[TRACE].trace_id,
            },
            separators=(",", ":"),
        )
    )
    return response


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    elapsed = time.perf_counter() - started
    route = route_of(request)
    HTTP_REQUESTS.labels(request.method, route, str(response.status)).inc()
    HTTP_SECONDS.labels(request.method, route).observe(elapsed)
    return response


@web.middleware
async def rate_limit_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    decision = request.get(RATE)
    if decision is not None and not response.prepared:
        response.headers["RateLimit-Limit"] = str(decision.limit)
        response.headers["RateLimit-Remaining"] = str(decision.remaining)
    return response


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    trace = TraceContext.from_header(request.headers.get("traceparent"))
    route = route_of(request)
    span = tracer().start_span(
        f"{request.method} {route}",
        context=trace.parent_context(),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
    )
    context = span.get_span_context()
    if span.is_recording() and context.is_valid:  # the gateway's own span (OpenTelemetry installed)
        trace = trace.carried_by(context)
    request[TRACE] = trace
    response = await handler(request)
    span.set_attribute("http.response.status_code", response.status)
    if response.status >= 500:
        span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status}"))
    span.end()
    if not response.prepared:
        response.headers["traceparent"] = trace.traceparent
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        return error_response(request, exc, max_body_bytes=request.app[GATEWAY].settings.max_body_bytes)


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    if match.http_exception is not None or match.route.resource is None:
        return await handler(request)  # unknown route or wrong method: 404 / 405, nothing to guard
    if match.route.resource.canonical in PUBLIC_PATHS:
        return await handler(request)
    gateway = request.app[GATEWAY]
    principal: Principal | None = None
    failure: AuthError | None = None
    try:
        principal = authenticate(request.headers.get("Authorization"), gateway.policy)
    except AuthError as exc:
        failure = exc
    client = f"sub:{principal.subject}" if principal else f"ip:{client_of(request)}"
    decision = await gateway.limiter.hit(client)
    request[RATE] = decision
    if not decision.allowed:
        raise ApiError(429, "Too many requests", headers={"Retry-After": str(decision.retry_after_s)})
    if principal is None:
        reason = failure.reason if failure else "no principal"
        log.info("%s %s from %s: 401 (%s)", request.method, request.path, client_of(request), reason)
        challenge = 'Bearer realm="order-pipeline"'
        if failure is not None and failure.public != "No token provided":
            challenge += ', error="invalid_token"'
        raise ApiError(401, failure.public if failure else "No token provided", headers={"WWW-Authenticate": challenge})
    request[PRINCIPAL] = principal
    return await handler(request)
