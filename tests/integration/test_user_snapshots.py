"""Snapshots in use, on a broker of this module's own: a user loaded from its newest snapshot and only the events
after it equals its whole history, ``pipeline user ID --replay`` compares that with the view, and the user views
folded from snapshots equal those folded from the whole log while reading fewer records.

Why a broker of its own: what a fold from snapshots saves is the records before each partition's cut, and a quiet
user of another module on the same partition would hold the cut back; here the log holds only this module's users.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from confluent_kafka import TopicPartition

from common.admin import admin_client, apply_topics
from common.encoding import registry_codec
from common.settings import Settings
from consumers.toolkit import EventConsumer
from consumers.user_log import load_user, partition_of
from consumers.view_log import fold_log
from producers.toolkit import EventPublisher
from schemas.catalog import SchemaCatalog
from schemas.topics import USER_COMMANDS, USER_EVENTS
from streams.domain import user_aggregate
from streams.domain.messages import from_record
from streams.views import read as views
from streams.views.keys import user_key
from streams.views.tables import USER_VIEWS, VIEW_TABLES
from streams.views.users import AGGREGATE_FIELDS
from tests.integration.promises import wait_fully_projected
from tests.seeding import uid
from tests.stack import RedisNode, RegistryNode, kafka_node, wait_until
from tests.workers import Pipeline, run_cli, running_pipeline

SNAPSHOT_EVERY = 4
VIEWS_DB = 7
"""The views of this module's broker go to a Redis database of their own, beside the other modules' views."""


@pytest.fixture(scope="module")
def own(redis_server: RedisNode, schema_registry: RegistryNode) -> Iterator[Settings]:
    """A broker of this module's own, its topics created, and an empty Redis database for its views."""
    url = urlunsplit(urlsplit(redis_server.url)._replace(path=f"/{VIEWS_DB}"))
    redis.Redis.from_url(url).flushdb()
    with kafka_node() as node:
        settings = Settings(kafka_bootstrap=node.bootstrap, redis_url=url, schema_registry_url=schema_registry.url)
        apply_topics(admin_client(settings), settings)
        yield settings
    redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="module")
