"""The topic and schema contract: create the declared topics, list them, check and list the Avro schemas."""

from __future__ import annotations

import json
from pathlib import Path

import click

from common.settings import get_settings
from pipeline.cli.errors import CliError


@click.group()
def topics() -> None:
    """The pipeline's topics, as declared in schemas/topics.py."""


@topics.command("apply")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per topic: topic, action, detail")
def topics_apply(as_json: bool) -> None:
    """Create or update every declared topic (and its dead-letter topic); safe to run again."""
    from confluent_kafka import KafkaException

    from common.admin import TopicDrift, admin_client, apply_topics
    from pipeline.cli.reach import kafka_at, require

    settings = get_settings()
    require(kafka_at(settings))
    try:
        changes = apply_topics(admin_client(settings), settings)
    except (KafkaException, TopicDrift, TimeoutError) as exc:
        raise CliError(f"applying topics at {settings.kafka_bootstrap}: {exc}") from exc
    for change in changes:
        if as_json:
            click.echo(json.dumps({"topic": change.topic, "action": change.action, "detail": change.detail}))
        else:
            click.echo(str(change))


@topics.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per topic")
def topics_list(as_json: bool) -> None:
    """Each declared topic with its records."""
    from common.admin import all_topics

    for spec in all_topics():
        policy = "compact" if spec.compacted else ("forever" if spec.retention_ms < 0 else "delete")
        if as_json:
            click.echo(json.dumps({
                "topic": spec.name, "partitions": spec.partitions, "policy": policy,
                "retention_ms": spec.retention_ms, "key_field": spec.key_field or None, "records": list(spec.records),
            }))  # fmt: skip
            continue
        records = ", ".join(spec.records) if spec.records else "(raw dead letters)"
        click.echo(f"{spec.name:<32} p={spec.partitions} {policy:<8} {records}")


# --- schemas ------------------------------------------------------------------------------------------------


@click.group()
def schemas() -> None:
    """The Avro schemas in schemas/."""


@schemas.command("check")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="schema tree to check (default: the installed schemas/)",
)
@click.option("--json", "as_json", is_flag=True, help="the outcome as one JSON object (problems included)")
def schemas_check(root: Path | None, as_json: bool) -> None:
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
    if as_json:
        click.echo(json.dumps({
            "ok": not problems, "versions": len(catalog), "records": len(catalog.names()),
            "problems": [str(problem) for problem in problems],
        }))  # fmt: skip
        if problems:
            raise click.exceptions.Exit(1)
        return
    if problems:
        for problem in problems:
            click.echo(f"incompatible: {problem}", err=True)
        raise CliError(f"{len(problems)} compatibility problem(s)")
    click.echo(f"ok: {len(catalog)} schema versions of {len(catalog.names())} records, full transitive compatibility")


@schemas.command("apply")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="schema tree to register (default: the installed schemas/)",
)
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, help="wait this long for the registry to answer")
def schemas_apply(root: Path | None, wait: float) -> None:
    """Register every schema version in the registry under FULL_TRANSITIVE (idempotent); fail with the registry's
    reason when it refuses one."""
    import time

    from schemas.catalog import SCHEMA_ROOT, SchemaCatalog
    from schemas.errors import SchemaError
    from schemas.registry import HttpRegistry, RegistryUnavailable, apply_catalog

    settings = get_settings()
    registry = HttpRegistry(settings.schema_registry_url)
    deadline = time.monotonic() + wait
    try:
        catalog = SchemaCatalog.load(root or SCHEMA_ROOT)
        while True:
            try:
                ids = apply_catalog(registry, catalog)
                break
            except RegistryUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1)
    except SchemaError as exc:
        raise CliError(str(exc)) from exc
    for label, schema_id in ids.items():
        click.echo(f"{label:<48} id {schema_id}")
    click.echo(f"ok: {len(ids)} schema versions registered at {registry.url}, FULL_TRANSITIVE")


@schemas.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per schema version")
def schemas_list(as_json: bool) -> None:
    """Every schema version with its CRC-64-AVRO fingerprint."""
    from schemas.catalog import SchemaCatalog

    for schema in SchemaCatalog.load():
        if as_json:
            click.echo(json.dumps({
                "record": schema.full_name, "version": schema.version,
                "fingerprint": schema.fingerprint.hex(), "file": schema.path.name,
            }))  # fmt: skip
            continue
        click.echo(f"{schema.full_name:<44} v{schema.version}  {schema.fingerprint.hex()}  {schema.path.name}")


@schemas.command("asyncapi")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the document to this file (default: print it)",
)
def schemas_asyncapi(out: Path | None) -> None:
    """The AsyncAPI 3.0 document of every topic (records, Avro schemas, keys, headers, senders and receivers),
    generated from schemas/; docs/asyncapi.yaml is its committed output."""
    from pipeline.asyncapi import document, render
    from schemas.catalog import SchemaCatalog

    text = render(document(SchemaCatalog.load()))
    if out is None:
        click.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}")
