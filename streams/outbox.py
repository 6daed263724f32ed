"""Encodes what a step decided, stamps its envelope and sends it; dead letters go the same way.

Every output carries the envelope: a deterministic ``ce_id`` (:func:`derived_event_id`), ``ce_causationid`` = the
input's id (or the command a step names instead: :attr:`streams.domain.core.Decision.causes`),
``ce_correlationid`` = the order id, and the input's ``traceparent``. It is checked against its topic, encoded and
stamped by :class:`common.encoding.RecordEncoder`, the producers' path too. Sends are awaited until the broker
acknowledged them, so an input is acked only once its events are stored.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from common.encoding import RecordEncoder
from common.envelope import dead_letter_headers
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.topics import topic, topic_for_record
from streams.domain.parking import Position
from streams.incoming import Incoming

log = logging.getLogger(__name__)

EVENT_ID_NAMESPACE = uuid.UUID("6f1c1e4a-58a4-4a36-9a1e-8f0a4b1f5f21")


class Sender(Protocol):
    """Sends raw bytes to a topic and resolves when the broker acknowledged them."""

    def __call__(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, str | bytes | None]]
    ) -> Awaitable[Any]: ...


def derived_event_id(cause: str, index: int, record: str, value: Mapping[str, Any], key: str) -> str:
    """The id of an emitted event: the same however often, and from whichever input, it is emitted.

    A saga fact happens at most once per order (and per SKU line for line facts): ``OrderPlaced`` of order
    o-1 is one event whether admission emits it for the command or again for a repeated command. So an
    event that names an order gets its id from (record, order, SKU); any other (``StockAdded``) from its
    cause and position, which a replay of that cause repeats.
    """
    order_id = value.get("order_id")
    if order_id:
        return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{record}/{order_id}/{value.get('sku') or ''}"))
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{cause}/{index}/{record}/{key}"))


@dataclass(frozen=True)
class Outgoing:
    """One encoded message with its envelope, ready to send."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]


class Outbox:
    """Encodes domain messages, stamps their envelope and sends them to their topics."""

    def __init__(self, codec: AvroCodec, catalog: SchemaCatalog, send: Sender, source: str) -> None:
        self._encoder = RecordEncoder(catalog, codec, source)
        self._send = send

    def prepare(
        self,
        records: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        cause: Incoming | None,
        cause_id: str,
        traceparent: str | None = None,
        traces: Sequence[str] = (),
        causes: Sequence[str] = (),
    ) -> list[Outgoing]:
        """Encode ``(record name, value)`` pairs and stamp their envelopes; raises before any I/O if one is bad.

        Each goes to the one topic that carries its record, keyed by the record's key field, in ``traceparent``'s
        trace unless ``traces`` names another for it, and caused by ``cause_id`` unless ``causes`` names another
        (same position; the event's id is derived from ``cause_id`` all the same)."""
        prepared = []
        for index, (name, value) in enumerate(records):
            spec = topic_for_record(name)
            key = str(value[spec.key_field])
            correlation = value.get("order_id") or (cause.envelope.correlation_id if cause and cause.envelope else None)
            named = causes[index] if index < len(causes) else ""
            encoded = self._encoder.encode(
                spec,
                name,
                key,
                value,
                event_id=derived_event_id(cause_id, index, name, value, key),
                correlation_id=correlation or key,
                causation_id=(named or cause_id) if cause is not None else None,
                traceparent=(traces[index] if index < len(traces) and traces[index] else None) or traceparent,
            )
            prepared.append(Outgoing(encoded.topic, key.encode(), encoded.value, encoded.envelope.to_headers()))
        return prepared

    async def send_prepared(self, prepared: Sequence[Outgoing]) -> None:
        """Send in order and wait for the broker's acknowledgements, so an input is only acked once its
        events are stored (a send that fails raises here instead of being logged and lost)."""
        acks = []
        for message in prepared:
            ack = await self._send(message.topic, message.key, message.value, message.headers)
            if inspect.isawaitable(ack):
                acks.append(ack)
        if acks:
            await asyncio.gather(*acks)

    async def send_all(
        self,
        records: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        cause: Incoming | None,
        cause_id: str,
        traceparent: str | None = None,
    ) -> None:
        """Encode and send ``(record name, value)`` pairs in order."""
        await self.send_prepared(self.prepare(records, cause=cause, cause_id=cause_id, traceparent=traceparent))

    async def dead_letter(
        self, incoming: Incoming, *, agent: str, error: str, attempts: int = 1, behind: Position | None = None
    ) -> None:
        """Park ``incoming`` in its topic's dead-letter topic with the reason; original bytes kept."""
        await self.send_prepared(
            [self.prepare_dead_letter(incoming, agent=agent, error=error, attempts=attempts, behind=behind)]
        )

    def prepare_dead_letter(
        self, incoming: Incoming, *, agent: str, error: str, attempts: int = 1, behind: Position | None = None
    ) -> Outgoing:
        """The dead letter of ``incoming`` (original key, bytes and headers plus ``dlq_*``), ready to send."""
        spec = topic(incoming.topic)
        headers = dead_letter_headers(
            incoming.headers,
            topic=incoming.topic,
            partition=incoming.partition,
            offset=incoming.offset,
            error=error,
            agent=agent,
            attempts=attempts,
            parked_behind=behind.to_header() if behind is not None else None,
        )
        log.warning("dead-lettered %s[%s]@%s: %s", incoming.topic, incoming.partition, incoming.offset, error)
        return Outgoing(spec.dead_letter_name, incoming.key or b"", incoming.value or b"", headers)
