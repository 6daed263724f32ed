"""The projector: keeps the query side's Redis views from the event topics, and rebuilds them from the log.

It reads :data:`PROJECTED_TOPICS` (the events of orders, inventory, payments, notifications and users, and the
stock arriving) through :class:`~consumers.toolkit.EventConsumer` (group :data:`GROUP_ID`), decides with the
pure functions of :mod:`streams.views.projection` and writes each event's changes in **one MULTI/EXEC** under
WATCH of the keys it read (:class:`ViewStore`). Offsets are stored only after that write (at-least-once;
replays are no-ops). A message that does not decode, or an event the projector cannot apply, is parked in
``<topic>.dlq`` (:mod:`consumers.deadletter`) and the partition flows on.

The key contract (:mod:`streams.incoming`) is checked first, as every agent checks it: a message without a key,
with a key other than its record's key field, or on another partition than its key's is dead-lettered with that
reason and projected nothing. The projector keeps no state co-partitioned with its topics (its views are keyed by
record fields, and folding is order-free), so such a record would not split a view the way it splits a service's
table. It is refused all the same because every service consuming the topic refuses it: the views show what the
services decided, and a record no service took (an unkeyed ``OrderConfirmed`` from kcat, say) must not show as
a fact in them. One rule for all consumers keeps a record either in the services' state and in the views, or in
neither and in a dead-letter topic.
``orders.deadlines.v1`` is not projected: it is kept one day, so views built from it could not be rebuilt.

The views live under ``view:*`` in Redis, which is the projector's alone (``pipeline views rebuild`` drops all
of it); :mod:`streams.views.keys` lists every key and what it holds.

Idempotency: an order event whose id (``ce_id``, else ``topic:partition:offset``) is in the order's timeline
changes nothing; stock is version-gated; notices are deduplicated by ``notification_id``. Read the views with
:mod:`streams.views.read`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import redis
from opentelemetry.trace import SpanKind, Status, StatusCode
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.settings import Settings
from common.telemetry import context_from, tracer
from consumers.deadletter import DeadLetters
from consumers.toolkit import Consumed, EventConsumer, ProgressWatch
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.errors import DecodeError
from schemas.topics import (
    INVENTORY_EVENTS,
    INVENTORY_STOCK,
    NOTIFICATION_EVENTS,
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    USER_EVENTS,
)
from schemas.topics import topic as find_topic
from streams.incoming import mismatched, misplaced
from streams.views.events import CannotProject, Event, Op, make_event
from streams.views.keys import (
    BUILT_KEY,
    REBUILDING_KEY,
    VIEW_PREFIX,
    notification_ids_key,
    order_key,
    stock_key,
    user_key,
    user_rejection_ids_key,
)
from streams.views.projection import Reads, Snapshot, project, reads

if TYPE_CHECKING:
    from redis.client import Pipeline

log = logging.getLogger(__name__)

GROUP_ID = "order-pipeline-projector"
REBUILDING_TTL_S = 120
"""The rebuilding mark outlives a dead rebuild by at most this long (it is renewed while the rebuild runs)."""
AGENT = "projector"
PROJECTED_TOPICS = (ORDER_EVENTS, INVENTORY_EVENTS, INVENTORY_STOCK, PAYMENT_EVENTS, NOTIFICATION_EVENTS, USER_EVENTS)

Outcome = Literal["applied", "unchanged", "dead-lettered", "skipped"]


class Stopped(Exception):
    """The projector was asked to stop while it waited for Redis; the message was not handled."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the store ----------------------------------------------------------------------------------------------


