"""The gateway's command side: each request learns its own message's fate (gateway/commands.py).

A stand-in for confluent-kafka's ``Producer`` answers delivery reports on ``poll`` as the test decides.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from gateway import commands
from gateway.commands import KafkaCommandPublisher
from producers.toolkit import DeliveryFailed, EventPublisher, WrongKey
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.errors import InvalidRecord
from schemas.topics import ORDER_COMMANDS
from tests.gateway_support import until

pytestmark = pytest.mark.unit


class Error:
    def __init__(self, text: str) -> None:
        self.text = text

    def str(self) -> str:
        return self.text


class Message:
    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 42


class ScriptedProducer:
    """Delivers a message on ``poll`` once the test scripted its outcome (``None``: acked; text: failed).

    Like confluent-kafka's, ``poll`` blocks up to its timeout until there is a report to serve.
    """

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.pending: list[tuple[str, Any]] = []
        self.outcomes: dict[str, str | None] = {}
        self.produced: list[str] = []

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any, on_delivery: Any) -> None:
        with self.lock:
            self.pending.append((key.decode(), on_delivery))
            self.produced.append(key.decode())

    def decide(self, outcomes: dict[str, str | None]) -> None:
        """Script the outcome of the messages under these keys, and wake a ``poll`` waiting for one."""
        with self.lock:
            self.outcomes.update(outcomes)
            self.lock.notify_all()

    def poll(self, timeout: float) -> int:
        with self.lock:
            self.lock.wait_for(lambda: any(k in self.outcomes for k, _ in self.pending), timeout)
            ready = [(k, cb) for k, cb in self.pending if k in self.outcomes]
            self.pending = [(k, cb) for k, cb in self.pending if k not in self.outcomes]
        for key, callback in ready:
            outcome = self.outcomes[key]
            callback(None if outcome is None else Error(outcome), Message())
        return len(ready)

    def flush(self, timeout: float) -> int:
        return len(self.pending)


def place_order(user_id: str, quantity: Any = 1) -> dict[str, Any]:
    return {
        "order_id": f"o-{user_id}",
        "user_id": user_id,
        "lines": [{"sku": "SKU-1", "quantity": quantity, "unit_price_cents": 100}],
        "payment": {"method": "card", "token": "tok_ok"},
        "idempotency_key": f"o-{user_id}",
        "requested_at": 1767225600000,
    }


def publisher_on(producer: ScriptedProducer, timeout_s: float = 5.0) -> KafkaCommandPublisher:
    catalog = SchemaCatalog.load()
    events = EventPublisher(producer, AvroCodec(catalog), catalog, source="/order-pipeline/gateway")  # type: ignore[arg-type]
    return KafkaCommandPublisher(events, timeout_s=timeout_s)


def send(publisher: KafkaCommandPublisher, user_id: str, **kw: Any) -> Any:
    return publisher.send(
        ORDER_COMMANDS,
        "PlaceOrder",
        user_id,
        place_order(user_id, **kw),
        correlation_id=f"o-{user_id}",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )


def test_concurrent_sends_each_get_their_own_outcome() -> None:
    producer = ScriptedProducer()
    publisher = publisher_on(producer)

    async def scenario() -> None:
        ok = asyncio.create_task(send(publisher, "u-ok"))
        failed = asyncio.create_task(send(publisher, "u-fail"))
        await until(lambda: sorted(producer.produced) == ["u-fail", "u-ok"])
        assert not ok.done() and not failed.done()  # no report yet: both wait
        producer.decide({"u-fail": "Broker: Not enough in-sync replicas", "u-ok": None})
        envelope = await ok
        assert envelope.traceparent == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        with pytest.raises(DeliveryFailed, match="u-fail.*Not enough in-sync replicas"):
            await failed
        await publisher.close()

    asyncio.run(scenario())


def test_a_send_without_a_report_fails_after_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "REPORT_MARGIN_S", 0.0)
    publisher = publisher_on(ScriptedProducer(), timeout_s=0.2)

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(DeliveryFailed, match="no delivery report within 0.2s"):
            await send(publisher, "u-silent")
        assert time.monotonic() - started < 2
        await publisher.close()

    asyncio.run(scenario())


def test_a_value_that_does_not_encode_is_refused_before_producing() -> None:
    producer = ScriptedProducer()
    publisher = publisher_on(producer)

    async def scenario() -> None:
        with pytest.raises(InvalidRecord, match="quantity"):
            await send(publisher, "u-bad", quantity="two")
        await publisher.close()

    asyncio.run(scenario())
    assert producer.produced == []


def test_the_shared_flush_does_not_see_callback_messages() -> None:
    """Messages with a callback report to it alone: the publisher's own flush bookkeeping stays empty."""
    producer = ScriptedProducer()
    catalog = SchemaCatalog.load()
    events = EventPublisher(producer, AvroCodec(catalog), catalog, source="/x")  # type: ignore[arg-type]
    seen: list[Any] = []
    events.publish(
        ORDER_COMMANDS, "PlaceOrder", "u-1", place_order("u-1"), on_delivery=lambda d, f: seen.append((d, f))
    )
    events.publish(ORDER_COMMANDS, "PlaceOrder", "u-2", place_order("u-2"))
    producer.decide({"u-1": "boom", "u-2": None})
    producer.poll(0)
    assert seen == [(None, seen[0][1])] and "boom" in seen[0][1]
    delivered = events.flush(1)  # does not raise for u-1's failure
    assert [(d.key, d.partition, d.offset) for d in delivered] == [("u-2", 3, 42)]


def test_a_command_under_another_key_than_its_own_is_refused_before_anything_is_sent() -> None:
    """Keyed by someone else, a PlaceOrder lands on a partition whose admission worker does not own that customer:
    with several workers per service its state would be split and the order never decided."""
    producer = ScriptedProducer()
    catalog = SchemaCatalog.load()
    events = EventPublisher(producer, AvroCodec(catalog), catalog, source="/order-pipeline/test")  # type: ignore[arg-type]
    with pytest.raises(WrongKey, match="keyed by user_id: the key 'u-2' is not this PlaceOrder's user_id 'u-1'"):
        events.publish(ORDER_COMMANDS, "PlaceOrder", "u-2", place_order("u-1"))
    assert producer.pending == []
    events.publish(ORDER_COMMANDS, "PlaceOrder", "u-1", place_order("u-1"))
    assert len(producer.pending) == 1
