"""The one producer the pipeline uses: encode, stamp the envelope, key, send, check the delivery report.

Every process that writes to Kafka outside the Faust agents (the CLI, load generators, the gateway's command side)
goes through :class:`EventPublisher`, so delivery checks are done one way; encoding, the topic and key checks and
the envelope are :class:`common.encoding.RecordEncoder`'s, which the agents' outbox uses too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from confluent_kafka import KafkaError, Message, Producer

from common.encoding import PublishError, RecordEncoder, RecordNotAllowed, WrongKey, registry_codec
from common.envelope import Envelope
from common.settings import LIBRDKAFKA_LOGGER, Settings
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.topics import TopicSpec

# the errors publish raises before sending are the encode path's (common.encoding), named here for its callers
__all__ = [
    "Delivered",
    "DeliveryCallback",
    "DeliveryFailed",
    "EventPublisher",
    "PublishError",
    "RecordNotAllowed",
    "WrongKey",
    "producer_config",
]


class DeliveryFailed(PublishError):
    """The broker did not acknowledge one or more messages in time."""


@dataclass(frozen=True)
class Delivered:
    """Where an acknowledged message landed."""

    topic: str
    partition: int
    offset: int
    key: str
    envelope: Envelope


DeliveryCallback = Callable[[Delivered | None, str | None], None]
"""Told one message's outcome: ``(delivered, None)`` once acknowledged, ``(None, reason)`` once it failed for good."""


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Durable defaults: every in-sync replica acknowledges, idempotent retries keep per-key order."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": settings.client_id,
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        # the Java clients' (and Faust's) partitioner: the same key lands on the same partition whoever writes it
        "partitioner": "murmur2_random",
        "delivery.timeout.ms": int(settings.delivery_timeout_s * 1000),
    }
    config.update(overrides)
    return config


class EventPublisher:
    """Publishes pipeline records with their envelope; a context manager that flushes on exit."""

    def __init__(self, producer: Producer, codec: AvroCodec, catalog: SchemaCatalog, source: str) -> None:
        self._producer = producer
        self._encoder = RecordEncoder(catalog, codec, source)
        self._lock = threading.Lock()
        self._failures: list[str] = []
        self._delivered: list[Delivered] = []

    @classmethod
    def from_settings(cls, settings: Settings, catalog: SchemaCatalog, **overrides: Any) -> EventPublisher:
        return cls(
            Producer(producer_config(settings, **overrides)),
            registry_codec(catalog, settings),
            catalog,
            source=f"/order-pipeline/{settings.service_name}",
        )

    def publish(
        self,
        topic: TopicSpec,
        record: str,
        key: str,
        value: Mapping[str, Any],
        *,
        version: int | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
        on_delivery: DeliveryCallback | None = None,
        event_id: str | None = None,
    ) -> Envelope:
        """Validate, encode and enqueue one message; delivery is confirmed by :meth:`flush`.

        Raises before anything is sent when the record is not allowed on the topic or the value does not
        match its schema. With ``on_delivery`` the message's outcome goes to that callback instead of the
        next :meth:`flush` (which then neither reports nor raises for it): callers that publish concurrently
        (the gateway) each learn their own message's fate; the callback runs in whichever thread serves
        delivery reports (:meth:`poll`, :meth:`flush`). ``event_id`` fixes the envelope's ``ce_id`` (default: a
        new UUID), for a caller that names the message before sending it (the gateway's command ids).
        """
        encoded = self._encoder.encode(
            topic,
            record,
            key,
            value,
            version=version,
            correlation_id=correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
            event_id=event_id,
        )
        self._send(topic.name, key, encoded.value, encoded.envelope, on_delivery)
        return encoded.envelope

    def _send(
        self, topic: str, key: str, payload: bytes, envelope: Envelope, callback: DeliveryCallback | None = None
    ) -> None:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failure = f"{topic} key={key!r} event {envelope.event_id}: {err.str()}"
                if callback is not None:
                    callback(None, failure)
                    return
                with self._lock:
                    self._failures.append(failure)
            else:
                partition, offset = msg.partition(), msg.offset()
                delivered = Delivered(
                    topic,
                    -1 if partition is None else partition,
                    -1 if offset is None else offset,
                    key,
                    envelope,
                )
                if callback is not None:
                    callback(delivered, None)
                    return
                with self._lock:
                    self._delivered.append(delivered)

        while True:
            try:
                self._producer.produce(
                    topic,
                    value=payload,
                    key=key.encode(),
                    headers=envelope.to_headers(),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                # the local queue is full: serve delivery reports to make room, then try again
                self._producer.poll(0.1)
        self._producer.poll(0)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports (calling the ``on_delivery`` callbacks) for up to ``timeout`` seconds."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> list[Delivered]:
        """Wait for every enqueued message's delivery report; raise :class:`DeliveryFailed` on any failure."""
        remaining = self._producer.flush(timeout)
        with self._lock:
            failures, self._failures = self._failures, []
            delivered, self._delivered = self._delivered, []
        if remaining:
            failures.append(f"{remaining} message(s) not acknowledged within {timeout:.0f}s")
        if failures:
            raise DeliveryFailed("; ".join(failures))
        return delivered

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.flush()
        else:
            self._producer.flush(5)
