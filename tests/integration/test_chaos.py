"""Chaos: 2,000 orders while workers are SIGKILLed at random moments, the broker restarts and Redis loses its data.

The orders come as a steady load (``PIPELINE_TEST_CHAOS_RATE`` a second). The faults come from a seeded plan
(printed; ``PIPELINE_TEST_CHAOS_SEED`` replays one): six SIGKILLs of random processes (any service's worker or
the view service), one restart of the broker container and one ``FLUSHDB`` of the query side's Redis, each when
a random share of the orders is terminal. The test acts as compose's supervisor does (``restart:
unless-stopped``): a process that exits for any reason is started again, and the exits are counted.
Afterwards every promise of the design holds (one terminal state per order, stock conserved, no double
charge, every charge of a cancelled order refunded, Redis equal to the services' changelogs), and the views
equal a rebuild from the log.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from common.admin import admin_client, apply_topics
from common.settings import Settings
from consumers.view_log import fold_log, write_views
from schemas.topics import SERVICES
from tests.integration.promises import OrderLoad, dump_views, scratch_redis, wait_fully_projected
from tests.stack import KafkaNode, wait_until
from tests.workers import Pipeline, running_pipeline

pytestmark = pytest.mark.chaos

ORDERS = int(os.environ.get("PIPELINE_TEST_CHAOS_ORDERS", "2000"))
SEED = int(os.environ.get("PIPELINE_TEST_CHAOS_SEED", str(random.SystemRandom().randrange(1_000_000))))
RATE = float(os.environ.get("PIPELINE_TEST_CHAOS_RATE", "15"))
"""Orders placed per second: a steady load near what one worker per service keeps up with on two cores."""
KILLS = 6


@dataclass(frozen=True, order=True)
class Fault:
    share: float
    """When: once this share of the orders is terminal."""
    action: str
    """``kill:<process>``, ``broker`` (restart the broker container) or ``flush`` (Redis loses the views)."""


def chaos_plan(rng: random.Random) -> list[Fault]:
    """The seeded faults, in the order they strike."""
    processes = list(SERVICES)
    faults = [Fault(round(rng.uniform(0.05, 0.9), 2), f"kill:{rng.choice(processes)}") for _ in range(KILLS)]
    faults.append(Fault(round(rng.uniform(0.2, 0.7), 2), "broker"))
    faults.append(Fault(round(rng.uniform(0.2, 0.8), 2), "flush"))
    return sorted(faults)


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


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(
        settings,
        tmp_path_factory.mktemp("chaos"),
        PIPELINE_SAGA_TIMEOUT_S="60",
        PIPELINE_PAYMENT_LATENCY_MS="1",
        PIPELINE_WORKER_LOG_LEVEL="info",
        PIPELINE_STALL_TIMEOUT_S="20",
    ) as running:
        yield running


@pytest.mark.timeout(1800)
def test_two_thousand_orders_through_kills_a_broker_restart_and_a_redis_flush(
    pipeline: Pipeline, settings: Settings, kafka: KafkaNode
) -> None:
    store = redis.Redis.from_url(settings.redis_url)
    plan = chaos_plan(random.Random(SEED))
    print(f"\nchaos seed {SEED} (PIPELINE_TEST_CHAOS_SEED): {[(f.share, f.action) for f in plan]}")
    supervise = Supervisor(pipeline)
    load = OrderLoad(settings, orders=ORDERS, skus=8, stock_per_sku=400, customers=100, seed=SEED)
    commands = load.prepare(store, supervise)
    failures: list[BaseException] = []

    def place() -> None:
        try:
            load.place(commands, rate=RATE)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
            raise

    placing = threading.Thread(target=place, name="orders", daemon=True)
    started = time.monotonic()
    placing.start()

    for fault in plan:
        wait_until(
            lambda f=fault: supervise() or load.terminal_count(store) >= f.share * ORDERS,
            timeout=600,
            what=f"{fault.share} of the orders terminal",
            interval=1.0,
        )
        print(f"{time.monotonic() - started:6.1f}s {load.terminal_count(store)} terminal: {fault.action}")
        if fault.action == "broker":
            down = time.monotonic()
            kafka.stop_broker()
            kafka.start_broker()
            print(f"broker back after {time.monotonic() - down:.1f}s")
        elif fault.action == "flush":
            store.flushdb()
        else:
            pipeline.restart(fault.action.removeprefix("kill:"), signal.SIGKILL)

    placing.join(timeout=600)
    assert not placing.is_alive() and not failures, failures
    load.wait_settled(store, supervise, timeout=900)
    print(f"settled {time.monotonic() - started:.0f}s after the first order; exits: {dict(supervise.exits)}")
    guarded = pipeline.commit_guard_warnings()
    print(f"messages the commit guard caught (each would have been lost without it): {len(guarded)}")
    for line in guarded[:10]:
        print(f"  {line}")
    outcomes = load.check_promises(store)
    assert sum(outcomes.values()) == ORDERS

    # the views are exactly the log's: what the view service ended with equals the log folded from scratch
    wait_fully_projected(settings, supervise)
    live = dump_views(store)
    scratch = scratch_redis(settings)
    folded = fold_log(settings)
    assert not folded.incomplete
    write_views(scratch, folded.tables)
    rebuilt = dump_views(scratch)
    differ = sorted(k for k in set(live) | set(rebuilt) if live.get(k) != rebuilt.get(k))
    assert not differ, f"{len(differ)} view keys differ from a rebuild, e.g. {differ[:5]}"
    healed = pipeline.processes["views"].log_path.read_text(errors="replace").count("re-mirrored")
    print(f"view keys {len(live)}; the view service re-mirrored {healed} table partition(s) on its own")
