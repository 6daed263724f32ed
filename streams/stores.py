"""State stores that split one step's state over several table entries, so no write grows with history.

A SKU serves every order that buys it. Kept as one entry, its record (levels plus one hold per order) would
grow with every order and be rewritten whole on every reservation: megabytes per write after a few thousand
orders, and past Kafka's record size limit after more. :class:`StockStore` keeps the levels in one entry,
each order's hold in its own entry ``<sku>/<order id>``, and the SKU's recent additions (the window that
recognises a redelivered AddStock) in ``<sku>/additions``; a step loads the levels and only the hold of the
order its command names, or the additions for an AddStock, and writes back only what changed. The pure step
sees the same ``Stock`` either way.

A customer places every order of theirs through admission, likewise. :class:`CustomerStore` keeps what
admission knows of the customer under the user id, each order's answer under ``<user id>/order/<order id>``
and, for an idempotency key that is not its order id, ``<user id>/key/<key>`` → the order id; a PlaceOrder
loads the customer and the answers its order id and key name, and writes its own answer only. So the
ten-thousandth order of a customer costs what their first does, and no entry grows with their history.

Two entries are two changelog records, and a worker killed while they are on their way can leave only one of
them stored; its input is then replayed against that torn state. So the levels entry also carries the change
it was last made for (``last_change``: the hold, or the addition), and every hold's answers and every addition
carry the levels and version after them. Loading the replayed command finds whichever record is missing in the
other one and writes it back (:meth:`StockStore.take_repaired`) before the step decides, which then sees its
own command as the duplicate it is: applied once, its answer re-emitted unchanged. A customer's answer
entries need no such care, save one: an answer stored without its key's index gets the index back when its
order is loaded. (Answers stored without the customer's entry were never sent: the runner sends only once
every write of the batch is acknowledged, so the replay deciding them afresh contradicts nothing.)

Entries of the older single-entry shapes (a customer with every answer inline, a SKU with its last additions
inline) are moved to this shape the first time they are loaded, with a log line, and written back like a
repair; a part that cannot be read is dropped with a warning rather than stopping the worker.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.domain.admission import CustomerState
from streams.domain.messages import AddStock, PlaceOrder, StockAdded, from_jsonable, to_jsonable
from streams.domain.stock import REMEMBERED_ADDITIONS, OrderHold, Stock, StockAddition
from streams.state import StateStore, StateTable

log = logging.getLogger(__name__)

LAST_CHANGE = "last_change"
"""Key, in a SKU's levels entry, of the change the levels were last made for: ``{"order_id", "hold"}`` for a
command of an order, ``{"addition": [...]}`` (as in the additions entry) for an AddStock."""

_ANSWERS = ("reserve_answer", "release_answer", "commit_answer")
_LEVELS = ("available", "reserved", "sold")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def hold_key(sku: str, order_id: str) -> str:
    return f"{sku}/{order_id}"


def additions_key(sku: str) -> str:
    """Where a SKU's recent additions are kept, in the levels table: ``{"additions": [[id, version,
    available, reserved, sold, added at in epoch ms], ...]}``, oldest first."""
    return f"{sku}/additions"


def answer_key(user_id: str, order_id: str) -> str:
    """Where admission keeps the answer to one order: ``{"key": idempotency key, "answer": event}``."""
    return f"{user_id}/order/{order_id}"


def request_key(user_id: str, idempotency_key: str) -> str:
    """Where admission finds the order of an idempotency key that is not its order id (the order id)."""
    return f"{user_id}/key/{idempotency_key}"


def hold_version(hold: Any) -> int:
    """The stock version after the newest answer a stored hold records (-1: none)."""
    versions = [
        int(answer["value"]["stock_version"]) for name in _ANSWERS if (answer := (hold or {}).get(name)) is not None
    ]
    return max(versions, default=-1)


def _addition_json(addition: StockAddition) -> list[Any]:
    return [
        addition.message_id,
        addition.version,
        addition.available,
        addition.reserved,
        addition.sold,
        (addition.added_at - _EPOCH) // _MS,
    ]


def _addition(item: list[Any]) -> StockAddition:
    message_id, version, available, reserved, sold, added_ms = item
    return StockAddition(
        message_id=str(message_id),
        version=int(version),
        available=int(available),
        reserved=int(reserved),
        sold=int(sold),
        added_at=_EPOCH + int(added_ms) * _MS,
    )


def _old_addition(stored: Any) -> StockAddition:
    """An addition as the older levels entry kept it: ``{"message_id", "event": StockAdded}``."""
    event = from_jsonable(StockAdded, stored["event"])
    return StockAddition(
        message_id=str(stored["message_id"]),
        version=event.stock_version,
        available=event.available,
        reserved=event.reserved,
        sold=event.sold,
        added_at=event.added_at,
    )


def _levels_json(stock: Stock) -> dict[str, Any]:
    """A SKU's levels entry: the state without its holds and additions (they have entries of their own)."""
    return {name: value for name, value in stock.to_json().items() if name not in ("orders", "additions")}


