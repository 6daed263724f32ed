"""Clients that know nothing of this project read and write its topics, through the schema registry alone.

The foreign side of each test uses only confluent-kafka: its ``SchemaRegistryClient``, ``AvroDeserializer`` and
``AvroSerializer`` against the registry's Confluent-compatible API, and a plain ``Producer``/``Consumer``, as a
Kafka Connect sink, a Kafka UI or another team's service would. What it needs to know comes from
docs/asyncapi.yaml: topic names, record names, keys, the subject naming (the record's full name) and the
partitioner (murmur2, the Java clients'). The project's own code only sets the scene (workers, a customer, stock)
and watches the outcome.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from common.admin import admin_client, apply_topics
from common.settings import Settings
from producers.toolkit import EventPublisher
from tests.integration.test_saga import add_stock, events_of, place_order, wait_for_order, wait_for_stock
from tests.seeding import register_users, uid
from tests.stack import RegistryNode, wait_until
from tests.workers import Pipeline, running_pipeline

ASYNCAPI = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml").read_text())
CHANNEL_RECORDS = {name: set(channel["messages"]) for name, channel in ASYNCAPI["channels"].items()}
"""Topic → the record names the AsyncAPI document says it carries."""

ORDER_RECORDS = {
    "orders.commands.v1": {"PlaceOrder"},
    "orders.events.v1": {"OrderPlaced", "OrderConfirmed"},
    "inventory.commands.v1": {"ReserveStock", "CommitStock"},
    "inventory.events.v1": {"StockLineReserved", "InventoryReserved", "StockLineCommitted", "InventoryCommitted"},
    "payments.events.v1": {"PaymentSucceeded"},
    "notifications.events.v1": {"NotificationSent"},
}
"""What a confirmed order leaves on each topic the saga writes (every record carries the order id)."""
PLACE_ORDER_SUBJECT = "pipeline.orders.PlaceOrder"
READ_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(settings, tmp_path_factory.mktemp("foreign"), PIPELINE_PAYMENT_LATENCY_MS="2") as running:
        yield running


@pytest.fixture
def customer(publisher: EventPublisher, pipeline: Pipeline, store: redis.Redis) -> str:
    user_id = uid("u")
    register_users(publisher, store, [user_id], alive=pipeline.assert_alive)
    return user_id


@pytest.fixture
def registry_client(schema_registry: RegistryNode) -> SchemaRegistryClient:
    """Confluent's own client, at the URL the project documents (``…/apis/ccompat/v7``)."""
    return SchemaRegistryClient({"url": schema_registry.url})


def record_name(client: SchemaRegistryClient, value: bytes) -> str:
    """The full name of the writer schema a Confluent-framed value names (``00`` + 4-byte id)."""
    assert value[:1] == b"\x00", value[:8]
    schema = client.get_schema(int.from_bytes(value[1:5], "big"))
    definition = json.loads(schema.schema_str)
    return f"{definition['namespace']}.{definition['name']}"


