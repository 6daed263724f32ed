"""``pipeline``: the command line for people working with the pipeline's topics.

Every command builds its clients in the command itself (nothing connects at import time) and exits non-zero
with a one-line reason when something is wrong: before it connects, a command probes what it needs (reach.py),
and a client error that escapes a command later becomes one line too, never a traceback. One module per command
group; this one holds the ``main`` group, its logging set-up, and registers the groups; other packages add
commands as entry points (``pipeline.commands``, see plugins.py), as the benchmark adds ``pipeline bench``.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from common.settings import LIBRDKAFKA_LOGGER, get_settings
from pipeline.cli import contract, deadletters, messages, processes, queries, readiness, simulation, tokens
from pipeline.cli.errors import CliError
from pipeline.cli.plugins import PluginGroup


class PipelineGroup(PluginGroup):
    """The commands and plugins; a client error (Kafka, Redis) a command lets escape ends it with one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            from pipeline.cli.reach import failure_line

            line = failure_line(exc, get_settings())
            if line is None:
                raise
            raise CliError(line) from exc


@click.group(cls=PipelineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="order-pipeline", prog_name="pipeline", message="%(prog)s %(version)s")
def main() -> None:
    """Work with the order pipeline: topics, schemas, publishing and tailing events."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # in time order, like the workers
    logging.getLogger(LIBRDKAFKA_LOGGER).setLevel(logging.ERROR)


for command in (
    contract.topics,
    contract.schemas,
    messages.publish,
    messages.tail,
    processes.worker,
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


if __name__ == "__main__":
    main()
