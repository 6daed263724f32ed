"""The Faust apps: one per service (its own consumer group and its own tables), built by :func:`create_app`.

``pipeline worker SERVICE`` runs one. Each service's agents are thin: they turn Faust events into
:class:`~streams.runtime.Incoming` and hand them to a :class:`~streams.runtime.StepRunner`, which decodes,
calls the pure domain step, sends the resulting events and writes the state back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import TP, EventT, Message

from common.settings import Settings
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.topics import APP_PREFIX, PARTITIONS, TOPICS, TableSpec, TopicSpec, internal_topics, parked_keys_table
from streams.resilience import CircuitBreaker
from streams.runtime import Incoming, Outbox, StateStore, StateTable, Step, StepRunner, normalise_headers
from streams.watchdog import Watchdog, stop_stalled_process

log = logging.getLogger(__name__)

T = TypeVar("T")


def app_id(service: str) -> str:
    return f"{APP_PREFIX}-{service}"


@dataclass
class ServiceApp:
    """A built service: its Faust app and the runners of its agents (for health and tests)."""

    name: str
    app: faust.App
    runners: dict[str, StepRunner] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    parked: DurableTable | None = None
    """The service's parked-keys table, shared by its agents (built with the first agent registered)."""
    outbox: Outbox | None = None
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    write_timeout_s: float = 30.0
    batch_max: int = 16
    """Most messages an agent handles together (``PIPELINE_STREAM_BATCH_MAX``)."""

    async def confirm_writes(self) -> None:
        """Wait until the broker acknowledged every table write made so far (raises if one failed)."""
        pending = [fut for t in self.tables.values() if isinstance(t, DurableTable) for fut in t.unconfirmed()]
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), self.write_timeout_s)


class DurableTable(faust.Table):  # type: ignore[type-arg]
    """A table whose changelog writes can be awaited until the broker acknowledged them.

    Faust queues a table write in its producer buffer and sends it from a background task;
    ``producer.flush()`` waits for that buffer only up to 0.1 s, so it cannot prove a write is stored.
    Every changelog future is kept here instead, and :meth:`ServiceApp.confirm_writes` awaits them.

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

    The Faust build we run ends a recovery by resuming the stream partitions *first* and then, while agents
    already receive their messages, seeking them to the committed offsets and resuming flow control, which
    clears every agent's queue. Messages fetched in that window are lost in three ways: dropped from the
    queue unprocessed and unacked; re-fetched after the seek but discarded as already read (the read offset
    is reset only after the seek); and the hole this leaves is then recorded as an offset *gap*, which the
    commit counts as done. So a restarted worker skipped inputs for good (an ``OrderCancelled``, a
    ``StockLineReserved``: stock stayed reserved), or, when two lost messages blocked a partition's commit,
    stood still until its watchdog restarted it. Here the order is: seek (streams still paused), mark
    recovery complete, resume flow control (clearing queues that hold nothing of these streams), and only
    then resume the stream partitions, so their first fetch starts at the committed offset.
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
    """Faust's table manager with :class:`SeekThenResumeRecovery` as its recovery service."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekThenResumeRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


@dataclass
class OffsetContinuity:
    """Within one consumer generation, an agent sees each partition's offsets one after another.

    Faust can drop messages it fetched (a batch cut short, a queue cleared) and then record the hole as an
    offset *gap*, which its commit counts as done: the messages are lost for good. A non-compacted topic has no
    holes of its own, so a jump means exactly that. A new generation (a rebalance, which seeks every partition
    to its committed offset) starts the count afresh; a message at or below the last one is a redelivery."""

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

    Faust checks a message when its stream hands it over: same consumer generation, flow not suspended by a
    rebalance. A message of a batch waits while the ones before it are decided, and a rebalance may begin
    meanwhile (its table partition may be gone already), so the check is made again; a message that fails it is
    left unhandled and unacked, and read again in the new generation. And within a generation a partition's
    offsets must follow one another (:class:`OffsetContinuity`): a hole stops the worker for a restart."""

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


COMPACTED_TOPICS = frozenset(t.name for t in (*TOPICS, *internal_topics()) if t.compacted)
"""Topics whose offsets can have holes of their own: Faust's commit rules apply to them unchanged."""


