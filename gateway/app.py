"""The HTTP API gateway: the pipeline's front door (aiohttp).

Writes become **commands on Kafka command topics** (through :class:`gateway.commands.CommandPublisher`, which
wraps :class:`producers.toolkit.EventPublisher`) and are answered ``202 Accepted`` once the broker acknowledged
them; reads come **only from the Redis views** (:mod:`streams.views.read`). Nothing else is touched.

Every request passes two middlewares:

1. ``access``: trace context (the caller's ``traceparent`` continued, or a new trace), errors turned into JSON
   ``{"error": ...}`` answers (never a stack trace, never a 5xx for client input), and one JSON access-log
   line on logger ``gateway.access`` (method, path, status, duration_ms, client, subject, trace_id).
2. ``guard`` (every matched route but the public ones): the bearer token, then the per-client rate limit
   (by token subject, or by client IP for requests without a valid token, so guessing tokens is limited too),
   then ``401`` for a missing or invalid token.

:func:`create_app` takes its dependencies (settings, command publisher, Redis) so tests build it with
stand-ins; :func:`run` is the composition root behind ``pipeline gateway``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.health import Check, broker_check, health_report, redis_check
from common.settings import DEV_JWT_SECRET, Settings
from common.telemetry import setup_tracing
from gateway.auth import TokenPolicy
from gateway.errors import ApiError, is_redis_error
from gateway.idempotency import IdempotencyStore
from gateway.middleware import (
    access_log,
    access_log_middleware,
    errors_middleware,
    guard_middleware,
    metrics_middleware,
    rate_limit_headers_middleware,
    tracing_middleware,
)
from gateway.models import PlaceOrderRequest, RegisterUserRequest, UpdateProfileRequest
from gateway.openapi import build_document
from gateway.parsing import if_match, query_int, read_body
from gateway.ratelimit import RateLimiter, RedisRateLimiter
from gateway.responses import Reply, json_response
from gateway.service import GATEWAY, Gateway, principal_of
from schemas.topics import ORDER_COMMANDS, USER_COMMANDS
from streams.views import read as views
from streams.views.projection import STATUS_RANK, TERMINAL_RANK

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.commands import CommandPublisher

log = logging.getLogger("gateway")

MIDDLEWARES = (
    access_log_middleware,  # outermost: logs the final answer, with the trace id and the subject
    metrics_middleware,  # counts and times the final answer
    rate_limit_headers_middleware,  # reports the guard's decision on every answer, refusals included
    tracing_middleware,  # the request's span around everything below; sets its trace context first
    errors_middleware,  # whatever the guard or a handler raises becomes a JSON answer
    guard_middleware,  # innermost: token and rate limit before any handler
)
"""The middlewares, outermost first (aiohttp runs them in list order): see :mod:`gateway.middleware`."""

WAIT_TARGETS = frozenset({*STATUS_RANK, "TERMINAL"})


def _own_user(request: web.Request, user_id: str) -> None:
    if principal_of(request).subject != user_id:
        raise ApiError(403, "You may only access your own user")


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- handlers: users ----------------------------------------------------------------------------------------


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


def _version(view: dict[str, Any]) -> int:
    try:
        return int(view.get("version") or 0)
    except (TypeError, ValueError):
        return 0


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


# --- handlers: orders ---------------------------------------------------------------------------------------


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
        await gateway.publish(request, ORDER_COMMANDS, "PlaceOrder", user_id, value, correlation_id=order_id)
        return Reply(202, {"order_id": order_id, "status": "accepted"}, {"Location": f"/api/orders/{order_id}"})

    return await gateway.idempotent(request, body, act)


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
        owner = view.get("user_id")
        return _rank(view) >= TERMINAL_RANK or (owner is not None and owner != subject)

    view, stale = await gateway.read_until(
        lambda: views.get_order_async(gateway.redis, order_id), None if target is None else reached, final
    )
    if view is None or view.get("user_id") is None:
        raise ApiError(404, f"Order {order_id} not found")
    if view["user_id"] != subject:
        raise ApiError(403, "You may only access your own orders")
    return json_response({**view, "stale": stale})


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


# --- handlers: health and meta ------------------------------------------------------------------------------


async def health(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    report = await health_report(gateway.checks, gateway.uptime_s)
    return json_response(report, status=200 if report["status"] == "healthy" else 503)


async def ready(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    report = await health_report((c for c in gateway.checks if c.critical), gateway.uptime_s)
    return json_response(report, status=200 if report["status"] == "healthy" else 503)


async def live(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "alive", "uptime_s": round(request.app[GATEWAY].uptime_s, 3)})


async def openapi(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[GATEWAY].document)


async def metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", "/metrics", metrics),
    ("GET", "/health", health),
    ("GET", "/ready", ready),
    ("GET", "/live", live),
    ("GET", "/openapi.json", openapi),
    ("POST", "/api/users", register_user),
    ("GET", "/api/users/{user_id}", get_user),
    ("PATCH", "/api/users/{user_id}", update_user_profile),
    ("POST", "/api/orders", place_order),
    ("GET", "/api/orders/{order_id}", get_order),
    ("GET", "/api/dashboard", dashboard),
)


# --- assembly -----------------------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    publisher: CommandPublisher,
    redis: aioredis.Redis,
    *,
    limiter: RateLimiter | None = None,
    checks: Sequence[Check] | None = None,
) -> web.Application:
    """The gateway as an aiohttp app; the caller owns (and closes) ``publisher`` and ``redis``.

    ``limiter`` defaults to the Redis sliding window; ``checks`` to the broker (metadata) and Redis (PING).
    Raises :class:`gateway.auth.AuthConfigError` when the token settings cannot work.
    """
    policy = TokenPolicy.from_settings(settings)
    if settings.jwt_algorithm == "HS256" and settings.jwt_secret.get_secret_value() == DEV_JWT_SECRET:
        log.warning("the gateway verifies tokens with the development JWT secret: set PIPELINE_JWT_SECRET")
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_body_bytes)
    app[GATEWAY] = Gateway(
        settings=settings,
        publisher=publisher,
        redis=redis,
        policy=policy,
        limiter=limiter
        or RedisRateLimiter(redis, limit=settings.rate_limit_requests, window_s=settings.rate_limit_window_s),
        idempotency=IdempotencyStore(redis, pending_ttl_s=int(settings.gateway_publish_timeout_s) + 30),
        checks=list(checks) if checks is not None else [broker_check(settings), redis_check(redis)],
        document=build_document(),
    )
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


def configure_logging() -> None:
    """Access lines as bare JSON on stdout; the gateway's other messages on stderr."""
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
    log.setLevel(logging.INFO)


async def build_app(settings: Settings) -> web.Application:
    """The gateway with real clients (Kafka producer, Redis); they are closed when the app shuts down."""
    import redis.asyncio as aioredis

    from gateway.commands import KafkaCommandPublisher

    publisher = await asyncio.to_thread(KafkaCommandPublisher.from_settings, settings)
    client = aioredis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        app = create_app(settings, publisher, client)
    except BaseException:
        await publisher.close()
        await client.aclose()
        raise

    async def close(_: web.Application) -> None:
        await publisher.close()
        await client.aclose()
        log.info("gateway stopped")

    app.on_cleanup.append(close)
    return app


def run(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT / SIGTERM, then finish in-flight requests (graceful shutdown) and close the clients."""
    configure_logging()
    setup_tracing("gateway", settings.otel_exporter, settings.otel_endpoint)
    host = host or settings.gateway_host
    port = settings.gateway_port if port is None else port
    log.info("gateway listening on http://%s:%d (broker %s, redis %s)", host, port, settings.kafka_bootstrap,
             settings.redis_url)  # fmt: skip
    web.run_app(build_app(settings), host=host, port=port, access_log=None, print=None, shutdown_timeout=10)