def read_since(bootstrap: str, topics: list[str], since_ms: int) -> list[Message]:
    """Every message of ``topics`` written at or after ``since_ms``, up to each partition's end as it is now."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"foreign-{uuid.uuid4()}", "enable.auto.commit": False}
    )
    try:
        wanted = [
            TopicPartition(topic, p, since_ms)
            for topic in topics
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ]
        ends: dict[tuple[str, int], int] = {}
        starts = []
        for tp in consumer.offsets_for_times(wanted, timeout=10):
            high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)[1]
            if 0 <= tp.offset < high:
                ends[(tp.topic, tp.partition)] = high
                starts.append(tp)
        consumer.assign(starts)
        read: list[Message] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while ends and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            read.append(message)
            place = (message.topic(), message.partition())
            if place in ends and message.offset() + 1 >= ends[place]:
                del ends[place]
        assert not ends, f"partitions not read to their end within {READ_TIMEOUT_S}s: {sorted(ends)}"
        return read
    finally:
        consumer.close()


def test_avro_deserializer_decodes_every_record_an_order_leaves_on_every_topic(
    pipeline: Pipeline,
    publisher: EventPublisher,
    store: redis.Redis,
    customer: str,
    settings: Settings,
    registry_client: SchemaRegistryClient,
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 4)
    wait_for_stock(pipeline, store, sku, 4)
    since_ms = int(time.time() * 1000) - 1000
    order_id = place_order(publisher, customer, [(sku, 2)])
    view = wait_for_order(pipeline, store, order_id, until=lambda v: "InventoryCommitted" in events_of(v))
    assert view["status"] == "CONFIRMED"

    deserializer = AvroDeserializer(registry_client)
    seen: dict[str, dict[str, dict[str, Any]]] = {}

    def every_record_decoded() -> bool:
        pipeline.assert_alive()
        seen.clear()
        for message in read_since(settings.kafka_bootstrap, list(ORDER_RECORDS), since_ms):
            topic, raw = message.topic(), message.value()
            assert raw is not None
            try:
                value = deserializer(raw, SerializationContext(topic, MessageField.VALUE))
                name = record_name(registry_client, raw)
            except Exception as exc:  # not "not yet": a record a foreign client cannot read fails the test now
                raise AssertionError(f"{topic}@{message.partition()}:{message.offset()} unreadable: {exc!r}") from exc
            assert isinstance(value, dict), (topic, name)
            assert name.rsplit(".", 1)[-1] in CHANNEL_RECORDS[topic], (topic, name)
            if value.get("order_id") == order_id:
                seen.setdefault(topic, {})[name.rsplit(".", 1)[-1]] = value
        return all(records <= set(seen.get(topic, {})) for topic, records in ORDER_RECORDS.items())

    wait_until(
        every_record_decoded,
        timeout=READ_TIMEOUT_S,
        what=lambda: f"every record of order {order_id} (decoded so far: { {t: sorted(r) for t, r in seen.items()} })",
    )
    placed = seen["orders.commands.v1"]["PlaceOrder"]
    assert placed["user_id"] == customer
    assert [(line["sku"], line["quantity"]) for line in placed["lines"]] == [(sku, 2)]
    assert seen["inventory.commands.v1"]["CommitStock"]["sku"] == sku
    assert seen["notifications.events.v1"]["NotificationSent"]["user_id"] == customer


def test_a_place_order_written_by_avro_serializer_is_completed_by_the_saga(
    pipeline: Pipeline,
    publisher: EventPublisher,
    store: redis.Redis,
    customer: str,
    settings: Settings,
    registry_client: SchemaRegistryClient,
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 3)
    wait_for_stock(pipeline, store, sku, 3)

    latest = registry_client.get_latest_version(PLACE_ORDER_SUBJECT)
    serializer = AvroSerializer(
        registry_client,
        latest.schema.schema_str,
        conf={
            "auto.register.schemas": False,  # the project's `pipeline schemas apply` owns registration
            "use.latest.version": True,
            "subject.name.strategy": record_subject_name_strategy,  # subjects by record: a topic carries several
        },
    )
    order_id = uid("o")
    value = serializer(
        {
            "order_id": order_id,
            "user_id": customer,
            "lines": [{"sku": sku, "quantity": 2, "unit_price_cents": 1250}],
            "payment": {"method": "card", "token": "tok_ok"},
            "idempotency_key": order_id,
            "requested_at": int(time.time() * 1000),
            "user_version": None,
        },
        SerializationContext("orders.commands.v1", MessageField.VALUE),
    )
    assert value is not None and value[:5] == b"\x00" + latest.schema_id.to_bytes(4, "big")

    failures: list[KafkaError] = []
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "partitioner": "murmur2_random", "enable.idempotence": True}
    )
    producer.produce(
        "orders.commands.v1",
        key=customer.encode(),
        value=value,
        on_delivery=lambda err, _msg: failures.append(err) if err is not None else None,
    )
    assert producer.flush(30) == 0 and not failures, failures

    view = wait_for_order(pipeline, store, order_id, until=lambda v: "InventoryCommitted" in events_of(v))
    assert view["status"] == "CONFIRMED"
    assert view["total_cents"] == 2500
    sold = wait_for_stock(pipeline, store, sku, 1)
    assert int(sold["sold"]) == 2
