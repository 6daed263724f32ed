"""Inventory's per-SKU step, keyed by SKU: the only place stock levels change, so it can never oversell.

Levels: ``available`` (free), ``reserved`` (held for open orders), ``sold``. Invariant, after every step:
all three are >= 0 and ``available + reserved + sold == total_added``. ``version`` grows by one with every
change of the levels, and every event carries the levels and version after it, so a read view applies an
event only if its ``stock_version`` is newer than what it holds.

One hold per order records what this SKU did for it (RESERVED, COMMITTED, RELEASED, REJECTED) and the answer
it gave. A release that arrives before its reservation (the order was cancelled while the reservation was
still in flight) leaves a RELEASED tombstone and answers StockLineReleased with quantity 0, so the late
ReserveStock is refused with ``order_released`` and never holds stock for a dead order.

Redelivery: a command this SKU already answered for that order (same order, same kind) changes nothing and
re-emits the stored answer, levels and version as they were then. AddStock has no id of its own, so it is
recognised by the input's id (``StepContext.message_id``) among the SKU's last :data:`REMEMBERED_ADDITIONS`,
each kept as the levels, version and time of the StockAdded it produced: the rest of that event (SKU,
quantity, reason) is the command's, which a redelivery repeats, so the same event is re-emitted. A message
is redelivered only until its offset is committed (every few seconds, and the watchdog stops a worker whose
commits stand still), so the window is what a SKU can take in restocks between two commits; the edge keeps
it in an entry of its own, read only for AddStock (:class:`streams.stores.StockStore`), so reservations
never carry it.

Text: AddStock comes from outside the saga (an operator's restock), and it or a ReserveStock may be published
straight to Kafka, so every string they carry must be clean text (:mod:`streams.domain.text`). A ReserveStock
that breaks the rule is answered with StockLineRejected ``invalid_text: <field>``; an AddStock, which has no
rejection record, is refused (``Decision.refusal``: dead-lettered with the reason). Either way nothing is stored:
no SKU, hold or addition is ever named by such a string. ReleaseStock and CommitStock come only from the saga,
for holds a ReserveStock made, and are not checked: a release must give stock back whatever its reason says.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import TypedDict

from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    AddStock,
    CommitStock,
    JsonState,
    Message,
    ReleaseStock,
    ReserveStock,
    StockAdded,
    StockLineCommitted,
    StockLineRejected,
    StockLineReleased,
    StockLineReserved,
)
from streams.domain.text import unclean_field

HANDLES = frozenset({"AddStock", "ReserveStock", "ReleaseStock", "CommitStock"})

INSUFFICIENT_STOCK = "insufficient_stock"
ORDER_RELEASED = "order_released"
INVALID_QUANTITY = "invalid_quantity"
INVALID_TEXT = "invalid_text"
REMEMBERED_ADDITIONS = 32
"""How many recent AddStock inputs a SKU remembers (see above); sized so their entry stays under 4 KiB."""


class HoldStatus(StrEnum):
    """What this SKU holds for one order."""

    RESERVED = "RESERVED"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    REJECTED = "REJECTED"


@dataclass(frozen=True, kw_only=True)
class OrderHold:
    """This SKU's record of one order, with the answers it gave (re-sent on redelivery)."""

    quantity: int
    """Units held (RESERVED, COMMITTED) or once held (RELEASED after a reservation); 0 if none ever."""
    status: HoldStatus
    reserve_answer: StockLineReserved | StockLineRejected | None = None
    release_answer: StockLineReleased | None = None
    commit_answer: StockLineCommitted | None = None


@dataclass(frozen=True, kw_only=True)
class StockAddition:
    """A recent AddStock by input id, with the levels, version and time of the StockAdded it produced."""

    message_id: str
    available: int
    reserved: int
    sold: int
    version: int
    added_at: datetime


@dataclass(frozen=True, kw_only=True)
class Stock(JsonState):
    """One SKU's stock."""

    sku: str
    available: int = 0
    reserved: int = 0
    sold: int = 0
    total_added: int = 0
    version: int = 0
    orders: dict[str, OrderHold] = field(default_factory=dict)
    """Order id → its hold (split state: the hold of the order the command names only)."""
    additions: tuple[StockAddition, ...] = ()
    """The last :data:`REMEMBERED_ADDITIONS` additions, oldest first (split state: loaded for AddStock only)."""

    @property
    def consistent(self) -> bool:
        """The invariant: nothing negative, nothing created or lost."""
        levels = (self.available, self.reserved, self.sold)
        return min(levels) >= 0 and sum(levels) == self.total_added


def decide(state: Stock | None, message: Message, ctx: StepContext) -> Decision[Stock]:
    """Apply one command to the SKU's stock."""
    match message:
        case AddStock():
            return on_add_stock(state, message, ctx)
        case ReserveStock():
            return on_reserve_stock(state, message, ctx)
        case ReleaseStock():
            return on_release_stock(state, message, ctx)
        case CommitStock():
            return on_commit_stock(state, message, ctx)
    return Decision(state)


def on_add_stock(state: Stock | None, command: AddStock, ctx: StepContext) -> Decision[Stock]:
    """Units arrive; a non-positive quantity is ignored, unclean text refused (there is no rejection record for
    AddStock)."""
    if (unclean := unclean_field(command)) is not None:
        return Decision(state, refusal=f"{INVALID_TEXT}: {unclean}")
    state = state or Stock(sku=command.sku)
    if ctx.message_id:
        for addition in state.additions:
            if addition.message_id == ctx.message_id:
                return Decision(state, (_added(state.sku, command, addition),))
    if command.quantity <= 0:
        return Decision(state)
    new = replace(
        state,
        available=state.available + command.quantity,
        total_added=state.total_added + command.quantity,
        version=state.version + 1,
    )
    addition = StockAddition(
        message_id=ctx.message_id,
        available=new.available,
        reserved=new.reserved,
        sold=new.sold,
        version=new.version,
        added_at=ctx.now,
    )
    if ctx.message_id:
        new = replace(new, additions=(*state.additions, addition)[-REMEMBERED_ADDITIONS:])
    return Decision(new, (_added(new.sku, command, addition),))


