"""Inventory's per-order step, keyed by order id: all-or-nothing reservation across SKUs.

SKUs live on different partitions, so an order's lines are reserved one command per SKU (ReserveStock) and
the answers (StockLineReserved / StockLineRejected) are collected here. Only when every line answered does
the order get one verdict: InventoryReserved, or ReleaseStock for each line that did reserve plus
InventoryReservationFailed. A confirmed order commits every line (CommitStock → InventoryCommitted); a
cancelled one releases every line that is not known to hold nothing, even lines still waiting for their
answer: the SKU side records a release that overtakes its reservation, so the late reservation is refused
and nothing leaks. InventoryReleased follows once every release is answered.

Lines of the same SKU are merged (one hold per order and SKU at the SKU side).

Redelivery: each applied input is remembered by its record name (and SKU for per-line answers) with the
events it emitted; the same input again changes nothing and re-emits those events. An answer for a line
that already has its answer (say a refusal to a re-sent ReserveStock) is stale and ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    CommitStock,
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    JsonState,
    Message,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    ReleaseStock,
    ReserveStock,
    ShortLine,
    StockLine,
    StockLineCommitted,
    StockLineRejected,
    StockLineReleased,
    StockLineReserved,
)

HANDLES = frozenset(
    {
        "OrderPlaced",
        "OrderConfirmed",
        "OrderCancelled",
        "StockLineReserved",
        "StockLineRejected",
        "StockLineReleased",
        "StockLineCommitted",
    }
)

INSUFFICIENT_STOCK = "insufficient_stock"


class LineStatus(StrEnum):
    """The SKU's answer to a line's ReserveStock."""

    PENDING = "PENDING"
    RESERVED = "RESERVED"
    REJECTED = "REJECTED"


class Progress(StrEnum):
    """A follow-up command (release or commit) of a line."""

    NONE = "NONE"
    REQUESTED = "REQUESTED"
    DONE = "DONE"


class Verdict(StrEnum):
    """The saga's terminal decision, as far as inventory saw it."""

    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, kw_only=True)
class ReservationLine:
    """One SKU of the order and how far it got."""

    sku: str
    quantity: int
    status: LineStatus = LineStatus.PENDING
    available: int | None = None
    """Units the SKU had when it refused (REJECTED only)."""
    reason: str | None = None
    release: Progress = Progress.NONE
    released_quantity: int = 0
    commit: Progress = Progress.NONE

    @property
    def settled(self) -> bool:
        """Holds nothing any more, as the SKU confirmed (released, or refused and never asked to release)."""
        return self.release is Progress.DONE or (self.status is LineStatus.REJECTED and self.release is Progress.NONE)


@dataclass(frozen=True, kw_only=True)
class OrderReservation(JsonState):
    """One order's reservation across its SKUs."""

    order_id: str
    lines: tuple[ReservationLine, ...]
    reserved: bool | None = None
    """The reservation's verdict: True (InventoryReserved), False (InventoryReservationFailed), None (open)."""
    verdict: Verdict | None = None
    cancel_reason: str | None = None
    released: bool = False
    """InventoryReleased was emitted."""
    committed: bool = False
    """InventoryCommitted was emitted."""
    outputs: dict[str, tuple[Message, ...]] = field(default_factory=dict)
    """Each applied input (``OrderPlaced``, ``StockLineReserved:sku``…) → what it emitted."""

    def line(self, sku: str) -> ReservationLine | None:
        return next((line for line in self.lines if line.sku == sku), None)


def decide(state: OrderReservation | None, message: Message, ctx: StepContext) -> Decision[OrderReservation]:
    """Apply one event; a redelivered one re-emits what it emitted the first time."""
    if message.record_name not in HANDLES:
        return Decision(state)
    trigger = _trigger(message)
    if state is not None and (earlier := state.outputs.get(trigger)) is not None:
        return Decision(state, earlier)
    match message:
        case OrderPlaced():
            return on_order_placed(state, message, ctx)
        case StockLineReserved():
            return on_stock_line_reserved(state, message, ctx)
        case StockLineRejected():
            return on_stock_line_rejected(state, message, ctx)
        case OrderConfirmed():
            return on_order_confirmed(state, message, ctx)
        case OrderCancelled():
            return on_order_cancelled(state, message, ctx)
        case StockLineReleased():
            return on_stock_line_released(state, message, ctx)
        case StockLineCommitted():
            return on_stock_line_committed(state, message, ctx)
    return Decision(state)  # pragma: no cover - HANDLES and the cases above list the same records


