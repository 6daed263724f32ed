"""Health of every process (gateway, workers) in one vocabulary: the IETF health-check response format
(draft-inadarei-api-health-check), served as ``application/health+json`` on ``/health``, ``/ready`` and ``/live``.

A document is ``{status, serviceId, description, output?, checks}``: ``status`` is ``pass``, ``warn`` or ``fail``,
and ``checks`` maps ``"component:measurement"`` to a list of ``{componentType?, observedValue?, observedUnit?,
status, time, output?}``. :class:`Health` builds it for both the gateway and the workers, so the two cannot drift
apart. The rules, the same everywhere:

* A check is a named probe with a timeout. A probe that returns ``None`` passed, and the time it took is what was
  observed (``ms``: a dependency's response time); one that returns an :class:`Observation` says itself what it
  saw; one that raises or outlasts its timeout failed, with the reason as its ``output``.
* A check that is not critical never fails: where a critical one would say ``fail`` it says ``warn``. The process
  still does its work without it (memory over its limit, an open circuit breaker, a provider not answering).
* The document's status is the worst of its checks'; HTTP 200 for ``pass`` and ``warn``, 503 for ``fail``.
* ``/live`` runs the liveness checks, ``/ready`` the critical checks, ``/health`` all of them, so ``/health``
  fails whenever ``/ready`` or ``/live`` does, and warns about the rest.

Probes run concurrently, each bounded by its timeout, so a hung dependency costs one timeout, not the sum of them.

:func:`kafka_unreachable` and :func:`redis_unreachable` are the blocking one-shot probes a command runs before it
builds its clients: each says in a few words why its dependency cannot be used, within a bounded time, and logs
nothing while it tries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from common.settings import Settings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

CHECK_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 3.0
"""The longest a one-shot probe takes, however its dependency fails (refused at once, or silent)."""

CONTENT_TYPE = "application/health+json"

Status = Literal["pass", "warn", "fail"]
PASS: Status = "pass"
WARN: Status = "warn"
FAIL: Status = "fail"
STATUSES: tuple[Status, ...] = (PASS, WARN, FAIL)
"""Best first: the worst of a document's checks is its status."""

Kind = Literal["health", "ready", "live"]
KINDS: tuple[Kind, ...] = ("health", "ready", "live")
"""The three documents, each served on ``/<kind>``."""

ComponentType = Literal["component", "datastore", "system"]


def worst(statuses: Iterable[Status]) -> Status:
    """The worst of ``statuses`` (``pass`` when there are none)."""
    return max(statuses, key=STATUSES.index, default=PASS)


def http_status(status: Status) -> int:
    """200 for ``pass`` and ``warn`` (the process takes traffic), 503 for ``fail``."""
    return 503 if status == FAIL else 200


@dataclass(frozen=True)
class Observation:
    """What a probe saw, when it has more to say than "it answered within the timeout"."""

    status: Status = PASS
    value: Any = None
    """The ``observedValue``: any JSON value (a number, a word, an object)."""
    unit: str | None = None
    output: str | None = None
    """Why the status is not ``pass`` (left out of a passing check)."""


Probe = Callable[[], Awaitable[Observation | None]]


@dataclass(frozen=True)
class Check:
    name: str
    """``component:measurement`` (``redis:responseTime``), or one word (``uptime``)."""
    probe: Probe
    critical: bool = True
    """A failure fails the process (and ``/ready``); otherwise the check warns and only ``/health`` runs it."""
    timeout_s: float = CHECK_TIMEOUT_S
    component_type: ComponentType | None = None


