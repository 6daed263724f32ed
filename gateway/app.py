"""The HTTP API gateway: the pipeline's front door (aiohttp); this module assembles it.

Writes become **commands on Kafka command topics** (through :class:`gateway.commands.CommandPublisher`, which
wraps :class:`producers.toolkit.EventPublisher`) and are answered ``202 Accepted`` once the broker acknowledged
them; reads come **only from the Redis views** (:mod:`streams.views.read`). Nothing else is touched.

The parts: :mod:`gateway.middleware` (one concern each, stacked here in :data:`MIDDLEWARES`),
:mod:`gateway.handlers` (one module per resource, routed here in :data:`ROUTES`), :mod:`gateway.service` (the
dependencies and shared state handlers use), :mod:`gateway.errors` and :mod:`gateway.parsing`.

:func:`create_app` takes its dependencies (settings, command publisher, Redis) so tests build it with
stand-ins; :func:`run` is the composition root behind ``pipeline gateway``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from common.health import Check, Health, broker_check, memory_check, redis_check, uptime_check
from common.settings import Settings
from common.telemetry import setup_tracing
from gateway.auth import TokenPolicy
from gateway.clientaddr import parse_networks
from gateway.handlers import commands, dashboard, docs, health, orders, users
from gateway.idempotency import IdempotencyStore
from gateway.middleware import (
    SERVER,
    access_log,
    access_log_middleware,
    errors_middleware,
    guard_middleware,
    metrics_middleware,
    rate_limit_headers_middleware,
    secure_headers,
    tracing_middleware,
)
from gateway.openapi import build_document
from gateway.ratelimit import RateLimiter, RedisRateLimiter
from gateway.receipts import ReceiptStore
from gateway.service import GATEWAY, Gateway

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

ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", "/metrics", health.metrics),
    ("GET", "/health", health.health),
    ("GET", "/ready", health.ready),
    ("GET", "/live", health.live),
    ("GET", "/openapi.json", health.openapi),
    ("GET", "/docs", docs.page),
    ("GET", "/docs/{asset}", docs.asset),
    ("POST", "/api/users", users.register_user),
    ("GET", "/api/users", users.search_users),
    ("GET", "/api/users/{user_id}", users.get_user),
    ("PATCH", "/api/users/{user_id}", users.update_user_profile),
    ("POST", "/api/users/{user_id}/email", users.change_email),
    ("POST", "/api/users/{user_id}/deactivate", users.deactivate_user),
    ("POST", "/api/users/{user_id}/reactivate", users.reactivate_user),
    ("POST", "/api/users/{user_id}/logins", users.record_login),
    ("GET", "/api/users/{user_id}/stats", users.get_user_stats),
    ("POST", "/api/orders", orders.place_order),
    ("GET", "/api/orders/{order_id}", orders.get_order),
    ("GET", "/api/dashboard", dashboard.dashboard),
    ("GET", "/api/commands/{command_id}", commands.get_command),
)


def create_app(
    settings: Settings,
    publisher: CommandPublisher,
    redis: aioredis.Redis,
    *,
    limiter: RateLimiter | None = None,
    checks: Sequence[Check] | None = None,
) -> web.Application:
    """The gateway as an aiohttp app; the caller owns (and closes) ``publisher`` and ``redis``.

    ``limiter`` defaults to the Redis sliding window; ``checks`` to the broker (metadata) and Redis (PING), both
    critical, and this process's memory (``PIPELINE_GATEWAY_MEMORY_LIMIT_MB``), which only warns; ``/live`` is
    its uptime (the process answers).
    Raises :class:`gateway.auth.AuthConfigError` when the token settings cannot work (no secret, a short one, or
    the development default this repository once published).
    """
    policy = TokenPolicy.from_settings(settings)
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_body_bytes)
    app.on_response_prepare.append(secure_headers)
    app[GATEWAY] = Gateway(
        settings=settings,
        publisher=publisher,
        redis=redis,
        policy=policy,
        limiter=limiter
        or RedisRateLimiter(redis, limit=settings.rate_limit_requests, window_s=settings.rate_limit_window_s),
        idempotency=IdempotencyStore(redis, pending_ttl_s=int(settings.gateway_publish_timeout_s) + 30),
        receipts=ReceiptStore(redis),
        health=Health(
            service_id="gateway",
            description="order-pipeline gateway",
            live=[uptime_check(time.monotonic())],
            checks=list(checks) if checks is not None else default_checks(settings, redis),
        ),
        document=build_document(),
        trusted_proxies=parse_networks(settings.gateway_trusted_proxies),
    )
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app


def default_checks(settings: Settings, redis: aioredis.Redis) -> list[Check]:
    """The broker and Redis (critical: the gateway writes to one and reads from the other) and memory."""
    return [
        broker_check(settings),
        redis_check(redis),
        memory_check(settings.gateway_memory_limit_mb, "PIPELINE_GATEWAY_MEMORY_LIMIT_MB"),
    ]


def hide_server_version() -> None:
    """Name the server without versions also where the app has no say (process-wide, so :func:`run` calls it).

    aiohttp answers a request its HTTP parser refuses (a malformed request line or header: 400) before any app
    code runs, so :func:`gateway.middleware.secure_headers` never sees that answer, and aiohttp fills its
    ``Server`` header from ``aiohttp.web_response.SERVER_SOFTWARE`` (``Python/3.11 aiohttp/3.14.5``). Replacing
    that module default is the one way in (aiohttp 3.14); ``tests/unit/test_gateway_requests.py`` pins it with a
    malformed request.
    """
    import aiohttp.web_response

    aiohttp.web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]  # imported there from .http


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
    TokenPolicy.from_settings(settings)  # refuse unusable token settings before anything starts
    hide_server_version()
    configure_logging()
    setup_tracing("gateway", settings.otel_exporter, settings.otel_endpoint)
    host = host or settings.gateway_host
    port = settings.gateway_port if port is None else port
    log.info("gateway listening on http://%s:%d (broker %s, redis %s, trusted proxies: %s)", host, port,
             settings.kafka_bootstrap, settings.redis_url, settings.gateway_trusted_proxies or "none")  # fmt: skip
    web.run_app(build_app(settings), host=host, port=port, access_log=None, print=None, shutdown_timeout=10)
