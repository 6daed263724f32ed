"""Health checks of every process (gateway, workers): each a named probe with a timeout; ``/health`` runs all,
``/ready`` the critical ones. The report has the shape of the seed's HealthCheckService:
``{status, checks: {name: {status, duration_ms, critical, error?}}, uptime_s}``.

A probe is an async function that returns when its dependency answers and raises otherwise. Probes run
concurrently, each bounded by its timeout, so a hung dependency costs one timeout, not the sum of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

CHECK_TIMEOUT_S = 2.0

Probe = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Check:
    name: str
    probe: Probe
    critical: bool = True
    timeout_s: float = CHECK_TIMEOUT_S


async def run_check(check: Check) -> dict[str, Any]:
    """``{status, duration_ms, critical, error?}`` of one check."""
    started = time.perf_counter()
    error: str | None = None
    try:
        await asyncio.wait_for(check.probe(), check.timeout_s)
    except TimeoutError:
        error = f"no answer within {check.timeout_s:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure makes the check unhealthy, with its reason
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    result: dict[str, Any] = {
        "status": "unhealthy" if error else "healthy",
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "critical": check.critical,
    }
    if error:
        result["error"] = error
    return result


async def health_report(checks: Iterable[Check], uptime_s: float) -> dict[str, Any]:
    """The report of ``checks``: healthy only when every one of them is."""
    chosen = list(checks)
    results = await asyncio.gather(*(run_check(c) for c in chosen))
    by_name = {check.name: result for check, result in zip(chosen, results, strict=True)}
    healthy = all(r["status"] == "healthy" for r in results)
    return {"status": "healthy" if healthy else "unhealthy", "checks": by_name, "uptime_s": round(uptime_s, 3)}


def redis_check(redis: aioredis.Redis, *, critical: bool = True) -> Check:
    async def probe() -> None:
        if not await redis.ping():
            raise ConnectionError("PING not answered with PONG")

    return Check("redis", probe, critical)


def broker_check(settings: Settings, *, critical: bool = True, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """The broker answers a metadata request with at least one broker, within ``timeout_s``."""
    from common.admin import admin_client

    quiet = logging.getLogger("common.health.librdkafka")  # a probe of a dead broker must not flood the log
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    admin = admin_client(
        settings, logger=quiet, **{"client.id": f"{settings.client_id}-{settings.service_name}-health"}
    )

    async def probe() -> None:
        metadata = await asyncio.to_thread(admin.list_topics, timeout=timeout_s)
        if not metadata.brokers:
            raise ConnectionError("no brokers in metadata")

    return Check("broker", probe, critical, timeout_s + 0.5)


def memory_check(limit_mb: float, *, critical: bool = False) -> Check:
    """This process's resident memory (Linux /proc) stays under ``limit_mb``."""

    async def probe() -> None:
        rss_mb = resident_mb()
        if rss_mb > limit_mb:
            raise MemoryError(f"resident {rss_mb:.0f} MiB > {limit_mb:.0f} MiB")

    return Check("memory", probe, critical)


def resident_mb() -> float:
    """Resident set size of this process in MiB (0 where /proc is missing)."""
    import os

    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