class GenerationAwareConsumer(AIOKafkaConsumer):
    """Faust's consumer, with what keeps its commits from passing a message that was never handled.

    * It fetches for a copy of the active partitions (see :meth:`_getmany`).
    * An ack does not count when it comes from an older consumer generation, or while a rebalance is under way:
      Faust's stream skips, and *acks* unprocessed, a message fetched before a rebalance, and an ack made after
      the revocation cleared the partition's bookkeeping would still be counted in the next generation. Both are
      left out, so the message is read again from the committed offset the new assignment seeks to.
    * On a topic that is not compacted, a commit never passes an unhandled offset (see :meth:`_new_offset`).
    """

    def ack(self, message: Message) -> bool:
        if message.generation_id is not None and message.generation_id != self.app.consumer_generation_id:
            log.info(
                "ack of %s[%d]@%d from generation %r refused (now %r): it is read again",
                message.topic, message.partition, message.offset, message.generation_id,
                self.app.consumer_generation_id,
            )  # fmt: skip
            return False
        return bool(super().ack(message))

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """Forget acks made since the revocation: they belong to no generation, so they must not count."""
        for tp in assigned:
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._gap.pop(tp, None)
        await super().on_partitions_assigned(assigned, generation_id)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:  # noqa: ASYNC109
        """Fetch for a copy of the active partitions taken now, never for Faust's live set.

        Faust hands its own set of active partitions to the consumer thread, and pauses partitions in it while
        the fetch waits. aiokafka reads an *empty* set as "every partition": once recovery paused the last
        changelog partition, a fetch returned the stream partitions' records too, which Faust then dropped as
        not active, after aiokafka had moved past them. So the first messages waiting after a (re)start were
        lost (a test's first ``AddStock``; commands sent while a worker was down)."""
        if active_partitions is None:
            return await super()._getmany(None, timeout)
        wanted = set(active_partitions)
        if not wanted:
            return {}
        return await super()._getmany(wanted, timeout)

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's next offset to commit, but never past a head message of a log without holes that was not handled.

        Faust lets a commit pass exactly one unacknowledged message at a partition's head (its rule tolerates a
        compacted-away head), so a message dropped there unhandled was committed past and lost for good. On a
        topic that is not compacted every offset from the log's start on exists, so the commit waits for the
        head instead; if it never comes, the watchdog sees the partition stand still and restarts the worker,
        which reads it again."""
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None and tp.topic not in COMPACTED_TOPICS:
            first = min(acked)
            unhandled = first > committed and not self._gap[tp].overlaps(committed)
            if unhandled and not self._before_log_start(tp, committed):
                held = self.__dict__.setdefault("_held_heads", {})
                if held.get(tp) != committed:
                    held[tp] = committed
                    log.warning(
                        "commit of %s[%d] held at %d: that message was not handled (first handled: %d)",
                        tp.topic, tp.partition, committed, first,
                    )  # fmt: skip
                return None
        offset: int | None = super()._new_offset(tp)
        return offset

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust records offsets it fetched past without handling as a *gap*, which its commit counts as done.

        Only a compacted log has holes of its own; on any other topic a gap is messages dropped unhandled (a
        batch cut short by a rebalance, records of a partition paused meanwhile), so it is not recorded: the
        commit stops before them, and the agent's :class:`OffsetContinuity` check restarts the worker."""
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
        log's start is not held for good."""
        starts: dict[TP, int] = self.__dict__.setdefault("_log_starts", {})
        if starts.get(tp, -1) > offset:
            return True
        asking: set[TP] = self.__dict__.setdefault("_asking_log_start", set())
        if tp not in asking:
            asking.add(tp)

            async def ask() -> None:
                try:
                    starts.update(await self.earliest_offsets(tp))
                except Exception as exc:  # noqa: BLE001 - asked again at the next commit
                    log.warning("log start of %s[%d] not known: %r", tp.topic, tp.partition, exc)
                finally:
                    asking.discard(tp)

            asyncio.ensure_future(ask())
        return False


