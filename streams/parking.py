"""Per-key parking at the edge, standing in front of the decisions: each message is first sorted, then decided.

:meth:`KeyParking.sort` takes a message before its step sees it and sorts it into one of three:

* :class:`ToDecide`: the step decides it (its key is not parked, or it is the replayed head of the key's queue);
  afterwards :meth:`KeyParking.release` pops a handled head, or :meth:`KeyParking.park` queues it when its
  decision failed;
* :class:`Parked`: dead-lettered without a decision: undecodable, or its key waits behind a parked head (its key's
  queue written first), or it breaks its topic's key contract (refused before its key's queue is read, parking
  nothing);
* :class:`Passed`: neither decided nor dead-lettered (a record the agent does not handle, a duplicate of a queued
  message, a replay that would overtake the head, a discard).

The rules are pure (:mod:`streams.domain.parking`); this module reads and writes each key's queue
(:class:`ParkedKeys`) and keeps the dead-letter depth gauges. Messages are sorted one at a time, right before each
is decided, not a whole batch ahead: the message before may park or release the same key, and a key's queue is read
and written while the message's Faust event is current (a table write goes to the changelog partition of the
current event, and a RocksDB table reads a key from that partition only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from common.telemetry import DEAD_LETTER_DEPTH, PARKED_KEYS
from schemas.codec import Decoded
from schemas.errors import DecodeError
from streams.domain.parking import (
    Arrival,
    ParkedMessage,
    Position,
    Queue,
    Verdict,
    admit,
    parked_behind_reason,
    settle,
)
from streams.incoming import Incoming
from streams.state import ScannableTable

log = logging.getLogger(__name__)


class ParkedKeys:
    """An agent's parked keys: each key's queue in one table entry ``<agent>/<key>`` (one table per service).

    The entry is written from the agent handling a message of that key, so Faust puts it in the changelog
    partition of the key's source partition: it is recovered by whoever takes that partition over.
    """

    def __init__(self, table: ScannableTable, agent: str) -> None:
        self.table = table
        self.agent = agent
        self._prefix = f"{agent}/"

    def parked(self, key: str | None) -> bool:
        """Whether ``key`` has a queue (one table read, nothing parsed)."""
        return key is not None and self.table.get(self._prefix + key) is not None

    def queue(self, key: str | None) -> Queue:
        stored = self.table.get(self._prefix + key) if key is not None else None
        return tuple(ParkedMessage.from_json(m) for m in (stored or {}).get("queue", ()))

    def save(self, key: str, queue: Queue) -> None:
        """Store ``key``'s queue; an empty one releases the key (the entry is deleted)."""
        entry = self._prefix + key
        if queue:
            self.table[entry] = {"agent": self.agent, "key": key, "queue": [m.to_json() for m in queue]}
        elif entry in self.table:
            del self.table[entry]

    def queues(self) -> dict[str, Queue]:
        """Every key of this agent parked in the partitions this worker holds, with its queue."""
        return {
            name.removeprefix(self._prefix): tuple(ParkedMessage.from_json(m) for m in (value or {}).get("queue", ()))
            for name, value in list(self.table.items())
            if name.startswith(self._prefix)
        }


@dataclass(frozen=True)
class ToDecide:
    """A message the step decides: its key is not parked, or it is the replayed head of its key's queue."""

    incoming: Incoming
    decoded: Decoded
    queue: Queue
    """Its key's queue when it was sorted (empty: the key is not parked)."""
    parking: str | None = None
    """The parking verdict, for the step's span (None: an ordinary message)."""

    @property
    def record(self) -> str:
        return self.decoded.name


@dataclass(frozen=True)
class Parked:
    """A message to dead-letter: why, the head its key waits behind, and whether its key's queue was written (then
    the write is made durable before the dead letter is sent)."""

    record: str | None
    """The record it decoded as (None: it did not decode)."""
    reason: str
    behind: Position | None
    written: bool
    attempts: int = 1
    parking: str | None = None


@dataclass(frozen=True)
class Passed:
    """A message neither decided nor dead-lettered, with the outcome it is counted as."""

    record: str | None
    outcome: str
    """``ignored``, ``duplicate``, ``refused`` or ``discarded``."""
    written: bool = False
    parking: str | None = None
    refusal: str | None = None
    """Why it was refused, for the step's span (None: it was not)."""


