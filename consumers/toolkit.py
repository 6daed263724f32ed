"""The one consumer loop the pipeline uses: poll, check errors, hand over, store the offset after handling.

Projectors, the notification sender, DLQ tools and ``pipeline tail`` all read through :class:`EventConsumer`,
so error checks, at-least-once offset handling and closing are done one way.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import TopicMetadata

from common.envelope import Envelope, RawHeaders, headers_dict
from common.settings import LIBRDKAFKA_LOGGER, Settings


class ConsumeError(Exception):
    """The consumer hit an error it cannot go on from (unknown topic, fatal client error)."""


@dataclass(frozen=True)
class Consumed:
    """One message as read from Kafka, before decoding."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: bytes | None
    raw_headers: RawHeaders = field(repr=False)
    raw_key: bytes | None = field(default=None, repr=False)
    """The key's bytes as they came (``key`` is their UTF-8 reading), for copying a message on unchanged."""

    @property
    def headers(self) -> dict[str, str]:
        return headers_dict(self.raw_headers)

    @property
    def envelope(self) -> Envelope | None:
        return Envelope.from_headers(self.raw_headers)


_NO_LEADER_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)
"""Errors of a watermark query that pass once the partition has a leader again."""


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """At-least-once defaults: offsets are stored only once a message is handled (:meth:`EventConsumer.done`)."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": settings.client_id,
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        "group.id": group_id,
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
    }
    config.update(overrides)
    return config


def _consumed(msg: Message) -> Consumed:
    topic, partition, offset, key = msg.topic(), msg.partition(), msg.offset(), msg.key()
    if topic is None or partition is None or offset is None:
        raise ConsumeError(f"fetched a message without a position: {msg!r}")
    headers = msg.headers() or ()
    return Consumed(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=msg.timestamp()[1],
        key=None if key is None else key.decode("utf-8", errors="backslashreplace"),
        value=msg.value(),
        raw_headers=tuple(headers.items() if isinstance(headers, dict) else headers),
        raw_key=key,
    )


@dataclass(frozen=True)
class GroupPosition:
    """A consumer group's committed offsets summed over a set of topics, and the messages still after them."""

    committed: int
    lag: int


