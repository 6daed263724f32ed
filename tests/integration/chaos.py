"""What the chaos runs share: a seeded plan of faults, the supervisor, the run itself and its checks and report.

A run places a steady load of orders from a thread while the faults of its plan strike, each when a share of the
orders is terminal; the test acts as compose's supervisor (``restart: unless-stopped``) all along. Afterwards
every promise of :mod:`tests.integration.promises` holds and the views equal the log folded afresh; the report
says what struck when, how long the pipeline took to settle, and what the workers did about it.

Used by ``test_chaos.py`` (one broker, one worker per service) and ``test_chaos_long.py`` (three brokers, two
workers per service); each adds the faults of its own stack (a broker restarted, or killed and started again).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from common.admin import admin_client, apply_topics
from common.settings import Settings
from consumers.view_log import drop_views, fold_log, write_views
from streams.watchdog import STALLED_EXIT_CODE
from tests.integration.promises import OrderLoad, dump_views, scratch_redis, views_whole, wait_fully_projected
from tests.stack import wait_until
from tests.workers import Pipeline, running_pipeline

WORKER_ENV = {
    "PIPELINE_SAGA_TIMEOUT_S": "60",
    "PIPELINE_PAYMENT_LATENCY_MS": "1",
    "PIPELINE_WORKER_LOG_LEVEL": "info",
    "PIPELINE_STALL_TIMEOUT_S": "20",
}
"""The workers' settings under chaos: a saga deadline a stalled step can reach, a watchdog that notices a stall."""

FAULT_WAIT_S = 600.0
"""How long a fault may wait for its share of the orders to be terminal, beyond the time the load takes to place."""


@dataclass(frozen=True, order=True)
class Fault:
    share: float
    """When: once this share of the orders is terminal."""
    action: str
    """``kill:<process>`` (SIGKILL, then started again), ``flush`` (Redis loses the views), or one of the test's own
    (a broker restarted, killed or started)."""


def kill_faults(
    rng: random.Random, processes: Sequence[str], count: int, between: tuple[float, float] = (0.05, 0.9)
) -> list[Fault]:
    """``count`` SIGKILLs of processes drawn from ``processes``, each at a share drawn from ``between``."""
    return [Fault(round(rng.uniform(*between), 2), f"kill:{rng.choice(processes)}") for _ in range(count)]