class KeyParking:
    """One agent's parking: sorts each message before its step decides it, and settles the key after."""

    def __init__(self, table: ScannableTable, agent: str, handles: frozenset[str]) -> None:
        self.keys = ParkedKeys(table, agent)
        self.agent = agent
        self._handles = handles
        self._depth_topics: set[str] = set()

    def sort(self, incoming: Incoming, decode: Callable[[Incoming], Decoded]) -> ToDecide | Parked | Passed:
        """Whether the step decides ``incoming``, or what became of it instead (its key's queue written).

        A message that breaks its topic's key contract (:mod:`streams.incoming`: no key, a key other than its
        record's key field, not on its key's partition) is dead-lettered before its key's queue is even read: no
        step and no table sees it, and it parks nothing. A discard is the one exception: it only ever drops a head
        parked on the very partition it is sent back to, and runs no step."""
        arrival = incoming.arrival
        if incoming.discards:
            return self._discard(incoming, arrival, self.keys.queue(arrival.key))
        if (refusal := incoming.misplaced) is not None:
            return Parked(None, refusal, None, written=False)
        queue = self.keys.queue(arrival.key)
        try:
            decoded = decode(incoming)
        except DecodeError as exc:
            return self._park(incoming, queue, None, f"{type(exc).__name__}: {exc}")
        if (refusal := incoming.mismatched(decoded.value)) is not None:
            return Parked(decoded.name, refusal, None, written=False)
        verdict = admit(queue, arrival)
        parking = None if verdict is Verdict.PROCESS else verdict.value
        if decoded.name not in self._handles:
            # a head that decodes now as a record this agent passes by is done with
            done = settle(queue, arrival, incoming.event_id, failure=None) if verdict is Verdict.PROCESS_HEAD else queue
            return Passed(decoded.name, "ignored", self._write(arrival, queue, done), parking)
        if verdict is Verdict.PARK_BEHIND:
            reason = parked_behind_reason(queue[0], arrival.key or "")
            return self._park(incoming, queue, decoded.name, reason, parking=parking)
        if verdict is Verdict.PARK_AGAIN:  # redelivered after a crash: its dead letter may not have been sent
            mine = next(m for m in queue if m.origin == arrival.origin)
            return self._park(incoming, queue, decoded.name, mine.reason, parking=parking)
        if verdict is Verdict.DUPLICATE:
            log.info("%s: %s repeats %s, queued for key %r", self.agent, arrival.origin, arrival.event_id, arrival.key)
            return Passed(decoded.name, "duplicate", parking=parking)
        if verdict is Verdict.REFUSE:
            reason = f"replay refused: {arrival.origin} waits behind {queue[0].origin}, which must be replayed first"
            log.warning("%s: %s (dead letter %s stays)", self.agent, reason, incoming.replay_of)
            return Passed(decoded.name, "refused", parking=parking, refusal=reason)
        return ToDecide(incoming, decoded, queue, parking)

    def release(self, decided: ToDecide) -> bool:
        """After a successful decision: pop the key's head if it was this message; whether the queue was written.

        The pop goes in the same durable write as the step's state: a crash replays the head, or finds it done."""
        arrival = decided.incoming.arrival
        done = settle(decided.queue, arrival, decided.incoming.event_id, failure=None)
        return self._write(arrival, decided.queue, done)

    def park(self, failed: ToDecide, reason: str, attempts: int) -> Parked:
        """After a failed decision: queue the message (unless it is already, as a failing head), parking its key."""
        return self._park(failed.incoming, failed.queue, failed.record, reason, attempts=attempts)

    def _park(
        self,
        incoming: Incoming,
        queue: Queue,
        record: str | None,
        reason: str,
        *,
        attempts: int = 1,
        parking: str | None = None,
    ) -> Parked:
        """Queue ``incoming`` behind its key's head (unless already queued); the dead letter names that head."""
        arrival = incoming.arrival
        written = self._write(arrival, queue, settle(queue, arrival, incoming.event_id, failure=reason))
        head = queue[0].origin if queue and arrival.key is not None else None
        behind = head if head != arrival.origin else None
        return Parked(record, reason, behind, written, attempts, parking)

    def _discard(self, incoming: Incoming, arrival: Arrival, queue: Queue) -> Passed:
        """Drop the parked head ``incoming`` re-publishes, never running the step on it (it may not even decode):
        the key's next parked message becomes head. Anything but the head is left as it is."""
        if admit(queue, arrival) is not Verdict.PROCESS_HEAD:
            head = f"its head is {queue[0].origin}" if queue else "it is not parked"
            log.warning("%s: discard of %s refused: %s for key %r", self.agent, arrival.origin, head, arrival.key)
            return Passed(None, "refused", refusal="discard refused")
        self._write(arrival, queue, queue[1:])
        log.warning(
            "%s: parked %s of key %r discarded (%s)", self.agent, arrival.origin, arrival.key, incoming.replay_of
        )
        return Passed(None, "discarded", written=True, parking="discarded")

    def _write(self, arrival: Arrival, before: Queue, after: Queue) -> bool:
        """Write a key's changed queue (the caller makes it durable); whether it changed."""
        if after == before or arrival.key is None:
            return False
        self.keys.save(arrival.key, after)
        if not after:
            log.warning("%s: key %r released", self.agent, arrival.key)
        self.refresh_depth()
        return True

    def refresh_depth(self) -> None:
        """Set the dead-letter depth gauges from the parked keys this worker holds (after a change, on scrape)."""
        queues = self.keys.queues()
        depth: dict[str, int] = dict.fromkeys(self._depth_topics, 0)
        for queue in queues.values():
            for message in queue:
                depth[message.origin.topic] = depth.get(message.origin.topic, 0) + 1
        for source, count in depth.items():
            DEAD_LETTER_DEPTH.labels(self.agent, source).set(count)
        self._depth_topics = set(depth)
        PARKED_KEYS.labels(self.agent).set(len(queues))