class StockStore(StateStore):
    """A SKU's levels under its SKU, its recent additions under ``<sku>/additions`` (both in the levels table),
    each order's hold under ``<sku>/<order id>`` (in the holds table)."""

    def __init__(self, levels: StateTable, holds: StateTable) -> None:
        self.levels = levels
        self.holds = holds
        self._repaired = False

    def load(self, key: str, message: Any) -> Stock | None:
        stored = self.levels.get(key)
        if stored is not None and "additions" in stored:
            stored = self._upgrade(key, stored)
        if isinstance(message, AddStock):
            stored, items = self._mend_additions(key, stored, self.levels.get(additions_key(key)))
            if stored is None and not items:
                return None
            stock = Stock.from_json(stored) if stored is not None else Stock(sku=key)
            return replace(stock, orders={}, additions=tuple(_addition(item) for item in items))
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

    def _mend_additions(self, key: str, stored: Any, window: Any) -> tuple[Any, list[list[Any]]]:
        """The levels and the additions as the last AddStock meant them, rewriting the record it lost."""
        items = list((window or {}).get("additions") or [])
        newest = int(items[-1][1]) if items else -1
        last = ((stored or {}).get(LAST_CHANGE) or {}).get("addition")
        if last is not None and int(last[1]) > newest:
            items.append(last)  # the levels were stored, the additions they were changed with were not
            self.levels[additions_key(key)] = {"additions": items}
            self._repaired = True
        if items and int(items[-1][1]) > int((stored or {}).get("version", 0)):
            addition = _addition(items[-1])  # the additions were stored, the levels they report were not
            stored = {
                **(stored or {"sku": key}),
                **{level: getattr(addition, level) for level in _LEVELS},
                "total_added": addition.available + addition.reserved + addition.sold,
                "version": addition.version,
                LAST_CHANGE: {"addition": items[-1]},
            }
            self.levels[key] = stored
            self._repaired = True
        return stored, items

    def _upgrade(self, key: str, stored: Any) -> Any:
        """A levels entry of the older shape, with its last additions inline: the additions move to their own
        entry (the newest :data:`REMEMBERED_ADDITIONS`), the levels are written back without them."""
        levels = {name: value for name, value in stored.items() if name not in ("additions", "orders")}
        try:
            items = [_addition_json(_old_addition(a)) for a in stored["additions"] or ()]
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("inventory_stock[%s]: additions of the older shape unreadable, dropped: %r", key, exc)
            items = []
        self.levels[key] = levels
        if items and self.levels.get(additions_key(key)) is None:
            self.levels[additions_key(key)] = {"additions": items[-REMEMBERED_ADDITIONS:]}
        self._repaired = True
        log.info("inventory_stock[%s]: %d additions of the older shape moved to their own entry", key, len(items))
        return levels

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
        added = after.additions != (before.additions if before is not None else ())
        head = replace(after, orders={}, additions=())
        if before is None or replace(before, orders={}, additions=()) != head:
            levels = _levels_json(head)
            if len(changed) == 1:  # a command names one order: its hold travels with the levels it changed
                ((order_id, hold),) = changed.items()
                levels[LAST_CHANGE] = {"order_id": order_id, "hold": hold}
            elif added and after.additions:  # an AddStock: its addition travels with the levels it changed
                levels[LAST_CHANGE] = {"addition": _addition_json(after.additions[-1])}
            self.levels[key] = levels
        if added:
            self.levels[additions_key(key)] = {"additions": [_addition_json(a) for a in after.additions]}
        for order_id, hold in changed.items():
            self.holds[hold_key(key, order_id)] = hold