def failure_reason(exc: BaseException) -> str:
    """``Type: message`` of an exception, or its type alone when it says nothing."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def run_check(check: Check) -> dict[str, Any]:
    """The check object of one run of ``check``: ``{componentType?, observedValue?, observedUnit?, status, time,
    output?}``."""
    started = time.perf_counter()
    seen: Observation | None
    try:
        seen = await asyncio.wait_for(check.probe(), check.timeout_s)
    except TimeoutError:
        seen = Observation(FAIL, output=f"no answer within {check.timeout_s:g}s")
    except Exception as exc:  # noqa: BLE001 - any failure fails the check, with its reason
        seen = Observation(FAIL, output=failure_reason(exc))
    if seen is None:  # it answered: how long it took is what was observed
        seen = Observation(value=round((time.perf_counter() - started) * 1000, 2), unit="ms")
    status = WARN if seen.status == FAIL and not check.critical else seen.status
    entry: dict[str, Any] = {}
    if check.component_type is not None:
        entry["componentType"] = check.component_type
    if seen.value is not None:
        entry["observedValue"] = seen.value
        if seen.unit is not None:
            entry["observedUnit"] = seen.unit
    entry["status"] = status
    entry["time"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if status != PASS and seen.output:
        entry["output"] = seen.output
    return entry


def health_document(service_id: str, description: str, results: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The document of some check objects (``(name, object)`` pairs): its status is the worst of theirs, and its
    ``output`` names every check that did not pass, with why."""
    checks: dict[str, list[dict[str, Any]]] = {}
    for name, entry in results:
        checks.setdefault(name, []).append(entry)  # one name, several instances: a list, as the draft has it
    entries = [(name, entry) for name, listed in checks.items() for entry in listed]
    status = worst(entry["status"] for _, entry in entries)
    document: dict[str, Any] = {"status": status, "serviceId": service_id, "description": description}
    if status != PASS:
        document["output"] = "; ".join(
            f"{name} {entry['status']}" + (f": {entry['output']}" if "output" in entry else "")
            for name, entry in entries
            if entry["status"] != PASS
        )
    document["checks"] = checks
    return document


def render(document: dict[str, Any]) -> bytes:
    """The document as the body of an ``application/health+json`` answer."""
    return json.dumps(document, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class Health:
    """One process's ``/live``, ``/ready`` and ``/health``: which checks each runs, and their documents."""

    service_id: str
    description: str
    live: Sequence[Check]
    """Liveness: the process itself makes progress (never a dependency: a restart would not bring it back)."""
    checks: Sequence[Check]
    """Dependencies and readiness; the critical ones are ``/ready``."""

    def chosen(self, kind: Kind) -> list[Check]:
        if kind == "live":
            return list(self.live)
        if kind == "ready":
            return [check for check in self.checks if check.critical]
        return [*self.live, *self.checks]

    async def document(self, kind: Kind) -> dict[str, Any]:
        """The document of ``kind``'s checks, run concurrently."""
        chosen = self.chosen(kind)
        results = await asyncio.gather(*(run_check(check) for check in chosen))
        return health_document(self.service_id, self.description, zip((c.name for c in chosen), results, strict=True))

    async def answer(self, kind: Kind) -> tuple[int, bytes]:
        """HTTP status and body of ``kind``'s answer (its content type: :data:`CONTENT_TYPE`)."""
        document = await self.document(kind)
        return http_status(document["status"]), render(document)


# --- the checks every process has ---------------------------------------------------------------------------


def uptime_check(started: float) -> Check:
    """Seconds since ``started`` (a ``time.monotonic()`` reading); it always passes: an answer is the point."""

    async def probe() -> Observation:
        return Observation(value=round(time.monotonic() - started, 3), unit="s")

    return Check("uptime", probe, component_type="system")


def redis_check(redis: aioredis.Redis, *, critical: bool = True) -> Check:
    """Redis answers PING; observed: the round trip."""

    async def probe() -> None:
        if not await redis.ping():
            raise ConnectionError("PING not answered with PONG")

    return Check("redis:responseTime", probe, critical, component_type="datastore")


def broker_check(settings: Settings, *, critical: bool = True, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """The broker answers a metadata request with at least one broker, within ``timeout_s``; observed: the
    round trip."""
    from common.admin import admin_client

    admin = admin_client(
        settings, logger=quiet_logger(), **{"client.id": f"{settings.client_id}-{settings.service_name}-health"}
    )

    async def probe() -> None:
        metadata = await asyncio.to_thread(admin.list_topics, timeout=timeout_s)
        if not metadata.brokers:
            raise ConnectionError("no brokers in metadata")

    return Check("kafka:responseTime", probe, critical, timeout_s + 0.5, component_type="datastore")


def memory_check(limit_mb: float, setting: str, *, critical: bool = False) -> Check:
    """This process's resident memory (Linux /proc) against ``limit_mb`` (the value of ``setting``); observed: the
    resident MiB. Over the limit it fails, which, not critical, is a warning: the process still works."""

    async def probe() -> Observation:
        rss_mb = round(resident_mb(), 1)
        if rss_mb > limit_mb:
            output = f"resident {rss_mb:.0f} MiB over the {limit_mb:g} MiB limit ({setting})"
            return Observation(FAIL, rss_mb, "MiB", output)
        return Observation(PASS, rss_mb, "MiB")

    return Check("memory:utilization", probe, critical, component_type="system")


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
