"""The Faust apps: one per service (its own consumer group and its own tables), built by :func:`create_app`.

``pipeline worker SERVICE`` runs one. Each service's agents are thin: they turn Faust events into
:class:`~streams.runtime.Incoming` and hand them to a :class:`~streams.runtime.StepRunner`, which decodes,
calls the pure domain step, sends the resulting events and writes the state back.
"""

from __future__ import annotations

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
from streams.runtime import Incoming, Outbox, Step, StepRunner, normalise_headers
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
    started_at: float = field(default_factory=time.monotonic)


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


def new_table(app: faust.App, spec: TableSpec) -> Any:
    """A changelog-backed table of JSON values keyed by order id, SKU or user id."""
    return app.Table(
        spec.name,
        default=None,
        partitions=PARTITIONS,
        key_type=str,  # the app's default serializers: raw UTF-8 keys, JSON values
        help=spec.description,
    )


def register_step(
    service: ServiceApp,
    step: Step,
    sources: tuple[TopicSpec, ...],
    table: Any,
    codec: AvroCodec,
) -> StepRunner:
    """Subscribe ``step`` to ``sources`` as one agent (concurrency 1: per-partition order is the saga's order)."""
    assert service.outbox is not None

    async def make_durable() -> None:
        try:
            await service.app.producer.flush()
        except Exception as exc:
            # the state may be written but its events are not sent: stop the worker before Faust acks the input,
            # so the input is replayed (and the events re-emitted) by whoever takes the partition next
            log.critical("could not make %s's state durable: %r; stopping the worker", step.agent, exc)
            await service.app.crash(exc)
            raise

    runner = StepRunner(step, table, codec, service.outbox, make_durable=make_durable)
    runner.sources = tuple(s.name for s in sources)
    channel = service.app.topic(
        *[s.name for s in sources], key_serializer="raw", value_serializer="raw", partitions=PARTITIONS
    )

    async def agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await runner.handle(
                Incoming(
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    key=message.key,
                    value=message.value,
                    headers=normalise_headers(message.headers),
                )
            )

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
    built = ServiceApp(service, app)
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