class ProgressWatch:
    """Notices a group consumer that stopped making progress while its group has messages waiting.

    A consumer that handled nothing for ``stall_timeout_s`` while its group's committed offsets did not move and
    lag remained is stalled, whatever the cause (it fell out of its group and never rejoined, a rebalance that never
    completed): the caller closes it and subscribes a fresh one. A look the broker cannot answer starts the clock
    afresh, since nothing can make progress without a broker.
    """

    def __init__(
        self,
        position: Callable[[], GroupPosition | None],
        *,
        stall_timeout_s: float,
        look_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._position = position
        self._stall_timeout_s = stall_timeout_s
        self._look_interval_s = look_interval_s
        self._clock = clock
        self._since = clock()
        self._next_look = self._since + look_interval_s
        self._last_committed: int | None = None
        self.behind: int | None = None
        """The group's lag at the last look (``None``: not looked yet, or unknown)."""

    def progressed(self) -> None:
        """A message was handled: the consumer is alive."""
        self._since = self._clock()

    def stalled(self) -> bool:
        """True once, for ``stall_timeout_s``, no message was handled here, the group committed nothing new and
        messages were waiting."""
        now = self._clock()
        if now < self._next_look or now - self._since < self._look_interval_s:
            return False  # not due, or a message was handled a moment ago: no need to ask the broker
        self._next_look = now + self._look_interval_s
        position = self._position()
        self.behind = None if position is None else position.lag
        moved = position is not None and self._last_committed is not None and position.committed != self._last_committed
        if position is None or position.lag == 0 or moved:
            self._since = now  # unknown, nothing waiting, or another member of the group is moving it
        self._last_committed = None if position is None else position.committed
        return position is not None and position.lag > 0 and now - self._since >= self._stall_timeout_s

    @property
    def stalled_for_s(self) -> float:
        return self._clock() - self._since


class EventConsumer:
    """A confluent-kafka consumer with the pipeline's error handling; closes on exit."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.unfinished: list[tuple[str, int]] = []
        self.ends: dict[tuple[str, int], tuple[int, int]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, group_id: str, **overrides: Any) -> EventConsumer:
        return cls(Consumer(consumer_config(settings, group_id, **overrides)))

    @classmethod
    def reader(cls, settings: Settings) -> EventConsumer:
        """A consumer that reads without a group: nothing committed, nothing shared (``tail``)."""
        return cls.from_settings(settings, f"pipeline-reader-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})

    def subscribe(self, topics: Sequence[str]) -> None:
        self._consumer.subscribe(list(topics))

    def assign_all(self, topic: str, *, from_beginning: bool, timeout: float = 10.0) -> int:
        """Read every partition of ``topic`` from its start or its end; returns the partition count."""
        info = self._topic(topic, timeout)
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        self._consumer.assign([TopicPartition(topic, p, start) for p in sorted(info.partitions)])
        return len(info.partitions)

    def assign_from_beginning(
        self, topics: Sequence[str], *, timeout: float = 10.0
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """Read every partition of ``topics`` from its start; returns each partition's (low, high) watermarks now.

        With :meth:`positions`, a reader can stop exactly at the log's end as it was when it began (a rebuild):
        a partition is read up to its snapshot once its position reaches ``high`` (or at once when low == high).
        """
        ends: dict[tuple[str, int], tuple[int, int]] = {}
        for name in topics:
            info = self._topic(name, timeout)
            for p in sorted(info.partitions):
                low, high = self._watermarks(TopicPartition(name, p), timeout=timeout)
                ends[(name, p)] = (low, max(low, high))
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        return ends

    def _topic(self, name: str, timeout: float) -> TopicMetadata:
        """``name``'s metadata; :class:`ConsumeError` when the broker does not answer or has no such topic."""
        try:
            info: TopicMetadata | None = self._consumer.list_topics(name, timeout=timeout).topics.get(name)
        except KafkaException as exc:  # no broker answered within the timeout
            raise ConsumeError(f"cannot read {name}: {exc.args[0].str()}") from exc
        if info is None or info.error is not None or not info.partitions:
            reason = info.error.str() if info is not None and info.error is not None else "no partitions"
            raise ConsumeError(f"cannot read {name}: {reason} (run `pipeline topics apply`?)")
        return info

    def _watermarks(self, tp: TopicPartition, *, timeout: float) -> tuple[int, int]:
        """A partition's (low, high) offsets, waiting out a leader not elected yet (new topics, a broker that
        just restarted) for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout)
                return int(low), int(high)
            except KafkaException as exc:
                err = exc.args[0]
                transient = err.retriable() or err.code() in _NO_LEADER_YET
                if not transient or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to be read of each assigned partition (negative until it has read one)."""
        assigned = self._consumer.assignment()
        if not assigned:
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(assigned)}

    def messages(
        self,
        *,
        poll_timeout: float = 0.5,
        idle_timeout: float | None = None,
        max_messages: int | None = None,
        until: Callable[[], bool] | None = None,
    ) -> Iterator[Consumed]:
        """Messages as they come; stops after ``max_messages`` or ``idle_timeout`` seconds without one, or once
        ``until()`` holds (checked before every poll: a stop flag, or a reader that reached its end offsets)."""
        count = 0
        last = time.monotonic()
        while (max_messages is None or count < max_messages) and not (until is not None and until()):
            msg = self._consumer.poll(poll_timeout)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                    return
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or err.code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_TOPIC,
                    KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ):
                    raise ConsumeError(err.str())
                continue  # transient: librdkafka retries by itself
            last = time.monotonic()
            count += 1
            yield _consumed(msg)

    def read_log(self, topics: Sequence[str], *, idle_timeout: float = 30.0) -> Iterator[Consumed]:
        """Every message of ``topics`` from their start up to their end as it is now, then stop.

        For rebuilding state from the log: messages written after the read began are left out. Partitions
        that could not be read to their end (idle for ``idle_timeout``) are left in :attr:`unfinished`.
        """
        ends = self.assign_from_beginning(topics)
        yield from self._read_to(ends, idle_timeout)

    def read_from(
        self, starts: Mapping[tuple[str, int], int | None], *, idle_timeout: float = 30.0, timeout: float = 10.0
    ) -> Iterator[Consumed]:
        """Every message of the ``(topic, partition)``s from their start offset (None: the log's start) up to
        their end as it is now, then stop; like :meth:`read_log`, for a reader that knows where to begin.

        A start below the log's start (retention took it) begins at the log's start, one past its end at its end.
        """
        ends: dict[tuple[str, int], tuple[int, int]] = {}
        for (name, p), start in starts.items():
            low, high = self._watermarks(TopicPartition(name, p), timeout=timeout)
            begin = low if start is None else min(max(start, low), max(low, high))
            ends[(name, p)] = (begin, max(begin, high))
        self._consumer.assign([TopicPartition(t, p, begin) for (t, p), (begin, _) in ends.items()])
        yield from self._read_to(ends, idle_timeout)

    def _read_to(self, ends: dict[tuple[str, int], tuple[int, int]], idle_timeout: float) -> Iterator[Consumed]:
        """The assigned partitions' messages from ``ends``' first offset (their assignment) below its second."""

        def unfinished() -> list[tuple[str, int]]:
            positions = self.positions()
            return [tp for tp, (begin, high) in ends.items() if high > begin and positions.get(tp, -1) < high]

        for message in self.messages(until=lambda: not unfinished(), idle_timeout=idle_timeout):
            if message.offset < ends[(message.topic, message.partition)][1]:
                yield message
        self.unfinished = unfinished()
        self.ends = ends

    def offset_for_time(self, topic: str, partition: int, time_ms: int, *, timeout: float = 10.0) -> int:
        """The first offset of a partition whose message was written at ``time_ms`` or later (the broker's time
        index); the partition's end when none was."""
        try:
            (found,) = self._consumer.offsets_for_times([TopicPartition(topic, partition, time_ms)], timeout=timeout)
        except KafkaException as exc:
            raise ConsumeError(f"cannot look up {topic}[{partition}] by time: {exc.args[0].str()}") from exc
        if found.error is not None:
            raise ConsumeError(f"cannot look up {topic}[{partition}] by time: {found.error.str()}")
        offset = int(found.offset)
        if offset < 0:
            return self._watermarks(TopicPartition(topic, partition), timeout=timeout)[1]
        return offset

    def group_position(self, topics: Sequence[str], *, timeout: float = 5.0) -> GroupPosition | None:
        """Where this consumer's group stands on ``topics`` (``None``: the broker could not say). Counts every
        partition, not only the assigned ones: a member that fell out of its group holds none, and that is exactly
        when the lag matters."""
        try:
            partitions = [
                TopicPartition(name, p)
                for name in topics
                for p in sorted(self._consumer.list_topics(name, timeout=timeout).topics[name].partitions or {})
            ]
            committed_total = lag = 0
            for tp in self._consumer.committed(partitions, timeout=timeout):
                low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout)
                start = max(int(tp.offset), int(low))  # no commit yet (negative): the log's start
                committed_total += start
                lag += max(0, int(high) - start)
            return GroupPosition(committed=committed_total, lag=lag)
        except (KafkaException, KeyError):
            return None

    def done(self, message: Consumed) -> None:
        """Mark ``message`` handled: its offset may now be committed."""
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(message.topic, message.partition, message.offset + 1)])
        except KafkaException as exc:  # partition revoked meanwhile: the next owner handles it again
            if exc.args[0].code() != KafkaError._STATE:
                raise

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
