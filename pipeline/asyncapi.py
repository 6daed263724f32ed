"""The AsyncAPI 3.0 document of the pipeline's topics, made from the schema catalog and the topic contract.

Pure: :func:`document` turns a catalog, the topics (:mod:`schemas.topics`) and who sends and receives them
(:mod:`schemas.flows`) into a dict; :func:`render` makes it YAML. ``pipeline schemas asyncapi`` writes it, and
docs/asyncapi.yaml is that output, held equal to it by tests/unit/test_asyncapi.py, so the document cannot drift
from the schemas. A channel is a topic; its messages are the records it carries, each with its newest Avro schema,
its key and the envelope headers; an operation says which party sends or receives on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from common.envelope import CONTENT_TYPE, Envelope
from schemas.catalog import SchemaCatalog
from schemas.flows import PARTIES, Party
from schemas.registry import COMPATIBILITY, subject_of
from schemas.topics import TOPICS, TopicSpec

ASYNCAPI_VERSION = "3.0.0"
AVRO_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
KAFKA_BINDING = "0.5.0"
REGENERATE = "pipeline schemas asyncapi --out docs/asyncapi.yaml"

HEADERS: dict[str, str] = {
    "ce_specversion": "CloudEvents spec version (1.0)",
    "ce_id": "event id (UUID), the unit of idempotency",
    "ce_type": "the record's full Avro name (pipeline.orders.OrderPlaced)",
    "ce_source": "the producing process (/order-pipeline/<service>)",
    "ce_time": "when the event was produced (RFC 3339, UTC, milliseconds)",
    "ce_dataschema": "the schema file the value was written with (schemas/orders/OrderPlaced.v2.avsc)",
    "ce_schemaversion": "that schema's version (2)",
    "content-type": "application/avro: Avro in the Confluent wire format (00 + 4-byte schema id + body)",
    "ce_correlationid": "the saga the event belongs to (the order id, the user id)",
    "ce_causationid": "the id of the event that caused this one",
    "traceparent": "W3C trace context",
}
"""Every envelope header (:mod:`common.envelope`), described; the unit test holds the names to the envelope's."""


def envelope_headers() -> tuple[list[str], list[str]]:
    """(every header, the ones always present), in the order the envelope writes them."""
    bare = Envelope(event_type="pipeline.x.X", schema_version=1, source="/x")
    full = Envelope(
        event_type="pipeline.x.X", schema_version=1, source="/x", correlation_id="c", causation_id="c", traceparent="t"
    )
    return [k for k, _ in full.to_headers()], [k for k, _ in bare.to_headers()]


def _headers_schema() -> dict[str, Any]:
    every, required = envelope_headers()
    return {
        "type": "object",
        "description": "The envelope (CloudEvents' Kafka binding, binary mode), UTF-8 header values.",
        "required": required,
        "properties": {name: {"type": "string", "description": HEADERS[name]} for name in every},
    }


def _message(catalog: SchemaCatalog, record: str, spec: TopicSpec) -> dict[str, Any]:
    versions = catalog.versions(record)
    latest = versions[-1]
    listed = ", ".join(f"v{v.version} ({v.context}/{v.path.name})" for v in versions)
    return {
        "name": record,
        "title": latest.full_name,
        "summary": f"{record} on {spec.name}, keyed by {spec.key_field}.",
        "description": f"Schema versions: {listed}; the payload is the newest. Registry subject "
        f"`{subject_of(latest.full_name)}` ({COMPATIBILITY}): any version may be written and read by any other.",
        "contentType": CONTENT_TYPE,
        "headers": {"$ref": "#/components/schemas/Envelope"},
        "correlationId": {"$ref": "#/components/correlationIds/Saga"},
        "payload": {"schemaFormat": AVRO_FORMAT, "schema": latest.definition},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": f"the value's {spec.key_field}, UTF-8"},
                "schemaIdLocation": "payload",
                "schemaIdPayloadEncoding": "confluent",
                "schemaLookupStrategy": "RecordNameStrategy",
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }


def _channel(spec: TopicSpec) -> dict[str, Any]:
    config: dict[str, Any] = {
        "cleanup.policy": ["compact" if spec.compacted else "delete"],
        "retention.ms": spec.retention_ms,
    }
    return {
        "address": spec.name,
        "title": spec.name,
        "description": spec.description
        + (f" Messages that cannot be decoded or handled go to {spec.dead_letter_name}." if spec.dead_letter else ""),
        "messages": {r: {"$ref": f"#/components/messages/{r}"} for r in spec.records},
        "bindings": {
            "kafka": {
                "topic": spec.name,
                "partitions": spec.partitions,
                "topicConfiguration": config,
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }


def _operations(parties: Sequence[Party], topics: Sequence[TopicSpec]) -> dict[str, Any]:
    known = {t.name for t in topics}
    ops: dict[str, Any] = {}
    for party in parties:
        for topic_name, records in party.sent_topics(topics).items():
            ops[f"{party.name}.send.{topic_name}"] = {
                "action": "send",
                "title": f"{party.name} sends to {topic_name}",
                "channel": {"$ref": f"#/channels/{topic_name}"},
                "messages": [{"$ref": f"#/channels/{topic_name}/messages/{r}"} for r in records],
                "tags": [{"name": party.name}],
            }
        for spec in party.receives:
            if spec.name in known:
                ops[f"{party.name}.receive.{spec.name}"] = {
                    "action": "receive",
                    "title": f"{party.name} receives {spec.name}",
                    "channel": {"$ref": f"#/channels/{spec.name}"},
                    "messages": [{"$ref": f"#/channels/{spec.name}/messages/{r}"} for r in spec.records],
                    "tags": [{"name": party.name}],
                }
    return ops


def document(
    catalog: SchemaCatalog,
    topics: Sequence[TopicSpec] = TOPICS,
    parties: Sequence[Party] = PARTIES,
    version: str = "0.1.0",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``topics`` as a plain dict (no I/O)."""
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Order pipeline topics",
            "version": version,
            "description": "Every public topic of the order pipeline. Generated from schemas/ (the Avro schemas), "
            "schemas/topics.py and schemas/flows.py by `" + REGENERATE + "`: do not edit by hand. Values are Avro "
            "in the Confluent wire format; their schemas are registered by record name in the schema registry "
            "(Confluent-compatible API at <registry>/apis/ccompat/v7). Internal topics (Faust changelogs, the view "
            "service's re-keyed stock lines) and the dead-letter topics (raw bytes, the reason in dlq_* headers) "
            "are not listed.",
            "tags": [{"name": p.name, "description": p.description} for p in parties],
        },
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The broker `make run` starts (PIPELINE_KAFKA_BOOTSTRAP elsewhere).",
            }
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": {t.name: _channel(t) for t in topics},
        "operations": _operations(parties, topics),
        "components": {
            "messages": {r: _message(catalog, r, t) for t in topics for r in t.records},
            "schemas": {"Envelope": _headers_schema()},
            "correlationIds": {
                "Saga": {
                    "description": "The saga the message belongs to (order id or user id).",
                    "location": "$message.header#/ce_correlationid",
                }
            },
        },
    }


def render(doc: dict[str, Any]) -> str:
    """The document as YAML, keys in the order built, stable from run to run."""
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False)
    return f"# Generated by `{REGENERATE}`; do not edit.\n{body}"
