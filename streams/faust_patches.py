"""Every override of Faust, mode and aiokafka internals, in one place.

Written against faust-streaming 0.15.3 and aiokafka 0.14.0 (pinned exactly in ``pyproject.toml``). Each override
names the behaviour it corrects, the upstream report where there is one, and the tests that pin it; where a test
pins Faust's *own* behaviour, it fails once an upgrade fixes it, and the override may then go.

* :class:`DurableTable`: ``producer.flush()`` waits 0.1 s at most, so a table write cannot be proven stored.
* :class:`SeekThenResumeRecovery`: recovery resumes the stream partitions before seeking them (faust-streaming
  #216, fixed upstream only for apps without tables).
* :class:`AtLeastOnceConsumer` (the transport behind the ``pipeline-kafka://`` broker URLs, :data:`BROKER_SCHEME`):
  its fetch asks for a copy of the active partitions (aiokafka reads an empty set as "all of them"; not reported
  upstream); an ack from an older generation (faust-streaming #221) or made between a revocation and the next
  assignment does not count; a commit never passes an unhandled head (faust-streaming #606) and offsets fetched
  past unhandled are not counted as done, except on compacted topics.
* :class:`Admission`: Faust checks a message's generation when its stream hands it over, not when a batched agent
  decides it, and a message it dropped goes unseen (:class:`OffsetContinuity`).
* :func:`make_current`: a batched agent makes each event current itself, through Faust's private setter.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import TP, EventT, Message

from schemas.topics import TOPICS, internal_topics
from streams.watchdog import stop_stalled_process

log = logging.getLogger(__name__)

BROKER_SCHEME = "pipeline-kafka"
"""Broker URLs ``pipeline-kafka://host:port`` run Faust's aiokafka transport with :class:`AtLeastOnceConsumer`."""

COMPACTED_TOPICS = frozenset(t.name for t in (*TOPICS, *internal_topics()) if t.compacted)
"""Topics whose offsets can have holes of their own: Faust's commit rules apply to them unchanged."""