class GenerationAwareTransport(AIOKafkaTransport):
    """The aiokafka transport with :class:`GenerationAwareConsumer` (broker URLs ``pipeline-kafka://``)."""

    Consumer = GenerationAwareConsumer


TRANSPORTS.aliases["pipeline-kafka"] = f"{__name__}:GenerationAwareTransport"


def new_faust_app(service: str, settings: Settings) -> faust.App:
    """A Faust app with the pipeline's at-least-once settings."""
    brokers = [f"pipeline-kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",") if b.strip()]
    datadir = Path(settings.data_dir).resolve() / service
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        app_id(service),
        broker=brokers,
        store=settings.table_store,
        datadir=str(datadir),
        topic_partitions=PARTITIONS,
        topic_replication_factor=settings.topic_replication_factor,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=0,
        # a killed worker's partitions move to the others (or its restart) within seconds, not a minute
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        web_enabled=False,
        table_standby_replicas=0,
        stream_wait_empty=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="json",
        TableManager=SeekThenResumeTableManager,
    )


def faust_sender(app: faust.App) -> Callable[..., Any]:
    """A :class:`~streams.runtime.Sender` over Faust's producer (raw bytes, topics cached)."""
    topics: dict[str, Any] = {}

    async def send(topic_name: str, key: bytes, value: bytes, headers: Sequence[tuple[str, str | bytes | None]]) -> Any:
        t = topics.get(topic_name)
        if t is None:
            t = topics[topic_name] = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
        raw = [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in headers]
        return await t.send(key=key, value=value, headers=raw)

    return send


def incoming_of(message: Message) -> Incoming:
    """A Faust message as the edge takes it."""
    return Incoming(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=normalise_headers(message.headers),
    )


async def ready_batches(source: AsyncIterable[T], most: int) -> AsyncGenerator[list[T], None]:
    """``source``'s items in lists of those already there when the consumer asks: at least one, at most ``most``.

    A task reads ``source`` ahead (at most ``most`` items waiting), so a consumer that was busy finds what
    arrived meanwhile and takes it at once, while one that keeps up gets each item alone, with no wait for
    company (no linger: batches form only under load). Ends when ``source`` ends; re-raises its error after
    the items read before it."""
    waiting: asyncio.Queue[tuple[T | None, BaseException | None, bool]] = asyncio.Queue(maxsize=most)

    async def read() -> None:
        try:
            async for item in source:
                await waiting.put((item, None, False))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await waiting.put((None, exc, True))
        else:
            await waiting.put((None, None, True))

    reader = asyncio.ensure_future(read())
    try:
        ended = False
        while not ended:
            item, error, ended = await waiting.get()
            batch: list[T] = [] if ended else [item]  # type: ignore[list-item]
            while not ended and len(batch) < most and not waiting.empty():
                item, error, ended = waiting.get_nowait()
                if not ended:
                    batch.append(item)  # type: ignore[arg-type]
            if batch:
                yield batch
            if error is not None:
                raise error
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def new_table(app: faust.App, spec: TableSpec) -> DurableTable:
    """A changelog-backed table of JSON values keyed by order id, SKU or user id."""
    table = DurableTable(
        app,
        name=spec.name,
        default=None,
        beacon=app.tables.beacon,
        partitions=PARTITIONS,
        key_type=str,  # the app's default serializers: raw UTF-8 keys, JSON values
        help=spec.description,
    )
    app.tables.add(table)
    return table


