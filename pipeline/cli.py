"""``pipeline``: the command line for people working with the pipeline's topics.

Every command builds its clients in the command itself (nothing connects at import time) and exits non-zero
with a one-line reason when something is wrong; a publish that fails validation sends nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from pipeline.settings import Settings, get_settings


class CliError(click.ClickException):
    """A failure the user can act on: printed as ``error: …``, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Work with the order pipeline: topics, schemas, publishing and tailing events."""


# --- topics -------------------------------------------------------------------------------------------------


@main.group()
def topics() -> None:
    """The pipeline's topics, as declared in streams/topics.py."""


@topics.command("apply")
def topics_apply() -> None:
    """Create or update every declared topic (and its dead-letter topic); safe to run again."""
    from confluent_kafka import KafkaException

    from pipeline.admin import TopicDrift, admin_client, apply_topics

    settings = get_settings()
    try:
        changes = apply_topics(admin_client(settings), settings)
    except (KafkaException, TopicDrift, TimeoutError) as exc:
        raise CliError(f"applying topics at {settings.kafka_bootstrap}: {exc}") from exc
    for change in changes:
        click.echo(str(change))


@topics.command("list")
def topics_list() -> None:
    """Each declared topic with its records."""
    from pipeline.admin import all_topics

    for spec in all_topics():
        records = ", ".join(spec.records) if spec.records else "(raw dead letters)"
        policy = "compact" if spec.compacted else ("forever" if spec.retention_ms < 0 else "delete")
        click.echo(f"{spec.name:<32} p={spec.partitions} {policy:<8} {records}")


# --- schemas ------------------------------------------------------------------------------------------------


@main.group()
def schemas() -> None:
    """The Avro schemas in schemas/."""


@schemas.command("check")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="schema tree to check (default: the installed schemas/)",
)
def schemas_check(root: Path | None) -> None:
    """Fail when any schema version is not compatible both ways with every other of its topic's major version."""
    from schemas.catalog import SCHEMA_ROOT, SchemaCatalog
    from schemas.compat import check_compatibility
    from schemas.errors import SchemaError
    from streams.topics import records_by_topic

    try:
        catalog = SchemaCatalog.load(root or SCHEMA_ROOT)
    except SchemaError as exc:
        raise CliError(str(exc)) from exc
    problems = check_compatibility(catalog, records_by_topic())
    if problems:
        for problem in problems:
            click.echo(f"incompatible: {problem}", err=True)
        raise CliError(f"{len(problems)} compatibility problem(s)")
    click.echo(f"ok: {len(catalog)} schema versions of {len(catalog.names())} records, full transitive compatibility")


@schemas.command("list")
def schemas_list() -> None:
    """Every schema version with its CRC-64-AVRO fingerprint."""
    from schemas.catalog import SchemaCatalog

    for schema in SchemaCatalog.load():
        click.echo(f"{schema.full_name:<44} v{schema.version}  {schema.fingerprint.hex()}  {schema.path.name}")


# --- publish / tail -----------------------------------------------------------------------------------------


def _parse_data(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise CliError(f"--data is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CliError(f"--data must be a JSON object, got {type(value).__name__}")
    return value


@main.command()
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
    from producers.toolkit import EventPublisher, PublishError
    from schemas.catalog import SchemaCatalog
    from schemas.errors import SchemaError
    from streams.topics import UnknownTopic
    from streams.topics import topic as find_topic

    value = _parse_data(sys.stdin.read() if data == "-" else data)
    if not key:
        raise CliError("--key must not be empty")
    settings = get_settings()
    try:
        spec = find_topic(topic)
        catalog = SchemaCatalog.load()
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


@main.command()
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
    from consumers.toolkit import ConsumeError, EventConsumer
    from schemas.catalog import SchemaCatalog
    from schemas.codec import AvroCodec, to_json_compatible
    from schemas.errors import DecodeError
    from streams.topics import UnknownTopic, dead_letter_topics
    from streams.topics import topic as find_topic

    settings = get_settings()
    dlq = {t.name: t for t in dead_letter_topics()}
    try:
        spec = dlq.get(topic) or find_topic(topic)
    except UnknownTopic as exc:
        raise CliError(str(exc)) from exc
    codec = AvroCodec(SchemaCatalog.load())
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
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        pass


# --- readiness ----------------------------------------------------------------------------------------------


def _broker_ready(settings: Settings) -> str | None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        meta = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=2)
    except KafkaException as exc:
        return str(exc)
    return None if meta.brokers else "no brokers in metadata"


def _redis_ready(settings: Settings) -> str | None:
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return str(exc)
    return None


@main.command("wait-ready")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="seconds to wait at most")
def wait_ready(timeout: float) -> None:
    """Wait until the broker and Redis answer; exit 1 if they do not within the timeout."""
    settings = get_settings()
    deadline = time.monotonic() + timeout
    while True:
        problems = {
            name: problem
            for name, problem in (("kafka", _broker_ready(settings)), ("redis", _redis_ready(settings)))
            if problem
        }
        if not problems:
            click.echo(f"ready: kafka at {settings.kafka_bootstrap}, redis at {settings.redis_url}")
            return
        if time.monotonic() >= deadline:
            raise CliError("not ready: " + "; ".join(f"{k}: {v}" for k, v in problems.items()))
        time.sleep(0.5)


if __name__ == "__main__":
    main()
