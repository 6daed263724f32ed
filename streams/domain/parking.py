"""Per-key order across dead letters: once a key's message is parked, the key's later messages queue behind it.

A saga step assumes it sees a key's messages in order. When one of them is dead-lettered (undecodable, or a
step that keeps raising) and the next one of the same key were processed, the step would decide on a history
with a hole in it. So a parked message parks its key: every later message of that key on the agent's inputs is
dead-lettered too and queued behind it, while every other key flows on. ``pipeline dlq replay`` re-publishes
dead letters to their source topic with their **origin** (where the message was first read); the replayed
head of a key's queue is handled normally, popped on success (the key is released once its queue is empty),
and stays head when it fails again.

This module is the decision only, pure and total: given a key's queue and an arriving message, what the edge
(:mod:`streams.parking`) does with it, and what the queue becomes afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, order=True)
class Position:
    """Where a message was first read: ``topic[partition]@offset`` (a replay keeps its original's position)."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def to_header(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @classmethod
    def from_header(cls, text: str) -> Position | None:
        """``topic:partition:offset`` (topic names hold no colon), or None when malformed."""
        name, _, rest = text.rpartition(":")
        name, _, partition = name.rpartition(":")
        if not name or not partition.isdigit() or not rest.isdigit():
            return None
        return cls(name, int(partition), int(rest))


@dataclass(frozen=True)
class ParkedMessage:
    """One message of a parked key: where it came from, its event id, why it (or the one it waits behind) failed."""

    origin: Position
    event_id: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.origin.topic,
            "partition": self.origin.partition,
            "offset": self.origin.offset,
            "event_id": self.event_id,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParkedMessage:
        origin = Position(str(data["topic"]), int(data["partition"]), int(data["offset"]))
        return cls(origin, str(data.get("event_id", "")), str(data.get("reason", "")))


Queue = tuple[ParkedMessage, ...]
"""A key's parked messages, oldest (the head) first; empty: the key is not parked."""


@dataclass(frozen=True)
class Arrival:
    """A message as the parking rule sees it: its key, its origin, and whether it is a replay of a dead letter."""

    key: str | None
    origin: Position
    replay: bool = False
    event_id: str = ""


class Verdict(StrEnum):
    PROCESS = "process"
    """Handle it: the key is not parked (or the replay is of a message older than the head, already handled)."""
    PROCESS_HEAD = "process_head"
    """The replayed head of the key's queue: handle it; success pops it, failure leaves it head."""
    PARK_BEHIND = "park_behind"
    """The key is parked: dead-letter this message behind the head and queue it."""
    PARK_AGAIN = "park_again"
    """Already queued and delivered again (a redelivery after a crash): dead-letter it again, queue unchanged."""
    REFUSE = "refuse"
    """A replay of a queued message that is not the head: not handled out of order; its dead letter stays."""
    DUPLICATE = "duplicate"
    """A new message whose event id is already queued (a timer repeating the same fact, say): its queued copy
    stands for it, so the queue does not grow while the key waits."""


def admit(queue: Queue, arrival: Arrival) -> Verdict:
    """What to do with ``arrival`` given its key's ``queue``.

    A replay whose origin is not queued while the key is parked was parked before the head (it was handled since,
    or parked before this rule) — every message of a parked key is queued — so it is handled: steps treat a
    duplicate as a no-op, and it does not overtake anything still parked.
    """
    if arrival.key is None or not queue:
        return Verdict.PROCESS
    queued = [m.origin for m in queue]
    if arrival.origin not in queued:
        if arrival.replay:
            return Verdict.PROCESS
        if arrival.event_id and any(m.event_id == arrival.event_id for m in queue):
            return Verdict.DUPLICATE
        return Verdict.PARK_BEHIND
    if not arrival.replay:
        return Verdict.PARK_AGAIN
    return Verdict.PROCESS_HEAD if queued[0] == arrival.origin else Verdict.REFUSE


def settle(queue: Queue, arrival: Arrival, event_id: str, *, failure: str | None) -> Queue:
    """The key's queue after ``arrival`` was handled (``failure`` None) or dead-lettered (``failure`` its reason).

    Dead-lettered: queued at the tail unless already queued (a failing head stays head); a message without a key
    cannot park one. Handled: the head is popped when it was this message (an empty queue releases the key).
    """
    if arrival.key is None:
        return queue
    queued = any(m.origin == arrival.origin for m in queue)
    if failure is not None:
        return queue if queued else (*queue, ParkedMessage(arrival.origin, event_id, failure))
    if queue and queue[0].origin == arrival.origin:
        return queue[1:]
    return queue


def parked_behind_reason(head: ParkedMessage, key: str) -> str:
    """The dead-letter reason of a message queued behind ``head``."""
    return f"parked behind {head.origin} (key {key!r} waits for its replay)"
