"""The gateway's command side: :class:`producers.toolkit.EventPublisher`, awaited one message at a time.

A request publishes its command and waits for *that* message's delivery report (not a shared ``flush``, which
would mix up concurrent requests), bounded by ``PIPELINE_GATEWAY_PUBLISH_TIMEOUT_S``. The producer's own
``delivery.timeout.ms`` is set to the same bound, so when the gateway answers 503 librdkafka has given up on the
message too and will not deliver it later behind the client's back: a 503 means "not placed" (apart from the
unavoidable case of a broker that wrote the message but whose acknowledgement was lost; a retry with the same
``Idempotency-Key`` is safe for that). A background thread serves the delivery reports.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from confluent_kafka import KafkaException

from common.envelope import Envelope
from common.settings import Settings
from producers.toolkit import Delivered, DeliveryFailed, EventPublisher, PublishError
from schemas.catalog import SchemaCatalog
from schemas.topics import TopicSpec

log = logging.getLogger("gateway.commands")

REPORT_MARGIN_S = 1.0
"""Extra wait past the producer's delivery timeout for its failure report to arrive."""


class CommandPublisher(Protocol):
    """What the gateway needs from its command side (tests use an in-memory stand-in)."""

    async def send(
        self,
        topic: TopicSpec,
        record: str,
        key: str,
        value: Mapping[str, Any],
        *,
        correlation_id: str,
        traceparent: str,
        event_id: str | None = None,
    ) -> Envelope:
        """Validate, encode and publish; return once the broker acknowledged it.

        ``event_id`` is the message's ``ce_id`` (default: a new one): the gateway names a command before sending
        it, so its receipt (:mod:`gateway.receipts`) exists before the command can be decided.

        Raises :class:`schemas.errors.SchemaError` (nothing sent) for a value that does not encode and
        :class:`producers.toolkit.PublishError` when the broker did not acknowledge in time.
        """
        ...

    async def close(self) -> None: ...


class KafkaCommandPublisher:
    """:class:`CommandPublisher` on a real broker."""

    def __init__(self, publisher: EventPublisher, *, timeout_s: float) -> None:
        self._publisher = publisher
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_reports, name="gateway-delivery-reports", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings, catalog: SchemaCatalog | None = None) -> KafkaCommandPublisher:
        timeout_ms = int(settings.gateway_publish_timeout_s * 1000)
        publisher = EventPublisher.from_settings(
            settings,
            catalog or SchemaCatalog.load(),
            **{"delivery.timeout.ms": timeout_ms, "client.id": f"{settings.client_id}-gateway"},
        )
        return cls(publisher, timeout_s=settings.gateway_publish_timeout_s)

    def _serve_reports(self) -> None:
        while not self._stop.is_set():
            self._publisher.poll(0.1)

    async def send(
        self,
        topic: TopicSpec,
        record: str,
        key: str,
        value: Mapping[str, Any],
        *,
        correlation_id: str,
        traceparent: str,
        event_id: str | None = None,
    ) -> Envelope:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Delivered] = loop.create_future()

        def settle(delivered: Delivered | None, failure: str | None) -> None:
            if outcome.done():
                return
            if delivered is not None:
                outcome.set_result(delivered)
            else:
                outcome.set_exception(DeliveryFailed(failure or "delivery failed"))

        def report(delivered: Delivered | None, failure: str | None) -> None:  # runs in the reports thread
            try:
                loop.call_soon_threadsafe(settle, delivered, failure)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        try:
            envelope = self._publisher.publish(
                topic,
                record,
                key,
                value,
                correlation_id=correlation_id,
                traceparent=traceparent,
                on_delivery=report,
                event_id=event_id,
            )
        except KafkaException as exc:  # the local producer refused it (schema errors pass through unchanged)
            raise DeliveryFailed(f"{topic.name} key={key!r}: {exc}") from exc
        try:
            await asyncio.wait_for(outcome, self._timeout_s + REPORT_MARGIN_S)
        except TimeoutError as exc:
            raise DeliveryFailed(
                f"{topic.name} key={key!r}: no delivery report within {self._timeout_s + REPORT_MARGIN_S:.1f}s"
            ) from exc
        return envelope

    async def close(self) -> None:
        """Wait for what is still in flight (bounded), then stop serving reports."""
        try:
            await asyncio.to_thread(self._publisher.flush, 5.0)
        except PublishError as exc:
            log.warning("closing the command publisher: %s", exc)
        finally:
            self._stop.set()
            await asyncio.to_thread(self._thread.join, 2.0)
