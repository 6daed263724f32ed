"""The view service's edge: Faust agents fold the events into view tables and mirror each batch's changes to Redis.

Three agents, each over topics keyed like its tables (so every entry lives on its events' partition):

* ``fold_order_views``: orders, inventory and payments events → ``views_orders`` (order id). Each stock line it
  reads is also forwarded, as it was, to :data:`~schemas.topics.VIEWS_STOCK_LINES`, keyed by SKU;
* ``fold_stock_views``: ``inventory.stock.v1`` and the forwarded stock lines → ``views_stock`` (SKU);
* ``fold_user_views``: users and notifications events → ``views_users`` and ``views_notices`` (user id).

The decisions are :func:`streams.views.tables.fold` (pure). Per batch: every message is checked (key contract,
decode) and folded against the entries as the messages before it left them; then the Redis writes of every
entry the batch changed (its diff from the batch's start to its end, so an order changed by five events of a
batch is written once) run in **one MULTI/EXEC**, and only then are the new entries written to the tables,
made durable, the forwards and dead letters sent and acknowledged, and the messages acked. Redis first: every
write is state-based, so a crash anywhere replays the batch, which folds to the same entries and writes the same
keys. Redis away: the batch waits for it (the agent's partitions wait; nothing is lost or skipped).

A Redis flushed or replaced is re-mirrored from the tables (O(keys), :class:`RedisMirror`): each worker marks
the (table, partition) pairs it mirrored in :data:`~streams.views.keys.MIRRORED_KEY`, and a timer re-mirrors the
pairs it holds whose mark is gone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import redis.asyncio as aioredis
from faust.types import EventT
from opentelemetry.trace import Status, StatusCode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.health import redis_check
from common.settings import Settings
from common.telemetry import (
    EVENTS,
    STEP_SECONDS,
    VIEW_BATCHES,
    VIEW_REDIS_COMMANDS,
    VIEW_REDIS_ROUND_TRIPS,
    consumer_span,
)
from schemas.codec import AvroCodec
from schemas.errors import DecodeError
from schemas.topics import (
    INVENTORY_EVENTS,
    INVENTORY_STOCK,
    NOTIFICATION_EVENTS,
    ORDER_EVENTS,
    PARTITIONS,
    PAYMENT_EVENTS,
    USER_EVENTS,
    VIEWS_STOCK_LINES,
    TopicSpec,
    table,
    topic,
)
from streams.agents import ServiceApp, add_batch_agent, incoming_of, resolve_schema_ids
from streams.app import new_table
from streams.checks import views_check
from streams.faust_patches import Admission, DurableTable, make_current
from streams.incoming import Incoming, key_partition
from streams.outbox import Outgoing
from streams.views.events import CannotProject, Event, Op, make_event
from streams.views.keys import MIRRORED_KEY, mirrored_field
from streams.views.stock import STOCK_LINE_RECORDS
from streams.views.tables import NOTICE_VIEWS, ORDER_VIEWS, STOCK_VIEWS, USER_VIEWS, fold, mirror, mirror_ops

log = logging.getLogger(__name__)

MIRROR_CHUNK = 500
"""Redis writes per round trip when a whole partition is re-mirrored."""


class RedisMirror:
    """The only writer of ``view:*``: a batch's writes in one MULTI/EXEC, waiting out Redis being away."""

    def __init__(self, client: aioredis.Redis, *, retry_cap_s: float = 5.0) -> None:
        self.redis = client
        self.lock = asyncio.Lock()
        """Held while a batch writes Redis and then its tables, and while partitions are re-mirrored: a
        re-mirror reads the tables as the last written batch left them."""
        self._retry_cap_s = retry_cap_s
        self.round_trips = 0
        self.writes = 0
        self.waiting_since: float | None = None
        self.last_error: str | None = None

    async def write(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` in order, atomically; retried (with backoff) until Redis takes them."""
        if not ops:
            return
        delay = 0.1
        while True:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for op in ops:
                        pipe.execute_command(op.command, op.key, *op.args)
                    await pipe.execute()
                self.round_trips += 1
                self.writes += len(ops)
                VIEW_REDIS_ROUND_TRIPS.inc()
                VIEW_REDIS_COMMANDS.inc(len(ops))
                self.waiting_since = None
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self.last_error = f"redis: {exc}"
                if self.waiting_since is None:
                    self.waiting_since = time.monotonic()
                log.warning("redis unavailable (%s); the views wait, retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_cap_s)

    async def unmirrored(self, fields: Sequence[str]) -> list[str]:
        """Which of ``fields`` (``table/partition``) have no mark: Redis lost what they showed."""
        if not fields:
            return []
        try:
            marks = await self.redis.hmget(MIRRORED_KEY, list(fields))
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return []  # Redis away is not Redis flushed: the next look decides
        return [name for name, mark in zip(fields, marks, strict=True) if mark is None]

    async def remirror(self, table_name: str, partition: int, entries: Iterable[tuple[str, Any]]) -> int:
        """Write every entry of one table partition whole, then mark it mirrored; how many entries."""
        ops: list[Op] = []
        count = 0
        for key, entry in entries:
            ops += mirror(table_name, key, entry)
            count += 1
            if len(ops) >= MIRROR_CHUNK:
                await self.write(ops)
                ops = []
        ops.append(Op("HSET", MIRRORED_KEY, (mirrored_field(table_name, partition), int(time.time() * 1000))))
        await self.write(ops)
        return count


@dataclass
class ViewAgent:
    """One folding agent's counters and its busy clock (for health, the watchdog and the benchmark)."""

    name: str
    sources: tuple[str, ...]
    tables: dict[str, DurableTable]
    processed: int = 0
    dead_lettered: int = 0
    unchanged: int = 0
    batches: int = 0
    busy_since: float | None = None
    last_progress: float = field(default_factory=time.monotonic)

    def busy_for(self) -> float:
        return 0.0 if self.busy_since is None else time.monotonic() - self.busy_since


def wire_views(built: ServiceApp, settings: Settings, codec: AvroCodec) -> RedisMirror:
    """Register the view tables, the three folding agents and the re-mirror timer on the view service's app."""
    client = aioredis.Redis.from_url(settings.redis_url)
    views = RedisMirror(client)
    built.checks += [redis_check(client), views_check(client)]  # Redis is where its work goes: critical
    tables = {name: new_table(built.app, table("views", name)) for name in (ORDER_VIEWS, STOCK_VIEWS, USER_VIEWS)}
    tables[NOTICE_VIEWS] = new_table(built.app, table("views", NOTICE_VIEWS))
    built.tables.update(tables)
    agents = [
        _register(built, "fold_order_views", (ORDER_EVENTS, INVENTORY_EVENTS, PAYMENT_EVENTS),
                  {ORDER_VIEWS: tables[ORDER_VIEWS]}, codec, views, forward_stock_lines=True),
        _register(built, "fold_stock_views", (INVENTORY_STOCK, VIEWS_STOCK_LINES),
                  {STOCK_VIEWS: tables[STOCK_VIEWS]}, codec, views),
        _register(built, "fold_user_views", (USER_EVENTS, NOTIFICATION_EVENTS),
                  {USER_VIEWS: tables[USER_VIEWS], NOTICE_VIEWS: tables[NOTICE_VIEWS]}, codec, views),
    ]  # fmt: skip
    built.views = agents
    app = built.app

    @app.timer(interval=settings.views_check_interval_s)  # type: ignore[untyped-decorator]
    async def remirror_lost_views() -> None:
        """Re-mirror the table partitions this worker holds whose Redis keys were lost (flushed, replaced)."""
        if app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return  # the tables are not whole yet
        await remirror_held(app, agents, views)

    built.timers["remirror_lost_views"] = remirror_lost_views
    return views


async def remirror_held(app: faust.App, agents: Sequence[ViewAgent], views: RedisMirror) -> int:
    """Re-mirror every (table, partition) this worker holds that Redis has no mark for; how many entries."""
    held: dict[str, set[int]] = {}
    for tp in app.assignor.assigned_actives():
        held.setdefault(tp.topic, set()).add(tp.partition)
    wanted: list[tuple[str, int, DurableTable]] = []
    for agent in agents:
        partitions = set().union(*(held.get(source, set()) for source in agent.sources))
        wanted += [(name, p, t) for name, t in agent.tables.items() for p in sorted(partitions)]
    lost = set(await views.unmirrored([mirrored_field(name, p) for name, p, _ in wanted]))
    written = 0
    for name, partition, view_table in wanted:
        if mirrored_field(name, partition) not in lost:
            continue
        async with views.lock:
            entries = [
                (k, v) for k, v in list(view_table.items()) if key_partition(k.encode(), PARTITIONS) == partition
            ]
            count = await views.remirror(name, partition, entries)
        written += count
        log.warning("re-mirrored %s entries of %s[%s] to Redis (its keys were gone)", count, name, partition)
    return written


def _register(
    built: ServiceApp,
    name: str,
    sources: tuple[TopicSpec, ...],
    tables: dict[str, DurableTable],
    codec: AvroCodec,
    views: RedisMirror,
    *,
    forward_stock_lines: bool = False,
) -> ViewAgent:
    """Subscribe one folding agent to ``sources`` (concurrency 1: one partition's events in their order)."""
    app = built.app
    agent = ViewAgent(name, tuple(s.name for s in sources), tables)
    admission = Admission(app, name, frozenset(s.name for s in sources if s.compacted))
    channel = app.topic(*agent.sources, key_serializer="raw", value_serializer="raw", partitions=PARTITIONS)

    async def fold_views(manual: Any, events: list[EventT[Any]]) -> int:
        await resolve_schema_ids(codec, [incoming_of(event.message) for event in events], name)
        return await _fold_batch(built, agent, admission, manual, events, codec, views,
                                 forward_stock_lines=forward_stock_lines)  # fmt: skip

    add_batch_agent(built, channel, name, fold_views)
    return agent


async def _fold_batch(
    built: ServiceApp,
    agent: ViewAgent,
    admission: Admission,
    stream: Any,
    events: Sequence[EventT[Any]],
    codec: AvroCodec,
    views: RedisMirror,
    *,
    forward_stock_lines: bool,
) -> int:
    """Fold a batch, write Redis, then the tables, make them durable, send, and say how many may be acked."""
    started = time.monotonic()
    agent.busy_since = started
    entries: dict[tuple[str, str], tuple[Any, EventT[Any]]] = {}
    """(table, key) → the entry after the batch's events so far, and the event that last changed it."""
    started_as: dict[tuple[str, str], Any] = {}
    """(table, key) → the entry as it was when the batch began (what Redis shows of it)."""
    outgoing: list[Outgoing] = []
    handled = 0

    def lookup(table_name: str, key: str) -> Any:
        held = entries.get((table_name, key))
        return held[0] if held is not None else agent.tables[table_name].get(key)

    try:
        for event in events:
            if not admission.admits(event.message):
                break
            make_current(stream, event)  # a RocksDB table reads the current event's partition
            incoming = incoming_of(event.message)
            handled += 1
            with consumer_span(
                agent.name,
                incoming.envelope.traceparent if incoming.envelope else None,
                functools.partial(_span_attributes, incoming),
            ) as span:
                try:
                    view_event = _event(incoming, codec, int((event.message.timestamp or 0) * 1000))
                    changes = fold(view_event, lookup, as_stock=incoming.topic == VIEWS_STOCK_LINES.name)
                except (DecodeError, CannotProject) as exc:
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    outgoing.append(_dead_letter(built, agent, incoming, f"{type(exc).__name__}: {exc}"))
                    continue
                except Exception as exc:  # a bug must not lose the event nor stop the partition: park it
                    log.exception("%s failed on %s", agent.name, incoming.topic)
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    outgoing.append(
                        _dead_letter(built, agent, incoming, f"{type(exc).__name__} in {agent.name}: {exc}")
                    )
                    continue
                span.update_name(f"{agent.name} {view_event.record}")
                for change in changes:
                    started_as.setdefault((change.table, change.key), change.before)
                    entries[(change.table, change.key)] = (change.after, event)
                agent.processed += 1
                agent.unchanged += not changes
                EVENTS.labels(agent.name, view_event.record, "processed" if changes else "unchanged").inc()
                if forward_stock_lines and view_event.record in STOCK_LINE_RECORDS:
                    sku = str(view_event.value.get("sku") or "")
                    outgoing.append(Outgoing(VIEWS_STOCK_LINES.name, sku.encode(), incoming.value or b"",
                                             list(incoming.headers)))  # fmt: skip
        async with views.lock:
            # each changed entry once, from where the batch found it to where it left it
            await views.write(
                [op for (t, k), (after, _) in entries.items() for op in mirror_ops(t, k, started_as[(t, k)], after)]
            )
            for (table_name, key), (after, event) in entries.items():
                make_current(stream, event)  # the changelog record goes to the partition of the event that made it
                agent.tables[table_name][key] = after
        if entries:
            await built.confirm_writes()
        await built.outbox.send_prepared(outgoing)
    finally:
        done = time.monotonic()
        STEP_SECONDS.labels(agent.name).observe(done - started)
        agent.busy_since = None
        agent.last_progress = done
        agent.batches += 1
        VIEW_BATCHES.labels(agent.name).inc()
    return handled


def _span_attributes(incoming: Incoming) -> dict[str, str | int]:
    return {"messaging.destination.name": incoming.topic, "pipeline.event_id": incoming.event_id}


def _event(incoming: Incoming, codec: AvroCodec, timestamp_ms: int) -> Event:
    """The message as the folds take it, once its placement, encoding and key are checked."""
    if (refusal := incoming.misplaced) is not None:
        raise CannotProject(refusal)
    decoded = codec.decode(incoming.value or b"", expected=topic(incoming.topic).records)
    if (refusal := incoming.mismatched(decoded.value)) is not None:
        raise CannotProject(refusal)
    envelope = incoming.envelope
    return make_event(
        decoded.name,
        decoded.value,
        event_id=incoming.event_id,
        position=incoming.origin.to_header(),
        source=envelope.source if envelope else None,
        fallback_time_ms=int(envelope.time.timestamp() * 1000) if envelope else max(timestamp_ms, 0),
        causation_id=envelope.causation_id if envelope else None,
    )


def _dead_letter(built: ServiceApp, agent: ViewAgent, incoming: Incoming, reason: str) -> Outgoing:
    agent.dead_lettered += 1
    EVENTS.labels(agent.name, "?", "dead_lettered").inc()
    return built.outbox.prepare_dead_letter(incoming, agent=agent.name, error=reason)
