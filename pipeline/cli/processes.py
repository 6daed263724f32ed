"""The long-running processes: a service's Faust worker (the view service among them) and the HTTP gateway.

A worker that cannot reach what it needs when it starts exits at once with one line saying
so; its supervisor starts it again (compose's ``restart: unless-stopped``). The gateway starts either way, says
in one line what it cannot reach, and answers 503 on ``/ready`` until it can: a front door that is down helps
no client.
"""

from __future__ import annotations

import logging

import click

from common.settings import get_settings
from pipeline.cli.errors import CliError
from pipeline.cli.reach import kafka_at, quiet_client_logs, redis_at, require, unreachable
from schemas.topics import SERVICES as WORKER_SERVICES


@click.command()
@click.argument("service", type=click.Choice(WORKER_SERVICES))
def worker(service: str) -> None:
    """Run the Faust worker of SERVICE (its agents, tables and timers) until interrupted."""
    settings = get_settings()
    # the payment provider's Redis is an outside system: its breaker waits for it; the views' Redis is the view
    # service's own store, which it cannot start without
    require(kafka_at(settings), *((redis_at(settings.redis_url),) if service == "views" else ()))

    import faulthandler

    import faust

    from common.telemetry import RepeatedRecords, setup_tracing
    from streams.bootstrap import create_app

    faulthandler.enable()  # a crash inside a client library leaves the Python stacks in the log
    setup_tracing(service, settings.otel_exporter, settings.otel_endpoint)
    built = create_app(service, settings)
    # Faust's worker leaves the root logger at DEBUG (for its start-up spinner): without a level of their own,
    # the clients build every debug record and throw it away (≈10 % of a worker's CPU per event, measured)
    for name in ("aiokafka", "faust", "mode", "kafka", "streams", "opentelemetry"):
        logging.getLogger(name).setLevel(settings.worker_log_level.upper())
    # while the broker is away aiokafka logs its reconnect attempts hundreds of times a second
    logging.getLogger("aiokafka").addFilter(RepeatedRecords(window_s=5.0))
    faust.Worker(built.app, loglevel=settings.worker_log_level, quiet=True).execute_from_commandline()


@click.command("gateway")
@click.option("--host", default=None, help="address to listen on (default: PIPELINE_GATEWAY_HOST)")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="port (default: PIPELINE_GATEWAY_PORT)")
def gateway_command(host: str | None, port: int | None) -> None:
    """Run the HTTP API gateway until interrupted (SIGINT / SIGTERM finish in-flight requests first)."""
    from gateway.app import run
    from gateway.auth import AuthConfigError, TokenPolicy

    settings = get_settings()
    if settings.service_name == "cli":  # ce_source of the commands it publishes: /order-pipeline/gateway
        settings = settings.model_copy(update={"service_name": "gateway"})
    try:
        TokenPolicy.from_settings(settings)  # a configuration error first: it will not pass by waiting
    except AuthConfigError as exc:
        raise CliError(str(exc)) from exc
    problems = unreachable(kafka_at(settings), redis_at(settings.redis_url))
    if problems:
        until = "they answer" if len(problems) > 1 else "it answers"
        click.echo(f"warning: {'; '.join(problems)}; starting anyway, answering 503 until {until}", err=True)
    quiet_client_logs()
    try:
        run(settings, host=host, port=port)
    except AuthConfigError as exc:
        raise CliError(str(exc)) from exc
