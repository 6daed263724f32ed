"""Workers killed with SIGKILL in the middle of a load and started again: every promise still holds.

A quarter of the way through, the inventory worker is killed (its two tables, the per-order reservations and
the per-SKU stock, are rebuilt from their changelogs by the new process); half-way, the orders and payments
workers together. Afterwards the same checks as the load test: one terminal state per order, stock conserved
and nothing left reserved, no double charge, every charge of a cancelled order refunded, Redis equal to the
services' changelogs. If the pipeline never settles, the wait prints, for every SKU left reserved, the holds
behind it and everything said about their orders (``OrderLoad.explain_leaks``). ``PIPELINE_TEST_CRASH_PLAN``
changes what is killed when, e.g. ``"0.2:inventory 0.3:inventory 0.5:orders+payments"`` (a second inventory
kill while the first restart is still joining), to hunt crash bugs with more pressure.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import redis

from common.admin import admin_client, apply_topics
from common.settings import Settings
from producers.toolkit import EventPublisher
from schemas.topics import INVENTORY_COMMANDS
from streams.views import read as views
from tests.integration.promises import OrderLoad
from tests.seeding import uid
from tests.stack import wait_until
from tests.workers import Pipeline, running_pipeline

ORDERS = 400
PLAN = os.environ.get("PIPELINE_TEST_CRASH_PLAN", "0.25:inventory 0.5:orders+payments")
"""When to kill what: ``share:service+service`` steps (a share of the orders terminal, then SIGKILL and restart)."""


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(
        settings,
        tmp_path_factory.mktemp("crash"),
        PIPELINE_SAGA_TIMEOUT_S="20",
        PIPELINE_PAYMENT_LATENCY_MS="1",
        PIPELINE_WORKER_LOG_LEVEL="info",
        PIPELINE_STALL_TIMEOUT_S="20",
    ) as running:
        yield running


@pytest.mark.timeout(1500)
def test_workers_killed_mid_load_lose_nothing(pipeline: Pipeline, settings: Settings) -> None:
    store = redis.Redis.from_url(settings.redis_url)
    load = OrderLoad(settings, orders=ORDERS, seed=99)
    load.publish(store, pipeline.assert_alive)

    def reached(share: float) -> bool:
        pipeline.assert_alive()
        return load.terminal_count(store) >= share * ORDERS

    for step in PLAN.split():
        share, services = step.split(":")
        wait_until(lambda s=float(share): reached(s), timeout=300, what=f"{share} of the orders terminal", interval=0.2)
        for service in services.split("+"):
            print(f"killing {service} at {share} of the orders terminal")
            pipeline.restart(service, signal.SIGKILL)

    # orders end within the 20 s saga timeout once their workers run; a watchdog restart (20 s stall + rejoin,
    # possibly twice) comes on top; the test may take 25 min in all, so on a slow machine the evidence still prints
    load.wait_settled(store, pipeline.assert_alive, timeout=400)
    load.check_promises(store)
    print(f"watchdog restarts: {pipeline.watchdog_restarts}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_commands_sent_while_a_worker_is_down_are_all_handled_when_it_starts_again(
    pipeline: Pipeline, settings: Settings, publisher: EventPublisher, sig: signal.Signals
) -> None:
    """Messages already waiting when a worker starts are its first fetch. Faust once fetched them for a set of
    active partitions that recovery had just emptied, dropped them as not active, and never read them again: a
    restarted worker lost (or, with the commit guard, stalled on) the commands sent while it was down."""
    store = redis.Redis.from_url(settings.redis_url)
    restarts = pipeline.watchdog_restarts
    worker = pipeline.processes["inventory"]
    for _ in range(3):
        worker.kill(sig)
        skus = [uid("sku") for _ in range(24)]
        for sku in skus:
            publisher.publish(INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": 3, "reason": "test"})
        publisher.flush()
        worker.start()
        wait_until(
            lambda skus=skus: pipeline.assert_alive() or all(views.stock(store, s) is not None for s in skus),
            timeout=90,
            what=lambda skus=skus: f"stock of {[s for s in skus if views.stock(store, s) is None]}",
        )
    assert pipeline.watchdog_restarts == restarts, "a worker stalled on the messages waiting at its start"
