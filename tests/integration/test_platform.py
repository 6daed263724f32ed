"""The platform on a real broker and Redis: topics, the publish/tail CLI, kcat, schema evolution on the wire."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from common.admin import admin_client, all_topics, apply_topics
from common.encoding import registry_codec
from common.settings import Settings
from consumers.toolkit import EventConsumer
from schemas.catalog import SchemaCatalog
from schemas.topics import ORDER_EVENTS, USER_SNAPSHOTS
from tests.stack import kafka_node
from tests.workers import run_cli

KCAT = shutil.which("kcat") or "kcat"


def now_ms() -> int:
    return int(time.time() * 1000)


def order_placed(order_id: str, **extra: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "order_id": order_id,
        "user_id": "u-1",
        "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}],
        "total_cents": 2500,
        "currency": "EUR",
        "placed_at": now_ms(),
        "deadline_at": now_ms() + 60_000,
    }
    value.update(extra)
    return value


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "offsets-probe"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def topics_applied(settings: Settings) -> list[str]:
    changes = apply_topics(admin_client(settings), settings)
    return [str(c) for c in changes]


def tail_lines(env: dict[str, str], topic: str, *extra: str) -> list[dict[str, Any]]:
    result = run_cli(env, "tail", topic, "--from-beginning", "--idle-timeout", "5", *extra)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def empty_broker(settings: Settings) -> Iterator[Settings]:
    """A broker of its own, with no topic yet: the shared one has its topics from whichever module ran first."""
    with kafka_node() as node:
        yield settings.model_copy(update={"kafka_bootstrap": node.bootstrap})


def test_topics_apply_creates_everything_then_changes_nothing(empty_broker: Settings) -> None:
    settings = empty_broker
    declared = {t.name for t in all_topics()}
    first = [str(c) for c in apply_topics(admin_client(settings), settings)]
    assert all(line.startswith("created") for line in first), first
    admin: AdminClient = admin_client(settings)
    meta = admin.list_topics(timeout=10).topics
    assert declared <= set(meta)
    assert len(meta[ORDER_EVENTS.name].partitions) == ORDER_EVENTS.partitions

    snapshot = ConfigResource(ConfigResource.Type.TOPIC, USER_SNAPSHOTS.name)
    config = admin.describe_configs([snapshot])[snapshot].result()
    assert config["cleanup.policy"].value == "compact"

    again = apply_topics(admin, settings)
    assert {c.action for c in again} == {"unchanged"}
    assert {c.topic for c in again} == declared

    second_cli = run_cli({**_env(settings)}, "topics", "apply")
    assert second_cli.returncode == 0, second_cli.stderr
    assert all(line.startswith("unchanged") for line in second_cli.stdout.splitlines())


def _env(settings: Settings) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "PIPELINE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PIPELINE_REDIS_URL": settings.redis_url,
    }


def test_published_event_reads_back_through_tail_and_kcat(
    cli_env: dict[str, str], settings: Settings, topics_applied: list[str]
) -> None:
    order_id = f"o-{uuid.uuid4().hex[:8]}"
    published = run_cli(
        cli_env, "publish", ORDER_EVENTS.name, "OrderPlaced", "--key", order_id,
        "--data", json.dumps(order_placed(order_id, channel="web")),
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    receipt = json.loads(published.stdout)
    newest = SchemaCatalog.load().latest("OrderPlaced").version
    assert receipt["type"] == "pipeline.orders.OrderPlaced"
    assert receipt["schema_version"] == newest

    mine = [line for line in tail_lines(cli_env, ORDER_EVENTS.name) if line["key"] == order_id]
    assert len(mine) == 1
    line = mine[0]
    assert (line["partition"], line["offset"]) == (receipt["partition"], receipt["offset"])
    assert line["record"] == "OrderPlaced"
    assert line["value"]["channel"] == "web"
    assert line["value"]["lines"] == [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}]
    headers = line["headers"]
    assert headers["ce_id"] == receipt["event_id"]
    assert headers["ce_type"] == "pipeline.orders.OrderPlaced"
    assert headers["ce_schemaversion"] == str(newest)
    assert headers["ce_dataschema"] == f"schemas/orders/OrderPlaced.v{newest}.avsc"
    assert headers["ce_correlationid"] == order_id
    assert headers["content-type"] == "application/avro"
    assert "ce_time" in headers

    kcat = subprocess.run(
        [KCAT, "-b", settings.kafka_bootstrap, "-C", "-t", ORDER_EVENTS.name, "-o", "beginning", "-e", "-q",
         "-f", "%k|%p|%o|%h\n"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [r.split("|", 3) for r in kcat.stdout.splitlines() if r.startswith(order_id + "|")]
    assert len(rows) == 1
    key, partition, offset, header_text = rows[0]
    assert (int(partition), int(offset)) == (receipt["partition"], receipt["offset"])
    assert f"ce_id={receipt['event_id']}" in header_text
    assert "ce_type=pipeline.orders.OrderPlaced" in header_text


def test_schema_evolution_on_the_wire(cli_env: dict[str, str], topics_applied: list[str]) -> None:
    old_id, new_id = f"o-v1-{uuid.uuid4().hex[:6]}", f"o-v2-{uuid.uuid4().hex[:6]}"
    v1 = run_cli(cli_env, "publish", ORDER_EVENTS.name, "OrderPlaced", "--version", "1", "--key", old_id,
                 "--data", json.dumps(order_placed(old_id)))  # fmt: skip
    assert v1.returncode == 0, v1.stderr
    v2 = run_cli(cli_env, "publish", ORDER_EVENTS.name, "OrderPlaced", "--version", "2", "--key", new_id,
                 "--data", json.dumps(order_placed(new_id, channel="mobile", note="gift")))  # fmt: skip
    assert v2.returncode == 0, v2.stderr

    as_v2 = {line["key"]: line for line in tail_lines(cli_env, ORDER_EVENTS.name, "--reader-version", "2")}
    assert as_v2[old_id]["writer_version"] == 1
    assert as_v2[old_id]["value"]["channel"] == "api"  # the v2 default fills in
    assert as_v2[old_id]["value"]["note"] is None

    as_v1 = {line["key"]: line for line in tail_lines(cli_env, ORDER_EVENTS.name, "--reader-version", "1")}
    assert as_v1[new_id]["writer_version"] == 2
    assert as_v1[new_id]["reader_version"] == 1
    assert "channel" not in as_v1[new_id]["value"]
    assert as_v1[new_id]["value"]["order_id"] == new_id


BAD_CALLS = [
    pytest.param(["OrderPlaced", "--key", "k", "--data", "{not json"], "not valid JSON", id="bad-json"),
    pytest.param(["OrderPlaced", "--key", "k", "--data", "[1, 2]"], "must be a JSON object", id="not-an-object"),
    pytest.param(["OrderPlaced", "--key", "k", "--data", '{"order_id": "k"}'], "user_id", id="missing-field"),
    pytest.param(["OrderPlaced", "--key", "k", "--data", "BAD_TYPE"], "total_cents", id="wrong-type"),
    pytest.param(["OrderShipped", "--key", "k", "--data", "{}"], "OrderShipped", id="unknown-record"),
    pytest.param(["PaymentFailed", "--key", "k", "--data", "{}"], "does not carry PaymentFailed", id="wrong-topic"),
    pytest.param(["OrderPlaced", "--data", "{}"], "--key", id="no-key"),
]


@pytest.mark.parametrize(("args", "message"), BAD_CALLS)
def test_bad_publish_exits_nonzero_and_publishes_nothing(
    cli_env: dict[str, str], settings: Settings, topics_applied: list[str], args: list[str], message: str
) -> None:
    if "BAD_TYPE" in args:
        args = [a if a != "BAD_TYPE" else json.dumps(order_placed("k", total_cents="lots")) for a in args]
    before = end_offsets(settings, ORDER_EVENTS.name)
    result = run_cli(cli_env, "publish", ORDER_EVENTS.name, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert end_offsets(settings, ORDER_EVENTS.name) == before


def test_publish_to_an_unknown_topic_is_refused(cli_env: dict[str, str], topics_applied: list[str]) -> None:
    result = run_cli(cli_env, "publish", "orders.v9", "OrderPlaced", "--key", "k", "--data", "{}")
    assert result.returncode == 1
    assert "unknown topic 'orders.v9'" in result.stderr


def test_garbage_from_kcat_is_reported_not_fatal(
    cli_env: dict[str, str], settings: Settings, topics_applied: list[str]
) -> None:
    key = f"garbage-{uuid.uuid4().hex[:6]}"
    subprocess.run(
        [KCAT, "-b", settings.kafka_bootstrap, "-P", "-t", ORDER_EVENTS.name, "-k", key],
        input=b"this is not avro", timeout=60, check=True,
    )  # fmt: skip
    ok_id = f"o-after-{uuid.uuid4().hex[:6]}"
    assert run_cli(cli_env, "publish", ORDER_EVENTS.name, "OrderPlaced", "--key", ok_id,
                   "--data", json.dumps(order_placed(ok_id))).returncode == 0  # fmt: skip
    lines = {line["key"]: line for line in tail_lines(cli_env, ORDER_EVENTS.name)}
    assert lines[key]["error"].startswith("NotConfluentFramed")
    assert lines[key]["value_hex"] == b"this is not avro".hex()
    assert lines[ok_id]["record"] == "OrderPlaced"


def test_consumer_toolkit_reads_what_the_publisher_wrote(settings: Settings, topics_applied: list[str]) -> None:
    from producers.toolkit import EventPublisher

    catalog = SchemaCatalog.load()
    order_id = f"o-kit-{uuid.uuid4().hex[:6]}"
    with EventPublisher.from_settings(settings, catalog) as publisher:
        envelope = publisher.publish(ORDER_EVENTS, "OrderPlaced", order_id, order_placed(order_id))
        delivered = publisher.flush()
    assert [d.key for d in delivered] == [order_id]

    codec = registry_codec(catalog, settings)
    with EventConsumer.from_settings(settings, f"kit-{uuid.uuid4().hex[:6]}") as consumer:
        consumer.subscribe([ORDER_EVENTS.name])
        found = None
        for message in consumer.messages(idle_timeout=15):
            consumer.done(message)
            if message.key == order_id:
                found = message
                break
    assert found is not None
    assert found.envelope is not None and found.envelope.event_id == envelope.event_id
    assert codec.decode(found.value or b"").value["order_id"] == order_id


def test_wait_ready_sees_kafka_and_redis(cli_env: dict[str, str], settings: Settings) -> None:
    result = run_cli(cli_env, "wait-ready", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert redis.Redis.from_url(settings.redis_url).ping()
    unreachable = {**cli_env, "PIPELINE_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = run_cli(unreachable, "wait-ready", "--timeout", "1")
    assert result.returncode == 1
    assert "redis" in result.stderr
