"""The one encode + envelope path: every record the pipeline writes to Kafka is checked, encoded and stamped here.

Both writers use it: the Faust agents' outbox (``streams.outbox.Outbox``) and the producers' publisher
(``producers.toolkit.EventPublisher``). So both refuse a record the topic does not carry, or a key that is not
the record's own key field, before anything is sent, and both write the same envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from common.envelope import Envelope
from common.settings import Settings
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.registry import registry_at
from schemas.topics import TopicSpec


def registry_codec(catalog: SchemaCatalog, settings: Settings) -> AvroCodec:
    """The codec of a process of the pipeline: values framed with the ids of the registry the settings name
    (``memory:``: this process's own, for tests that run everything in one process)."""
    return AvroCodec(catalog, registry_at(settings.schema_registry_url))


class PublishError(Exception):
    """A message could not be published; nothing about it reached the broker."""


class RecordNotAllowed(PublishError):
    """The record is not one the topic may carry."""


class WrongKey(RecordNotAllowed):
    """The key is not the record's own key field: the message would land on another key's partition, where the
    service that owns that key never sees it (invisible with one worker per service, lost with several)."""


@dataclass(frozen=True)
class EncodedRecord:
    """A record ready to send: its topic, key, Avro value (Confluent wire format) and envelope."""

    topic: str
    key: str
    value: bytes
    envelope: Envelope


class RecordEncoder:
    """Checks a record against its topic, encodes it with its schema and gives it its envelope."""

    def __init__(self, catalog: SchemaCatalog, codec: AvroCodec, source: str) -> None:
        self._catalog = catalog
        self._codec = codec
        self._source = source
        """The producing service, ``ce_source`` of every envelope (``/order-pipeline/<service>``)."""

    def encode(
        self,
        topic: TopicSpec,
        record: str,
        key: str,
        value: Mapping[str, Any],
        *,
        version: int | None = None,
        event_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
    ) -> EncodedRecord:
        """``value`` as ``record`` (its ``version``, else the latest) on ``topic`` under ``key``.

        Raises before any I/O when the topic does not carry the record (:class:`RecordNotAllowed`), the key is
        not the value's key field (:class:`WrongKey`) or the value does not match its schema. Without
        ``event_id`` the envelope gets a new one."""
        schema = self._catalog.get(record, version) if version else self._catalog.latest(record)
        if schema.name not in topic.records:
            allowed = ", ".join(topic.records) or "no Avro records"
            raise RecordNotAllowed(f"{topic.name} does not carry {schema.name}; it carries {allowed}")
        own_key = value.get(topic.key_field) if topic.key_field else None
        if own_key is not None and str(own_key) != key:
            raise WrongKey(
                f"{topic.name} is keyed by {topic.key_field}: the key {key!r} is not this {schema.name}'s"
                f" {topic.key_field} {own_key!r}"
            )
        payload = self._codec.encode(schema.full_name, value, version=schema.version)
        envelope = Envelope(
            event_type=schema.full_name,
            schema_version=schema.version,
            source=self._source,
            correlation_id=correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
        )
        if event_id is not None:
            envelope = replace(envelope, event_id=event_id)
        return EncodedRecord(topic.name, key, payload, envelope)