class ViewStore:
    """The only code that writes ``view:*``: reads what a decision needs, applies its ops in one transaction."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def apply(self, event: Event) -> list[Op]:
        """Apply ``event`` atomically (WATCH the keys read, MULTI/EXEC the writes); returns the ops written."""
        need = reads(event)
        keys = need.keys()
        with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*keys)  # type: ignore[no-untyped-call]
                    ops = project(event, self._snapshot(pipe, need))
                    if not ops:
                        pipe.unwatch()
                        return []
                    pipe.multi()
                    queue: Any = pipe
                    for op in ops:
                        queue.execute_command(op.command, op.key, *op.args)
                    pipe.execute()
                    return ops
                except WatchError:  # another writer changed a key we read: decide again on fresh data
                    continue

    @staticmethod
    def _snapshot(watched: Pipeline, need: Reads) -> Snapshot:
        pipe: Any = watched  # in WATCH mode commands run at once and return values, which the stubs miss
        order = None
        if need.order_id is not None:
            raw = pipe.get(order_key(need.order_id))
            order = json.loads(raw) if raw is not None else None
        stock = None
        if need.sku is not None:
            stock = {_text(k): _text(v) for k, v in pipe.hgetall(stock_key(need.sku)).items()} or None
        seen = False
        if need.notification is not None:
            user_id, notification_id = need.notification
            seen = bool(pipe.sismember(notification_ids_key(user_id), notification_id))
        user = None
        if need.user_id is not None:
            raw = pipe.get(user_key(need.user_id))
            user = json.loads(raw) if raw is not None else None
        rejection_seen = False
        if need.rejection is not None:
            rejection_seen = bool(pipe.sismember(user_rejection_ids_key(need.rejection[0]), need.rejection[1]))
        return Snapshot(order=order, stock=stock, notification_seen=seen, user=user, rejection_seen=rejection_seen)

    def drop_all(self) -> int:
        """Delete every ``view:*`` key; returns how many there were."""
        dropped = 0
        batch: list[Any] = []
        for key in self._redis.scan_iter(match=f"{VIEW_PREFIX}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                dropped += int(self._redis.unlink(*batch))
                batch.clear()
        if batch:
            dropped += int(self._redis.unlink(*batch))
        return dropped

    def count(self) -> int:
        return sum(1 for _ in self._redis.scan_iter(match=f"{VIEW_PREFIX}*", count=1000))


# --- the projector ------------------------------------------------------------------------------------------


@dataclass
class ProjectionStats:
    """What a projector did, per outcome and per topic; ``positions`` is the next offset per partition."""

    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_topic: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    last_error: str | None = None

    def count(self, message: Consumed, outcome: Outcome) -> None:
        self.outcomes[outcome] += 1
        self.by_topic[message.topic][outcome] += 1
        self.positions[(message.topic, message.partition)] = message.offset + 1

    @property
    def handled(self) -> int:
        return sum(self.outcomes.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "handled": self.handled,
            **{k: self.outcomes.get(k, 0) for k in ("applied", "unchanged", "dead-lettered", "skipped")},
            "topics": {t: dict(c) for t, c in sorted(self.by_topic.items())},
        }


class Projector:
    """Handles one message at a time: decode, decide, write, or dead-letter; never raises for content."""

    def __init__(
        self,
        store: ViewStore,
        codec: AvroCodec,
        *,
        dead_letters: DeadLetters | None,
        stop: threading.Event | None = None,
        retry_cap_s: float = 5.0,
        stats: ProjectionStats | None = None,
    ) -> None:
        """``dead_letters=None`` skips bad messages instead of parking them (a rebuild: they were parked live)."""
        self._store = store
        self._codec = codec
        self._dead_letters = dead_letters
        self._stop = stop or threading.Event()
        self._retry_cap_s = retry_cap_s
        self.stats = stats if stats is not None else ProjectionStats()

    def handle(self, message: Consumed) -> Outcome:
        """Project ``message``; when this returns, its offset may be stored. One span per message, a child of
        the step that sent it (its ``traceparent``): the last hop of an order's trace."""
        envelope = message.envelope
        with tracer().start_as_current_span(
            f"project {envelope.short_type if envelope else message.topic}",
            context=context_from(envelope.traceparent if envelope else None),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": message.topic,
                "messaging.kafka.message.offset": message.offset,
                "pipeline.event_id": envelope.event_id if envelope else "",
            },
        ) as span:
            outcome = self._handle(message)
            span.set_attribute("pipeline.outcome", outcome)
            if outcome == "dead-lettered":
                span.set_status(Status(StatusCode.ERROR, "dead-lettered"))
            return outcome

    def _handle(self, message: Consumed) -> Outcome:
        spec = find_topic(message.topic)
        key = message.raw_key if message.raw_key is not None else (message.key or "").encode()
        if (refusal := misplaced(spec, key, message.partition)) is not None:
            return self._reject(message, refusal)
        try:
            event = self._event(message)
        except (DecodeError, CannotProject) as exc:
            return self._reject(message, f"{type(exc).__name__}: {exc}")
        if (refusal := mismatched(spec, key, event.value)) is not None:
            return self._reject(message, refusal)
        try:
            ops = self._apply(event)
        except Stopped:
            raise
        except (CannotProject, RedisError) as exc:  # not a connection problem: retrying would not help
            return self._reject(message, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug must not lose the event, nor stop the partition: park it with the reason
            log.exception("projecting %s failed", event.record)
            return self._reject(message, f"{type(exc).__name__} in projector: {exc}")
        outcome: Outcome = "applied" if ops else "unchanged"
        self.stats.count(message, outcome)
        return outcome

    def _event(self, message: Consumed) -> Event:
        spec = find_topic(message.topic)
        decoded = self._codec.decode(message.value or b"", expected=spec.records)
        headers = message.headers
        envelope = message.envelope
        return make_event(
            decoded.name,
            decoded.value,
            event_id=headers.get("ce_id") or None,
            position=f"{message.topic}:{message.partition}:{message.offset}",
            source=headers.get("ce_source"),
            fallback_time_ms=(
                int(envelope.time.timestamp() * 1000) if envelope is not None else max(message.timestamp_ms, 0)
            ),
        )

    def _apply(self, event: Event) -> list[Op]:
        """Write through the store; wait out Redis being away (with backoff) rather than skip the event."""
        delay = 0.1
        while True:
            try:
                return self._store.apply(event)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self.stats.last_error = f"redis: {exc}"
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    raise Stopped(str(exc)) from exc
                delay = min(delay * 2, self._retry_cap_s)

    def _reject(self, message: Consumed, error: str) -> Outcome:
        self.stats.last_error = error
        if self._dead_letters is None:
            log.info("skipped %s[%s]@%s: %s", message.topic, message.partition, message.offset, error)
            self.stats.count(message, "skipped")
            return "skipped"
        self._dead_letters.send(message, error)
        self.stats.count(message, "dead-lettered")
        return "dead-lettered"


def _redis(settings: Settings, client: redis.Redis | None) -> redis.Redis:
    return client if client is not None else redis.Redis.from_url(settings.redis_url)


Interrupt = Literal["stopped", "idle", "views-lost", "stalled"]


class ProjectorWorker:
    """The live projector: a consumer group over the projected topics, until stopped or idle."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        *,
        group_id: str = GROUP_ID,
        catalog: SchemaCatalog | None = None,
        consumer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        """``consumer_overrides`` are librdkafka settings laid over the toolkit's (tests lower timeouts)."""
        self._settings = settings
        self._redis = _redis(settings, client)
        self._group_id = group_id
        self._codec = AvroCodec(catalog or SchemaCatalog.load())
        self._overrides = dict(consumer_overrides or {})
        self._stop = threading.Event()
        self.stats = ProjectionStats()
        self.rebuilds = 0
        """How often this projector found its views gone and rebuilt them."""
        self.reconnects = 0
        """How often this projector found its consumer stalled with messages waiting and subscribed a fresh one."""

    def stop(self) -> None:
        """Ask :meth:`run` to return after the message in hand (thread-safe)."""
        self._stop.set()

    def run(self, *, idle_exit: float | None = None) -> ProjectionStats:
        """Project until :meth:`stop` is called or ``idle_exit`` seconds pass without a message.

        Whenever the views turn out to be gone (no :data:`BUILT_KEY`: a new or flushed Redis, a Redis that lost
        its data in a restart), the projector first rebuilds them from the log and then goes on from its
        committed offsets; what it re-reads is already in the views and changes nothing. No group consumer is
        open while a rebuild runs: one left unpolled that long is dropped from its group (``max.poll.interval.ms``)
        and may never come back. A consumer that stalls anyway (:class:`~consumers.toolkit.ProgressWatch`) is
        closed and replaced."""
        guard = ViewsGuard(self._redis, self._settings.views_check_interval_s)
        with DeadLetters.from_settings(self._settings, agent=AGENT) as dead_letters:
            projector = Projector(
                ViewStore(self._redis), self._codec, dead_letters=dead_letters, stop=self._stop, stats=self.stats
            )
            while not self._stop.is_set():
                if guard.views_lost():
                    self.restore_views()
                interrupt = self._consume(projector, guard, idle_exit)
                if interrupt in ("stopped", "idle"):
                    break
        return self.stats

    def _consume(self, projector: Projector, guard: ViewsGuard, idle_exit: float | None) -> Interrupt:
        """Project with one group consumer until something asks for another (or for none); closing it commits
        the offsets stored so far and leaves the group at once."""
        topics = [t.name for t in PROJECTED_TOPICS]
        with EventConsumer.from_settings(self._settings, self._group_id, **self._overrides) as consumer:
            consumer.subscribe(topics)
            watch = ProgressWatch(
                lambda: consumer.group_position(topics), stall_timeout_s=self._settings.stall_timeout_s
            )
            interrupt: Interrupt | None = None

            def interrupted() -> bool:
                nonlocal interrupt
                if self._stop.is_set():
                    interrupt = "stopped"
                elif guard.views_lost(due_only=True):
                    interrupt = "views-lost"
                elif watch.stalled():
                    interrupt = "stalled"
                    self.reconnects += 1
                    log.error(
                        "the projector's consumer made no progress for %.0fs with %s messages waiting for its group:"
                        " subscribing a fresh one",
                        watch.stalled_for_s,
                        watch.behind,
                    )
                return interrupt is not None

            try:
                for message in consumer.messages(idle_timeout=idle_exit, until=interrupted):
                    projector.handle(message)
                    consumer.done(message)
                    watch.progressed()
            except Stopped:
                return "stopped"  # the message in hand was not handled; its offset is not stored
            return interrupt or "idle"

    def restore_views(self) -> RebuildReport:
        """Rebuild the lost views from the log (no live consumer is open meanwhile)."""
        log.warning("the views are gone from Redis (no %s): rebuilding them from the log", BUILT_KEY)
        report = rebuild_views(self._settings, self._redis, idle_timeout=self._settings.views_check_interval_s * 30)
        self.rebuilds += 1
        log.warning("views rebuilt: %s", json.dumps(report.as_dict()))
        return report


class ViewsGuard:
    """Tells whether the views are still there (their :data:`BUILT_KEY`), looking at most once per interval."""

    def __init__(self, client: redis.Redis, interval_s: float) -> None:
        self._redis = client
        self._interval_s = interval_s
        self._next_look = 0.0

    def views_lost(self, *, due_only: bool = False) -> bool:
        """True when the views are gone; with ``due_only``, False until the interval since the last look passed.

        Redis out of reach is not "lost": the projector's writes wait for it, and the next look decides."""
        now = time.monotonic()
        if due_only and now < self._next_look:
            return False
        self._next_look = now + self._interval_s
        try:
            return not self._redis.exists(BUILT_KEY)
        except (RedisConnectionError, RedisTimeoutError):
            return False


# --- rebuild ------------------------------------------------------------------------------------------------


@dataclass
class RebuildReport:
    """What ``pipeline views rebuild`` did."""

    dropped: int
    keys: int
    stats: ProjectionStats
    ends: dict[tuple[str, int], tuple[int, int]]
    incomplete: list[str]
    """Partitions not read up to their snapshot end (the reader went idle first); empty when complete."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "dropped_keys": self.dropped,
            "view_keys": self.keys,
            "messages_in_snapshot": sum(high - low for low, high in self.ends.values()),
            **self.stats.as_dict(),
            "incomplete": self.incomplete,
        }


def rebuild_views(
    settings: Settings,
    client: redis.Redis | None = None,
    *,
    catalog: SchemaCatalog | None = None,
    idle_timeout: float = 30.0,
) -> RebuildReport:
    """Drop every ``view:*`` key and re-project every projected topic from its start up to the end offsets
    taken when the rebuild begins (assigned partitions, no group, nothing committed).

    Messages that do not decode are skipped, not dead-lettered again (the live projector parked them).
    Stop the live projector first: the two would otherwise write the same keys while the views are dropped.
    """
    redis_client = _redis(settings, client)
    store = ViewStore(redis_client)
    projector = Projector(store, AvroCodec(catalog or SchemaCatalog.load()), dead_letters=None)
    redis_client.set(REBUILDING_KEY, "1", ex=REBUILDING_TTL_S)
    try:
        with EventConsumer.reader(settings) as consumer:
            dropped = store.drop_all()
            for n, message in enumerate(
                consumer.read_log([t.name for t in PROJECTED_TOPICS], idle_timeout=idle_timeout)
            ):
                projector.handle(message)
                if n % 1000 == 0:
                    redis_client.expire(REBUILDING_KEY, REBUILDING_TTL_S)
            ends = consumer.ends
            missing = [f"{t}[{p}]" for t, p in consumer.unfinished]
        if not missing:
            redis_client.set(BUILT_KEY, json.dumps({"built_at": int(time.time() * 1000), "by": "rebuild"}))
    finally:
        redis_client.delete(REBUILDING_KEY)
    return RebuildReport(dropped=dropped, keys=store.count(), stats=projector.stats, ends=ends, incomplete=missing)
