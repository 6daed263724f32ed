"""A message as an agent received it, before decoding: its position, key, raw value and headers; and the key
contract every consumer of the pipeline's topics checks before anything else sees a message.

The headers tell what the edge needs before it decodes: the envelope (:class:`~common.envelope.Envelope`), and for a
re-published dead letter (``pipeline dlq replay``) where it was first read and whether it asks to be discarded.

**The key contract.** Each topic is keyed by one field of its records (``TopicSpec.key_field``: ``user_id`` on
``orders.commands.v1``), and every producer of the pipeline puts a key on the partition the Java clients' murmur2
partitioner gives it (confluent-kafka's ``murmur2_random``, aiokafka's and so Faust's ``DefaultPartitioner``). A
service's state is co-partitioned with its inputs: Faust writes a table entry to the changelog partition of the
message being handled and recovers only the partitions a worker holds. So a record that came without a key, with a
key other than its key field, or on another partition than its key's (kcat hashes keys with CRC32 unless told
``-X topic.partitioner=murmur2_random``) would put its key's state into a second changelog partition, beside the
real one. Such a record is refused: :func:`misplaced` before it is decoded, :func:`mismatched` once it is, each
with the reason it is dead-lettered with. Neither parks its key: the record is not the key's (or has none), and
replaying it as it is would be refused again; publish it anew, keyed as the contract says.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from common.envelope import Envelope
from schemas.topics import TopicSpec, topic
from streams.domain.parking import Arrival, Position

REPLAY_HEADER = "dlq_replay_of"
"""Set by ``pipeline dlq replay`` on a re-published dead letter: the dead letter's own position."""
ORIGIN_HEADER = "dlq_origin"
"""Where a dead letter's message was first read (``topic:partition:offset``), carried by its replays."""
ACTION_HEADER = "dlq_action"
"""``discard`` on a replay sent by ``pipeline dlq discard``: drop the parked head it re-publishes, unhandled."""


@dataclass(frozen=True)
class Incoming:
    """One message as the agent received it, before decoding.

    The properties derived from the headers are computed once per message (``cached_property``): the edge asks
    for the envelope, the event id and the origin several times while handling one message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @cached_property
    def envelope(self) -> Envelope | None:
        return Envelope.from_headers(self.headers)

    @cached_property
    def event_id(self) -> str:
        """The envelope's id, or the message's (original) position when it came without one (e.g. from kcat)."""
        envelope = self.envelope
        return envelope.event_id if envelope else self.origin.to_header()

    @cached_property
    def replay_of(self) -> str | None:
        """The dead letter this message re-publishes (``pipeline dlq replay``), or None."""
        for name, value in reversed(self.headers):
            if name == REPLAY_HEADER:
                return value.decode(errors="replace")
        return None

    @cached_property
    def discards(self) -> bool:
        """A replay that asks to drop its parked original unhandled (an operator gave up on it)."""
        if self.replay_of is None:
            return False
        return any(name == ACTION_HEADER and value == b"discard" for name, value in self.headers)

    @cached_property
    def origin(self) -> Position:
        """Where the message was first read: a replay's original position, else its own."""
        if self.replay_of is not None:
            for name, value in reversed(self.headers):
                if name == ORIGIN_HEADER and (origin := Position.from_header(value.decode(errors="replace"))):
                    return origin
        return Position(self.topic, self.partition, self.offset)

    @cached_property
    def arrival(self) -> Arrival:
        """The message as the parking rule sees it (the Kafka key; an empty key parks nothing)."""
        key = self.key.decode(errors="replace") if self.key else None
        return Arrival(key, self.origin, replay=self.replay_of is not None, event_id=self.event_id)

    @cached_property
    def misplaced(self) -> str | None:
        """Why the message may not be taken where it stands (no key, or not on its key's partition), or None."""
        return misplaced(topic(self.topic), self.key, self.partition)

    def mismatched(self, value: Mapping[str, Any]) -> str | None:
        """Why its decoded ``value`` is not the record its key says (the key differs from its key field), or None."""
        return mismatched(topic(self.topic), self.key, value)


def normalise_headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """Faust hands headers over as a mapping or a list of pairs; make them one shape."""
    items: Iterable[tuple[str, Any]] = raw.items() if isinstance(raw, Mapping) else (raw or ())
    return tuple((k, v if isinstance(v, bytes) else str(v or "").encode()) for k, v in items)


# --- the key contract ----------------------------------------------------------------------------------------

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I")


def murmur2(data: bytes) -> int:
    """The Java clients' murmur2 hash of ``data`` (``org.apache.kafka.common.utils.Utils.murmur2``), unsigned."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length & ~3
    for (k,) in _WORDS.iter_unpack(memoryview(data)[:whole]):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h = ((h ^ data[whole]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the pipeline's producers put ``key`` on, of ``partitions``: the Java clients' default."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def misplaced(spec: TopicSpec, key: bytes | None, partition: int) -> str | None:
    """Why a message of ``spec`` may not be taken as it is placed, before it is decoded; None when it may.

    It has no key (``missing key``), or it is not on the partition its key maps to (``wrong partition``). A raw
    topic (no key field) has no contract."""
    if not spec.key_field:
        return None
    if not key:
        return f"missing key: {spec.name} is keyed by {spec.key_field}"
    expected = key_partition(key, spec.partitions)
    if partition != expected:
        return f"wrong partition {partition} for key {_text(key)!r}, expected {expected}"
    return None


def mismatched(spec: TopicSpec, key: bytes | None, value: Mapping[str, Any]) -> str | None:
    """Why a decoded record of ``spec`` is not the one its key says (the key differs from its key field); None when
    it is. Checked after :func:`misplaced`, which refuses a missing key first."""
    if not spec.key_field:
        return None
    field = value.get(spec.key_field)
    if field is not None and key is not None and str(field).encode() == key:
        return None
    return f"key {_text(key)!r} differs from the record's {spec.key_field} {field!r}"


def _text(key: bytes | None) -> str:
    return "" if key is None else key.decode(errors="replace")
