"""State stores that split one step's state over several table entries, so no write grows with history.

A SKU serves every order that buys it. Kept as one entry, its record (levels plus one hold per order) would
grow with every order and be rewritten whole on every reservation: megabytes per write after a few thousand
orders, and past Kafka's record size limit after more. :class:`StockStore` keeps the levels in one entry and
each order's hold in its own entry ``<sku>/<order id>``; a step loads the levels and only the hold of the
order its command names, and writes back only what changed. The pure step sees the same ``Stock`` either way.

Two entries are two changelog records, and a worker killed while they are on their way can leave only one of
them stored; its input is then replayed against that torn state. So the levels entry also carries the hold
its last change was made for (``last_change``), and every hold's answers carry the levels and version after
them. Loading the order of the replayed command finds whichever record is missing in the other one and
writes it back (:meth:`StockStore.take_repaired`) before the step decides, which then sees its own command
as the duplicate it is: applied once, its answer re-emitted unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from streams.domain.messages import from_jsonable, to_jsonable
from streams.domain.stock import OrderHold, Stock
from streams.state import StateStore, StateTable

LAST_CHANGE = "last_change"
"""Key, in a SKU's levels entry, of ``{"order_id", "hold"}``: the hold the levels were last changed for."""

_ANSWERS = ("reserve_answer", "release_answer", "commit_answer")
_LEVELS = ("available", "reserved", "sold")


def hold_key(sku: str, order_id: str) -> str:
    return f"{sku}/{order_id}"


def hold_version(hold: Any) -> int:
    """The stock version after the newest answer a stored hold records (-1: none)."""
    versions = [
        int(answer["value"]["stock_version"]) for name in _ANSWERS if (answer := (hold or {}).get(name)) is not None
    ]
    return max(versions, default=-1)


class StockStore(StateStore):
    """A SKU's levels under its SKU, each order's hold under ``<sku>/<order id>`` (both in this service)."""

    def __init__(self, levels: StateTable, holds: StateTable) -> None:
        self.levels = levels
        self.holds = holds
        self._repaired = False

    def load(self, key: str, message: Any) -> Stock | None:
        stored = self.levels.get(key)
        order_id = getattr(message, "order_id", None)
        hold = self.holds.get(hold_key(key, order_id)) if order_id else None
        if order_id:
            stored, hold = self._mend(key, order_id, stored, hold)
        if stored is None and hold is None:
            return None
        stock = Stock.from_json(stored) if stored is not None else Stock(sku=key)
        orders = {order_id: from_jsonable(OrderHold, hold)} if order_id and hold is not None else {}
        return replace(stock, orders=orders)

    def _mend(self, key: str, order_id: str, stored: Any, hold: Any) -> tuple[Any, Any]:
        """The levels and the order's hold as the last write meant them, rewriting the record it lost."""
        last = (stored or {}).get(LAST_CHANGE) or {}
        if last.get("order_id") == order_id and hold_version(last.get("hold")) > hold_version(hold):
            hold = last["hold"]  # the levels were stored, the hold they were changed for was not
            self.holds[hold_key(key, order_id)] = hold
            self._repaired = True
        if stored is not None and hold_version(hold) > int(stored.get("version", 0)):
            newest = max(
                (a["value"] for name in _ANSWERS if (a := hold.get(name)) is not None),
                key=lambda answer: int(answer["stock_version"]),
            )
            stored = {  # the hold was stored, the levels its answer reports were not: bring them forward
                **stored,
                **{level: int(newest[level]) for level in _LEVELS},
                "version": int(newest["stock_version"]),
                LAST_CHANGE: {"order_id": order_id, "hold": hold},
            }
            self.levels[key] = stored
            self._repaired = True
        return stored, hold

    def take_repaired(self) -> bool:
        repaired, self._repaired = self._repaired, False
        return repaired

    def save(self, key: str, before: Any, after: Any) -> None:
        if after is None:
            raise ValueError(f"a SKU's stock is never forgotten ({key})")
        earlier = before.orders if before is not None else {}
        changed = {
            order_id: to_jsonable(hold) for order_id, hold in after.orders.items() if earlier.get(order_id) != hold
        }
        head = replace(after, orders={})
        if before is None or replace(before, orders={}) != head:
            levels = head.to_json()
            if len(changed) == 1:  # a command names one order: its hold travels with the levels it changed
                ((order_id, hold),) = changed.items()
                levels[LAST_CHANGE] = {"order_id": order_id, "hold": hold}
            self.levels[key] = levels
        for order_id, hold in changed.items():
            self.holds[hold_key(key, order_id)] = hold
