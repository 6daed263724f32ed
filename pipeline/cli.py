"""``pipeline``: the command line for people working with the pipeline's topics.

Every command builds its clients in the command itself (nothing connects at import time) and exits non-zero
with a one-line reason when something is wrong; a publish that fails validation sends nothing.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

from common.settings import LIBRDKAFKA_LOGGER, Settings, get_settings
from schemas.topics import SERVICES as WORKER_SERVICES


class CliError(click.ClickException):
    """A failure the user can act on: printed as ``error: …``, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Work with the order pipeline: topics, schemas, publishing and tailing events."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(LIBRDKAFKA_LOGGER).setLevel(logging.ERROR)


# --- topics -------------------------------------------------------------------------------------------------


@main.group()
def topics() -> None:
    """The pipeline's topics, as declared in schemas/topics.py."""


@topics.command("apply")
def topics_apply() -> None:
    """Create or update every declared topic (and its dead-letter topic); safe to run again."""
    from confluent_kafka import KafkaException

    from common.admin import TopicDrift, admin_client, apply_topics

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
    from common.admin import all_topics

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
    from schemas.topics import records_by_topic

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
    from schemas.topics import UnknownTopic
    from schemas.topics import topic as find_topic

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
    from schemas.topics import UnknownTopic, dead_letter_topics
    from schemas.topics import topic as find_topic

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


# --- workers ------------------------------------------------------------------------------------------------


@main.command()
@click.argument("service", type=click.Choice(WORKER_SERVICES))
def worker(service: str) -> None:
    """Run the Faust worker of SERVICE (its agents, tables and timers) until interrupted."""
    import faulthandler

    import faust

    from common.telemetry import RepeatedRecords, setup_tracing
    from streams.bootstrap import create_app

    faulthandler.enable()  # a crash inside a client library leaves the Python stacks in the log
    settings = get_settings()
    setup_tracing(service, settings.otel_exporter, settings.otel_endpoint)
    built = create_app(service, settings)
    # Faust's worker leaves the root logger at DEBUG (for its start-up spinner): without a level of their own,
    # the clients build every debug record and throw it away (≈10 % of a worker's CPU per event, measured)
    for name in ("aiokafka", "faust", "mode", "kafka", "streams", "opentelemetry"):
        logging.getLogger(name).setLevel(settings.worker_log_level.upper())
    # while the broker is away aiokafka logs its reconnect attempts hundreds of times a second
    logging.getLogger("aiokafka").addFilter(RepeatedRecords(window_s=5.0))
    faust.Worker(built.app, loglevel=settings.worker_log_level, quiet=True).execute_from_commandline()


