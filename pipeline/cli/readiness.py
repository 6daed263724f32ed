"""Waiting for the stack: until the broker and Redis answer, until every worker group holds its partitions."""

from __future__ import annotations

import logging
import time

import click

from common.settings import Settings, get_settings
from pipeline.cli.errors import CliError


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


@click.command("wait-ready")
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


@click.command("wait-workers")
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
