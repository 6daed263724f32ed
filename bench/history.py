"""Stage ``history``: what one customer's and one SKU's past costs a step, without a broker.

Admission and stock run as their agents run them, minus Kafka: the store loads the state, the pure step decides,
the store writes back what changed. The tables keep every value as the JSON bytes Faust's changelog carries
(Faust's own ``json`` codec), so each write pays its serialization and each read its parsing, as with a RocksDB
store. One customer places ``orders`` orders and one SKU takes ``additions`` restocks; then, taking turns so
that drift hits both alike, a new customer's first order is timed against the long-standing customer's next
one, and a reservation of a fresh SKU against one of the long-stocked SKU (and likewise one more AddStock).

Figures (medians over ``samples`` turns, in µs): ``place_order_us``, ``reserve_stock_us``, ``add_stock_us``,
each ``{"new": …, "long": …}``, their ``*_ratio`` (long ÷ new), and ``largest_value_bytes``: the largest value
any write put in any table during the whole run, with ``largest_value_key`` (where) and the largest per table.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from faust.serializers import codecs

from streams.domain import admission, stock
from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    AddStock,
    Message,
    OrderLine,
    PaymentDetails,
    PlaceOrder,
    ReserveStock,
    UserRegistered,
)
from streams.state import StateStore
from streams.stores import CustomerStore, StockStore

QUICK_ENTRIES = 1_000
FULL_ENTRIES = 10_000
SAMPLES = 300
T0 = datetime(2026, 1, 1, tzinfo=UTC)
_JSON = codecs.get_codec("json")


@dataclass
class JsonTable:
    """A table that holds each value as the JSON bytes its changelog record carries, noting the largest."""

    name: str
    data: dict[str, bytes] = field(default_factory=dict)
    largest: tuple[int, str] = (0, "")

    def get(self, key: str) -> Any:
        raw = self.data.get(key)
        return None if raw is None else _JSON.loads(raw)

    def __setitem__(self, key: str, value: Any) -> None:
        raw = _JSON.dumps(value)
        self.data[key] = raw
        if len(raw) > self.largest[0]:
            self.largest = (len(raw), key)

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data


def customer_store(table: JsonTable) -> StateStore:
    """Admission's store, as the orders worker wires it."""
    return CustomerStore(table)


@dataclass
class Step:
    """One agent's step over its store: load, decide, save what changed (as ``streams.runner`` does)."""

    store: StateStore
    decide: Callable[[Any, Any, StepContext], Decision[Any]]
    clock: Iterator[int] = field(default_factory=lambda: iter(range(1 << 62)))

    def run(self, message: Message) -> Decision[Any]:
        tick = next(self.clock)
        ctx = StepContext(now=T0 + timedelta(milliseconds=tick), message_id=f"in-{tick}")
        key = str(message.key)
        state = self.store.load(key, message)
        self.store.take_repaired()
        decision = self.decide(state, message, ctx)
        if decision.state != state:
            self.store.save(key, state, decision.state)
        return decision

    def timed(self, message: Message) -> float:
        """One run's wall time in µs."""
        start = time.perf_counter_ns()
        self.run(message)
        return (time.perf_counter_ns() - start) / 1000


class Ids:
    """Order ids, keys and SKUs shaped like the gateway's (UUIDs), the same in every run."""

    def __init__(self, seed: int = 16) -> None:
        self._random = random.Random(seed)

    def __call__(self) -> str:
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))


def _order(ids: Ids, user_id: str) -> PlaceOrder:
    """A two-line order with an Idempotency-Key of its own (the costlier path: two entries per answer)."""
    return PlaceOrder(
        order_id=ids(),
        user_id=user_id,
        lines=(
            OrderLine(sku="SKU-7f3a9c01d2", quantity=2, unit_price_cents=1250),
            OrderLine(sku="SKU-1b2c3d4e5f", quantity=1, unit_price_cents=499),
        ),
        payment=PaymentDetails(method="card", token="tok_ok"),
        idempotency_key=ids(),
        requested_at=T0,
    )


def _registered(user_id: str) -> UserRegistered:
    email = f"{user_id}@example.com"
    return UserRegistered(user_id=user_id, version=1, username=user_id, email=email, registered_at=T0)


def _pair(turn: int, step: Step, new: Message, long: Message) -> tuple[float, float]:
    """Both timings of one turn, the new key's and the long-standing one's, taken in turns first."""
    if turn % 2:
        long_us = step.timed(long)
        return step.timed(new), long_us
    new_us = step.timed(new)
    return new_us, step.timed(long)


def _median_pair(pairs: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "new": round(statistics.median(new for new, _ in pairs), 2),
        "long": round(statistics.median(long for _, long in pairs), 2),
    }


def _ratio(medians: dict[str, float]) -> float:
    return round(medians["long"] / medians["new"], 3)


def run_history(entries: int = FULL_ENTRIES, samples: int | None = None) -> dict[str, Any]:
    """Fill one customer with ``entries`` orders and one SKU with ``entries`` additions, then time the steps
    (``samples`` turns, :data:`SAMPLES` by default)."""
    samples = SAMPLES if samples is None else samples
    ids = Ids()
    customers = JsonTable("orders_customers")
    levels, holds = JsonTable("inventory_stock"), JsonTable("inventory_holds")
    admit = Step(customer_store(customers), admission.decide)
    keep = Step(StockStore(levels, holds), stock.decide)

    began = time.perf_counter()
    admit.run(_registered("u-long"))
    for _ in range(entries):
        admit.run(_order(ids, "u-long"))
    filled_orders = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(entries):
        keep.run(AddStock(sku="sku-long", quantity=1_000_000, reason="restock"))
    filled_additions = time.perf_counter() - began

    place: list[tuple[float, float]] = []
    reserve: list[tuple[float, float]] = []
    add: list[tuple[float, float]] = []
    for turn in range(samples):
        new_user, new_sku = f"u-new-{turn}", f"sku-new-{turn}"
        admit.run(_registered(new_user))
        place.append(_pair(turn, admit, _order(ids, new_user), _order(ids, "u-long")))
        add.append(_pair(turn, keep, AddStock(sku=new_sku, quantity=10, reason="restock"),
                         AddStock(sku="sku-long", quantity=10, reason="restock")))  # fmt: skip
        reserve.append(_pair(turn, keep, ReserveStock(order_id=ids(), sku=new_sku, quantity=1, requested_at=T0),
                             ReserveStock(order_id=ids(), sku="sku-long", quantity=1, requested_at=T0)))  # fmt: skip

    tables = (customers, levels, holds)
    size, where = max((t.largest[0], f"{t.name} {t.largest[1]}") for t in tables)
    figures: dict[str, Any] = {"orders": entries, "additions": entries, "samples": samples}
    for name, pairs in (("place_order", place), ("reserve_stock", reserve), ("add_stock", add)):
        medians = _median_pair(pairs)
        figures[f"{name}_us"] = medians
        figures[f"{name}_ratio"] = _ratio(medians)
    figures.update(
        largest_value_bytes=size,
        largest_value_key=where,
        largest_by_table={t.name: t.largest[0] for t in tables},
        entries_by_table={t.name: len(t.data) for t in tables},
        fill_s={"orders": round(filled_orders, 2), "additions": round(filled_additions, 2)},
    )
    return figures
