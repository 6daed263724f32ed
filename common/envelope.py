"""The envelope every message carries, as Kafka headers (CloudEvents' Kafka binding, binary mode).

Headers stay readable in kcat (``-f '%h'``) and let a consumer route or trace a message without decoding it:

=====================  ===============================================================
``ce_id``              event id (UUID), the unit of idempotency
``ce_type``            the record's full Avro name (``pipeline.orders.OrderPlaced``)
``ce_source``          the producing service (``/order-pipeline/cli``)
``ce_time``            when the event was produced (RFC 3339, UTC, milliseconds)
``ce_dataschema``      the schema file the value was written with (``schemas/orders/OrderPlaced.v2.avsc``)
``ce_schemaversion``   that schema's version (``2``)
``ce_correlationid``   the saga the event belongs to (the order id, the user id)
``ce_causationid``     the id of the event that caused this one
``traceparent``        W3C trace context
``content-type``       ``application/avro`` (Avro, Confluent wire format: ``00`` + schema id)
=====================  ===============================================================
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/avro"

RawHeaders = Iterable[tuple[str, str | bytes | None]]
"""Headers as confluent-kafka hands them over."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Envelope:
    """Who, what, when and why of one message; the value itself is Avro."""

    event_type: str
    schema_version: int
    source: str
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=_now)
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None

    @property
    def short_type(self) -> str:
        return self.event_type.rsplit(".", 1)[-1]

    @property
    def dataschema(self) -> str:
        parts = self.event_type.split(".")
        context = parts[-2] if len(parts) >= 2 else ""
        return f"schemas/{context}/{self.short_type}.v{self.schema_version}.avsc"

    def to_headers(self) -> list[tuple[str, str | bytes | None]]:
        """The envelope as Kafka headers; optional fields are left out when unset."""
        headers = {
            "ce_specversion": SPEC_VERSION,
            "ce_id": self.event_id,
            "ce_type": self.event_type,
            "ce_source": self.source,
            "ce_time": self.time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "ce_dataschema": self.dataschema,
            "ce_schemaversion": str(self.schema_version),
            "content-type": CONTENT_TYPE,
        }
        optional = {
            "ce_correlationid": self.correlation_id,
            "ce_causationid": self.causation_id,
            "traceparent": self.traceparent,
        }
        headers.update({k: v for k, v in optional.items() if v})
        return [(k, v.encode()) for k, v in headers.items()]

    @classmethod
    def from_headers(cls, headers: RawHeaders | None) -> Envelope | None:
        """The envelope read back from headers, or None when the message carries none (e.g. kcat input)."""
        h = headers_dict(headers)
        if "ce_id" not in h or "ce_type" not in h:
            return None
        try:
            version = int(h.get("ce_schemaversion", "0"))
            time = datetime.fromisoformat(h["ce_time"].replace("Z", "+00:00")) if "ce_time" in h else _now()
        except ValueError:
            return None
        return cls(
            event_type=h["ce_type"],
            schema_version=version,
            source=h.get("ce_source", ""),
            event_id=h["ce_id"],
            time=time,
            correlation_id=h.get("ce_correlationid"),
            causation_id=h.get("ce_causationid"),
            traceparent=h.get("traceparent"),
        )


def headers_dict(headers: RawHeaders | None) -> dict[str, str]:
    """Kafka headers as a str → str dict (last one wins; undecodable bytes shown with escapes)."""
    out: dict[str, str] = {}
    for key, value in headers or ():
        if value is None:
            out[key] = ""
        elif isinstance(value, bytes):
            out[key] = value.decode("utf-8", errors="backslashreplace")
        else:
            out[key] = value
    return out


def dead_letter_headers(
    original: RawHeaders,
    *,
    topic: str,
    partition: int,
    offset: int,
    error: str,
    agent: str,
    attempts: int,
    now: datetime | None = None,
    parked_behind: str | None = None,
) -> list[tuple[str, str | bytes | None]]:
    """A dead letter's headers: the original ones, then why and where it was parked.

    ``dlq_error`` (the reason), ``dlq_agent`` (who parked it), ``dlq_attempts``, ``dlq_source_topic``,
    ``dlq_source_partition``, ``dlq_source_offset``, ``dlq_origin`` (``topic:partition:offset`` where the message
    was first read: a replay that fails again keeps its original's, so a key's queue knows it) and ``dlq_time``
    (RFC 3339, UTC); ``dlq_parked_behind`` (the origin of the dead letter its key waits for) when the message
    did not fail itself. Every Faust agent that dead-letters (the view service's too) writes exactly these, so
    ``pipeline dlq`` reads them one way.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    # a replayed dead letter (``pipeline dlq replay``) that fails again: count on, keep one set of dlq_* headers
    kept = list(original)
    previous = [v for k, v in kept if k == "dlq_attempts"]
    if previous:
        raw = previous[-1]
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        attempts = max(attempts, (int(text) if text.isdigit() else 0) + 1)
    origins = [v for k, v in kept if k == "dlq_origin"]
    origin = f"{topic}:{partition}:{offset}"
    if origins and origins[-1]:
        raw_origin = origins[-1]
        origin = raw_origin.decode(errors="replace") if isinstance(raw_origin, bytes) else str(raw_origin)
    kept = [(k, v) for k, v in kept if not k.startswith("dlq_")]
    extra = {
        "dlq_error": error,
        "dlq_agent": agent,
        "dlq_attempts": str(attempts),
        "dlq_source_topic": topic,
        "dlq_source_partition": str(partition),
        "dlq_source_offset": str(offset),
        "dlq_origin": origin,
        "dlq_time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if parked_behind:
        extra["dlq_parked_behind"] = parked_behind
    return [*kept, *((k, v.encode()) for k, v in extra.items())]
