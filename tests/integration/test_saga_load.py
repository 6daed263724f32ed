"""1,000 concurrent orders against scarce stock.

Afterwards every promise of the design is checked against what a person could inspect: every order has one
terminal state, stock is conserved and not oversold, nobody was charged twice, every charge of a cancelled
order was refunded, and the Redis views equal the services' own tables (read back from their changelogs).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from consumers import views
from consumers.toolkit import EventConsumer
from pipeline.admin import admin_client, apply_topics
from pipeline.settings import Settings
from producers.toolkit import EventPublisher
from schemas.catalog import SchemaCatalog
from streams.payment_provider import LEDGER
from streams.topics import INVENTORY_COMMANDS, ORDER_COMMANDS, USER_EVENTS, table
from tests.stack import wait_until
from tests.workers import Pipeline, running_pipeline

ORDERS = 1000
SKUS = 4
STOCK_PER_SKU = 150  # far less than the ~2,500 units ordered: most orders must be refused
CUSTOMERS = 50
TERMINAL = {"CONFIRMED", "CANCELLED", "REJECTED"}


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


def changelog(settings: Settings, service: str, name: str) -> dict[str, Any]:
    """A service's table as its changelog holds it: the newest value of every key."""
    latest: dict[str, Any] = {}
    with EventConsumer.reader(settings) as consumer:
        for message in consumer.read_log([table(service, name).changelog]):
            key = json.loads(message.key or "null") if (message.key or "").startswith('"') else message.key
            if message.value is None:
                latest.pop(str(key), None)
            else:
                latest[str(key)] = json.loads(message.value)
        assert not consumer.unfinished
    return latest


def test_a_thousand_orders_against_scarce_stock_keep_every_promise(pipeline: Pipeline, settings: Settings) -> None:
    store = redis.Redis.from_url(settings.redis_url)
    rng = random.Random(1234)
    run = uuid.uuid4().hex[:6]
    customers = [f"load-{run}-u{i}" for i in range(CUSTOMERS)]
    skus = [f"load-{run}-sku{i}" for i in range(SKUS)]
    now = int(time.time() * 1000)

    with EventPublisher.from_settings(settings, SchemaCatalog.load()) as publisher:
        for user_id in customers:
            publisher.publish(USER_EVENTS, "UserRegistered", user_id,
                              {"user_id": user_id, "version": 1, "username": user_id,
                               "email": f"{user_id}@example.com", "profile": {}, "registered_at": now})  # fmt: skip
        for sku in skus:
            publisher.publish(
                INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": STOCK_PER_SKU, "reason": "load"}
            )
        publisher.flush()

        ordered: dict[str, dict[str, int]] = {}
        for n in range(ORDERS):
            order_id = f"load-{run}-o{n}"
            user_id = rng.choice(customers)
            lines = {sku: rng.randint(1, 3) for sku in rng.sample(skus, k=rng.randint(1, 2))}
            ordered[order_id] = lines
            token = "tok_decline" if rng.random() < 0.1 else "tok_ok"
            publisher.publish(ORDER_COMMANDS, "PlaceOrder", user_id,
                              {"order_id": order_id, "user_id": user_id,
                               "lines": [{"sku": s, "quantity": q, "unit_price_cents": 700} for s, q in lines.items()],
                               "payment": {"method": "card", "token": token}, "idempotency_key": order_id,
                               "requested_at": int(time.time() * 1000)})  # fmt: skip
        publisher.flush()

    def settled() -> bool:
        pipeline.assert_alive()
        pending = [o for o in ordered if (views.get_order(store, o) or {}).get("status") not in TERMINAL]
        levels = [views.stock(store, s) or {} for s in skus]
        return not pending and all(int(level.get("reserved", -1)) == 0 for level in levels)

    wait_until(settled, timeout=600, what="every order terminal and no stock left reserved", interval=1.0)

    orders = {o: views.get_order(store, o) or {} for o in ordered}
    outcomes = Counter(v["status"] + ":" + str(v.get("cancel_reason")) for v in orders.values())
    print(f"\noutcomes of {ORDERS} orders: {dict(outcomes)}; watchdog restarts: {pipeline.watchdog_restarts}")

    # 1. one terminal state per order: never both confirmed and cancelled
    for order_id, view in orders.items():
        terminal = [
            e["event"] for e in view["timeline"] if e["event"] in ("OrderConfirmed", "OrderCancelled", "OrderRejected")
        ]
        assert len(terminal) == 1, (order_id, terminal)
    assert outcomes.get("CONFIRMED:None", 0) > 0

    # 2. stock conserved, never oversold: sold is exactly what confirmed orders bought
    for sku in skus:
        level = views.stock(store, sku)
        assert level is not None
        available, reserved, sold = int(level["available"]), int(level["reserved"]), int(level["sold"])
        bought = sum(lines.get(sku, 0) for o, lines in ordered.items() if orders[o]["status"] == "CONFIRMED")
        print(f"{sku}: available {available} reserved {reserved} sold {sold} (confirmed orders bought {bought})")
        assert available + reserved + sold == STOCK_PER_SKU
        assert min(available, reserved, sold) >= 0
        assert sold == bought

    # 3. no double charge; every charge of an order that is not confirmed is refunded
    ledger = {k.decode(): json.loads(v) for k, v in store.hgetall(LEDGER).items() if k.decode() in ordered}
    for order_id, view in orders.items():
        entry = ledger.get(order_id)
        if view["status"] == "CONFIRMED":
            assert entry is not None and entry["status"] == "charged", (order_id, entry)
            assert entry["amount_cents"] == view["total_cents"]
        elif entry is not None:
            assert entry["status"] in ("declined", "refunded"), (order_id, entry)
    print(f"charges: {sum(e['status'] in ('charged', 'refunded') for e in ledger.values())}, "
          f"refunded: {sum(e['status'] == 'refunded' for e in ledger.values())}")  # fmt: skip

    # 4. Redis equals the services' own tables
    sagas = changelog(settings, "orders", "orders_sagas")
    for order_id, view in orders.items():
        if view["status"] == "REJECTED":
            continue  # rejected at admission: no saga was started
        assert sagas[order_id]["status"] == view["status"], order_id
    stock_table = changelog(settings, "inventory", "inventory_stock")
    for sku in skus:
        level = views.stock(store, sku) or {}
        state = stock_table[sku]
        assert (state["available"], state["reserved"], state["sold"]) == (
            int(level["available"]), int(level["reserved"]), int(level["sold"]),
        )  # fmt: skip
