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
from faust.types import EventT, Message

from common.settings import Settings
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.topics import APP_PREFIX, PARTITIONS, TableSpec, TopicSpec, parked_keys_table
from streams.faust_patches import (
    BROKER_SCHEME,
    Admission,
    DurableTable,
    RestartForRedelivery,
    SeekThenResumeTableManager,
    make_current,
)
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


def new_faust_app(service: str, settings: Settings) -> faust.App:
    """A Faust app with the pipeline's at-least-once settings."""
    brokers = [f"{BROKER_SCHEME}://{b.strip()}" for b in settings.kafka_bootstrap.split(",") if b.strip()]
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
        make_current(stream, event)
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
                    make_current(manual, None)
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
