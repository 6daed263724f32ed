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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from confluent_kafka import KafkaError, Message, Producer

from consumers.toolkit import Consumed, EventConsumer
from pipeline.envelope import dead_letter_headers as envelope_dead_letter_headers
from pipeline.settings import Settings
from producers.toolkit import producer_config
from streams.topics import TOPICS, UnknownTopic, topic

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


# --- reading and replaying (``pipeline dlq``) -----------------------------------------------------------------

DLQ_HEADER_PREFIX = "dlq_"


@dataclass(frozen=True)
class DeadLetter:
    """A parked message as ``pipeline dlq list`` shows it: where it sits, where it came from, and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    original_headers: tuple[tuple[str, bytes], ...]
    """The message's own headers (its envelope), without the ``dlq_*`` ones."""
    error: str
    agent: str
    attempts: int
    source_topic: str
    source_partition: int
    source_offset: int
    parked_at: str

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "key": (self.key or b"").decode(errors="replace"),
            "source": f"{self.source_topic}:{self.source_partition}:{self.source_offset}",
            "agent": self.agent,
            "attempts": self.attempts,
            "error": self.error,
            "parked_at": self.parked_at,
            "bytes": len(self.value or b""),
        }


def dead_letter_topics() -> list[str]:
    """Every declared dead-letter topic."""
    return [spec.dead_letter_name for spec in TOPICS if spec.dead_letter]


def as_dead_letter(message: Consumed) -> DeadLetter:
    """Read the ``dlq_*`` headers of a message on a dead-letter topic."""
    raw = tuple((k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in message.raw_headers)
    dlq = {k: v.decode(errors="replace") for k, v in raw if k.startswith(DLQ_HEADER_PREFIX)}
    source = dlq.get("dlq_source_topic") or message.topic.removesuffix(".dlq")
    return DeadLetter(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.raw_key,
        value=message.value,
        original_headers=tuple((k, v) for k, v in raw if not k.startswith(DLQ_HEADER_PREFIX)),
        error=dlq.get("dlq_error", "(no reason recorded)"),
        agent=dlq.get("dlq_agent", "?"),
        attempts=int(dlq.get("dlq_attempts", "1") or 1),
        source_topic=source,
        source_partition=int(dlq.get("dlq_source_partition", "-1") or -1),
        source_offset=int(dlq.get("dlq_source_offset", "-1") or -1),
        parked_at=dlq.get("dlq_time", ""),
    )


def read_dead_letters(settings: Settings, topics: Sequence[str] | None = None) -> list[DeadLetter]:
    """Every message now in the given dead-letter topics (default: all of them), oldest first per partition."""
    names = list(topics) if topics else dead_letter_topics()
    with EventConsumer.reader(settings) as consumer:
        return [as_dead_letter(message) for message in consumer.read_log(names, idle_timeout=10)]


def replay(settings: Settings, letters: Iterable[DeadLetter]) -> int:
    """Publish each letter back to its source topic (original key, value and headers, plus ``dlq_replayed_from``)
    and wait for every ack; returns how many. A replayed message that fails again is parked again, with
    ``dlq_attempts`` counting on; consumers deduplicate by event id, so replaying one twice is harmless."""
    producer = Producer(producer_config(settings))
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    count = 0
    for letter in letters:
        topic(letter.source_topic)  # an undeclared source is refused before anything is sent
        headers: list[tuple[str, str | bytes | None]] = [
            *letter.original_headers,
            ("dlq_replayed_from", letter.position.encode()),
            ("dlq_attempts", str(letter.attempts).encode()),
        ]
        producer.produce(letter.source_topic, key=letter.key, value=letter.value, headers=headers,
                         on_delivery=on_delivery)  # fmt: skip
        count += 1
    remaining = producer.flush(settings.delivery_timeout_s)
    if remaining or failures:
        raise DeadLetterFailed(f"replay not acknowledged: {'; '.join(failures) or f'{remaining} pending'}")
    return count