class Supervisor:
    """Restarts whatever exited, as compose's ``restart: unless-stopped`` does, and counts the exits."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.exits: Counter[str] = Counter()

    def __call__(self) -> None:
        for process in self.pipeline.processes.values():
            if process.popen is not None and process.popen.poll() is not None:
                self.exits[f"{process.name} exit {process.popen.returncode}"] += 1
                print(f"{process.name} exited ({process.popen.returncode}); restarting it")
                process.start()

    @property
    def watchdog_restarts(self) -> int:
        """Exits of a worker its watchdog stopped (stalled), restarted since."""
        return sum(n for what, n in self.exits.items() if what.endswith(f" exit {STALLED_EXIT_CODE}"))

    @property
    def other_exits(self) -> dict[str, int]:
        """Exits for any other reason (the test's own SIGKILLs are not among them: it starts those again itself)."""
        return {what: n for what, n in self.exits.items() if not what.endswith(f" exit {STALLED_EXIT_CODE}")}


@contextmanager
def chaos_pipeline(settings: Settings, workdir: Path, *, workers_per_service: int = 1) -> Iterator[Pipeline]:
    """The topics applied, then every service's workers started with :data:`WORKER_ENV` (logs in ``workdir``)."""
    apply_topics(admin_client(settings), settings)
    print(f"\nworker logs in {workdir}")
    with running_pipeline(settings, workdir, workers_per_service=workers_per_service, **WORKER_ENV) as running:
        yield running


@dataclass(frozen=True)
class Struck:
    """A fault as it struck: how long after the first order, and how many orders were terminal then."""

    fault: Fault
    seconds: float
    terminal: int
    note: str = ""

    @property
    def noted(self) -> str:
        return f"  ({self.note})" if self.note else ""


@dataclass
class ChaosRun:
    """One run: ``load`` placed at ``rate`` a second while ``plan`` strikes; then the checks and the report.

    ``strike`` carries out the actions that are the test's own (its broker's); ``kill:`` and ``flush`` are done
    here. It may return a note for the report (how long a broker was down, say)."""

    pipeline: Pipeline
    settings: Settings
    load: OrderLoad
    seed: int
    strike: Callable[[str], str | None]
    store: redis.Redis = field(init=False)
    supervise: Supervisor = field(init=False)
    struck: list[Struck] = field(default_factory=list)
    placed_s: float = 0.0
    settled_s: float = 0.0
    view_keys: int = 0
    remirror_s: float = 0.0

    def __post_init__(self) -> None:
        self.store = redis.Redis.from_url(self.settings.redis_url)
        self.supervise = Supervisor(self.pipeline)

    @property
    def orders(self) -> int:
        return self.load.orders

    def run(self, plan: list[Fault], *, rate: float, settle_timeout: float = 900) -> None:
        """Place the load from a thread, strike every fault at its share, then wait for the quiet point."""
        print(f"seed {self.seed}: {[(f.share, f.action) for f in plan]}")
        commands = self.load.prepare(self.store, self.supervise)
        failures: list[BaseException] = []
        placed_at: list[float] = []

        def place() -> None:
            try:
                self.load.place(commands, rate=rate)
                placed_at.append(time.monotonic())
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)
                raise

        placing = threading.Thread(target=place, name="orders", daemon=True)
        started = time.monotonic()
        placing.start()
        patience = FAULT_WAIT_S + self.orders / rate
        for fault in plan:
            wait_until(
                lambda f=fault: self.supervise() or self.load.terminal_count(self.store) >= f.share * self.orders,
                timeout=patience,
                what=f"{fault.share} of the orders terminal",
                interval=1.0,
            )
            seconds, terminal = time.monotonic() - started, self.load.terminal_count(self.store)
            print(f"{seconds:6.1f}s {terminal} terminal: {fault.action}")
            self.struck.append(Struck(fault, seconds, terminal, self._strike(fault.action) or ""))

        placing.join(timeout=patience)
        assert not placing.is_alive() and not failures, failures
        self.placed_s = placed_at[0] - started
        self.load.wait_settled(self.store, self.supervise, timeout=settle_timeout)
        self.settled_s = time.monotonic() - started
        print(f"settled {self.settled_s:.0f}s after the first order; exits: {dict(self.supervise.exits)}")

    def _strike(self, action: str) -> str | None:
        if action.startswith("kill:"):
            self.pipeline.restart(action.removeprefix("kill:"), signal.SIGKILL)
            return None
        if action == "flush":
            self.store.flushdb()
            return None
        return self.strike(action)

    def check(self) -> Counter[str]:
        """Every promise, then the views against a rebuild from the log; return the outcomes."""
        outcomes = self.load.check_promises(self.store)
        assert sum(outcomes.values()) == self.orders

        # the views are exactly the log's: what the view service ended with equals the log folded from scratch
        wait_fully_projected(self.settings, self.supervise)
        live = dump_views(self.store)
        self.view_keys = len(live)
        scratch = scratch_redis(self.settings)
        folded = fold_log(self.settings)
        assert not folded.incomplete
        write_views(scratch, folded.tables)
        rebuilt = dump_views(scratch)
        differ = sorted(k for k in set(live) | set(rebuilt) if live.get(k) != rebuilt.get(k))
        assert not differ, f"{len(differ)} view keys differ from a rebuild, e.g. {differ[:5]}"
        print(f"view keys {len(live)}, equal to a rebuild from the log")

        # and Redis lost now is written again from the tables (O(keys), nothing replayed), the same as before
        dropped_at = time.monotonic()
        drop_views(self.store)
        wait_until(lambda: views_whole(self.store), timeout=300, what="the views re-mirrored", interval=0.05)
        self.remirror_s = time.monotonic() - dropped_at
        assert dump_views(self.store) == live
        return outcomes

    def remirrored(self) -> int:
        """View table partitions the view service's workers re-mirrored to Redis on their own (after the flush)."""
        return sum(
            p.log_path.read_text(errors="replace").count("re-mirrored")
            for p in self.pipeline.processes.values()
            if p.name.split(".")[0] == "views" and p.log_path.exists()
        )

    def report(self, title: str, outcomes: Counter[str]) -> str:
        """What the run did and what it came to, printed even when the test passes (the conftest's summary)."""
        guarded = self.pipeline.commit_guard_warnings()
        lines = [
            f"=== {title} ===",
            f"seed {self.seed}; {self.orders} orders, {len(self.pipeline.processes)} worker processes",
            "faults (share of the orders terminal when each struck):",
            *(f"  {s.seconds:7.1f}s  {s.terminal / self.orders:6.1%}  {s.fault.action}{s.noted}" for s in self.struck),
            f"settle time: {self.settled_s:.0f}s from the first order to all settled"
            f" (all placed after {self.placed_s:.0f}s)",
            f"terminal outcomes: {sum(outcomes.values())}: "
            + ", ".join(f"{what} {n}" for what, n in sorted(outcomes.items())),
            f"watchdog restarts: {self.supervise.watchdog_restarts}; other exits: {self.supervise.other_exits or 0}",
            f"messages caught by the commit guard (each would have been lost without it): {len(guarded)}",
            *(f"  {line}" for line in guarded[:10]),
            f"view partitions re-mirrored: {self.remirrored()}",
            f"all views dropped at the end and re-mirrored from the tables: {self.view_keys} keys in"
            f" {self.remirror_s:.2f}s",
        ]
        return "\n".join(lines)
