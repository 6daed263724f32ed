"""Stage 1, the raw ceiling: confluent-kafka produce and consume rates, and Kafka's own producer perf test.

Messages are the pipeline's real ones: an encoded ``OrderPlaced`` (three lines) with its envelope headers and
order-id key, sent with the pipeline's producer settings (:func:`producers.toolkit.producer_config`: acks=all,
idempotence, lz4, linger 5 ms).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from bench.figures import parse_perf_test, per_second
from common.envelope import Envelope
from common.settings import LIBRDKAFKA_LOGGER, Settings
from producers.toolkit import producer_config
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec

MB = 1024 * 1024
"""MB/s as kafka-producer-perf-test reports it (2**20 bytes), so the figures compare."""
PERF_TEST_SCRIPT = "/opt/kafka/bin/kafka-producer-perf-test.sh"
PERF_TEST_CLASS = "org.apache.kafka.tools.ProducerPerformance"


@dataclass(frozen=True)
class SampleMessage:
    """One pipeline message as it travels: key, Avro value, envelope headers."""

    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]

    @property
    def size(self) -> int:
        """Bytes of key, value and headers (what a record carries, before batching and compression)."""
        return len(self.key) + len(self.value) + sum(len(k) + len(v or b"") for k, v in self.headers)


def order_placed_value(order_id: str, user_id: str, skus: list[str], now_ms: int) -> dict[str, Any]:
    lines: list[dict[str, Any]] = [
        {"sku": sku, "quantity": 1 + i, "unit_price_cents": 500 + 250 * i} for i, sku in enumerate(skus)
    ]
    return {
        "order_id": order_id,
        "user_id": user_id,
        "lines": lines,
        "total_cents": sum(line["quantity"] * line["unit_price_cents"] for line in lines),
        "currency": "EUR",
        "placed_at": now_ms,
        "deadline_at": now_ms + 30_000,
        "channel": "api",
        "note": None,
        "payment_method": "card",
        "payment_token": "tok_ok",
    }


def sample_message(catalog: SchemaCatalog, codec: AvroCodec) -> SampleMessage:
    """An ``OrderPlaced`` as the order service emits it (uuid ids, three lines, the full envelope)."""
    schema = catalog.latest("OrderPlaced")
    order_id, user_id = f"o-{uuid.uuid4()}", f"u-{uuid.uuid4()}"
    value = order_placed_value(order_id, user_id, [f"SKU-{uuid.uuid4().hex[:10]}" for _ in range(3)], 1_767_225_600_000)
    envelope = Envelope(
        event_type=schema.full_name,
        schema_version=schema.version,
        source="/order-pipeline/orders",
        correlation_id=order_id,
        causation_id=str(uuid.uuid4()),
        traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
    )
    headers: list[tuple[str, str | bytes | None]] = [
        (k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in envelope.to_headers()
    ]
    return SampleMessage(order_id.encode(), codec.encode(schema.full_name, value, version=schema.version), headers)


def produce(settings: Settings, topic: str, message: SampleMessage, count: int) -> dict[str, Any]:
    """Send ``count`` copies (keys varied over 1,000 orders) as fast as the client goes; wait for every ack."""
    producer = Producer(producer_config(settings, **{"client.id": "bench-raw"}))
    failures = 0

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        nonlocal failures
        if err is not None:
            failures += 1

    keys = [message.key + b"-" + str(i).encode() for i in range(1000)]
    start = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(
                    topic, value=message.value, key=keys[i % 1000], headers=message.headers, on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    seconds = time.perf_counter() - start
    return _rate(count - remaining - failures, seconds, message.size) | {"failed": failures + remaining}


def consume(settings: Settings, topic: str, count: int, message_size: int, timeout_s: float = 120) -> dict[str, Any]:
    """Read ``count`` messages from the start of ``topic`` in batches; timed from the first message to the last."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        received = 0
        first = last = 0.0
        deadline = time.monotonic() + timeout_s
        while received < count and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=1000, timeout=1.0)
            now = time.perf_counter()
            good = sum(1 for m in batch if m.error() is None)
            if good and not received:
                first = now
            received += good
            last = now
        return _rate(received, last - first, message_size)
    finally:
        consumer.close()


def _rate(count: int, seconds: float, size: int) -> dict[str, Any]:
    return {
        "messages": count,
        "seconds": round(seconds, 3),
        "messages_per_s": round(per_second(count, seconds), 1),
        "mb_per_s": round(per_second(count * size, seconds) / MB, 2),
    }


def perf_test(container: str, bootstrap: str, topic: str, count: int, record_size: int) -> dict[str, Any]:
    """Kafka's ``kafka-producer-perf-test`` inside the broker's container, with the pipeline's producer settings.

    ``batch.size`` is librdkafka's default (1,000,000 bytes) rather than the Java client's 16 KiB, so both
    clients batch alike and the figures compare.

    The official image ships the script; the image built here has only the jars, so the tool's class is run
    with ``java -cp '/opt/kafka/libs/*'``. The container reaches the broker at the same ``127.0.0.1:PORT``.
    """
    args = (
        f"--topic {topic} --num-records {count} --record-size {record_size} --throughput -1 "
        f"--producer-props bootstrap.servers={bootstrap} acks=all enable.idempotence=true linger.ms=5 "
        "compression.type=lz4 batch.size=1000000 client.id=bench-perf-test"
    )
    log4j = "-Dlog4j.configuration=file:/opt/kafka/log4j.properties"
    script = (
        f"if [ -x {PERF_TEST_SCRIPT} ]; then KAFKA_HEAP_OPTS=-Xmx256m {PERF_TEST_SCRIPT} {args}; "
        f"else java -Xmx256m {log4j} -cp '/opt/kafka/libs/*' {PERF_TEST_CLASS} {args}; fi"
    )
    command = ["docker", "exec", container, "bash", "-c", script]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    parsed = parse_perf_test(done.stdout)
    result: dict[str, Any] = {
        "command": " ".join(shlex.quote(c) for c in command[:3]) + " bash -c " + shlex.quote(script),
        "record_bytes": record_size,
        "wall_s": round(time.monotonic() - start, 2),
    }
    if parsed is None:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
        return result | {"error": f"exit {done.returncode}: {tail}"}
    return result | {
        "messages": int(parsed["records"]),
        "messages_per_s": parsed["rps"],
        "mb_per_s": parsed["mbps"],
        "avg_latency_ms": parsed["avg"],
        "max_latency_ms": parsed["max"],
        "p50_ms": parsed.get("p50"),
        "p99_ms": parsed.get("p99"),
    }
