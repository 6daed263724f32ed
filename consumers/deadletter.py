"""Dead letters for confluent-kafka consumers: park a message in ``<topic>.dlq`` with the reason, wait for the ack.

The message keeps its original key, value and headers; ``dlq_*`` headers say why and where it came from
(the same headers the Faust agents write, see :mod:`streams.runtime`):

``dlq_error``             the reason (``NotSingleObjectEncoded: …``)
``dlq_agent``             who parked it (``projector``)
``dlq_attempts``          how many times it was tried
``dlq_source_topic``      where it was read …
``dlq_source_partition``  …
``dlq_source_offset``     …
``dlq_time``              when it was parked (RFC 3339, UTC)

:meth:`DeadLetters.send` returns only once the broker acknowledged the dead letter, so a consumer may then
store the message's offset: a dead letter is never lost between the two.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from confluent_kafka import KafkaError, Message, Producer

from consumers.toolkit import Consumed
from pipeline.envelope import dead_letter_headers as envelope_dead_letter_headers
from pipeline.settings import Settings
from producers.toolkit import producer_config
from streams.topics import UnknownTopic, topic

log = logging.getLogger(__name__)


class DeadLetterFailed(Exception):
    """The dead-letter topic did not acknowledge a message: its source offset must not be stored."""


def dead_letter_headers(
    message: Consumed, *, error: str, agent: str, attempts: int, now: datetime | None = None
) -> list[tuple[str, str | bytes | None]]:
    """The original headers followed by the ``dlq_*`` ones (:func:`pipeline.envelope.dead_letter_headers`)."""
    return envelope_dead_letter_headers(
        message.raw_headers,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        error=error,
        agent=agent,
        attempts=attempts,
        now=now,
    )


def dead_letter_topic(source_topic: str) -> str:
    """``orders.events.v1`` → ``orders.events.v1.dlq`` (declared topics only)."""
    try:
        spec = topic(source_topic)
    except UnknownTopic:
        return f"{source_topic}.dlq"
    if not spec.dead_letter:
        raise DeadLetterFailed(f"{source_topic} has no dead-letter topic")
    return spec.dead_letter_name


class DeadLetters:
    """Sends dead letters through one idempotent, acks=all producer; a context manager that flushes on exit."""

    def __init__(self, producer: Producer, *, agent: str, timeout_s: float = 30.0) -> None:
        self._producer = producer
        self._agent = agent
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self.sent = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, agent: str, **overrides: Any) -> DeadLetters:
        return cls(Producer(producer_config(settings, **overrides)), agent=agent, timeout_s=settings.delivery_timeout_s)

    def send(self, message: Consumed, error: str, *, attempts: int = 1) -> None:
        """Park ``message`` with ``error``; returns once the broker acknowledged it, else raises."""
        target = dead_letter_topic(message.topic)
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                with self._lock:
                    failures.append(err.str())

        self._producer.produce(
            target,
            key=message.raw_key if message.raw_key is not None else (message.key or "").encode() or None,
            value=message.value,
            headers=dead_letter_headers(message, error=error, agent=self._agent, attempts=attempts),
            on_delivery=on_delivery,
        )
        remaining = self._producer.flush(self._timeout_s)
        if remaining or failures:
            reason = "; ".join(failures) or f"not acknowledged within {self._timeout_s:.0f}s"
            raise DeadLetterFailed(f"dead letter of {message.topic}[{message.partition}]@{message.offset}: {reason}")
        self.sent += 1
        log.warning(
            "dead-lettered %s[%s]@%s to %s: %s", message.topic, message.partition, message.offset, target, error
        )

    def close(self) -> None:
        self._producer.flush(self._timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
