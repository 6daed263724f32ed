"""The views folded straight from the log, outside the view service: what its tables hold once it has read every
event, computed in one pass with the same pure folds (:func:`streams.views.tables.fold`).

Used to check the live views against the log (the chaos test compares the two), and by ``pipeline views
rebuild`` to clear what the view service owns so that it folds the log again.

**User views from snapshots** (``fold_log(users_from_snapshots=True)``): every user's document begins from the
user's newest UserSnapshot (:func:`streams.views.users.view_from_snapshot`) and only what lies after it is folded;
the other views are folded as always. ``users.events.v1`` is read per partition from a cut: the first offset
written at or after the oldest ``taken_at`` among that partition's newest snapshots (the broker's time index, as
:mod:`consumers.user_log` seeks one user). Every user has a snapshot from its registration on, so nobody's history
begins before the cut. The read proves, per user, that it met the snapshot's own event; a partition where it did
not is folded again from its start, as is one without any snapshot or with one written before v3.

What this saves is the records before each partition's cut, so it depends on the log: a user who has been quiet
since an early snapshot holds their partition's cut back. What it cannot give is what the aggregate does not hold
and lies before the cut: a user's onboarding stamp (their document's ``onboarding_started_at`` stays unset), their
older refused commands and commands' outcomes (the entry holds those after the cut only), and the entry of a user
who never registered. The aggregate's fields (:data:`~streams.views.users.AGGREGATE_FIELDS`) are exactly those of
the full fold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from common.encoding import registry_codec
from common.settings import Settings
from consumers.toolkit import Consumed, EventConsumer
from consumers.user_log import newest_snapshots, partition_of
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
    USER_SNAPSHOTS,
)
from schemas.topics import topic as find_topic
from streams.domain.messages import UserSnapshot
from streams.domain.user_aggregate import from_snapshot
from streams.incoming import mismatched, misplaced
from streams.views.events import CannotProject, Event, Op, make_event, to_millis
from streams.views.keys import MIRRORED_KEY, VIEW_PREFIX
from streams.views.stock import STOCK_LINE_RECORDS
from streams.views.tables import MIRRORED_FIELDS, USER_VIEWS, VIEW_TABLES, fold, mirror
from streams.views.users import USER_RECORDS, view_from_snapshot

log = logging.getLogger(__name__)

PROJECTED_TOPICS = (ORDER_EVENTS, INVENTORY_EVENTS, INVENTORY_STOCK, PAYMENT_EVENTS, NOTIFICATION_EVENTS, USER_EVENTS)
"""The public topics the views are folded from."""


@dataclass
class LogFold:
    """The view tables folded from the log, and what the fold met."""

    tables: dict[str, dict[str, Any]] = field(default_factory=lambda: {name: {} for name in VIEW_TABLES})
    handled: int = 0
    changed: int = 0
    skipped: int = 0
    incomplete: list[str] = field(default_factory=list)
    """Partitions not read up to their end as of the start (the reader went idle first); empty when complete."""
    read: dict[str, int] = field(default_factory=dict)
    """Records read, by topic (``users.snapshots.v1`` too when the user views began from snapshots)."""
    user_cuts: dict[int, int] = field(default_factory=dict)
    """From snapshots: the offset each partition of ``users.events.v1`` was read from."""

    @property
    def records_read(self) -> int:
        return sum(self.read.values())

    def lookup(self, table: str, key: str) -> Any:
        return self.tables[table].get(key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "handled": self.handled,
            "changed": self.changed,
            "skipped": self.skipped,
            "entries": {name: len(entries) for name, entries in self.tables.items()},
            "incomplete": self.incomplete,
            "read": self.read,
            "user_cuts": self.user_cuts,
        }


def event_of(message: Consumed, codec: AvroCodec) -> Event:
    """A message as the folds take it; raises :class:`CannotProject` or :class:`DecodeError` for one the view
    service dead-letters (the same checks, in the same order)."""
    spec = find_topic(message.topic)
    key = message.raw_key
    if (refusal := misplaced(spec, key, message.partition)) is not None:
        raise CannotProject(refusal)
    decoded = codec.decode(message.value or b"", expected=spec.records)
    if (refusal := mismatched(spec, key, decoded.value)) is not None:
        raise CannotProject(refusal)
    envelope = message.envelope
    return make_event(
        decoded.name,
        decoded.value,
        event_id=envelope.event_id if envelope else None,
        position=f"{message.topic}:{message.partition}:{message.offset}",
        source=envelope.source if envelope else None,
        fallback_time_ms=int(envelope.time.timestamp() * 1000) if envelope else max(message.timestamp_ms, 0),
        causation_id=envelope.causation_id if envelope else None,
    )


def fold_into(result: LogFold, event: Event, *, stock_line: bool) -> None:
    """Fold one event into ``result``'s tables (a stock line also into its SKU's stock)."""
    changes = fold(event, result.lookup)
    if stock_line:
        changes += fold(event, result.lookup, as_stock=True)
    for change in changes:
        result.tables[change.table][change.key] = change.after
    result.changed += bool(changes)


def fold_log(
    settings: Settings,
    *,
    catalog: SchemaCatalog | None = None,
    idle_timeout: float = 30.0,
    users_from_snapshots: bool = False,
) -> LogFold:
    """Fold every projected topic from its start to its end as of now (assigned partitions, no group); with
    ``users_from_snapshots``, the user views from each user's snapshot on (see the module's notes)."""
    codec = registry_codec(catalog or SchemaCatalog.load(), settings)
    result = LogFold()
    topics = [t.name for t in PROJECTED_TOPICS if not (users_from_snapshots and t is USER_EVENTS)]
    with EventConsumer.reader(settings) as consumer:
        fold_messages(result, consumer.read_log(topics, idle_timeout=idle_timeout), codec)
        result.incomplete = [f"{t}[{p}]" for t, p in consumer.unfinished]
        if users_from_snapshots:
            fold_users_from_snapshots(result, consumer, codec, idle_timeout=idle_timeout)
    return result


def fold_messages(
    result: LogFold, messages: Iterable[Consumed], codec: AvroCodec, folded: Callable[[Event], None] | None = None
) -> None:
    """Fold ``messages`` into ``result``, counting them by topic; ``folded`` sees each event that was folded."""
    for message in messages:
        result.handled += 1
        result.read[message.topic] = result.read.get(message.topic, 0) + 1
        try:
            event = event_of(message, codec)
            fold_into(result, event, stock_line=message.topic == INVENTORY_EVENTS.name
                      and event.record in STOCK_LINE_RECORDS)  # fmt: skip
        except (DecodeError, CannotProject) as exc:
            log.info("skipped %s[%s]@%s: %s", message.topic, message.partition, message.offset, exc)
            result.skipped += 1
            continue
        if folded is not None:
            folded(event)


def fold_users_from_snapshots(
    result: LogFold, consumer: EventConsumer, codec: AvroCodec, *, idle_timeout: float
) -> None:
    """Begin each user's document from its newest snapshot and fold ``users.events.v1`` from each partition's cut."""
    snapshots, read = newest_snapshots(consumer, codec, idle_timeout=idle_timeout)
    result.read[USER_SNAPSHOTS.name] = read
    by_partition: dict[int, list[UserSnapshot]] = {}
    for snapshot in snapshots.values():
        by_partition.setdefault(partition_of(snapshot.user_id), []).append(snapshot)
    table = result.tables[USER_VIEWS]
    cuts: dict[tuple[str, int], int | None] = {}
    awaited: dict[str, int] = {}
    """User id → its snapshot's version, until the read meets that event."""
    for p in range(USER_EVENTS.partitions):
        on_p = by_partition.get(p, [])
        seeds = {s.user_id: view_from_snapshot(from_snapshot(s)) for s in on_p}
        if not on_p or any(seed is None for seed in seeds.values()):
            cuts[(USER_EVENTS.name, p)] = None  # no snapshot to begin from, or one without the times a view shows
            continue
        oldest = min(to_millis(s.taken_at) for s in on_p)
        cuts[(USER_EVENTS.name, p)] = consumer.offset_for_time(USER_EVENTS.name, p, oldest)
        for s in on_p:
            table[s.user_id] = {"user": seeds[s.user_id], "rejections": []}
            awaited[s.user_id] = s.version

    def met(event: Event) -> None:
        user_id = event.value.get("user_id")
        if event.record in USER_RECORDS and user_id in awaited and event.value.get("version") == awaited[user_id]:
            del awaited[user_id]

    fold_messages(result, consumer.read_from(cuts, idle_timeout=idle_timeout), codec, met)
    unfinished = list(consumer.unfinished)
    result.user_cuts = {p: begin for (_, p), (begin, _) in consumer.ends.items()}
    unproven = sorted({partition_of(user_id) for user_id in awaited})
    if unproven:
        log.warning("%s: the read from the snapshots' time did not meet every snapshot's event; folding "
                    "partitions %s from their start", USER_EVENTS.name, unproven)  # fmt: skip
        for key in [key for key in table if partition_of(key) in unproven]:
            del table[key]
        again = {(USER_EVENTS.name, p): None for p in unproven}
        fold_messages(result, consumer.read_from(again, idle_timeout=idle_timeout), codec)
        unfinished += consumer.unfinished
        result.user_cuts.update({p: begin for (_, p), (begin, _) in consumer.ends.items()})
    result.incomplete += [f"{t}[{p}]" for t, p in unfinished]


def drop_views(client: redis.Redis) -> int:
    """Delete every ``view:*`` key and the mirrored marks; how many view keys there were."""
    dropped = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{VIEW_PREFIX}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            dropped += int(client.unlink(*batch))
            batch.clear()
    if batch:
        dropped += int(client.unlink(*batch))
    client.delete(MIRRORED_KEY)
    return dropped


def write_views(client: redis.Redis, tables: Mapping[str, Mapping[str, Any]]) -> int:
    """Drop the views and write ``tables`` whole, marked mirrored; how many view keys Redis then holds."""
    drop_views(client)
    ops: list[Op] = [
        op for name, entries in tables.items() for key, entry in entries.items() for op in mirror(name, key, entry)
    ]
    for start in range(0, len(ops), 1000):
        with client.pipeline(transaction=False) as pipe:
            for op in ops[start : start + 1000]:
                pipe.execute_command(op.command, op.key, *op.args)  # type: ignore[no-untyped-call]
            pipe.execute()
    client.hset(MIRRORED_KEY, mapping=dict.fromkeys(MIRRORED_FIELDS, 0))
    return count_views(client)


def count_views(client: redis.Redis) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{VIEW_PREFIX}*", count=1000))
