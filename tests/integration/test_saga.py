"""The order saga end to end: real workers (one process per service), real Kafka, real Redis.

Orders go in as commands on ``orders.commands.v1``, exactly as a person would publish them; the tests watch
the outcome where a person would: the Redis views, the provider's ledger and the topics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from common.admin import admin_client, apply_topics
from common.settings import Settings
from producers.toolkit import EventPublisher
from schemas.topics import INVENTORY_COMMANDS, ORDER_COMMANDS, USER_COMMANDS
from streams.domain.orders import TERMINAL_STATUSES
from streams.payment_provider import LEDGER
from streams.views import read as views
from tests.seeding import register_users, uid
from tests.stack import wait_until
from tests.workers import Pipeline, running_pipeline

SAGA_TIMEOUT_S = 8
MAX_REFUND_ATTEMPTS = 3


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    workdir = tmp_path_factory.mktemp("saga")
    with running_pipeline(
        settings,
        workdir,
        PIPELINE_SAGA_TIMEOUT_S=str(SAGA_TIMEOUT_S),
        PIPELINE_ADMISSION_HOLD_S="2",
        PIPELINE_PAYMENT_SLOW_S=str(SAGA_TIMEOUT_S + 4),
        PIPELINE_PAYMENT_LATENCY_MS="2",
        PIPELINE_MAX_REFUND_ATTEMPTS=str(MAX_REFUND_ATTEMPTS),
        PIPELINE_REFUND_BACKOFF_BASE_S="0.05",
        PIPELINE_REFUND_BACKOFF_CAP_S="0.2",
    ) as running:
        yield running


def now_ms() -> int:
    return int(time.time() * 1000)


def add_stock(publisher: EventPublisher, sku: str, quantity: int) -> None:
    publisher.publish(INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": quantity, "reason": "test"})
    publisher.flush()


def place_order(
    publisher: EventPublisher,
    user_id: str,
    lines: list[tuple[str, int]],
    *,
    token: str = "tok_ok",
    order_id: str = "",
    user_version: int | None = None,
) -> str:
    order_id = order_id or uid("o")
    publisher.publish(
        ORDER_COMMANDS, "PlaceOrder", user_id,
        {"order_id": order_id, "user_id": user_id,
         "lines": [{"sku": sku, "quantity": q, "unit_price_cents": 1000} for sku, q in lines],
         "payment": {"method": "card", "token": token}, "idempotency_key": order_id, "requested_at": now_ms(),
         "user_version": user_version},
    )  # fmt: skip
    publisher.flush()
    return order_id


def wait_for_order(
    pipeline: Pipeline, store: redis.Redis, order_id: str, *, until: Any = None, timeout: float = 60
) -> dict[str, Any]:
    """Poll the order's Redis view until ``until(view)`` holds (default: a terminal status)."""
    seen: dict[str, Any] = {}

    def check() -> bool:
        pipeline.assert_alive()
        view = views.get_order(store, order_id)
        if view is None:
            return False
        seen["view"] = view
        return bool(until(view)) if until else view.get("status") in TERMINAL_STATUSES

    wait_until(check, timeout=timeout, what=lambda: f"order {order_id} to settle (last view: {seen.get('view')})")
    return seen["view"]


def events_of(view: dict[str, Any]) -> list[str]:
    return [entry["event"] for entry in view["timeline"]]


def ledger_entry(settings: Settings, order_id: str) -> dict[str, Any] | None:
    raw = redis.Redis.from_url(settings.provider_store).hget(LEDGER, order_id)
    return None if raw is None else json.loads(raw)


@pytest.fixture
def customer(publisher: EventPublisher, pipeline: Pipeline, store: redis.Redis) -> str:
    user_id = uid("u")
    register_users(publisher, store, [user_id], alive=pipeline.assert_alive)
    return user_id