def on_order_placed(state: OrderReservation | None, event: OrderPlaced, ctx: StepContext) -> Decision[OrderReservation]:
    """Ask every SKU of the order for its units."""
    if state is not None:
        return Decision(state)
    merged: dict[str, int] = {}
    for line in event.lines:
        merged[line.sku] = merged.get(line.sku, 0) + line.quantity
    lines = tuple(ReservationLine(sku=sku, quantity=quantity) for sku, quantity in merged.items())
    commands = tuple(
        ReserveStock(order_id=event.order_id, sku=line.sku, quantity=line.quantity, requested_at=ctx.now)
        for line in lines
    )
    new = OrderReservation(order_id=event.order_id, lines=lines)
    return _conclude(new, event, ctx, commands)


def on_stock_line_reserved(
    state: OrderReservation | None, event: StockLineReserved, ctx: StepContext
) -> Decision[OrderReservation]:
    """One SKU holds its units; the order's verdict waits for every line."""
    line = state.line(event.sku) if state else None
    if state is None or line is None or line.status is not LineStatus.PENDING:
        return Decision(state)
    return _conclude(_set_line(state, replace(line, status=LineStatus.RESERVED)), event, ctx)


def on_stock_line_rejected(
    state: OrderReservation | None, event: StockLineRejected, ctx: StepContext
) -> Decision[OrderReservation]:
    """One SKU refused; the order will fail once every line answered."""
    line = state.line(event.sku) if state else None
    if state is None or line is None or line.status is not LineStatus.PENDING:
        return Decision(state)
    rejected = replace(line, status=LineStatus.REJECTED, available=event.available, reason=event.reason)
    return _conclude(_set_line(state, rejected), event, ctx)


def on_order_confirmed(
    state: OrderReservation | None, event: OrderConfirmed, ctx: StepContext
) -> Decision[OrderReservation]:
    """Sell what is reserved."""
    if state is None or state.verdict is not None:
        return Decision(state)
    lines = tuple(
        replace(line, commit=Progress.REQUESTED) if line.status is LineStatus.RESERVED else line for line in state.lines
    )
    commands = tuple(
        CommitStock(order_id=state.order_id, sku=line.sku, quantity=line.quantity, requested_at=ctx.now)
        for line in lines
        if line.commit is Progress.REQUESTED
    )
    return _conclude(replace(state, lines=lines, verdict=Verdict.CONFIRMED), event, ctx, commands)


def on_order_cancelled(
    state: OrderReservation | None, event: OrderCancelled, ctx: StepContext
) -> Decision[OrderReservation]:
    """Release every line that may hold something, answered or not."""
    if state is None or state.verdict is not None:
        return Decision(state)
    lines = tuple(
        replace(line, release=Progress.REQUESTED)
        if line.status is not LineStatus.REJECTED and line.release is Progress.NONE
        else line
        for line in state.lines
    )
    commands = _releases(state, lines, f"order cancelled: {event.reason}", ctx)
    new = replace(state, lines=lines, verdict=Verdict.CANCELLED, cancel_reason=event.reason)
    return _conclude(new, event, ctx, commands)


def on_stock_line_released(
    state: OrderReservation | None, event: StockLineReleased, ctx: StepContext
) -> Decision[OrderReservation]:
    """One SKU gave back what the order held there (maybe nothing)."""
    line = state.line(event.sku) if state else None
    if state is None or line is None or line.release is not Progress.REQUESTED:
        return Decision(state)
    done = replace(line, release=Progress.DONE, released_quantity=event.quantity)
    return _conclude(_set_line(state, done), event, ctx)


