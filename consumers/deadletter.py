"""Dead letters for confluent-kafka consumers: park a message in ``<topic>.dlq`` with the reason, wait for the ack.

The message keeps its original key, value and headers; ``dlq_*`` headers say why and where it came from
(the same headers the Faust agents write, see :mod:`streams.outbox`):

``dlq_error``             the reason (``NotConfluentFramed: …``)
``dlq_agent``             who parked it (``fold_order_views``)
``dlq_attempts``          how many times it was tried
``dlq_source_topic``      where it was read …
``dlq_source_partition``  …
``dlq_source_offset``     …
``dlq_origin``            where the message was first read (``topic:partition:offset``; a replay keeps it)
``dlq_parked_behind``     the origin of the dead letter its key waits for (a message parked behind another)
``dlq_time``              when it was parked (RFC 3339, UTC)

A Faust agent parks a key with its message (:mod:`streams.domain.parking`): the key's later messages are
dead-lettered behind it until a replay of the head is handled. :func:`read_parked_keys` reads those queues
back from the services' changelogs, so ``pipeline dlq list`` shows each dead letter's state and
``pipeline dlq replay`` sends a key's dead letters in their queue's order.

:meth:`DeadLetters.send` returns only once the broker acknowledged the dead letter, so a consumer may then
store the message's offset: a dead letter is never lost between the two.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from confluent_kafka import KafkaError, Message, Producer

from common.envelope import dead_letter_headers as envelope_dead_letter_headers
from common.settings import Settings
from consumers.toolkit import Consumed, ConsumeError, EventConsumer
from producers.toolkit import producer_config
from schemas.topics import SAGA_SERVICES, TOPICS, UnknownTopic, parked_keys_table, topic
from streams.domain.parking import Position

log = logging.getLogger(__name__)


class DeadLetterFailed(Exception):
    """The dead-letter topic did not acknowledge a message: its source offset must not be stored."""


def dead_letter_headers(
    message: Consumed, *, error: str, agent: str, attempts: int, now: datetime | None = None
) -> list[tuple[str, str | bytes | None]]:
    """The original headers followed by the ``dlq_*`` ones (:func:`common.envelope.dead_letter_headers`)."""
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
    origin: Position
    """Where the message was first read (a failed replay's dead letter names its original's)."""
    parked_behind: Position | None = None
    """The origin of the dead letter its key waited for, when it was parked behind one."""

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def key_text(self) -> str | None:
        return self.key.decode(errors="replace") if self.key else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "key": (self.key or b"").decode(errors="replace"),
            "source": f"{self.source_topic}:{self.source_partition}:{self.source_offset}",
            "origin": self.origin.to_header(),
            "parked_behind": self.parked_behind.to_header() if self.parked_behind else None,
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
    source_partition = int(dlq.get("dlq_source_partition", "-1") or -1)
    source_offset = int(dlq.get("dlq_source_offset", "-1") or -1)
    origin = Position.from_header(dlq.get("dlq_origin", "")) or Position(source, source_partition, source_offset)
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
        source_partition=source_partition,
        source_offset=source_offset,
        parked_at=dlq.get("dlq_time", ""),
        origin=origin,
        parked_behind=Position.from_header(dlq.get("dlq_parked_behind", "")),
    )


def read_dead_letters(settings: Settings, topics: Sequence[str] | None = None) -> list[DeadLetter]:
    """Every message now in the given dead-letter topics (default: all of them), oldest first per partition."""
    names = list(topics) if topics else dead_letter_topics()
    with EventConsumer.reader(settings) as consumer:
        return [as_dead_letter(message) for message in consumer.read_log(names, idle_timeout=10)]


ParkedQueues = dict[tuple[str, str], tuple[Position, ...]]
"""(agent, key) → the origins queued for that key, head first."""


def read_parked_keys(settings: Settings) -> ParkedQueues | None:
    """Every parked key of every service, read from the parked-keys changelogs (None: they cannot be read)."""
    names = [parked_keys_table(service).changelog for service in SAGA_SERVICES]
    latest: dict[tuple[str, int, bytes], bytes | None] = {}
    try:
        with EventConsumer.reader(settings) as consumer:
            for message in consumer.read_log(names, idle_timeout=10):
                latest[(message.topic, message.partition, message.raw_key or b"")] = message.value
    except ConsumeError as exc:
        log.warning("parked keys not readable: %s", exc)
        return None
    queues: ParkedQueues = {}
    for value in latest.values():
        if not value:
            continue  # a tombstone: the key was released
        entry = json.loads(value)
        queue = tuple(Position(m["topic"], int(m["partition"]), int(m["offset"])) for m in entry.get("queue", ()))
        if queue:
            queues[(str(entry["agent"]), str(entry["key"]))] = queue
    return queues


def parked_status(letter: DeadLetter, parked: ParkedQueues) -> str:
    """Whether ``letter``'s key still waits on it: ``head of <agent>``, ``#n behind the head in <agent>`` or
    ``released`` (handled since, or never queued)."""
    states = []
    for (agent, key), queue in sorted(parked.items()):
        if key == letter.key_text and letter.origin in queue:
            index = queue.index(letter.origin)
            states.append(f"head of {agent} ({len(queue)} queued)" if index == 0 else f"#{index} behind in {agent}")
    return "; ".join(states) or "released"


def replay_order(letters: Iterable[DeadLetter], parked: ParkedQueues | None = None) -> list[DeadLetter]:
    """One dead letter per origin (the newest: a replay that failed again is parked again), in the order their
    keys' queues hold them: what no queue holds first (handled since, or older than the head), then each
    queue's head, second, … (else by when each origin was first parked), so a key drains in one go."""
    newest: dict[Position, DeadLetter] = {}
    first_parked: dict[Position, str] = {}
    for letter in letters:
        origin = letter.origin
        if origin not in newest or (letter.partition, letter.offset) > (
            newest[origin].partition,
            newest[origin].offset,
        ):
            newest[origin] = letter
        first_parked[origin] = min(first_parked.get(origin, letter.parked_at), letter.parked_at)
    index: dict[Position, int] = {}
    for queue in (parked or {}).values():
        for n, origin in enumerate(queue):
            index[origin] = min(index.get(origin, n), n)
    return sorted(newest.values(), key=lambda d: (index.get(d.origin, -1), first_parked[d.origin], d.origin))


