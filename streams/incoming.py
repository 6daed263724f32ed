"""A message as an agent received it, before decoding: its position, key, raw value and headers.

The headers tell what the edge needs before it decodes: the envelope (:class:`~common.envelope.Envelope`), and for a
re-published dead letter (``pipeline dlq replay``) where it was first read and whether it asks to be discarded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from common.envelope import Envelope
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


def normalise_headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """Faust hands headers over as a mapping or a list of pairs; make them one shape."""
    items: Iterable[tuple[str, Any]] = raw.items() if isinstance(raw, Mapping) else (raw or ())
    return tuple((k, v if isinstance(v, bytes) else str(v or "").encode()) for k, v in items)
