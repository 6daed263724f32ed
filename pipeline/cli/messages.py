"""Messages by hand: publish one validated record and wait for its ack; tail a topic as JSON lines.

A publish that fails validation sends nothing, and is refused for that before the broker is asked anything. Every
string it is given (the record's, map keys included, and the key and ids) must be clean text
(:mod:`streams.domain.text`: no control character, no unpaired surrogate), as at the gateway.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from common.settings import get_settings
from pipeline.cli.errors import CliError


def _parse_data(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise CliError(f"--data is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CliError(f"--data must be a JSON object, got {type(value).__name__}")
    return value


def _refuse_unclean_text(value: dict[str, Any], options: dict[str, str | None]) -> None:
    """Fail with one line naming the first option or field of the record that is not clean text."""
    from streams.domain.text import text_problem, unclean_field

    for option, given in options.items():
        if given is not None and (problem := text_problem(given)) is not None:
            raise CliError(f"{option} {problem}")
    if (unclean := unclean_field(value)) is not None:
        raise CliError(f"--data: {unclean}")


@click.command()
@click.argument("topic")
@click.argument("record")
@click.option("--key", "-k", required=True, help="message key (the aggregate id: order id, user id, SKU)")
@click.option("--data", "-d", required=True, help="the record as a JSON object; '-' reads it from stdin")
@click.option("--version", "-v", "version", type=int, default=None, help="schema version (default: newest)")
@click.option("--correlation-id", default=None, help="saga id (default: the key)")
@click.option("--causation-id", default=None, help="id of the event that caused this one")
def publish(
    topic: str,
    record: str,
    key: str,
    data: str,
    version: int | None,
    correlation_id: str | None,
    causation_id: str | None,
) -> None:
    """Validate RECORD against its schema, publish it to TOPIC and wait for the broker's ack."""
    from common.encoding import RecordEncoder
    from pipeline.cli.reach import kafka_at, require
    from producers.toolkit import DeliveryFailed, EventPublisher, PublishError
    from schemas.catalog import SchemaCatalog
    from schemas.codec import AvroCodec
    from schemas.errors import SchemaError
    from schemas.topics import UnknownTopic
    from schemas.topics import topic as find_topic

    value = _parse_data(sys.stdin.read() if data == "-" else data)
    if not key:
        raise CliError("--key must not be empty")
    _refuse_unclean_text(value, {"--key": key, "--correlation-id": correlation_id, "--causation-id": causation_id})
    settings = get_settings()
    try:
        spec = find_topic(topic)
        catalog = SchemaCatalog.load()
        # refuse a record that does not fit its topic or schema before asking the broker anything
        RecordEncoder(catalog, AvroCodec(catalog), source="/order-pipeline/cli").encode(
            spec, record, key, value, version=version
        )
        require(kafka_at(settings))
        with EventPublisher.from_settings(settings, catalog) as publisher:
            envelope = publisher.publish(
                spec,
                record,
                key,
                value,
                version=version,
                correlation_id=correlation_id or key,
                causation_id=causation_id,
            )
            delivered = publisher.flush(settings.delivery_timeout_s)
    except DeliveryFailed as exc:
        raise CliError(f"{exc} (Kafka at {settings.kafka_bootstrap})") from exc
    except (UnknownTopic, SchemaError, PublishError) as exc:
        raise CliError(str(exc)) from exc
    where = delivered[0]
    click.echo(
        json.dumps(
            {
                "topic": where.topic,
                "partition": where.partition,
                "offset": where.offset,
                "key": key,
                "event_id": envelope.event_id,
                "type": envelope.event_type,
                "schema_version": envelope.schema_version,
            }
        )
    )


@click.command()
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="start at the oldest message (default: only new ones)")
@click.option("--max", "max_messages", type=click.IntRange(min=1), default=None, help="stop after N messages")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=None, help="stop after S idle seconds")
@click.option("--reader-version", type=int, default=None, help="read values as this schema version")
def tail(
    topic: str,
    from_beginning: bool,
    max_messages: int | None,
    idle_timeout: float | None,
    reader_version: int | None,
) -> None:
    """Print TOPIC's messages, one JSON line each: key, headers, partition, offset and the decoded value."""
    from common.encoding import registry_codec
    from consumers.toolkit import ConsumeError, EventConsumer
    from pipeline.cli.reach import kafka_at, require
    from schemas.catalog import SchemaCatalog
    from schemas.codec import to_json_compatible
    from schemas.errors import DecodeError
    from schemas.registry import RegistryUnavailable
    from schemas.topics import UnknownTopic, dead_letter_topics
    from schemas.topics import topic as find_topic

    settings = get_settings()
    dlq = {t.name: t for t in dead_letter_topics()}
    try:
        spec = dlq.get(topic) or find_topic(topic)
    except UnknownTopic as exc:
        raise CliError(str(exc)) from exc
    codec = registry_codec(SchemaCatalog.load(), settings)
    require(kafka_at(settings))
    try:
        with EventConsumer.reader(settings) as consumer:
            consumer.assign_all(topic, from_beginning=from_beginning)
            for message in consumer.messages(idle_timeout=idle_timeout, max_messages=max_messages):
                line: dict[str, Any] = {
                    "topic": message.topic,
                    "partition": message.partition,
                    "offset": message.offset,
                    "timestamp": message.timestamp_ms,
                    "key": message.key,
                    "headers": message.headers,
                }
                if not spec.records:
                    line["value_hex"] = (message.value or b"").hex()
                else:
                    try:
                        decoded = codec.decode(
                            message.value or b"", reader_version=reader_version, expected=spec.records
                        )
                        line.update(
                            record=decoded.name,
                            writer_version=decoded.writer_version,
                            reader_version=decoded.reader_version,
                            value=to_json_compatible(decoded.value),
                        )
                    except DecodeError as exc:
                        line.update(error=f"{type(exc).__name__}: {exc}", value_hex=(message.value or b"").hex())
                click.echo(json.dumps(line, ensure_ascii=False))
    except ConsumeError as exc:
        raise CliError(f"{exc} (Kafka at {settings.kafka_bootstrap})") from exc
    except RegistryUnavailable as exc:
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        pass
