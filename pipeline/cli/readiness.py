"""Waiting for the stack: until the broker and Redis answer, until every worker group holds its partitions.

Both wait out what they cannot reach yet, quietly, up to their ``--timeout``; then they fail with one line
naming what never answered and where.
"""

from __future__ import annotations

import time

import click

from common.health import PROBE_TIMEOUT_S
from common.settings import get_settings
from pipeline.cli.errors import CliError
from pipeline.cli.reach import kafka_at, redis_at, unreachable


@click.command("wait-ready")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="seconds to wait at most")
def wait_ready(timeout: float) -> None:
    """Wait until the broker and Redis answer; exit 1 if they do not within the timeout."""
    settings = get_settings()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        problems = unreachable(
            kafka_at(settings), redis_at(settings.redis_url), timeout_s=min(PROBE_TIMEOUT_S, max(left, 0.5))
        )
        if not problems:
            click.echo(f"ready: kafka at {settings.kafka_bootstrap}, redis at {redis_at(settings.redis_url).address}")
            return
        if time.monotonic() >= deadline:
            raise CliError(f"not ready after {timeout:g}s: " + "; ".join(problems))
        time.sleep(0.5)


@click.command("wait-workers")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="seconds to wait at most")
def wait_workers(timeout: float) -> None:
    """Wait until every worker (the view service included) holds its partitions; exit 1 if not within the timeout."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from common.admin import admin_client, groups_not_ready, worker_groups
    from common.health import quiet_logger

    settings = get_settings()
    deadline = time.monotonic() + timeout
    admin: AdminClient | None = None  # built once the broker has answered
    pending: list[str] = ["(not asked yet)"]
    while time.monotonic() < deadline:
        if admin is None:
            left = deadline - time.monotonic()
            pending = unreachable(kafka_at(settings), timeout_s=min(PROBE_TIMEOUT_S, max(left, 0.5)))
            if not pending:
                admin = admin_client(settings, logger=quiet_logger())  # its failures are this command's to report
        if admin is not None:
            try:
                pending = groups_not_ready(admin, worker_groups())
            except KafkaException as exc:
                pending = [f"Kafka at {settings.kafka_bootstrap}: {exc.args[0].str()}"]
        if not pending:
            click.echo("ready: " + ", ".join(worker_groups()))
            return
        time.sleep(0.5)
    raise CliError(f"not ready after {timeout:g}s: " + "; ".join(pending))