def register_step(
    service: ServiceApp,
    step: Step,
    sources: tuple[TopicSpec, ...],
    store: StateTable | StateStore,
    codec: AvroCodec,
) -> StepRunner:
    """Subscribe ``step`` to ``sources`` as one agent (concurrency 1: per-partition order is the saga's order)."""
    assert service.outbox is not None

    async def make_durable() -> None:
        await service.confirm_writes()

    if service.parked is None:
        spec = parked_keys_table(service.name)
        service.parked = service.tables[spec.name] = new_table(service.app, spec)
    runner = StepRunner(step, store, codec, service.outbox, make_durable=make_durable, parked=service.parked)
    runner.sources = tuple(s.name for s in sources)
    channel = service.app.topic(
        *[s.name for s in sources], key_serializer="raw", value_serializer="raw", partitions=PARTITIONS
    )

    admission = Admission(service.app, step.agent, frozenset(spec.name for spec in sources if spec.compacted))
    app = service.app

    def admit_next(stream: Any, fetched: dict[tuple[str, int, int], EventT[Any]], incoming: Incoming) -> bool:
        """Admit the next message of a batch; an admitted one becomes the agent's current event, as Faust's stream
        iteration would make it (a table write goes to the changelog partition of the current event's)."""
        event = fetched[(incoming.topic, incoming.partition, incoming.offset)]
        if not admission.admits(event.message):
            return False
        stream._set_current_event(event)
        return True

    async def agent(stream: Any) -> None:
        # acks are the agent's own: a message is acked only once its batch's writes and outputs are acknowledged
        manual = stream.noack()
        async with aclosing(ready_batches(manual.events(), service.batch_max)) as batches:
            async for events in batches:
                incomings = [incoming_of(event.message) for event in events]
                fetched = {(i.topic, i.partition, i.offset): e for i, e in zip(incomings, events, strict=True)}
                try:
                    handled = await runner.handle_batch(incomings, functools.partial(admit_next, manual, fetched))
                except RestartForRedelivery:
                    return  # nothing after the hole is acked; the agent stops (the real exit ended the process)
                except Exception as exc:
                    # a state write or an event the broker did not take: stop the worker before Faust acks the
                    # inputs, so they are replayed (and their events re-emitted) by whoever takes the partition
                    log.critical("%s could not store the outcome of %s: %r; stopping", step.agent, incomings, exc)
                    await app.crash(exc)
                    raise
                finally:
                    manual._set_current_event(None)
                for event in events[:handled]:
                    await manual.ack(event)

    agent.__name__ = agent.__qualname__ = step.agent
    service.app.agent(channel, name=step.agent, concurrency=1)(agent)
    service.runners[step.agent] = runner
    return runner


def create_app(service: str, settings: Settings) -> ServiceApp:
    """Build the Faust app of ``service`` with its tables and agents (nothing connects until it starts)."""
    from streams.services import wire

    catalog = SchemaCatalog.load()
    codec = AvroCodec(catalog)
    app = new_faust_app(service, settings)
    built = ServiceApp(service, app, write_timeout_s=settings.delivery_timeout_s, batch_max=settings.stream_batch_max)
    built.outbox = Outbox(codec, catalog, faust_sender(app), source=f"/order-pipeline/{service}")
    wire(built, settings, codec)
    watchdog = add_watchdog(built, settings)
    from streams.endpoint import add_http_endpoint

    add_http_endpoint(built, settings, watchdog)
    return built


def add_watchdog(built: ServiceApp, settings: Settings) -> Watchdog:
    """Stop this worker when it holds partitions with waiting messages and makes no progress (see watchdog)."""
    app = built.app
    sources = {name for runner in built.runners.values() for name in runner.sources}
    watchdog = Watchdog(
        settings,
        app_id(built.name),
        sources=sources,
        busy_for=lambda: max((r.busy_for() for r in built.runners.values()), default=0.0),
        ready=lambda: bool(app.tables.recovery.completed.is_set()),  # type: ignore[attr-defined]
    )

    @app.timer(interval=settings.watchdog_interval_s)  # type: ignore[untyped-decorator]
    async def watch_progress() -> None:
        if await watchdog.check():
            stop_stalled_process()

    return watchdog
