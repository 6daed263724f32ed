"""Each worker's HTTP endpoint: ``/metrics`` (Prometheus), ``/health``, ``/ready`` and ``/live``.

The three health routes answer ``application/health+json`` in the shape and words of :mod:`common.health`
(``pass``/``warn``/``fail``; 200, or 503 on ``fail``), the gateway's too. The checks (:mod:`streams.checks`):

* ``/live``: ``uptime`` and ``progress:stalledFor`` (no source partition has had waiting messages without
  progress for ``PIPELINE_STALL_TIMEOUT_S``; the watchdog then also stops the process so it is restarted).
* ``/ready``: the critical checks: the broker (``kafka:responseTime``), the tables recovered, partitions held, lag
  under ``PIPELINE_READY_MAX_LAG`` on every source topic, and what the service needs to do its work (the view
  service: Redis).
* ``/health``: both, and what only warns: memory (``PIPELINE_WORKER_MEMORY_LIMIT_MB``), the circuit breakers, the
  payment provider's probe (payments), whether the views are whole (the view service).

Served on ``PIPELINE_WORKER_HTTP_PORT`` (0: no endpoint), on ``PIPELINE_WORKER_HTTP_HOST``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.health import CONTENT_TYPE, KINDS, Health, Kind, broker_check, memory_check, uptime_check
from common.settings import Settings
from streams.agents import ServiceApp
from streams.checks import breaker_check, readiness_checks, show_breaker, stall_check
from streams.watchdog import Watchdog

log = logging.getLogger(__name__)


def worker_health(built: ServiceApp, settings: Settings, watchdog: Watchdog) -> Health:
    """The checks of ``built``'s worker: liveness, readiness, its service's dependencies, memory, breakers."""
    app: Any = built.app

    def recovered() -> bool:
        return bool(app.tables.recovery.completed.is_set())

    def assigned() -> int:
        return len(app.consumer.assignment())

    return Health(
        service_id=built.name,
        description=f"order-pipeline {built.name} worker",
        live=[uptime_check(built.started_at), stall_check(watchdog, settings.stall_timeout_s)],
        checks=[
            broker_check(settings),
            *readiness_checks(recovered, assigned, watchdog, settings),
            *built.checks,
            memory_check(settings.worker_memory_limit_mb, "PIPELINE_WORKER_MEMORY_LIMIT_MB"),
            *(breaker_check(b) for b in built.breakers.values()),
        ],
    )


def health_handler(health: Health, kind: Kind) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler of one health route."""

    async def handle(request: web.Request) -> web.Response:
        status, body = await health.answer(kind)
        return web.Response(body=body, status=status, content_type=CONTENT_TYPE)

    return handle


def add_http_endpoint(built: ServiceApp, settings: Settings, watchdog: Watchdog) -> None:
    """Serve this worker's endpoint while it runs (nothing when the port is 0)."""
    if not settings.worker_http_port:
        return
    health = worker_health(built, settings, watchdog)

    async def metrics(request: web.Request) -> web.Response:
        for breaker in built.breakers.values():
            show_breaker(breaker)
        for runner in built.runners.values():
            runner.parking.refresh_depth()  # a restarted worker's gauges come from its recovered tables
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    web_app = web.Application()
    web_app.router.add_get("/metrics", metrics)
    for kind in KINDS:
        web_app.router.add_get(f"/{kind}", health_handler(health, kind))

    @built.app.task  # type: ignore[untyped-decorator]
    async def serve_http() -> None:
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.worker_http_host, settings.worker_http_port).start()
        log.info("%s worker endpoint on %s:%s", built.name, settings.worker_http_host, settings.worker_http_port)
