"""A micro-benchmark of the orders worker's deadline sweep: how long one sweep takes with many open sagas.

``python -m bench.sweep --open 100000 --due 100`` builds the real orders service (wired as ``create_app`` wires
it, in-memory tables, no broker: its sender stands in for the broker and acknowledges each record ``--ack-ms``
later), puts
``--open`` sagas with far deadlines and ``--rounds`` × ``--due`` sagas with near ones into ``orders_deadlines``
as a recovery would, completes the recovery, then runs the sweep once per round, just after that round's
deadlines passed, and prints one JSON object: the sweep's duration per round (median, p90, max, in ms) and
the recovery's. After each sweep the reported sagas are removed from the table, as their cancellation would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from common.settings import Settings
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from streams.agents import ServiceApp
from streams.app import new_faust_app
from streams.outbox import Outbox
from streams.services import wire

UNREACHABLE_BROKER = "127.0.0.1:1"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--open", type=int, default=100_000, help="open sagas whose deadline is far off")
    parser.add_argument("--due", type=int, default=100, help="sagas whose deadline passes before each sweep")
    parser.add_argument("--rounds", type=int, default=20, help="sweeps timed")
    parser.add_argument("--ack-ms", type=float, default=2.0, help="the stand-in broker's acknowledgement delay")
    parser.add_argument("--step-ms", type=int, default=100, help="time between two rounds' deadlines")
    return parser.parse_args(argv)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    sent = 0

    async def send(topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, str | bytes | None]]) -> Any:
        nonlocal sent
        sent += 1
        ack: asyncio.Future[None] = loop.create_future()
        loop.call_later(args.ack_ms / 1000, ack.set_result, None)
        return ack

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(kafka_bootstrap=UNREACHABLE_BROKER, table_store="memory://", data_dir=data_dir)
        catalog = SchemaCatalog.load()
        codec = AvroCodec(catalog)
        built = ServiceApp("orders", new_faust_app("orders", settings), Outbox(codec, catalog, send, source="/bench"))
        wire(built, settings, codec)
        deadlines = built.tables["orders_deadlines"]
        sweep = built.timers["sweep_deadlines"]
        now_ms = int(time.time() * 1000)
        first = now_ms + 2_000 + args.open // 50  # time to fill the table and recover
        for n in range(args.open):
            deadlines.data[f"open-{n}"] = now_ms + 3_600_000 + n
        for r in range(args.rounds):
            for n in range(args.due):
                deadlines.data[f"due-{r}-{n}"] = first + r * args.step_ms
        started = time.perf_counter()
        await deadlines.on_recovery_completed(set(), set())
        recovery_ms = (time.perf_counter() - started) * 1000

        durations: list[float] = []
        for r in range(args.rounds):
            await asyncio.sleep(max(0.0, (first + r * args.step_ms + 1) / 1000 - time.time()))
            before = sent
            started = time.perf_counter()
            await sweep()
            durations.append((time.perf_counter() - started) * 1000)
            if sent - before < args.due:
                raise RuntimeError(f"round {r}: {sent - before} reports, expected {args.due}")
            for n in range(args.due):
                del deadlines.data[f"due-{r}-{n}"]  # the sagas were cancelled
    ordered = sorted(durations)
    return {
        "open": args.open,
        "due_per_sweep": args.due,
        "ack_ms": args.ack_ms,
        "rounds": args.rounds,
        "reports_sent": sent,
        "recovery_ms": round(recovery_ms, 2),
        "sweep_ms": {
            "median": round(statistics.median(ordered), 2),
            "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
            "max": round(ordered[-1], 2),
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    sys.stdout.write(json.dumps(asyncio.run(measure(parse_args(argv)))) + "\n")


if __name__ == "__main__":
    main()