class DurableTable(faust.Table):  # type: ignore[type-arg]
    """A table whose changelog writes can be awaited until the broker acknowledged them.

    Corrects: Faust queues a table write in its producer buffer and sends it from a background task;
    ``producer.flush()`` waits for that buffer only up to 0.1 s, so it cannot prove a write is stored. Every
    changelog future (``send_changelog``) is kept here instead, and ``ServiceApp.confirm_writes`` awaits them.
    Tests: tests/agents/test_durability.py.

    A write stays listed until the broker acknowledged it, not until someone first awaited it: a caller that
    waits for "every write so far" must not miss one because another agent of the service is already waiting
    for it (an agent handling a batch may yield between its writes and its wait). A failed write stays listed,
    so every later wait raises too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unconfirmed: list[asyncio.Future[Any]] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self._unconfirmed.append(fut)
        fut.add_done_callback(self._confirmed)
        return fut

    def _confirmed(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._unconfirmed.remove(fut)

    def unconfirmed(self) -> list[asyncio.Future[Any]]:
        """The writes the broker has not acknowledged yet (and any that failed)."""
        return list(self._unconfirmed)


class SeekThenResumeRecovery(Recovery):
    """Faust's table recovery, but a stream partition is fetched only once it is positioned at its committed offset.

    Corrects ``Recovery.on_recovery_completed``, which ends a recovery by resuming the stream partitions *first*
    and then, while agents already receive their messages, seeking them to the committed offsets and resuming
    flow control, which clears every agent's queue (faust-streaming #216; its fix reordered only the path of
    apps without tables). Messages fetched in that window are lost in three ways: dropped from the queue
    unprocessed and unacked; re-fetched after the seek but discarded as already read (the read offset is reset
    only after the seek); and the hole this leaves is then recorded as an offset *gap*, which the commit counts as
    done. So a restarted worker skipped inputs for good (an ``OrderCancelled``, a ``StockLineReserved``: stock
    stayed reserved), or, when two lost messages blocked a partition's commit, stood still until its watchdog
    restarted it. Here the order is: seek (streams still paused), mark recovery complete, resume flow control
    (clearing queues that hold nothing of these streams), and only then resume the stream partitions, so their
    first fetch starts at the committed offset.

    Pins Faust's own order: ``test_faust_own_recovery_lets_the_fetcher_deliver_during_the_seek``; this one:
    the other recovery tests of tests/agents/test_recovery.py.
    """

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        app = self.app
        consumer = app.consumer
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self._superseded(generation_id):
            return
        streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        if self._superseded(generation_id):
            return
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_partitions(streams)
        consumer.resume_flow()
        await app._fetcher.maybe_start()  # type: ignore[attr-defined]
        self.tables.on_actives_ready()
        if not app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    def _superseded(self, generation_id: int) -> bool:
        """A newer rebalance began: leave the streams paused for the recovery it starts."""
        current = self.app.consumer_generation_id
        if current != generation_id:
            self.log.warning("Recovery rebalancing again (generation %r, now %r)", generation_id, current)
        return current != generation_id


class SeekThenResumeTableManager(TableManager):
    """Faust's table manager with :class:`SeekThenResumeRecovery` as its recovery service (``App(TableManager=)``)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekThenResumeRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class AtLeastOnceConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer, kept from committing past a message that was never handled.

    * It fetches for a copy of the active partitions (:meth:`_getmany`).
    * An ack does not count when it comes from an older consumer generation (:meth:`ack`), or between a
      revocation and the next assignment (:meth:`on_partitions_assigned`).
    * On a topic that is not compacted, a commit never passes an unhandled offset (:meth:`_new_offset`), and
      offsets fetched past unhandled are not recorded as done (:meth:`_add_gap`).

    Tests: tests/agents/test_recovery.py; tests/integration/test_scale_out.py counts what the commit guard held.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_heads: dict[TP, int] = {}
        """Per partition, the unhandled head its commit is held at (logged once per head)."""
        self._log_starts: dict[TP, int] = {}
        """Per partition, the first offset its log still holds, as last asked of the broker."""
        self._asking_log_start: set[TP] = set()
        """Partitions whose log start is being asked in the background."""

    def ack(self, message: Message) -> bool:
        """Faust's ack, refused for a message of an older consumer generation.

        Corrects: Faust's stream skips a message fetched before a rebalance (faust-streaming #221, fixed by
        comparing generations) but *acks* it unprocessed, and the commit after the new assignment could pass it.
        Refused, the message is read again from the committed offset the new assignment seeks to.
        Test: ``test_an_ack_from_an_older_consumer_generation_does_not_count``."""
        if message.generation_id is not None and message.generation_id != self.app.consumer_generation_id:
            log.info(
                "ack of %s[%d]@%d from generation %r refused (now %r): it is read again",
                message.topic, message.partition, message.offset, message.generation_id,
                self.app.consumer_generation_id,
            )  # fmt: skip
            return False
        return bool(super().ack(message))

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """Forget acks made since the revocation: they belong to no generation, so they must not count.

        Corrects: Faust clears a partition's acks when it is revoked, but a message skipped (and acked
        unprocessed) or finished during the rebalance adds one afterwards, which the next generation's commit
        would count. Test: ``test_acks_made_between_a_revocation_and_the_next_assignment_do_not_count``."""
        for tp in assigned:
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._gap.pop(tp, None)
        await super().on_partitions_assigned(assigned, generation_id)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:  # noqa: ASYNC109
        """Fetch for a copy of the active partitions taken now, never for Faust's live set.

        Corrects: Faust hands its own set of active partitions to the consumer thread, and pauses partitions in
        it while the fetch waits. aiokafka reads an *empty* set as "every partition": once recovery paused the
        last changelog partition, a fetch returned the stream partitions' records too, which Faust then dropped
        as not active, after aiokafka had moved past them. So the first messages waiting after a (re)start were
        lost (a test's first ``AddStock``; commands sent while a worker was down). Not reported upstream.
        Test: ``test_a_fetch_asks_for_the_partitions_active_when_it_began``."""
        if active_partitions is None:
            return await super()._getmany(None, timeout)
        wanted = set(active_partitions)
        if not wanted:
            return {}
        return await super()._getmany(wanted, timeout)

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's next offset to commit, but never past a head message of a log without holes that was not handled.

        Corrects: Faust lets a commit pass exactly one unacknowledged message at a partition's head (its rule
        tolerates a compacted-away head; faust-streaming #606), so a message dropped there unhandled was committed
        past and lost for good. On a topic that is not compacted every offset from the log's start on exists, so
        the commit waits for the head instead; if it never comes, the watchdog sees the partition stand still and
        restarts the worker, which reads it again. Pins Faust's rule:
        ``test_faust_commits_past_one_unhandled_message_at_a_partition_head``; this one:
        ``test_a_commit_waits_for_an_unhandled_message_at_the_head`` and the tests after it."""
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None and tp.topic not in COMPACTED_TOPICS:
            first = min(acked)
            unhandled = first > committed and not self._gap[tp].overlaps(committed)
            if unhandled and not self._before_log_start(tp, committed):
                if self._held_heads.get(tp) != committed:
                    self._held_heads[tp] = committed
                    log.warning(
                        "commit of %s[%d] held at %d: that message was not handled (first handled: %d)",
                        tp.topic, tp.partition, committed, first,
                    )  # fmt: skip
                return None
        offset: int | None = super()._new_offset(tp)
        return offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust's gap bookkeeping, on compacted topics only.

        Corrects: Faust records offsets it fetched past without handling as a *gap*, which its commit counts as
        done. Only a compacted log has holes of its own; on any other topic a gap is messages dropped unhandled
        (a batch cut short by a rebalance, records of a partition paused meanwhile), so it is not recorded: the
        commit stops before them, and the agent's :class:`OffsetContinuity` check restarts the worker.
        Test: ``test_offsets_fetched_past_unhandled_are_not_counted_as_done``."""
        if tp.topic in COMPACTED_TOPICS:
            await super()._add_gap(tp, offset_from, offset_to)
            return
        log.warning(
            "%s[%d]: offsets from %d before %d fetched past unhandled; not counted as done",
            tp.topic, tp.partition, offset_from, offset_to,
        )  # fmt: skip

    def _before_log_start(self, tp: TP, offset: int) -> bool:
        """Whether ``offset`` is gone from the log (retention deleted it), as last asked of the broker.

        Asked in the background the first time a head is missing, so a group that resumes from before its
        log's start is not held for good. Test: ``test_a_missing_head_asks_the_broker_where_the_log_starts``."""
        if self._log_starts.get(tp, -1) > offset:
            return True
        if tp not in self._asking_log_start:
            self._asking_log_start.add(tp)
            asyncio.ensure_future(self._ask_log_start(tp))
        return False

    async def _ask_log_start(self, tp: TP) -> None:
        try:
            self._log_starts.update(await self.earliest_offsets(tp))
        except Exception as exc:  # noqa: BLE001 - asked again at the next commit
            log.warning("log start of %s[%d] not known: %r", tp.topic, tp.partition, exc)
        finally:
            self._asking_log_start.discard(tp)


