"""A load of orders against scarce stock, and the design's promises checked on what a person can inspect.

Shared by the load test and the crash test: publish customers, stock and orders; wait until every order is
terminal and nothing is left reserved; then check, from the Redis views, the payment provider's ledger and
the services' own changelogs, that every promise holds.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from consumers import views
from consumers.toolkit import EventConsumer
from pipeline.settings import Settings
from producers.toolkit import EventPublisher
from schemas.catalog import SchemaCatalog
from streams.payment_provider import LEDGER
from streams.topics import INVENTORY_COMMANDS, ORDER_COMMANDS, table
from tests.seeding import register_users
from tests.stack import wait_until

TERMINAL = {"CONFIRMED", "CANCELLED", "REJECTED"}


@dataclass
class OrderLoad:
    """What a load published: its customers, SKUs and each order's lines."""

    settings: Settings
    orders: int
    skus: int = 4
    stock_per_sku: int = 150
    customers: int = 50
    decline_rate: float = 0.1
    seed: int = 1234
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    ordered: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def customer_ids(self) -> list[str]:
        return [f"load-{self.run}-u{i}" for i in range(self.customers)]

    @property
    def sku_ids(self) -> list[str]:
        return [f"load-{self.run}-sku{i}" for i in range(self.skus)]

    def publish(self, store: redis.Redis, alive: Callable[[], None]) -> None:
        """Register the customers, stock every SKU, then place every order (1–2 SKUs, 1–3 units each)."""
        rng = random.Random(self.seed)
        with EventPublisher.from_settings(self.settings, SchemaCatalog.load()) as publisher:
            register_users(publisher, store, self.customer_ids, alive=alive)
            for sku in self.sku_ids:
                publisher.publish(
                    INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": self.stock_per_sku, "reason": "load"}
                )
            publisher.flush()
            for n in range(self.orders):
                order_id = f"load-{self.run}-o{n}"
                user_id = rng.choice(self.customer_ids)
                lines = {sku: rng.randint(1, 3) for sku in rng.sample(self.sku_ids, k=rng.randint(1, 2))}
                self.ordered[order_id] = lines
                token = "tok_decline" if rng.random() < self.decline_rate else "tok_ok"
                publisher.publish(ORDER_COMMANDS, "PlaceOrder", user_id,
                                  {"order_id": order_id, "user_id": user_id,
                                   "lines": [{"sku": s, "quantity": q, "unit_price_cents": 700}
                                             for s, q in lines.items()],
                                   "payment": {"method": "card", "token": token}, "idempotency_key": order_id,
                                   "requested_at": int(time.time() * 1000)})  # fmt: skip
            publisher.flush()

    def terminal_count(self, store: redis.Redis) -> int:
        return sum((views.get_order(store, o) or {}).get("status") in TERMINAL for o in self.ordered)

    def wait_settled(self, store: redis.Redis, alive: Callable[[], None], timeout: float = 600) -> None:
        """Wait until every order is terminal and no SKU holds reserved units (``alive`` raises if a process died)."""

        def settled() -> bool:
            alive()
            if self.terminal_count(store) < len(self.ordered):
                return False
            return all(int((views.stock(store, s) or {}).get("reserved", -1)) == 0 for s in self.sku_ids)

        wait_until(settled, timeout=timeout, what="every order terminal and no stock left reserved", interval=1.0)

    def check_promises(self, store: redis.Redis) -> Counter[str]:
        """Assert every promise; return the outcomes (status:reason) for the test's report."""
        orders = {o: views.get_order(store, o) or {} for o in self.ordered}
        outcomes = Counter(v["status"] + ":" + str(v.get("cancel_reason")) for v in orders.values())
        print(f"\noutcomes of {len(orders)} orders: {dict(outcomes)}")

        # 1. one terminal state per order: never both confirmed and cancelled
        for order_id, view in orders.items():
            terminal = [
                e["event"]
                for e in view["timeline"]
                if e["event"] in ("OrderConfirmed", "OrderCancelled", "OrderRejected")
            ]
            assert len(terminal) == 1, (order_id, terminal)
        assert outcomes.get("CONFIRMED:None", 0) > 0

        # 2. stock conserved, never oversold: sold is exactly what confirmed orders bought
        for sku in self.sku_ids:
            level = views.stock(store, sku)
            assert level is not None
            available, reserved, sold = int(level["available"]), int(level["reserved"]), int(level["sold"])
            bought = sum(lines.get(sku, 0) for o, lines in self.ordered.items() if orders[o]["status"] == "CONFIRMED")
            print(f"{sku}: available {available} reserved {reserved} sold {sold} (confirmed orders bought {bought})")
            assert available + reserved + sold == self.stock_per_sku
            assert min(available, reserved, sold) >= 0
            assert sold == bought

        # 3. no double charge; every charge of an order that is not confirmed is refunded
        ledger = {k.decode(): json.loads(v) for k, v in store.hgetall(LEDGER).items() if k.decode() in self.ordered}
        for order_id, view in orders.items():
            entry = ledger.get(order_id)
            if view["status"] == "CONFIRMED":
                assert entry is not None and entry["status"] == "charged", (order_id, entry)
                assert entry["amount_cents"] == view["total_cents"]
            elif entry is not None:
                assert entry["status"] in ("declined", "refunded"), (order_id, entry)
        print(f"charges: {sum(e['status'] in ('charged', 'refunded') for e in ledger.values())}, "
              f"refunded: {sum(e['status'] == 'refunded' for e in ledger.values())}")  # fmt: skip

        # 4. Redis equals the services' own tables, read back from their changelogs
        sagas = changelog(self.settings, "orders", "orders_sagas")
        for order_id, view in orders.items():
            if view["status"] == "REJECTED":
                continue  # rejected at admission: no saga was started
            assert sagas[order_id]["status"] == view["status"], order_id
        stock_table = changelog(self.settings, "inventory", "inventory_stock")
        for sku in self.sku_ids:
            level = views.stock(store, sku) or {}
            state = stock_table[sku]
            assert (state["available"], state["reserved"], state["sold"]) == (
                int(level["available"]), int(level["reserved"]), int(level["sold"]),
            )  # fmt: skip
        return outcomes


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