@main.command()
@click.option("--orders", type=click.IntRange(min=1), default=200, show_default=True, help="orders to place")
@click.option("--rate", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="orders per second")
@click.option("--customers", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--skus", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--stock", "stock_per_sku", type=click.IntRange(min=0), default=60, show_default=True)
@click.option("--decline-share", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--timeout", "settle_timeout_s", type=float, default=180.0, show_default=True)
def demo(**options: Any) -> None:
    """Place a stream of sample orders through the running workers and summarise the outcome."""
    import redis
    from rich.console import Console

    from producers.demo import DemoPlan, run_demo, summarise
    from producers.toolkit import EventPublisher
    from schemas.catalog import SchemaCatalog

    settings = get_settings()
    console = Console()
    store = redis.Redis.from_url(settings.redis_url)
    with EventPublisher.from_settings(settings, SchemaCatalog.load()) as publisher:
        result = run_demo(publisher, store, DemoPlan(**options), console)
    if not summarise(store, redis.Redis.from_url(settings.provider_store), result, console):
        raise CliError("some orders did not settle or a promise was broken")


# --- readiness ----------------------------------------------------------------------------------------------


def _broker_ready(settings: Settings) -> str | None:
    from confluent_kafka import KafkaException

    from common.admin import admin_client

    quiet = logging.getLogger("pipeline.probe")  # a probe expects refused connections: keep them off the screen
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    try:
        meta = admin_client(settings, logger=quiet).list_topics(timeout=2)
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


# --- query side: projector and views ------------------------------------------------------------------------


def _ms_iso(ms: Any) -> str:
    """Epoch milliseconds as RFC 3339 UTC text; '-' when absent."""
    from datetime import UTC, datetime

    if not isinstance(ms, int):
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _query_redis(settings: Settings) -> Any:
    import redis

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise CliError(f"Redis at {settings.redis_url}: {exc}") from exc
    return client


@main.command()
@click.option("--idle-exit", type=click.FloatRange(min=0), default=None, help="stop after S seconds without a message")
def project(idle_exit: float | None) -> None:
    """Run the Redis projector (group order-pipeline-projector) until interrupted; prints its counts on exit."""
    import signal

    from confluent_kafka import KafkaException

    from common.telemetry import setup_tracing
    from consumers.deadletter import DeadLetterFailed
    from consumers.projector import GROUP_ID, PROJECTED_TOPICS, ProjectorWorker
    from consumers.toolkit import ConsumeError
    from schemas.errors import SchemaError

    settings = get_settings()
    _query_redis(settings)
    setup_tracing("projector", settings.otel_exporter, settings.otel_endpoint)
    try:
        worker = ProjectorWorker(settings)
    except SchemaError as exc:
        raise CliError(str(exc)) from exc
    handlers = {sig: signal.signal(sig, lambda *_: worker.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    topics = ", ".join(t.name for t in PROJECTED_TOPICS)
    click.echo(f"projecting {topics} into {settings.redis_url} (group {GROUP_ID})", err=True)
    try:
        stats = worker.run(idle_exit=idle_exit)
    except (ConsumeError, DeadLetterFailed, KafkaException) as exc:
        raise CliError(str(exc)) from exc
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
    click.echo(json.dumps(stats.as_dict()))


@main.group()
def views() -> None:
    """The query side's Redis views (view:*), kept by `pipeline project`."""


@views.command("rebuild")
@click.option("--idle-timeout", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="give up on a partition that yields nothing for S seconds before its snapshot end")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print the counts as one JSON object")
def views_rebuild(idle_timeout: float, as_json: bool) -> None:
    """Drop every view:* key and re-project the topics from their start to their end offsets as of now.

    Stop `pipeline project` first; start it again afterwards (its replays are no-ops).
    """
    from confluent_kafka import KafkaException

    from consumers.projector import rebuild_views
    from consumers.toolkit import ConsumeError
    from schemas.errors import SchemaError

    settings = get_settings()
    client = _query_redis(settings)
    try:
        report = rebuild_views(settings, client, idle_timeout=idle_timeout)
    except (ConsumeError, KafkaException, SchemaError) as exc:
        raise CliError(str(exc)) from exc
    counts = report.as_dict()
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(f"dropped {report.dropped} view keys")
        for name, per_topic in counts["topics"].items():
            click.echo(f"{name:<28} " + " ".join(f"{k}={v}" for k, v in sorted(per_topic.items())))
        click.echo(
            f"rebuilt {report.keys} view keys from {counts['handled']} messages "
            f"(applied {counts['applied']}, unchanged {counts['unchanged']}, skipped {counts['skipped']})"
        )
    if report.incomplete:
        raise CliError(f"stopped before the snapshot end of {', '.join(report.incomplete)}")


@main.command("order")
@click.argument("order_id")
@click.option("--json", "as_json", is_flag=True, help="print the view as JSON")
def order_view(order_id: str, as_json: bool) -> None:
    """Print ORDER_ID's view and its saga timeline from Redis."""
    from streams.views.read import get_order

    settings = get_settings()
    view = get_order(_query_redis(settings), order_id)
    if view is None:
        raise CliError(f"no order {order_id!r} in the views at {settings.redis_url} (is `pipeline project` running?)")
    if as_json:
        click.echo(json.dumps(view, indent=2, sort_keys=True))
        return
    lines = view.get("lines") or []
    click.echo(f"order {view['order_id']}  {view.get('status') or '(no status yet)'}")
    click.echo(f"  user        {view.get('user_id') or '-'}")
    click.echo(f"  total       {view.get('total_cents')} cents {view.get('currency') or ''}")
    for line in lines:
        click.echo(f"  line        {line['sku']} x{line['quantity']} @ {line['unit_price_cents']}")
    click.echo(f"  placed      {_ms_iso(view.get('placed_at'))}   deadline {_ms_iso(view.get('deadline_at'))}")
    click.echo(
        f"  payment     {view.get('payment_id') or '-'}   charged {view.get('charged_cents')}"
        f"   refunded {view.get('refunded_cents')}"
    )
    if view.get("cancel_reason"):
        click.echo(f"  reason      {view['cancel_reason']}")
    if view.get("compensation"):
        comp = view["compensation"]
        state = "OPEN - needs attention" if view.get("needs_attention") else f"resolved {_ms_iso(comp['resolved_at'])}"
        click.echo(f"  compensation failed at {comp.get('failed_step')}: {comp.get('reason')} ({state})")
    click.echo("timeline:")
    for entry in view.get("timeline", []):
        detail = " ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(entry["detail"].items()))
        click.echo(f"  {_ms_iso(entry['at'])}  {entry['event']:<26} {entry['service'] or '-':<14} {detail}")


@main.command("trace")
@click.argument("order_id")
@click.option("--width", type=click.IntRange(min=10), default=40, show_default=True, help="width of the bars")
def trace_view(order_id: str, width: int) -> None:
    """Show ORDER_ID's saga as a waterfall: each step's service, event and time since the order began."""
    from streams.views.read import get_order

    settings = get_settings()
    view = get_order(_query_redis(settings), order_id)
    if view is None:
        raise CliError(f"no order {order_id!r} in the views at {settings.redis_url} (is `pipeline project` running?)")
    for line in waterfall(view.get("timeline") or [], width):
        click.echo(line)
    click.echo(
        f"{order_id}: {view.get('status')}" + (f" ({view['cancel_reason']})" if view.get("cancel_reason") else "")
    )


def waterfall(timeline: list[dict[str, Any]], width: int) -> list[str]:
    """One row per saga step: offset from the first event, the gap since the step before, and a bar."""
    if not timeline:
        return ["(no events yet)"]
    start = int(timeline[0]["at"])
    total = max(1, int(timeline[-1]["at"]) - start)
    rows, previous = [], start
    for entry in timeline:
        at = int(entry["at"])
        begin = round((previous - start) / total * width)
        end = max(begin + 1, round((at - start) / total * width))
        bar = " " * begin + "█" * (end - begin)
        rows.append(
            f"{at - start:>7} ms {'+' + str(at - previous):>8} ms  {str(entry.get('service') or '-'):<13} "
            f"{entry['event']:<26} |{bar:<{width}}|"
        )
        previous = at
    return rows


@main.command("stock")
@click.argument("sku")
def stock_view(sku: str) -> None:
    """Print SKU's stock view (available, reserved, sold, stock_version) from Redis."""
    from streams.views.read import stock

    settings = get_settings()
    view = stock(_query_redis(settings), sku)
    if view is None:
        raise CliError(f"no stock view for SKU {sku!r} at {settings.redis_url}")
    click.echo(
        f"{view['sku']}  available={view['available']} reserved={view['reserved']} sold={view['sold']}"
        f"  version={view['stock_version']}  last={view.get('last_event', '-')} at {_ms_iso(view.get('updated_at'))}"
    )


@main.group()
def dlq() -> None:
    """Dead letters: messages a consumer could not decode or handle, parked in <topic>.dlq with the reason."""


@dlq.command("list")
@click.argument("topics", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per dead letter")
def dlq_list(topics: tuple[str, ...], as_json: bool) -> None:
    """Show the dead letters in TOPICS (dead-letter topics, or their sources; default: all), and whether each
    one's key still waits on it (read from the services' parked-keys changelogs)."""
    from consumers.deadletter import dead_letter_topics, parked_status, read_dead_letters, read_parked_keys

    names = [t if t.endswith(".dlq") else f"{t}.dlq" for t in topics]
    unknown = sorted(set(names) - set(dead_letter_topics()))
    if unknown:
        raise CliError(f"not a dead-letter topic: {', '.join(unknown)}")
    settings = get_settings()
    letters = read_dead_letters(settings, names or None)
    parked = read_parked_keys(settings)
    for letter in letters:
        status = parked_status(letter, parked) if parked is not None else "unknown"
        if as_json:
            click.echo(json.dumps({**letter.as_dict(), "status": status}, sort_keys=True))
        else:
            behind = f", behind {letter.parked_behind.to_header()}" if letter.parked_behind else ""
            click.echo(
                f"{letter.position}  from {letter.origin.to_header()}"
                f"  key={(letter.key or b'').decode(errors='replace')!r}  by {letter.agent}"
                f" (attempt {letter.attempts}, {letter.parked_at})  [{status}{behind}]\n    {letter.error}"
            )
    if not as_json:
        keys = "unknown" if parked is None else str(len(parked))
        click.echo(f"{len(letters)} dead letter(s); {keys} (agent, key) pair(s) parked", err=True)


@dlq.command("replay")
@click.argument("topic", required=False)
@click.option(
    "--at", "positions", multiple=True, metavar="PARTITION:OFFSET", help="a dead letter of TOPIC to replay (repeatable)"
)
@click.option("--all", "replay_all", is_flag=True, help="every dead letter (of TOPIC, or of every dead-letter topic)")
@click.option("--key", "keys", multiple=True, metavar="KEY", help="every dead letter of this key (repeatable)")
@click.option("--dry-run", is_flag=True, help="show what would be replayed; publish nothing")
def dlq_replay(
    topic: str | None, positions: tuple[str, ...], replay_all: bool, keys: tuple[str, ...], dry_run: bool
) -> None:
    """Publish chosen dead letters back to their source topic, once what failed them is fixed.

    --all and --key send one copy per original message, in the order its key's queue holds them, so a parked
    key drains in one go; a replay the agent sees before its key's head is refused (its dead letter stays:
    run the command again)."""
    from consumers.deadletter import dead_letter_topics, read_dead_letters, read_parked_keys, replay, replay_order

    if sum(map(bool, (positions, replay_all, keys))) != 1:
        raise CliError(
            "choose what to replay: --at PARTITION:OFFSET (repeatable, as `pipeline dlq list` shows), --key KEY"
            " or --all; nothing replayed"
        )
    if positions and topic is None:
        raise CliError("--at needs the TOPIC its positions are in; nothing replayed")
    names = dead_letter_topics()
    if topic is not None:
        name = topic if topic.endswith(".dlq") else f"{topic}.dlq"
        if name not in names:
            raise CliError(f"not a dead-letter topic: {name}")
        names = [name]
    wanted = _positions(positions, "nothing replayed")
    settings = get_settings()
    letters = read_dead_letters(settings, names)
    if positions:
        chosen = _letters_at(letters, wanted, names[0], "nothing replayed")
    else:
        picked = [letter for letter in letters if replay_all or letter.key_text in keys]
        if keys and not picked:
            raise CliError(f"no dead letter of key {', '.join(map(repr, keys))}; nothing replayed")
        chosen = replay_order(picked, read_parked_keys(settings))
    for letter in chosen:
        click.echo(
            f"{'would replay' if dry_run else 'replaying'} {letter.position} -> {letter.source_topic}"
            f" (key {letter.key_text!r}, origin {letter.origin.to_header()})"
        )
    if not dry_run:
        click.echo(f"replayed {replay(settings, chosen)} message(s)")


def _positions(positions: tuple[str, ...], outcome: str) -> set[tuple[int, int]]:
    """``--at PARTITION:OFFSET`` values, checked before anything is read or sent."""
    wanted: set[tuple[int, int]] = set()
    for position in positions:
        partition, _, offset = position.partition(":")
        if not (partition.isdigit() and offset.isdigit()):
            raise CliError(f"--at takes PARTITION:OFFSET, not {position!r}; {outcome}")
        wanted.add((int(partition), int(offset)))
    return wanted


def _letters_at(letters: list[Any], wanted: set[tuple[int, int]], name: str, outcome: str) -> list[Any]:
    """The dead letters at ``wanted``; every position must hold one."""
    chosen = [letter for letter in letters if (letter.partition, letter.offset) in wanted]
    missing = sorted(wanted - {(letter.partition, letter.offset) for letter in chosen})
    if missing:
        raise CliError(f"no dead letter at {', '.join(f'{p}:{o}' for p, o in missing)} of {name}; {outcome}")
    return chosen


@dlq.command("discard")
@click.argument("topic")
@click.option(
    "--at", "positions", multiple=True, required=True, metavar="PARTITION:OFFSET",
    help="a dead letter of TOPIC whose parked original is dropped (repeatable)",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="show what would be discarded; publish nothing")
def dlq_discard(topic: str, positions: tuple[str, ...], dry_run: bool) -> None:
    """Give up on a parked message that no fix will make handleable (bytes that never decode, say).

    Its agent drops it from its key's queue unhandled, so the key's next parked message becomes head (replay
    it with ``pipeline dlq replay --key KEY``). Only a key's head can be discarded; the dead letter itself stays
    on its topic as the record of what was given up."""
    from consumers.deadletter import dead_letter_topics, read_dead_letters, replay

    name = topic if topic.endswith(".dlq") else f"{topic}.dlq"
    if name not in dead_letter_topics():
        raise CliError(f"not a dead-letter topic: {name}")
    wanted = _positions(positions, "nothing discarded")
    settings = get_settings()
    chosen = _letters_at(read_dead_letters(settings, [name]), wanted, name, "nothing discarded")
    for letter in chosen:
        click.echo(
            f"{'would discard' if dry_run else 'discarding'} {letter.position}"
            f" (key {letter.key_text!r}, origin {letter.origin.to_header()}, parked by {letter.agent})"
        )
    if not dry_run:
        click.echo(f"sent {replay(settings, chosen, discard=True)} discard(s) to {chosen[0].source_topic}")


@main.group()
def provider() -> None:
    """The simulated payment provider (an external system; its ledger lives in a Redis database of its own)."""


@provider.command("outage")
@click.argument("state", type=click.Choice(["on", "off"]))
def provider_outage(state: str) -> None:
    """Take the provider down (every charge and refund fails, nothing moves) or bring it back."""
    import asyncio

    import redis.asyncio as aioredis

    from streams.payment_provider import set_outage

    settings = get_settings()

    async def switch() -> None:
        client = aioredis.Redis.from_url(settings.provider_store)
        try:
            await set_outage(client, state == "on")
        finally:
            await client.aclose()

    try:
        asyncio.run(switch())
    except Exception as exc:
        raise CliError(f"cannot reach Redis at {settings.provider_store}: {exc}") from exc
    click.echo(f"payment provider {'down' if state == 'on' else 'up'}")


@main.command("user")
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="print the view as JSON")
def user_view(user_id: str, as_json: bool) -> None:
    """Print USER_ID's view (profile, e-mail, version, stats) and refused commands from Redis."""
    from streams.views.read import get_user, user_rejections, user_stats

    settings = get_settings()
    client = _query_redis(settings)
    view = get_user(client, user_id)
    if view is None:
        raise CliError(f"no user {user_id!r} in the views at {settings.redis_url} (is `pipeline project` running?)")
    stats, refused = user_stats(client, user_id), user_rejections(client, user_id)
    if as_json:
        click.echo(json.dumps({"user": view, "stats": stats, "rejections": refused}, indent=2, sort_keys=True))
        return
    state = "active" if view.get("active") else f"inactive ({view.get('deactivation_reason') or '-'})"
    click.echo(f"user {view['user_id']}  {view.get('username')}  <{view.get('email')}>  {state}  v{view['version']}")
    click.echo(f"  registered  {_ms_iso(view.get('registered_at'))}   updated {_ms_iso(view.get('updated_at'))}")
    click.echo(f"  logins      {stats['login_count'] if stats else 0}   last {_ms_iso(view.get('last_login_at'))}")
    click.echo(f"  orders      {stats['orders_placed'] if stats else 0}")
    for name, value in sorted((view.get("profile") or {}).items()):
        click.echo(f"  profile     {name} = {value}")
    for entry in refused:
        click.echo(f"  refused     {entry['command']}: {entry['reason']}  ({_ms_iso(entry.get('rejected_at'))})")


@main.command("wait-workers")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="seconds to wait at most")
def wait_workers(timeout: float) -> None:
    """Wait until every worker and the projector hold their partitions; exit 1 if not within the timeout."""
    from confluent_kafka import KafkaException

    from common.admin import admin_client, groups_not_ready, worker_groups

    admin = admin_client(get_settings())
    deadline = time.monotonic() + timeout
    pending: list[str] = ["(not asked yet)"]
    while time.monotonic() < deadline:
        try:
            pending = groups_not_ready(admin, worker_groups())
        except KafkaException as exc:
            pending = [str(exc)]
        if not pending:
            click.echo("ready: " + ", ".join(worker_groups()))
            return
        time.sleep(0.5)
    raise CliError("not ready: " + "; ".join(pending))


# --- HTTP gateway -------------------------------------------------------------------------------------------


@main.command("gateway")
@click.option("--host", default=None, help="address to listen on (default: PIPELINE_GATEWAY_HOST)")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="port (default: PIPELINE_GATEWAY_PORT)")
def gateway_command(host: str | None, port: int | None) -> None:
    """Run the HTTP API gateway until interrupted (SIGINT / SIGTERM finish in-flight requests first)."""
    from gateway.app import run
    from gateway.auth import AuthConfigError

    settings = get_settings()
    if settings.service_name == "cli":  # ce_source of the commands it publishes: /order-pipeline/gateway
        settings = settings.model_copy(update={"service_name": "gateway"})
    try:
        run(settings, host=host, port=port)
    except AuthConfigError as exc:
        raise CliError(str(exc)) from exc


@main.command("token")
@click.option("--subject", "-s", required=True, help="the user id the token speaks for (its sub claim)")
@click.option("--ttl", type=click.IntRange(min=1), default=3600, show_default=True, help="seconds until it expires")
def token_command(subject: str, ttl: int) -> None:
    """Print a development HS256 bearer token for the gateway (signed with PIPELINE_JWT_SECRET)."""
    from gateway.auth import issue_token

    settings = get_settings()
    if settings.jwt_algorithm != "HS256":
        raise CliError(f"the gateway expects {settings.jwt_algorithm} tokens; this command signs HS256 dev tokens only")
    if not subject.strip():
        raise CliError("--subject must not be empty")
    click.echo(
        issue_token(
            subject,
            settings.jwt_secret.get_secret_value(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_s=ttl,
        )
    )


# --- benchmark ----------------------------------------------------------------------------------------------


def _stages(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    from bench.figures import STAGES

    chosen = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise click.BadParameter(f"choose among {', '.join(STAGES)} (comma-separated), got {value!r}")
    return chosen


def _rates(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    from bench.figures import parse_rates

    if value is None:
        return None
    try:
        return parse_rates(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@main.command("bench")
@click.option("--quick", is_flag=True, help="small sizes (under 3 minutes); the default full run takes under 15")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="the JSON results (default .cache/bench/<timestamp>.json; the PNG plot goes beside it)",
)
@click.option(
    "--stages",
    callback=_stages,
    default="raw,faust,pipeline,codec,query",
    show_default=True,
    help="which stages to run, comma-separated",
)
@click.option(
    "--bootstrap", default=None, help="use this running Kafka (e.g. make run's 127.0.0.1:9092) instead of starting one"
)
@click.option("--redis", "redis_url", default=None, help="use this running Redis instead of starting one")
@click.option(
    "--kafka-container",
    default=None,
    help="the broker's container for kafka-producer-perf-test (default: the one publishing the port)",
)
@click.option(
    "--external-workers",
    is_flag=True,
    help="the workers already run against the stack (make run's): do not start any, do not profile",
)
@click.option("--rates", callback=_rates, default=None, help="offered orders/s per step, rising (e.g. 4,8,16)")
@click.option("--step-seconds", "step_s", type=click.FloatRange(min=1), default=None, help="seconds per step")
@click.option(
    "--connections",
    type=click.IntRange(1, 512),
    default=16,
    show_default=True,
    help="concurrent HTTP connections of the query stage",
)
@click.option(
    "--profile/--no-profile",
    default=True,
    show_default=True,
    help="profile every worker with py-spy in an extra step at the saturation rate",
)
def bench_command(**options: Any) -> None:
    """Measure the raw Kafka ceiling, the Faust ceiling, the pipeline, the codec and the gateway's reads.

    Prints a summary with the ratios between the layers and writes every figure to a JSON file and a plot of
    latency percentiles against the offered rate (PNG, with the optional `bench` dependency group).
    """
    from confluent_kafka import KafkaException
    from rich.console import Console

    from bench.run import BenchOptions, run_bench

    try:
        run_bench(BenchOptions(**options), Console())
    except (RuntimeError, TimeoutError, KafkaException) as exc:
        raise CliError(str(exc)) from exc


if __name__ == "__main__":
    main()
