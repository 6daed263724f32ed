"""A user loaded from the topics as the seed's event store loads it: the newest snapshot from
``users.snapshots.v1``, then only the events after it from ``users.events.v1``, folded with the pure aggregate
(:mod:`streams.domain.user_aggregate`).

**Where to begin reading.** Both topics are keyed by user id and have as many partitions, so a user's snapshots and
events sit on the same partition number (:func:`~streams.incoming.key_partition`). A snapshot carries its version and
the time it was taken, not an offset: it is decided together with the event that reached its version, before the
broker has given that event an offset, and a replay re-emits both unchanged while the event's copy lands at another
offset. So the reader asks the broker's time index for the first offset written at ``taken_at`` or later. The
snapshot's event was sent after the snapshot was taken, by the same process, so it lies at or after that offset, and
every later version's first copy lies after it. The read proves this by meeting the snapshot's own event
(:func:`~streams.domain.user_aggregate.tail_after`); when it does not (a clock stepped back), the partition is read
again from its start. A user without a snapshot (registered before every user got one at registration) is read
from the partition's start too.

What it costs: the user's partition of ``users.snapshots.v1`` (compacted: about one record per user of that
partition), and ``users.events.v1`` from the snapshot's time on, not from the start of the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from common.encoding import registry_codec
from common.settings import Settings
from consumers.toolkit import Consumed, EventConsumer
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.errors import DecodeError
from schemas.topics import USER_EVENTS, USER_SNAPSHOTS, TopicSpec
from streams.domain import user_aggregate
from streams.domain.messages import Message, UserSnapshot, from_record
from streams.domain.user_aggregate import User, UserEvent
from streams.incoming import key_partition
from streams.views.events import to_millis


@dataclass(frozen=True)
class LoadedUser:
    """A user as loaded from its snapshot and the events after it, and what the load read."""

    user_id: str
    user: User | None
    """None: the log holds no event of this user."""
    snapshot: UserSnapshot | None
    """The newest snapshot the load began from; None: the whole history was folded."""
    events_after: tuple[UserEvent, ...]
    """The events folded onto the snapshot (the whole history without one)."""
    partition: int
    began_at: int
    """The offset of ``users.events.v1[partition]`` the events were read from."""
    snapshot_records: int
    """Records read from ``users.snapshots.v1`` (the user's partition)."""
    event_records: int
    """Records read from ``users.events.v1`` (every user's on that partition, from ``began_at``, and again from
    the start when a read from the snapshot's time could not be proven complete)."""
    from_start: bool
    """Whether the events were read from the partition's start (no snapshot, or the seek was not proven)."""
    skipped: int = 0
    """Records of this user that could not be decoded (the services dead-letter them)."""


def partition_of(user_id: str, spec: TopicSpec = USER_EVENTS) -> int:
    """The partition of ``spec`` a user's records are on (the producers' murmur2 partitioner)."""
    return key_partition(user_id.encode(), spec.partitions)


def decoded(messages: Iterable[Consumed], codec: AvroCodec, spec: TopicSpec) -> Iterator[Message | None]:
    """Each message as a domain message; None for one that cannot be decoded as one of ``spec``'s records."""
    for message in messages:
        try:
            record = codec.decode(message.value or b"", expected=spec.records)
        except DecodeError:
            yield None
            continue
        yield from_record(record.name, record.value)


def newest_snapshots(
    consumer: EventConsumer, codec: AvroCodec, partitions: Iterable[int] | None = None, *, idle_timeout: float = 30.0
) -> tuple[dict[str, UserSnapshot], int]:
    """Each user's newest snapshot on ``partitions`` of ``users.snapshots.v1`` (None: all of them), and how many
    records were read. Compaction keeps the last record per user, but not at once: the highest version wins."""
    numbers = range(USER_SNAPSHOTS.partitions) if partitions is None else partitions
    read = list(consumer.read_from({(USER_SNAPSHOTS.name, p): None for p in numbers}, idle_timeout=idle_timeout))
    newest: dict[str, UserSnapshot] = {}
    for snapshot in decoded(read, codec, USER_SNAPSHOTS):
        if isinstance(snapshot, UserSnapshot):
            known = newest.get(snapshot.user_id)
            if known is None or snapshot.version > known.version:
                newest[snapshot.user_id] = snapshot
    return newest, len(read)


def load_user(
    settings: Settings, user_id: str, *, catalog: SchemaCatalog | None = None, idle_timeout: float = 30.0
) -> LoadedUser:
    """``user_id`` loaded from its newest snapshot and the events after it (see the module's notes); raises
    :class:`~streams.domain.user_aggregate.HistoryError` when the events read are not a history (a gap)."""
    codec = registry_codec(catalog or SchemaCatalog.load(), settings)
    partition = partition_of(user_id)
    key = user_id.encode()
    with EventConsumer.reader(settings) as consumer:
        snapshots, snapshot_records = newest_snapshots(consumer, codec, [partition], idle_timeout=idle_timeout)
        snapshot = snapshots.get(user_id)

        def read_events(start: int | None) -> tuple[list[Message], int, int]:
            """The user's records from ``start`` (None: the partition's start), records read, undecodable ones."""
            read = list(consumer.read_from({(USER_EVENTS.name, partition): start}, idle_timeout=idle_timeout))
            mine = list(decoded((m for m in read if m.raw_key == key), codec, USER_EVENTS))
            return [m for m in mine if m is not None], len(read), sum(m is None for m in mine)

        if snapshot is not None:
            began_at = consumer.offset_for_time(USER_EVENTS.name, partition, to_millis(snapshot.taken_at))
            messages, event_records, skipped = read_events(began_at)
            tail = user_aggregate.tail_after(snapshot, messages)
            if tail is not None:
                return LoadedUser(
                    user_id=user_id,
                    user=user_aggregate.load(snapshot, tail),
                    snapshot=snapshot,
                    events_after=tail,
                    partition=partition,
                    began_at=began_at,
                    snapshot_records=snapshot_records,
                    event_records=event_records,
                    from_start=False,
                    skipped=skipped,
                )
        else:
            event_records = 0
        messages, again, skipped = read_events(None)
        start = consumer.ends.get((USER_EVENTS.name, partition), (0, 0))[0]
    after = snapshot.version if snapshot is not None else 0
    events = user_aggregate.events_of(messages, after=after)
    return LoadedUser(
        user_id=user_id,
        user=user_aggregate.load(snapshot, events),
        snapshot=snapshot,
        events_after=events,
        partition=partition,
        began_at=start,
        snapshot_records=snapshot_records,
        event_records=event_records + again,
        from_start=True,
        skipped=skipped,
    )
