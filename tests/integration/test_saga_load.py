"""1,000 concurrent orders against scarce stock: every promise of the design holds afterwards (see promises)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from common.admin import admin_client, apply_topics
from common.settings import Settings
from tests.integration.promises import OrderLoad
from tests.workers import Pipeline, running_pipeline


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(
        settings,
        tmp_path_factory.mktemp("load"),
        PIPELINE_SAGA_TIMEOUT_S="600",
        PIPELINE_PAYMENT_LATENCY_MS="1",
        PIPELINE_WORKER_LOG_LEVEL="info",
        PIPELINE_STALL_TIMEOUT_S="20",
    ) as running:
        yield running


def test_a_thousand_orders_against_scarce_stock_keep_every_promise(pipeline: Pipeline, settings: Settings) -> None:
    store = redis.Redis.from_url(settings.redis_url)
    load = OrderLoad(settings, orders=1000)  # ~2,500 units ordered against 600 in stock: most are refused
    load.publish(store, pipeline.assert_alive)
    load.wait_settled(store, pipeline.assert_alive)
    load.check_promises(store)
    print(f"watchdog restarts: {pipeline.watchdog_restarts}")
