"""State stores that split one step's state over several table entries, so no write grows with history.

A SKU serves every order that buys it. Kept as one entry, its record (levels plus one hold per order) would
grow with every order and be rewritten whole on every reservation: megabytes per write after a few thousand
orders, and past Kafka's record size limit after more. :class:`StockStore` keeps the levels in one entry and
each order's hold in its own entry ``<sku>/<order id>``; a step loads the levels and only the hold of the
order its command names, and writes back only what changed. The pure step sees the same ``Stock`` either way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from streams.domain.messages import from_jsonable, to_jsonable
from streams.domain.stock import OrderHold, Stock
from streams.runtime import StateStore, StateTable


def hold_key(sku: str, order_id: str) -> str:
    return f"{sku}/{order_id}"


class StockStore(StateStore):
    """A SKU's levels under its SKU, each order's hold under ``<sku>/<order id>`` (both in this service)."""

    def __init__(self, levels: StateTable, holds: StateTable) -> None:
        self.levels = levels
        self.holds = holds

    def load(self, key: str, message: Any) -> Stock | None:
        stored = self.levels.get(key)
        order_id = getattr(message, "order_id", None)
        hold = self.holds.get(hold_key(key, order_id)) if order_id else None
        if stored is None and hold is None:
            return None
        stock = Stock.from_json(stored) if stored is not None else Stock(sku=key)
        orders = {order_id: from_jsonable(OrderHold, hold)} if order_id and hold is not None else {}
        return replace(stock, orders=orders)

    def save(self, key: str, before: Any, after: Any) -> None:
        if after is None:
            raise ValueError(f"a SKU's stock is never forgotten ({key})")
        head = replace(after, orders={})
        if before is None or replace(before, orders={}) != head:
            self.levels[key] = head.to_json()
        earlier = before.orders if before is not None else {}
        for order_id, hold in after.orders.items():
            if earlier.get(order_id) != hold:
                self.holds[hold_key(key, order_id)] = to_jsonable(hold)
