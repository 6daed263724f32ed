"""Each worker's HTTP endpoint: ``/metrics`` (Prometheus), ``/health``, ``/ready`` and ``/live``.

* ``/health``: every check with its status and timing: the broker, Redis, this process's memory, and for the
  payments worker the payment provider (its circuit breaker must not be open).
* ``/ready`` (200 or 503): the worker can take traffic: its tables are recovered, it holds partitions, and
  its group's lag on every source topic is under ``PIPELINE_READY_MAX_LAG``.
* ``/live`` (200 or 503): it is not stalled: no source partition has had waiting messages without progress
  for ``PIPELINE_STALL_TIMEOUT_S`` (the watchdog then also stops the process so it is restarted).

Served on ``PIPELINE_WORKER_HTTP_PORT`` (0: no endpoint), on ``PIPELINE_WORKER_HTTP_HOST``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.health import Check, broker_check, health_report, memory_check, redis_check
from common.settings import Settings
from common.telemetry import BREAKER_STATE
from streams.agents import ServiceApp
from streams.resilience import BreakerState, CircuitBreaker
from streams.watchdog import Watchdog

log = logging.getLogger(__name__)

BREAKER_LEVEL = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def breaker_check(breaker: CircuitBreaker) -> Check:
    async def probe() -> None:
        state = breaker.state
        BREAKER_STATE.labels(breaker.name).set(BREAKER_LEVEL[state])
        if state is BreakerState.OPEN:
            snapshot = breaker.snapshot()
            raise ConnectionError(f"circuit open after {snapshot.consecutive_failures} failed calls")

    return Check(breaker.name, probe, critical=False)


def readiness(built: ServiceApp, watchdog: Watchdog, settings: Settings) -> dict[str, Any]:
    """Why the worker is (not) ready: recovery, assignment, lag."""
    app: Any = built.app
    recovered = bool(app.tables.recovery.completed.is_set())
    assigned = len(app.consumer.assignment()) if recovered else 0
    lag = watchdog.lag
    problems = []
    if not recovered:
        problems.append("table recovery not finished")
    if recovered and not assigned:
        problems.append("holds no partitions")
    if lag is None:
        problems.append("lag not measured yet")
    elif over := {t: n for t, n in lag.items() if n > settings.ready_max_lag}:
        problems.append(f"lag over {settings.ready_max_lag}: {over}")
    return {"ready": not problems, "problems": problems, "partitions": assigned, "lag": lag}


def add_http_endpoint(built: ServiceApp, settings: Settings, watchdog: Watchdog) -> None:
    """Serve this worker's endpoint while it runs (nothing when the port is 0)."""
    if not settings.worker_http_port:
        return
    redis = aioredis.Redis.from_url(settings.redis_url)
    checks = [
        broker_check(settings),
        redis_check(redis),
        memory_check(settings.worker_memory_limit_mb),
        *(breaker_check(b) for b in built.breakers.values()),
    ]

    async def metrics(request: web.Request) -> web.Response:
        for breaker in built.breakers.values():
            BREAKER_STATE.labels(breaker.name).set(BREAKER_LEVEL[breaker.state])
        for runner in built.runners.values():
            runner.parking.refresh_depth()  # a restarted worker's gauges come from its recovered tables
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(request: web.Request) -> web.Response:
        report = await health_report(checks, time.monotonic() - built.started_at)
        report["worker"] = {"service": built.name, **readiness(built, watchdog, settings)}
        return web.json_response(report, status=200 if report["status"] == "healthy" else 503)

    async def ready(request: web.Request) -> web.Response:
        report = await health_report((c for c in checks if c.critical), time.monotonic() - built.started_at)
        state = readiness(built, watchdog, settings)
        ok = report["status"] == "healthy" and state["ready"]
        report.update(status="ready" if ok else "not ready", worker=state)
        return web.json_response(report, status=200 if ok else 503)

    async def live(request: web.Request) -> web.Response:
        stalled_for = watchdog.stalled_for()
        alive = stalled_for < settings.stall_timeout_s
        body = {"status": "alive" if alive else "stalled", "uptime_s": round(time.monotonic() - built.started_at, 3),
                "stalled_for_s": round(stalled_for, 3)}  # fmt: skip
        return web.json_response(body, status=200 if alive else 503)

    web_app = web.Application()
    web_app.router.add_get("/metrics", metrics)
    web_app.router.add_get("/health", health)
    web_app.router.add_get("/ready", ready)
    web_app.router.add_get("/live", live)

    @built.app.task  # type: ignore[untyped-decorator]
    async def serve_http() -> None:
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.worker_http_host, settings.worker_http_port).start()
        log.info("%s worker endpoint on %s:%s", built.name, settings.worker_http_host, settings.worker_http_port)
