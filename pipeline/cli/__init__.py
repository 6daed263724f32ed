"""``pipeline``: the command line for people working with the pipeline's topics.

Every command builds its clients in the command itself (nothing connects at import time) and exits non-zero
with a one-line reason when something is wrong. One module per command group; this one holds the ``main`` group,
its logging set-up, and registers the groups.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from common.settings import LIBRDKAFKA_LOGGER
from pipeline.cli import contract, deadletters, messages, processes, queries, readiness, simulation, tokens
from pipeline.cli.errors import CliError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Work with the order pipeline: topics, schemas, publishing and tailing events."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(LIBRDKAFKA_LOGGER).setLevel(logging.ERROR)


for command in (
    contract.topics,
    contract.schemas,
    messages.publish,
    messages.tail,
    processes.worker,
    processes.project,
    processes.gateway_command,
    queries.views,
    queries.order_view,
    queries.trace_view,
    queries.stock_view,
    queries.user_view,
    deadletters.dlq,
    simulation.demo,
    simulation.provider,
    readiness.wait_ready,
    readiness.wait_workers,
    tokens.token_command,
):
    main.add_command(command)


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
