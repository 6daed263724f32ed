"""The views folded straight from the log, outside the view service: what its tables hold once it has read every
event, computed in one pass with the same pure folds (:func:`streams.views.tables.fold`).

Used to check the live views against the log (the chaos test compares the two), and by ``pipeline views
rebuild`` to clear what the view service owns so that it folds the log again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from common.settings import Settings
from consumers.toolkit import Consumed, EventConsumer
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
from streams.views.keys import MIRRORED_KEY, VIEW_PREFIX
from streams.views.stock import STOCK_LINE_RECORDS
from streams.views.tables import MIRRORED_FIELDS, VIEW_TABLES, fold, mirror

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

    def lookup(self, table: str, key: str) -> Any:
        return self.tables[table].get(key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "handled": self.handled,
            "changed": self.changed,
            "skipped": self.skipped,
            "entries": {name: len(entries) for name, entries in self.tables.items()},
            "incomplete": self.incomplete,
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


def fold_log(settings: Settings, *, catalog: SchemaCatalog | None = None, idle_timeout: float = 30.0) -> LogFold:
    """Fold every projected topic from its start to its end as of now (assigned partitions, no group)."""
    codec = AvroCodec(catalog or SchemaCatalog.load())
    result = LogFold()
    with EventConsumer.reader(settings) as consumer:
        for message in consumer.read_log([t.name for t in PROJECTED_TOPICS], idle_timeout=idle_timeout):
            result.handled += 1
            try:
                event = event_of(message, codec)
                fold_into(result, event, stock_line=message.topic == INVENTORY_EVENTS.name
                          and event.record in STOCK_LINE_RECORDS)  # fmt: skip
            except (DecodeError, CannotProject) as exc:
                log.info("skipped %s[%s]@%s: %s", message.topic, message.partition, message.offset, exc)
                result.skipped += 1
        result.incomplete = [f"{t}[{p}]" for t, p in consumer.unfinished]
    return result


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
