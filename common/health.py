"""Health checks of every process (gateway, workers): each a named probe with a timeout; ``/health`` runs all,
``/ready`` the critical ones. The report has the shape of the seed's HealthCheckService:
``{status, checks: {name: {status, duration_ms, critical, error?}}, uptime_s}``.

A probe is an async function that returns when its dependency answers and raises otherwise. Probes run
concurrently, each bounded by its timeout, so a hung dependency costs one timeout, not the sum of them.

:func:`kafka_unreachable` and :func:`redis_unreachable` are the blocking one-shot probes a command runs before it
builds its clients: each says in a few words why its dependency cannot be used, within a bounded time, and logs
nothing while it tries.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

CHECK_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 3.0
"""The longest a one-shot probe takes, however its dependency fails (refused at once, or silent)."""

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

    admin = admin_client(
        settings, logger=quiet_logger(), **{"client.id": f"{settings.client_id}-{settings.service_name}-health"}
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


# --- one-shot probes ----------------------------------------------------------------------------------------


def quiet_logger() -> logging.Logger:
    """The logger of a client that probes: a probe expects refused connections, and must not flood the log."""
    quiet = logging.getLogger("common.health.librdkafka")
    if not quiet.handlers:
        quiet.propagate = False
        quiet.addHandler(logging.NullHandler())
    return quiet


def bootstrap_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port`` pairs of a ``bootstrap.servers`` list (``PLAINTEXT://`` prefixes and ``[v6]`` hosts allowed).

    Raises :class:`ValueError` naming an entry that is not ``host:port``."""
    addresses = []
    for entry in filter(None, (item.strip() for item in bootstrap.split(","))):
        host, _, port = entry.rpartition("://")[2].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{entry!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    if not addresses:
        raise ValueError("no bootstrap servers")
    return addresses


def _connect_problem(address: tuple[str, int], timeout_s: float) -> str | None:
    """Why a TCP connection to ``address`` fails (``None``: it opens)."""
    try:
        with socket.create_connection(address, timeout=max(timeout_s, 0.05)):
            return None
    except TimeoutError:
        return f"no answer within {timeout_s:.2g}s"
    except OSError as exc:  # refused, unresolvable, unreachable: the system's own words
        return (exc.strerror or str(exc)).lower()


def _unconnectable(addresses: Sequence[tuple[str, int]], timeout_s: float) -> str | None:
    """Why none of ``addresses`` opens a TCP connection (``None``: at least one does); tried all at once."""
    with ThreadPoolExecutor(max_workers=len(addresses)) as pool:
        problems = list(pool.map(lambda address: _connect_problem(address, timeout_s), addresses))
    if any(problem is None for problem in problems):
        return None
    if len(set(problems)) == 1:
        return problems[0]
    return "; ".join(f"{host}:{port}: {problem}" for (host, port), problem in zip(addresses, problems, strict=True))


def kafka_unreachable(settings: Settings, *, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Kafka cluster at ``settings.kafka_bootstrap`` cannot be used (``None``: it can), in at most
    ``timeout_s``.

    A bootstrap server must accept a TCP connection (which tells a refused port or an unknown host at once), answer
    a metadata request, and at least one of the brokers it names must accept connections too (a broker that
    advertises an address this machine cannot reach answers the probe, then leaves every producer waiting)."""
    from confluent_kafka import KafkaError, KafkaException

    from common.admin import admin_client

    deadline = time.monotonic() + timeout_s
    try:
        addresses = bootstrap_addresses(settings.kafka_bootstrap)
    except ValueError as exc:
        return str(exc)
    problem = _unconnectable(addresses, timeout_s)
    if problem is not None:
        return problem
    admin = admin_client(settings, logger=quiet_logger(), **{"client.id": f"{settings.client_id}-probe"})
    wait_s = max(deadline - time.monotonic(), 0.1)
    try:
        metadata = admin.list_topics(timeout=wait_s)
    except KafkaException as exc:
        error = exc.args[0]
        silent = error.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT)  # what a metadata timeout says
        return f"accepts connections but answers no metadata request within {wait_s:.2g}s" + (
            "" if silent else f" ({error.str()})"
        )
    advertised = sorted({(str(b.host), int(b.port)) for b in metadata.brokers.values() if b.host})
    if not advertised:
        return "answered with no brokers in its metadata"
    problem = _unconnectable(advertised, max(deadline - time.monotonic(), 0.1))
    if problem is not None:
        names = ", ".join(f"{host}:{port}" for host, port in advertised)
        return f"answered, but the brokers it advertises ({names}) cannot be reached: {problem}"
    return None


def redis_unreachable(url: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Redis at ``url`` does not answer PING (``None``: it does), in at most about ``timeout_s``."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:  # one try: the client's own retries would multiply the timeout
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
    except ValueError as exc:
        return f"not a Redis URL: {exc}"
    try:
        client.ping()
    except redis.TimeoutError:
        return f"no answer within {timeout_s:.2g}s"
    except redis.RedisError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        return str(exc).rstrip(".")
    finally:
        client.close()
    return None


def redacted_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: fit for an error message or a log line."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