def on_stock_line_committed(
    state: OrderReservation | None, event: StockLineCommitted, ctx: StepContext
) -> Decision[OrderReservation]:
    """One SKU sold the order's units."""
    line = state.line(event.sku) if state else None
    if state is None or line is None or line.commit is not Progress.REQUESTED:
        return Decision(state)
    return _conclude(_set_line(state, replace(line, commit=Progress.DONE)), event, ctx)


def _conclude(
    state: OrderReservation, event: Message, ctx: StepContext, commands: tuple[Message, ...] = ()
) -> Decision[OrderReservation]:
    """Emit ``commands`` and whatever order-level fact the new state completes; remember them for redelivery."""
    events: list[Message] = list(commands)
    answered = all(line.status is not LineStatus.PENDING for line in state.lines)
    if state.reserved is None and state.verdict is None and answered:
        if all(line.status is LineStatus.RESERVED for line in state.lines):
            state = replace(state, reserved=True)
            held = _stock_lines((line.sku, line.quantity) for line in state.lines)
            events.append(InventoryReserved(order_id=state.order_id, lines=held, reserved_at=ctx.now))
        else:
            releasing = tuple(
                replace(line, release=Progress.REQUESTED) if line.status is LineStatus.RESERVED else line
                for line in state.lines
            )
            events.extend(_releases(state, releasing, "reservation failed", ctx))
            state = replace(state, lines=releasing, reserved=False)
            events.append(_failure(state, ctx))
    if state.verdict is Verdict.CANCELLED and not state.released and all(line.settled for line in state.lines):
        state = replace(state, released=True)
        back = _stock_lines((line.sku, line.released_quantity) for line in state.lines if line.released_quantity)
        reason = state.cancel_reason or ""
        events.append(InventoryReleased(order_id=state.order_id, lines=back, reason=reason, released_at=ctx.now))
    reserved_lines = [line for line in state.lines if line.status is LineStatus.RESERVED]
    if (
        state.verdict is Verdict.CONFIRMED
        and not state.committed
        and all(line.commit is Progress.DONE for line in reserved_lines)
    ):
        state = replace(state, committed=True)
        sold = _stock_lines((line.sku, line.quantity) for line in reserved_lines)
        events.append(InventoryCommitted(order_id=state.order_id, lines=sold, committed_at=ctx.now))
    emitted = tuple(events)
    return Decision(replace(state, outputs={**state.outputs, _trigger(event): emitted}), emitted)


def _stock_lines(pairs: Iterable[tuple[str, int]]) -> tuple[StockLine, ...]:
    return tuple(StockLine(sku=sku, quantity=quantity) for sku, quantity in pairs)


def _releases(
    state: OrderReservation, lines: tuple[ReservationLine, ...], reason: str, ctx: StepContext
) -> tuple[ReleaseStock, ...]:
    """ReleaseStock for each line whose release becomes REQUESTED between ``state`` and ``lines``."""
    before = {line.sku: line.release for line in state.lines}
    return tuple(
        ReleaseStock(order_id=state.order_id, sku=line.sku, quantity=line.quantity, reason=reason, requested_at=ctx.now)
        for line in lines
        if line.release is Progress.REQUESTED and before[line.sku] is Progress.NONE
    )


def _failure(state: OrderReservation, ctx: StepContext) -> InventoryReservationFailed:
    rejected = [line for line in state.lines if line.status is LineStatus.REJECTED]
    reasons = sorted({line.reason or INSUFFICIENT_STOCK for line in rejected})
    return InventoryReservationFailed(
        order_id=state.order_id,
        failed_lines=tuple(
            ShortLine(sku=line.sku, requested=line.quantity, available=line.available or 0) for line in rejected
        ),
        reason=", ".join(reasons),
        failed_at=ctx.now,
    )


def _set_line(state: OrderReservation, new: ReservationLine) -> OrderReservation:
    return replace(state, lines=tuple(new if line.sku == new.sku else line for line in state.lines))


def _trigger(message: Message) -> str:
    """How an input is remembered: per-line answers by record and SKU, the rest by record."""
    sku = getattr(message, "sku", None)
    return f"{message.record_name}:{sku}" if sku is not None else message.record_name
