"""What a command needs to reach before it connects: the broker, Redis; each probed once, in bounded time.

A command that talks to Kafka or Redis calls :func:`require` once its own arguments are checked (a malformed call
is refused for what it is, whether the broker is up or not) and before it builds a client. A dependency that does
not answer ends the command within seconds, with one line naming what could not be reached and where. The
clients themselves would wait for their own timeouts and log every retry meanwhile (librdkafka: 30 s and a
hundred lines). :func:`failure_line` turns a client error that escapes a command later (the broker leaving
mid-command) into the same kind of line, for every command at once (``main``'s group calls it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.health import PROBE_TIMEOUT_S, kafka_unreachable, redacted_url, redis_unreachable
from common.settings import LIBRDKAFKA_LOGGER, Settings
from pipeline.cli.errors import CliError


@dataclass(frozen=True)
class Dependency:
    """Something a command cannot work without: what it is, where, and how to ask whether it answers."""

    name: str
    address: str
    server: str
    """Two dependencies on one server (two Redis databases) are probed once."""
    probe: Callable[[float], str | None]
    """Why it cannot be used (``None``: it can), given the seconds it may take."""


def kafka_at(settings: Settings) -> Dependency:
    """The Kafka cluster at ``settings.kafka_bootstrap``."""
    return Dependency(
        "Kafka",
        settings.kafka_bootstrap,
        f"kafka:{settings.kafka_bootstrap}",
        lambda timeout_s: kafka_unreachable(settings, timeout_s=timeout_s),
    )


def redis_at(url: str) -> Dependency:
    """The Redis at ``url`` (shown without its password)."""
    parts = urlsplit(url)
    return Dependency(
        "Redis",
        redacted_url(url),
        f"redis:{parts.scheme}://{parts.netloc}",
        lambda timeout_s: redis_unreachable(url, timeout_s=timeout_s),
    )


def unreachable(*dependencies: Dependency, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """``cannot reach <name> at <address> (<why>)`` for each of ``dependencies`` that does not answer; all are
    probed at once, so the answer takes the slowest probe's time, not the sum."""
    first_of_server: dict[str, Dependency] = {}
    for dependency in dependencies:
        first_of_server.setdefault(dependency.server, dependency)
    chosen = list(first_of_server.values())
    if not chosen:
        return []
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        reasons = list(pool.map(lambda d: d.probe(timeout_s), chosen))
    return [f"cannot reach {d.name} at {d.address} ({why})" for d, why in zip(chosen, reasons, strict=True) if why]


def require(*dependencies: Dependency) -> None:
    """Return once every one of ``dependencies`` answers; else fail the command with one line naming each that
    does not. Also keeps the clients the command builds next from flooding the terminal."""
    problems = unreachable(*dependencies)
    if problems:
        raise CliError("; ".join(problems))
    quiet_client_logs()


def quiet_client_logs() -> None:
    """librdkafka's log lines (errors only, see ``main``) at most once per 5 s, with how many were held back:
    a broker that leaves while a command runs is worth a line, not one per reconnect attempt."""
    from common.telemetry import RepeatedRecords

    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not any(isinstance(f, RepeatedRecords) for f in logger.filters):
        logger.addFilter(RepeatedRecords(window_s=5.0))


def failure_line(exc: Exception, settings: Settings) -> str | None:
    """The one line for a client error that escaped a command (``None``: not a client error, a bug to show whole).

    Imports the clients' errors only now: an exception of a client's class exists only where it was imported."""
    import redis
    from confluent_kafka import KafkaError, KafkaException

    from consumers.deadletter import DeadLetterFailed
    from consumers.toolkit import ConsumeError
    from producers.toolkit import DeliveryFailed

    at = f"Kafka at {settings.kafka_bootstrap}"
    if isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        return f"{at}: {error.str() if isinstance(error, KafkaError) else exc}"
    if isinstance(exc, ConsumeError | DeadLetterFailed | DeliveryFailed):
        return f"{exc} ({at})"
    if isinstance(exc, redis.RedisError):
        return f"Redis: {exc}"  # redis-py names the host and port it was talking to
    return None