def replay_headers(letter: DeadLetter, *, discard: bool = False) -> list[tuple[str, str | bytes | None]]:
    """A replay's headers: the message's own, then which dead letter it re-publishes and where it was first read
    (and, for a discard, that its agent should drop the parked original instead of handling it)."""
    headers: list[tuple[str, str | bytes | None]] = [
        *letter.original_headers,
        ("dlq_replay_of", letter.position.encode()),
        ("dlq_origin", letter.origin.to_header().encode()),
        ("dlq_attempts", str(letter.attempts).encode()),
    ]
    if discard:
        headers.append(("dlq_action", b"discard"))
    return headers


def replay_partition(letter: DeadLetter) -> int:
    """The partition a replay goes to: the one its message was first read from, not the partitioner's choice.

    The agent that parked the key keeps its queue in the table partition of that input partition; a replay on
    another partition (the message came from a producer with another partitioner, kcat's CRC32 say) would reach a
    worker that does not hold the queue, or write the release to another changelog partition than the queue."""
    return letter.origin.partition if letter.origin.topic == letter.source_topic else letter.source_partition


def replay(settings: Settings, letters: Iterable[DeadLetter], *, discard: bool = False) -> int:
    """Publish each letter back to its source topic, in the order given (original key, value and headers, plus
    ``dlq_replay_of``: the dead letter's position, and ``dlq_origin``: where its message was first read) and wait
    for every ack; returns how many. A replayed message that fails again is parked again, with ``dlq_attempts``
    counting on; consumers deduplicate by event id, so replaying one twice is harmless. With ``discard`` each
    goes back marked ``dlq_action: discard``: the agent drops its parked original (the head of its key) unhandled."""
    producer = Producer(producer_config(settings))
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    count = 0
    for letter in letters:
        topic(letter.source_topic)  # an undeclared source is refused before anything is sent
        headers = replay_headers(letter, discard=discard)
        producer.produce(letter.source_topic, key=letter.key, value=letter.value, headers=headers,
                         partition=replay_partition(letter), on_delivery=on_delivery)  # fmt: skip
        count += 1
    remaining = producer.flush(settings.delivery_timeout_s)
    if remaining or failures:
        raise DeadLetterFailed(f"replay not acknowledged: {'; '.join(failures) or f'{remaining} pending'}")
    return count
