"""The payment provider goes down: the circuit breaker opens, charges wait visibly as PAYMENT_PENDING and are
retried when the provider is back, or cancelled (nothing charged) when the saga's deadline comes first."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from consumers import views
from pipeline.admin import admin_client, apply_topics
from pipeline.settings import Settings
from producers.toolkit import EventPublisher
from schemas.catalog import SchemaCatalog
from streams.payment_provider import LEDGER
from streams.topics import INVENTORY_COMMANDS, ORDER_COMMANDS
from tests.seeding import register_users
from tests.stack import wait_until
from tests.workers import Pipeline, run_cli, running_pipeline

SAGA_TIMEOUT_S = 15


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(
        settings,
        tmp_path_factory.mktemp("resilience"),
        PIPELINE_SAGA_TIMEOUT_S=str(SAGA_TIMEOUT_S),
        PIPELINE_BREAKER_FAILURE_THRESHOLD="2",
        PIPELINE_BREAKER_RESET_S="1",
        PIPELINE_PAYMENT_RETRY_INTERVAL_S="0.5",
        PIPELINE_PROVIDER_RETRY_BASE_S="0.02",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def publisher(settings: Settings) -> Iterator[EventPublisher]:
    with EventPublisher.from_settings(settings, SchemaCatalog.load()) as pub:
        yield pub


@pytest.fixture
def store(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def outage(cli_env: dict[str, str], state: str) -> None:
    switched = run_cli(cli_env, "provider", "outage", state)
    assert switched.returncode == 0, switched.stderr


def order_for_a_new_customer(pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis) -> tuple[str, str]:
    user, sku, order_id = uid("u"), uid("sku"), uid("o")
    register_users(publisher, store, [user], alive=pipeline.assert_alive)
    publisher.publish(INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": 5, "reason": "test"})
    publisher.flush()
    wait_until(lambda: views.stock(store, sku) is not None, timeout=60, what=f"stock of {sku}")
    publisher.publish(ORDER_COMMANDS, "PlaceOrder", user,
                      {"order_id": order_id, "user_id": user,
                       "lines": [{"sku": sku, "quantity": 2, "unit_price_cents": 900}],
                       "payment": {"method": "card", "token": "tok_ok"}, "idempotency_key": order_id,
                       "requested_at": int(time.time() * 1000)})  # fmt: skip
    publisher.flush()
    return order_id, sku


def wait_status(
    pipeline: Pipeline, store: redis.Redis, order_id: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        pipeline.assert_alive()
        seen["view"] = views.get_order(store, order_id) or {}
        return seen["view"].get("status") == status

    wait_until(check, timeout=timeout, what=lambda: f"{order_id} {status} (now {seen.get('view', {}).get('status')})")
    return seen["view"]


def test_charges_wait_while_the_provider_is_down_and_go_through_once_it_is_back(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, cli_env: dict[str, str]
) -> None:
    outage(cli_env, "on")
    try:
        order_id, sku = order_for_a_new_customer(pipeline, publisher, store)
        pending = wait_status(pipeline, store, order_id, "PAYMENT_PENDING")
        assert store.hget(LEDGER, order_id) is None, "nothing charged while the provider is down"
        assert [e["event"] for e in pending["timeline"]].count("PaymentPending") == 1
    finally:
        outage(cli_env, "off")
    confirmed = wait_status(pipeline, store, order_id, "CONFIRMED")
    assert json.loads(store.hget(LEDGER, order_id) or b"{}")["status"] == "charged"  # type: ignore[arg-type]
    assert confirmed["charged_cents"] == 1800, "charged exactly once"
    wait_until(lambda: (views.stock(store, sku) or {}).get("sold") == 2, timeout=30, what="sold")


def test_a_charge_still_waiting_at_the_deadline_is_cancelled_with_nothing_charged(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, cli_env: dict[str, str]
) -> None:
    outage(cli_env, "on")
    try:
        order_id, sku = order_for_a_new_customer(pipeline, publisher, store)
        wait_status(pipeline, store, order_id, "PAYMENT_PENDING")
        cancelled = wait_status(pipeline, store, order_id, "CANCELLED", timeout=SAGA_TIMEOUT_S + 60)
    finally:
        outage(cli_env, "off")
    assert cancelled["cancel_reason"] == "deadline_exceeded"
    assert store.hget(LEDGER, order_id) is None and cancelled["charged_cents"] == 0
    wait_until(lambda: (views.stock(store, sku) or {}).get("available") == 5, timeout=30,
               what="the reservation released")  # fmt: skip