def wait_for_stock(pipeline: Pipeline, store: redis.Redis, sku: str, available: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        pipeline.assert_alive()
        seen["view"] = views.stock(store, sku)
        return seen["view"] is not None and int(seen["view"]["available"]) == available

    wait_until(check, timeout=60, what=lambda: f"stock of {sku} at {available} (last: {seen.get('view')})")
    return seen["view"]


def test_happy_order_is_confirmed_charged_and_notified(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku_a, sku_b = uid("sku"), uid("sku")
    add_stock(publisher, sku_a, 5)
    add_stock(publisher, sku_b, 5)
    wait_for_stock(pipeline, store, sku_b, 5)

    order_id = place_order(publisher, customer, [(sku_a, 2), (sku_b, 1)])
    view = wait_for_order(pipeline, store, order_id, until=lambda v: "InventoryCommitted" in events_of(v))

    assert view["status"] == "CONFIRMED"
    assert view["total_cents"] == 3000
    for event in ("OrderPlaced", "InventoryReserved", "PaymentSucceeded", "OrderConfirmed", "InventoryCommitted"):
        assert event in events_of(view), events_of(view)
    a = wait_for_stock(pipeline, store, sku_a, 3)
    assert (int(a["reserved"]), int(a["sold"])) == (0, 2)
    entry = ledger_entry(pipeline.settings, order_id)
    assert entry is not None and entry["status"] == "charged" and entry["amount_cents"] == 3000

    wait_until(lambda: bool(views.notifications(store, customer)), timeout=30, what="a notification")
    notice = views.notifications(store, customer)[0]
    assert notice["order_id"] == order_id and notice["kind"] == "order_confirmed"
    assert [o["order_id"] for o in views.recent_orders(store, customer)] == [order_id]


def test_out_of_stock_cancels_and_leaves_stock_untouched(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    plenty, scarce = uid("sku"), uid("sku")
    add_stock(publisher, plenty, 10)
    add_stock(publisher, scarce, 1)
    wait_for_stock(pipeline, store, scarce, 1)

    order_id = place_order(publisher, customer, [(plenty, 3), (scarce, 2)])
    view = wait_for_order(
        pipeline,
        store,
        order_id,
        until=lambda v: (
            "InventoryReleased" in events_of(v)
            or v["status"] == "CANCELLED"
            and "InventoryReservationFailed" in events_of(v)
        ),
    )

    assert view["status"] == "CANCELLED"
    assert view["cancel_reason"] == "out_of_stock"
    # all or nothing: the line that could be reserved was released again
    wait_for_stock(pipeline, store, plenty, 10)
    assert int(views.stock(store, scarce)["available"]) == 1  # type: ignore[index]
    assert ledger_entry(pipeline.settings, order_id) is None  # never charged


def test_payment_failure_is_compensated(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 4)
    wait_for_stock(pipeline, store, sku, 4)

    order_id = place_order(publisher, customer, [(sku, 3)], token="tok_decline")
    view = wait_for_order(pipeline, store, order_id, until=lambda v: "InventoryReleased" in events_of(v))

    assert view["status"] == "CANCELLED"
    assert view["cancel_reason"] == "payment_failed"
    assert events_of(view).index("PaymentFailed") < events_of(view).index("OrderCancelled")
    stock = wait_for_stock(pipeline, store, sku, 4)
    assert (int(stock["reserved"]), int(stock["sold"])) == (0, 0)
    entry = ledger_entry(pipeline.settings, order_id)
    assert entry is not None and entry["status"] == "declined"


def test_deadline_cancels_and_a_late_payment_is_refunded(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 2)
    wait_for_stock(pipeline, store, sku, 2)

    order_id = place_order(publisher, customer, [(sku, 1)], token="tok_slow")
    view = wait_for_order(pipeline, store, order_id, timeout=SAGA_TIMEOUT_S + 60,
                          until=lambda v: "PaymentRefunded" in events_of(v))  # fmt: skip

    assert view["status"] == "CANCELLED"
    assert view["cancel_reason"] == "deadline_exceeded"
    timeline = events_of(view)
    assert timeline.index("OrderCancelled") < timeline.index("PaymentSucceeded") < timeline.index("PaymentRefunded")
    assert "OrderConfirmed" not in timeline
    entry = ledger_entry(pipeline.settings, order_id)
    assert entry is not None and entry["status"] == "refunded"
    wait_for_stock(pipeline, store, sku, 2)


def test_a_duplicate_command_yields_one_order(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 10)
    wait_for_stock(pipeline, store, sku, 10)

    order_id = place_order(publisher, customer, [(sku, 1)])
    place_order(publisher, customer, [(sku, 1)], order_id=order_id)
    view = wait_for_order(pipeline, store, order_id, until=lambda v: "InventoryCommitted" in events_of(v))

    assert view["status"] == "CONFIRMED"
    assert events_of(view).count("OrderPlaced") == 1
    stock = wait_for_stock(pipeline, store, sku, 9)
    assert int(stock["sold"]) == 1
    assert ledger_entry(pipeline.settings, order_id)["amount_cents"] == 1000  # type: ignore[index]


def test_orders_of_unknown_or_inactive_users_are_rejected(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 10)
    stranger = place_order(publisher, uid("nobody"), [(sku, 1)])
    view = wait_for_order(pipeline, store, stranger)
    assert view["status"] == "REJECTED"

    publisher.publish(USER_COMMANDS, "DeactivateUser", customer, {"user_id": customer, "reason": "test"})
    publisher.flush()
    wait_until(lambda: views.get_user(store, customer)["active"] is False, timeout=60, what="deactivated")  # type: ignore[index]
    seen = views.get_user(store, customer)["version"]  # type: ignore[index]
    inactive = place_order(publisher, customer, [(sku, 1)], user_version=seen)
    view = wait_for_order(pipeline, store, inactive)
    assert view["status"] == "REJECTED"
    assert "inactive" in json.dumps(view["timeline"])


def test_a_refund_that_keeps_failing_parks_the_saga_for_attention(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 2)
    wait_for_stock(pipeline, store, sku, 2)

    # the charge answers after the deadline, so the order is cancelled; its refund then fails every time
    order_id = place_order(publisher, customer, [(sku, 1)], token="tok_slow_refund_fails")
    view = wait_for_order(pipeline, store, order_id, timeout=SAGA_TIMEOUT_S + 90,
                          until=lambda v: v["status"] == "COMPENSATION_FAILED")  # fmt: skip

    timeline = events_of(view)
    assert timeline.index("OrderCancelled") < timeline.index("PaymentSucceeded") < timeline.index("PaymentRefundFailed")
    assert "OrderCompensationFailed" in timeline
    attention = {entry["order_id"]: entry for entry in views.needs_attention(store)}
    assert order_id in attention
    assert attention[order_id]["attempts"] == MAX_REFUND_ATTEMPTS
    assert attention[order_id]["amount_cents"] == 1000
    entry = ledger_entry(pipeline.settings, order_id)
    assert entry is not None and entry["status"] == "charged"  # the money is still out: a person must act
    wait_for_stock(pipeline, store, sku, 2)  # the stock side of the compensation did complete
