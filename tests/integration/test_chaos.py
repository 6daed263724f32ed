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
import time
from collections.abc import Iterator

import pytest

from common.settings import Settings
from schemas.topics import SERVICES
from tests.integration.chaos import ChaosRun, Fault, chaos_pipeline, kill_faults
from tests.integration.promises import OrderLoad
from tests.stack import KafkaNode
from tests.workers import Pipeline

pytestmark = pytest.mark.chaos

ORDERS = int(os.environ.get("PIPELINE_TEST_CHAOS_ORDERS", "2000"))
SEED = int(os.environ.get("PIPELINE_TEST_CHAOS_SEED", str(random.SystemRandom().randrange(1_000_000))))
RATE = float(os.environ.get("PIPELINE_TEST_CHAOS_RATE", "15"))
"""Orders placed per second: a steady load near what one worker per service keeps up with on two cores."""
KILLS = 6


def chaos_plan(rng: random.Random) -> list[Fault]:
    """The seeded faults, in the order they strike: ``broker`` restarts the broker container."""
    faults = kill_faults(rng, list(SERVICES), KILLS)
    faults.append(Fault(round(rng.uniform(0.2, 0.7), 2), "broker"))
    faults.append(Fault(round(rng.uniform(0.2, 0.8), 2), "flush"))
    return sorted(faults)


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with chaos_pipeline(settings, tmp_path_factory.mktemp("chaos")) as running:
        yield running


@pytest.mark.timeout(1800)
def test_two_thousand_orders_through_kills_a_broker_restart_and_a_redis_flush(
    pipeline: Pipeline, settings: Settings, kafka: KafkaNode
) -> None:
    def restart_broker(action: str) -> str:
        assert action == "broker", action
        down = time.monotonic()
        kafka.stop_broker()
        kafka.start_broker()
        return f"stopped and back after {time.monotonic() - down:.1f}s"

    load = OrderLoad(settings, orders=ORDERS, skus=8, stock_per_sku=400, customers=100, seed=SEED)
    run = ChaosRun(pipeline, settings, load, SEED, restart_broker)
    run.run(chaos_plan(random.Random(SEED)), rate=RATE)
    outcomes = run.check()
    print(run.report("chaos (PIPELINE_TEST_CHAOS_SEED replays it)", outcomes))
