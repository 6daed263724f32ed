"""The Faust app a worker runs, and its parts: tables whose writes can be awaited, a sender of raw records, batches.

One app per service (its own consumer group and its own tables), with the pipeline's at-least-once settings;
:mod:`streams.bootstrap` builds a service's app with its tables and agents.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import faust

from common.settings import Settings
from schemas.topics import APP_PREFIX, PARTITIONS, TableSpec
from streams.faust_patches import BROKER_SCHEME, DurableTable, SeekThenResumeTableManager

T = TypeVar("T")


def app_id(service: str) -> str:
    return f"{APP_PREFIX}-{service}"


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
        producer_linger_ms=settings.producer_linger_ms,
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
    """A :class:`~streams.outbox.Sender` over Faust's producer (raw bytes, topics cached)."""
    topics: dict[str, Any] = {}

    async def send(topic_name: str, key: bytes, value: bytes, headers: Sequence[tuple[str, str | bytes | None]]) -> Any:
        t = topics.get(topic_name)
        if t is None:
            t = topics[topic_name] = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
        raw = [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in headers]
        return await t.send(key=key, value=value, headers=raw)

    return send


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
