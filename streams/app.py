"""The Faust apps: one per service (its own consumer group and its own tables), built by :func:`create_app`.

``pipeline worker SERVICE`` runs one. Each service's agents are thin: they turn Faust events into
:class:`~streams.runtime.Incoming` and hand them to a :class:`~streams.runtime.StepRunner`, which decodes,
calls the pure domain step, sends the resulting events and writes the state back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust

from pipeline.settings import Settings
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from streams.resilience import CircuitBreaker
from streams.runtime import Incoming, Outbox, StateStore, StateTable, Step, StepRunner, normalise_headers
from streams.topics import APP_PREFIX, PARTITIONS, TableSpec, TopicSpec
from streams.watchdog import Watchdog, stop_stalled_process

log = logging.getLogger(__name__)


def app_id(service: str) -> str:
    return f"{APP_PREFIX}-{service}"


@dataclass
class ServiceApp:
    """A built service: its Faust app and the runners of its agents (for health and tests)."""

    name: str
    app: faust.App
    runners: dict[str, StepRunner] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    outbox: Outbox | None = None
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    write_timeout_s: float = 30.0

    async def confirm_writes(self) -> None:
        """Wait until the broker acknowledged every table write made so far (raises if one failed)."""
        pending = [fut for t in self.tables.values() if isinstance(t, DurableTable) for fut in t.take_unconfirmed()]
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), self.write_timeout_s)


class DurableTable(faust.Table):  # type: ignore[type-arg]
    """A table whose changelog writes can be awaited until the broker acknowledged them.

    Faust queues a table write in its producer buffer and sends it from a background task;
    ``producer.flush()`` waits for that buffer only up to 0.1 s, so it cannot prove a write is stored.
    Every changelog future is kept here instead, and :meth:`ServiceApp.confirm_writes` awaits them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unconfirmed: list[asyncio.Future[Any]] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self._unconfirmed.append(fut)
        return fut

    def take_unconfirmed(self) -> list[asyncio.Future[Any]]:
        """The writes not yet awaited, handed over once."""
        taken, self._unconfirmed = self._unconfirmed, []
        return taken


def new_faust_app(service: str, settings: Settings) -> faust.App:
    """A Faust app with the pipeline's at-least-once settings."""
    brokers = [f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",") if b.strip()]
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

    runner = StepRunner(step, store, codec, service.outbox, make_durable=make_durable)
    runner.sources = tuple(s.name for s in sources)
    channel = service.app.topic(
        *[s.name for s in sources], key_serializer="raw", value_serializer="raw", partitions=PARTITIONS
    )

    async def agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            incoming = Incoming(
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value,
                headers=normalise_headers(message.headers),
            )
            try:
                await runner.handle(incoming)
            except Exception as exc:
                # a state write or an event the broker did not take: stop the worker before Faust acks the
                # input, so the input is replayed (and its events re-emitted) by whoever takes the partition
                log.critical("%s could not store the outcome of %s: %r; stopping", step.agent, incoming, exc)
                await service.app.crash(exc)
                raise

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
    built = ServiceApp(service, app, write_timeout_s=settings.delivery_timeout_s)
    built.outbox = Outbox(codec, catalog, faust_sender(app), source=f"/order-pipeline/{service}")
    wire(built, settings, codec)
    add_watchdog(built, settings)
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