class AtLeastOnceTransport(AIOKafkaTransport):
    """Faust's aiokafka transport with :class:`AtLeastOnceConsumer` (broker URLs ``pipeline-kafka://``)."""

    Consumer = AtLeastOnceConsumer


TRANSPORTS.aliases[BROKER_SCHEME] = f"{__name__}:AtLeastOnceTransport"


@dataclass
class OffsetContinuity:
    """Within one consumer generation, an agent sees each partition's offsets one after another.

    Faust can drop messages it fetched (a batch cut short, a queue cleared) and then record the hole as an
    offset *gap*, which its commit counts as done: the messages are lost for good. A non-compacted topic has no
    holes of its own, so a jump means exactly that. A new generation (a rebalance, which seeks every partition
    to its committed offset) starts the count afresh; a message at or below the last one is a redelivery.
    Test: ``test_offset_continuity_allows_redeliveries_and_a_new_generation_but_no_hole``."""

    last: dict[tuple[str, int], int] = field(default_factory=dict)
    generation: int | None = None

    def skipped(self, generation: int, topic: str, partition: int, offset: int) -> int | None:
        """The first offset skipped before ``offset`` in this generation, or None when nothing was."""
        if generation != self.generation:
            self.last.clear()
            self.generation = generation
        previous = self.last.get((topic, partition))
        if previous is not None and offset > previous + 1:
            return previous + 1
        self.last[(topic, partition)] = offset if previous is None else max(previous, offset)
        return None


@dataclass
class Admission:
    """Whether an agent may decide a message now, asked right before each decision of a batch.

    Corrects: Faust checks a message when its stream hands it over: same consumer generation (faust-streaming
    #221), flow not suspended by a rebalance. A message of a batch waits while the ones before it are decided,
    and a rebalance may begin meanwhile (its table partition may be gone already), so the check is made again; a
    message that fails it is left unhandled and unacked, and read again in the new generation. And within a
    generation a partition's offsets must follow one another (:class:`OffsetContinuity`): a hole stops the worker
    for a restart. Tests: ``test_a_message_waiting_in_a_batch_is_not_decided_once_a_rebalance_began``,
    ``test_a_hole_in_a_batch_stops_the_worker_before_the_message_after_it`` (tests/agents/test_recovery.py) and
    ``test_messages_fetched_but_never_handed_over_stop_the_worker_before_anything_after_them``."""

    app: Any
    agent: str
    compacted: frozenset[str]
    continuity: OffsetContinuity = field(default_factory=OffsetContinuity)

    def admits(self, message: Message) -> bool:
        generation = self.app.consumer_generation_id
        if message.generation_id != generation or not self.app.flow_control.is_active():
            return False
        skipped = self.continuity.skipped(generation, message.topic, message.partition, message.offset)
        if skipped is not None and message.topic not in self.compacted:
            # the messages from ``skipped`` on were fetched but never reached this agent; Faust would count
            # them as a gap and commit past them. Exit before anything after them is acked: the restarted
            # worker reads them again from the committed offset (the rest are duplicates, which steps skip)
            log.critical(
                "%s: %s[%s] jumped from offset %s to %s: messages fetched but never handed over; restarting to"
                " read them again", self.agent, message.topic, message.partition, skipped, message.offset,
            )  # fmt: skip
            exit_for_restart()
            raise RestartForRedelivery(f"{message.topic}[{message.partition}] from offset {skipped}")
        return True


class RestartForRedelivery(Exception):  # noqa: N818 - a signal, not an error
    """Raised after :func:`exit_for_restart` (which returns only where a test replaces it): the agent stops."""


def exit_for_restart() -> None:
    """Exit at once with the watchdog's code, so the supervisor starts the worker again."""
    stop_stalled_process()


def make_current(stream: Any, event: EventT[Any] | None) -> None:
    """Make ``event`` the current event of ``stream`` (None: no event), as Faust's stream iteration would.

    A table write goes to the changelog partition of the current event's partition, and a RocksDB table is read
    from that partition. A batched agent takes its events from ``stream.events()`` in a reader task, whose
    context is not the agent's, so it makes each event current itself, through Faust's private setter."""
    stream._set_current_event(event)