class CustomerStore(StateStore):
    """A customer under their user id; each order's answer under ``<user id>/order/<order id>``, and each
    idempotency key that is not its order id under ``<user id>/key/<key>`` (all in one table)."""

    def __init__(self, table: StateTable) -> None:
        self.table = table
        self._repaired = False

    def load(self, key: str, message: Any) -> CustomerState | None:
        stored = self.table.get(key)
        if stored is not None and _older_customer(stored):
            stored = self._upgrade(key, stored)
        if isinstance(message, PlaceOrder):
            found = self._answers(key, message)
        else:
            found = []
            self._mend_releases(key, stored)
        if stored is None and not found:
            return None
        data = dict(stored or {"user_id": key})
        data["outcomes"] = {idempotency_key: answer for _, idempotency_key, answer in found}
        data["order_keys"] = {order_id: idempotency_key for order_id, idempotency_key, _ in found}
        return CustomerState.from_json(data)

    def _answers(self, user_id: str, command: PlaceOrder) -> list[tuple[str, str, Any]]:
        """The stored answers a PlaceOrder may repeat: its order id's, and its idempotency key's."""
        found: list[tuple[str, str, Any]] = []
        entry = self.table.get(answer_key(user_id, command.order_id))
        if entry is not None:
            found.append((command.order_id, entry["key"], entry["answer"]))
            index = request_key(user_id, entry["key"])
            if entry["key"] != command.order_id and self.table.get(index) is None:
                self.table[index] = command.order_id  # the answer was stored, its key's index was not
                self._repaired = True
        key = command.idempotency_key
        if all(idempotency_key != key for _, idempotency_key, _ in found):
            order_id = self.table.get(request_key(user_id, key)) or key  # a key that is its order id has no index
            first = self.table.get(answer_key(user_id, order_id)) if order_id != command.order_id else None
            if first is not None and first["key"] == key:
                found.append((order_id, key, first["answer"]))
        return found

    def _mend_releases(self, user_id: str, stored: Any) -> None:
        """Write back the answer entries a torn release lost (the customer's entry, stored, lists them): the
        input replayed after such a crash is the user event or ReleaseHeldOrders that decided them."""
        for release in (stored or {}).get("releases") or ():
            for answer, idempotency_key in zip(release["answers"], release.get("keys") or (), strict=False):
                order_id = answer["value"]["order_id"]
                if self.table.get(answer_key(user_id, order_id)) is None:
                    self._write_answer(user_id, order_id, idempotency_key, answer)
                    self._repaired = True

    def _upgrade(self, key: str, stored: Any) -> Any:
        """A customer of the older shape, with every answer inline: each answer moves to its own entry, the last
        release keeps its answers, and the customer is written back without them."""
        head = {name: value for name, value in stored.items() if name not in _OLDER_CUSTOMER_FIELDS}
        outcomes = stored.get("outcomes") or {}
        moved = 0
        try:
            for order_id, idempotency_key in (stored.get("order_keys") or {}).items():
                if (answer := outcomes.get(idempotency_key)) is not None:
                    self._write_answer(key, order_id, idempotency_key, answer)
                    moved += 1
            released = [k for k in stored.get("released") or () if k in outcomes]
            if stored.get("released_by") and released:
                answers = [outcomes[k] for k in released]
                head["releases"] = [{"message_id": stored["released_by"], "answers": answers, "keys": released}]
        except (AttributeError, TypeError, ValueError) as exc:
            log.warning("orders_customers[%s]: answers of the older shape unreadable, dropped: %r", key, exc)
        self.table[key] = head
        self._repaired = True
        log.info("orders_customers[%s]: %d answers of the older shape moved to entries of their own", key, moved)
        return head

    def _write_answer(self, user_id: str, order_id: str, idempotency_key: str, answer: Any) -> None:
        self.table[answer_key(user_id, order_id)] = {"key": idempotency_key, "answer": answer}
        if idempotency_key != order_id:
            self.table[request_key(user_id, idempotency_key)] = order_id

    def take_repaired(self) -> bool:
        repaired, self._repaired = self._repaired, False
        return repaired

    def save(self, key: str, before: Any, after: Any) -> None:
        if after is None:
            raise ValueError(f"admission never forgets a customer ({key})")
        earlier_keys = before.order_keys if before is not None else {}
        earlier = before.outcomes if before is not None else {}
        for order_id, idempotency_key in after.order_keys.items():
            answer = after.outcomes[idempotency_key]
            if earlier_keys.get(order_id) != idempotency_key or earlier.get(idempotency_key) != answer:
                self._write_answer(key, order_id, idempotency_key, to_jsonable(answer))
        head = replace(after, outcomes={}, order_keys={})
        if before is None or replace(before, outcomes={}, order_keys={}) != head:
            self.table[key] = {
                name: value for name, value in head.to_json().items() if name not in ("outcomes", "order_keys")
            }


_OLDER_CUSTOMER_FIELDS = ("outcomes", "order_keys", "released_by", "released")


def _older_customer(stored: Any) -> bool:
    """A customer entry of the older shape (answers inline)."""
    return any(name in stored for name in _OLDER_CUSTOMER_FIELDS)