def pipeline(own: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with running_pipeline(own, tmp_path_factory.mktemp("snapshots"), services=("users", "views"),
                          PIPELINE_USER_SNAPSHOT_EVERY=str(SNAPSHOT_EVERY)) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def store(own: Settings) -> redis.Redis:
    return redis.Redis.from_url(own.redis_url)


@pytest.fixture(scope="module")
def users(own: Settings, pipeline: Pipeline, store: redis.Redis) -> dict[str, str]:
    """A busy user (registered, then 23 more events and two refused commands: snapshots at 1, 4 … 24), then a
    quiet one (registered, default preferences), then one whose registration is refused (its address is taken)."""
    busy, calm, refused = uid("busy"), uid("calm"), uid("refused")
    with EventPublisher.from_settings(own, SchemaCatalog.load()) as publisher:

        def command(record: str, user_id: str, **value: Any) -> None:
            publisher.publish(USER_COMMANDS, record, user_id, {"user_id": user_id, **value})

        def register(user_id: str, email: str) -> None:
            command("RegisterUser", user_id, username=user_id, email=email, profile={})
            publisher.flush()

        register(busy, f"{busy}@example.com")
        wait_view(pipeline, store, busy, lambda v: v["version"] == 2, "registered, defaults applied")
        command("UpdateUserProfile", busy, expected_version=1, changes={"stale": "yes"})  # refused: v2 by now
        for n in range(10):
            command("UpdateUserProfile", busy, changes={"n": str(n)})
        command("DeactivateUser", busy, reason="a pause")
        command("ReactivateUser", busy)
        command("ChangeEmail", busy, new_email=f"{busy}@new.example.com")
        for n in range(10):
            command("RecordLogin", busy, logged_in_at=1_767_600_000_000 + n)
        command("DeactivateUser", busy, expected_version=3, reason="stale")  # refused
        publisher.flush()
        wait_view(pipeline, store, busy, lambda v: v["version"] == 25, "25 events")
        wait_until(lambda: len(views.user_rejections(store, busy)) == 2, timeout=60, what="both refusals")

        register(calm, f"{calm}@example.com")
        register(refused, f"{busy}@new.example.com")
        wait_view(pipeline, store, calm, lambda v: v["onboarding_started_at"] is not None, "onboarded")
        wait_until(lambda: views.user_rejections(store, refused), timeout=60, what="the taken address refused")
    wait_fully_projected(own, pipeline.assert_alive)
    return {"busy": busy, "calm": calm, "refused": refused}


def wait_view(pipeline: Pipeline, store: redis.Redis, user_id: str, until: Any, what: str) -> None:
    def check() -> bool:
        pipeline.assert_alive()
        view = views.get_user(store, user_id)
        return view is not None and bool(until(view))

    wait_until(check, timeout=90, what=f"{user_id}: {what}", interval=0.2)


def whole_history(settings: Settings, user_id: str) -> tuple[list[Any], dict[int, int], int]:
    """The user's aggregate events as read from the start of its partition, the offset of each version's first
    copy, and the partition's record count."""
    codec = registry_codec(SchemaCatalog.load(), settings)
    with EventConsumer.reader(settings) as consumer:
        read = list(consumer.read_from({(USER_EVENTS.name, partition_of(user_id)): None}))
    mine = [(m.offset, codec.decode(m.value or b"")) for m in read if m.key == user_id]
    messages = [(offset, from_record(d.name, d.value)) for offset, d in mine]
    offsets: dict[int, int] = {}
    for offset, message in messages:
        if isinstance(message, user_aggregate.UserEvent):
            offsets.setdefault(message.version, offset)
    return list(user_aggregate.events_of(m for _, m in messages)), offsets, len(read)


def test_a_user_loads_from_its_newest_snapshot_and_the_events_after_it(own: Settings, users: dict[str, str]) -> None:
    busy = users["busy"]
    history, offsets, partition_records = whole_history(own, busy)
    loaded = load_user(own, busy)
    assert loaded.snapshot is not None and loaded.snapshot.version == 24, "snapshots at 1, 4 … 24"
    assert [e.version for e in loaded.events_after] == [25] and not loaded.from_start
    assert loaded.user == user_aggregate.replay(history) and loaded.user is not None and loaded.user.version == 25
    # the read begins at the first record written once the snapshot was taken: at most a batch of the user
    # service's before the snapshot's event (it sends a batch's events together, after deciding them all)
    assert 0 < loaded.began_at <= offsets[24], (loaded.began_at, offsets)
    assert loaded.event_records == partition_records - loaded.began_at < partition_records
    print(f"loaded {busy} reading {loaded.event_records} of {partition_records} records, from {loaded.began_at}")
    assert loaded.snapshot_records >= 7, "the busy user's seven snapshots (the active segment is not compacted)"

    calm = load_user(own, users["calm"])
    assert calm.snapshot is not None and calm.snapshot.version == 1, "every user has a snapshot from registration on"
    assert calm.user == user_aggregate.replay(whole_history(own, users["calm"])[0]) and calm.user.version == 2  # type: ignore[union-attr]

    nobody = load_user(own, users["refused"])
    assert nobody.user is None and nobody.snapshot is None and nobody.from_start, "refused: never registered"


def test_replay_compares_the_log_with_the_view_and_exits_1_when_they_disagree(
    pipeline: Pipeline, store: redis.Redis, users: dict[str, str]
) -> None:
    busy = users["busy"]
    agreed = run_cli(pipeline.env, "user", busy, "--replay")
    assert agreed.returncode == 0, agreed.stderr
    assert "snapshot v24" in agreed.stdout and "1 event after it = v25" in agreed.stdout
    assert agreed.stdout.rstrip().endswith("they agree")

    live = store.get(user_key(busy))
    assert live is not None
    store.set(user_key(busy), live.replace(f"{busy}@new.example.com".encode(), b"someone@else.example.com"))
    try:
        disagreed = run_cli(pipeline.env, "user", busy, "--replay")
    finally:
        store.set(user_key(busy), live)
    assert disagreed.returncode == 1, disagreed.stdout
    assert "≠ email" in disagreed.stdout and "the views and the log disagree on email" in disagreed.stderr

    unknown = run_cli(pipeline.env, "user", uid("nobody"), "--replay")
    assert unknown.returncode == 1 and "no user" in unknown.stderr


def test_user_views_from_snapshots_equal_the_whole_log_s_and_read_fewer_records(
    own: Settings, users: dict[str, str]
) -> None:
    full = fold_log(own)
    from_snapshots = fold_log(own, users_from_snapshots=True)
    assert not full.incomplete and not from_snapshots.incomplete

    for table in VIEW_TABLES:
        if table != USER_VIEWS:
            assert from_snapshots.tables[table] == full.tables[table], table
    assert from_snapshots.tables[USER_VIEWS] == expected_from_cuts(own, full.tables[USER_VIEWS],
                                                                   from_snapshots.user_cuts)  # fmt: skip
    for user_id, entry in full.tables[USER_VIEWS].items():
        if entry["user"] is not None:
            mine = from_snapshots.tables[USER_VIEWS][user_id]["user"]
            assert {f: mine[f] for f in AGGREGATE_FIELDS} == {f: entry["user"][f] for f in AGGREGATE_FIELDS}, user_id
    busy = from_snapshots.tables[USER_VIEWS][users["busy"]]
    assert busy["user"]["onboarding_started_at"] is None, "onboarded before the cut: not the aggregate's to know"
    assert len(busy["rejections"]) == 1, "the refusal after the cut, not the one before"
    assert len(busy["commands"]) < len(full.tables[USER_VIEWS][users["busy"]]["commands"])

    print(f"records read: whole log {full.read}, from snapshots {from_snapshots.read}, cuts {from_snapshots.user_cuts}")
    assert from_snapshots.user_cuts[partition_of(users["busy"])] > 0
    assert from_snapshots.read[USER_EVENTS.name] < full.read[USER_EVENTS.name]
    assert from_snapshots.records_read < full.records_read, "the snapshots read included"


def expected_from_cuts(settings: Settings, full: dict[str, Any], cuts: dict[int, int]) -> dict[str, Any]:
    """The user views a fold from snapshots gives, derived from the full fold's: the same, but for what the
    aggregate does not hold and lies before its partition's cut (the onboarding stamp, refused commands, the
    commands' outcomes)."""
    position: dict[str, tuple[int, int]] = {}
    onboarded: dict[str, int] = {}
    with EventConsumer.reader(settings) as consumer:
        for message in consumer.read_log([USER_EVENTS.name]):
            envelope = message.envelope
            if envelope is not None:
                position[envelope.event_id] = (message.partition, message.offset)
                if envelope.short_type == "UserOnboardingStarted" and message.key is not None:
                    onboarded.setdefault(message.key, message.offset)
    expected: dict[str, Any] = {}
    for user_id, entry in full.items():
        cut = cuts[partition_of(user_id)]
        rejections = [r for r in entry["rejections"] if position[r["event_id"]][1] >= cut]
        commands = [c for c in entry.get("commands", ()) if position[c["event_id"]][1] >= cut]
        user = entry["user"]
        if user is not None and onboarded.get(user_id, cut) < cut:
            user = {**user, "onboarding_started_at": None}
        if user is not None or rejections or commands:
            expected[user_id] = {"user": user, "rejections": rejections} | ({"commands": commands} if commands else {})
    return expected


def test_a_read_begun_after_the_snapshot_s_event_is_caught_and_read_again_from_the_start(
    own: Settings, users: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if a clock had stepped back: the time index points past every snapshot's event."""

    def too_late(self: EventConsumer, topic: str, partition: int, time_ms: int, *, timeout: float = 10.0) -> int:
        return self._watermarks(TopicPartition(topic, partition), timeout=timeout)[1]

    monkeypatch.setattr(EventConsumer, "offset_for_time", too_late)
    busy = users["busy"]
    history, _, partition_records = whole_history(own, busy)
    loaded = load_user(own, busy)
    assert loaded.from_start and loaded.began_at == 0 and loaded.event_records == partition_records
    assert loaded.user == user_aggregate.replay(history) and [e.version for e in loaded.events_after] == [25]

    full = fold_log(own)
    from_snapshots = fold_log(own, users_from_snapshots=True)
    assert set(from_snapshots.user_cuts.values()) == {0}, "every partition folded again from its start"
    assert from_snapshots.tables == full.tables
