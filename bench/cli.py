"""``pipeline bench``: the benchmark's command, offered to the CLI as the ``pipeline.commands`` entry point ``bench``.

It lives here, beside the CLI rather than inside it, so the shipped CLI never imports the benchmark; pyproject.toml
declares it (``bench = "bench.cli:bench"``) and ``pipeline`` loads it by name when it is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class BenchError(click.ClickException):
    """A failed run, printed as ``error: …`` with exit status 1 like the failures of the CLI's own commands."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _stages(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    from bench.figures import STAGES, STAGES_ON_REQUEST

    known = STAGES + STAGES_ON_REQUEST
    chosen = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [s for s in chosen if s not in known]
    if unknown or not chosen:
        raise click.BadParameter(f"choose among {', '.join(known)} (comma-separated), got {value!r}")
    return chosen


def _rates(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    from bench.figures import parse_rates

    if value is None:
        return None
    try:
        return parse_rates(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("bench")
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
    default="raw,faust,pipeline,codec,query,history",
    show_default=True,
    help="which stages to run, comma-separated; `rest` (only when named) measures make run's stack at rest",
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
def bench(**options: Any) -> None:
    """Measure the raw Kafka ceiling, the Faust ceiling, the pipeline, the codec, the gateway's reads and what
    history costs a step.

    Prints a summary with the ratios between the layers and writes every figure to a JSON file and a plot of
    latency percentiles against the offered rate (PNG, with the optional `bench` dependency group).
    """
    from confluent_kafka import KafkaException
    from rich.console import Console

    from bench.run import BenchOptions, run_bench

    try:
        run_bench(BenchOptions(**options), Console())
    except (RuntimeError, TimeoutError, KafkaException) as exc:
        raise BenchError(str(exc)) from exc