def _added(sku: str, command: AddStock, addition: StockAddition) -> StockAdded:
    """The StockAdded of ``command``, as applied (and remembered) in ``addition``."""
    return StockAdded(
        sku=sku,
        quantity=command.quantity,
        reason=command.reason,
        available=addition.available,
        reserved=addition.reserved,
        sold=addition.sold,
        stock_version=addition.version,
        added_at=addition.added_at,
    )


def on_reserve_stock(state: Stock | None, command: ReserveStock, ctx: StepContext) -> Decision[Stock]:
    """Hold units for an order if there are enough, else refuse; never both, never twice."""
    if (unclean := unclean_field(command)) is not None:  # refused, and nothing kept under what it names
        return Decision(
            state, (_rejected(state or Stock(sku=command.sku), command, f"{INVALID_TEXT}: {unclean.field}", ctx),)
        )
    state = state or Stock(sku=command.sku)
    hold = state.orders.get(command.order_id)
    if hold is not None and hold.reserve_answer is not None:
        return Decision(state, (hold.reserve_answer,))
    if hold is not None:  # released before it was reserved: refuse, keep the tombstone
        answer: StockLineReserved | StockLineRejected = _rejected(state, command, ORDER_RELEASED, ctx)
        return _answer(state, command.order_id, replace(hold, reserve_answer=answer), answer)
    if command.quantity <= 0 or state.available < command.quantity:
        reason = INVALID_QUANTITY if command.quantity <= 0 else INSUFFICIENT_STOCK
        answer = _rejected(state, command, reason, ctx)
        return _answer(
            state, command.order_id, OrderHold(quantity=0, status=HoldStatus.REJECTED, reserve_answer=answer), answer
        )
    new = replace(
        state,
        available=state.available - command.quantity,
        reserved=state.reserved + command.quantity,
        version=state.version + 1,
    )
    answer = StockLineReserved(
        order_id=command.order_id, sku=state.sku, quantity=command.quantity, **_levels(new), reserved_at=ctx.now
    )
    hold = OrderHold(quantity=command.quantity, status=HoldStatus.RESERVED, reserve_answer=answer)
    return _answer(new, command.order_id, hold, answer)


def on_release_stock(state: Stock | None, command: ReleaseStock, ctx: StepContext) -> Decision[Stock]:
    """Give back what the order holds; an order holding nothing gets a tombstone and a 0-unit release."""
    state = state or Stock(sku=command.sku)
    hold = state.orders.get(command.order_id)
    if hold is not None and hold.release_answer is not None:
        return Decision(state, (hold.release_answer,))
    if hold is not None and hold.status is HoldStatus.COMMITTED:
        return Decision(state)  # sold stock is not released; the saga never cancels a confirmed order
    released = hold.quantity if hold is not None and hold.status is HoldStatus.RESERVED else 0
    new = state
    if released:
        new = replace(
            state,
            available=state.available + released,
            reserved=state.reserved - released,
            version=state.version + 1,
        )
    answer = StockLineReleased(
        order_id=command.order_id, sku=state.sku, quantity=released, **_levels(new), released_at=ctx.now
    )
    base = hold or OrderHold(quantity=0, status=HoldStatus.RELEASED)
    return _answer(new, command.order_id, replace(base, status=HoldStatus.RELEASED, release_answer=answer), answer)


def on_commit_stock(state: Stock | None, command: CommitStock, ctx: StepContext) -> Decision[Stock]:
    """The order's held units are sold; a commit for units not held is ignored (it cannot happen in the saga)."""
    state = state or Stock(sku=command.sku)
    hold = state.orders.get(command.order_id)
    if hold is not None and hold.commit_answer is not None:
        return Decision(state, (hold.commit_answer,))
    if hold is None or hold.status is not HoldStatus.RESERVED:
        return Decision(state)
    new = replace(
        state,
        reserved=state.reserved - hold.quantity,
        sold=state.sold + hold.quantity,
        version=state.version + 1,
    )
    answer = StockLineCommitted(
        order_id=command.order_id, sku=state.sku, quantity=hold.quantity, **_levels(new), committed_at=ctx.now
    )
    return _answer(new, command.order_id, replace(hold, status=HoldStatus.COMMITTED, commit_answer=answer), answer)


def _answer(state: Stock, order_id: str, hold: OrderHold, answer: Message) -> Decision[Stock]:
    return Decision(replace(state, orders={**state.orders, order_id: hold}), (answer,))


def _rejected(state: Stock, command: ReserveStock, reason: str, ctx: StepContext) -> StockLineRejected:
    return StockLineRejected(
        order_id=command.order_id,
        sku=state.sku,
        requested=command.quantity,
        **_levels(state),
        reason=reason,
        rejected_at=ctx.now,
    )


class _Levels(TypedDict):
    available: int
    reserved: int
    sold: int
    stock_version: int


def _levels(state: Stock) -> _Levels:
    """The levels every stock event carries, as of ``state``."""
    return {
        "available": state.available,
        "reserved": state.reserved,
        "sold": state.sold,
        "stock_version": state.version,
    }
