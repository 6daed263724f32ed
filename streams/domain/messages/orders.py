"""The orders context's records (Avro namespace ``pipeline.orders``): placing an order and its saga's outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from streams.domain.messages.base import Message


@dataclass(frozen=True, kw_only=True)
class OrderLine:
    """One ordered SKU with its quantity and unit price (cents)."""

    sku: str
    quantity: int
    unit_price_cents: int


@dataclass(frozen=True, kw_only=True)
class PaymentDetails:
    """How the customer pays: a method and an opaque provider token."""

    method: str
    token: str


@dataclass(frozen=True, kw_only=True)
class PlaceOrder(Message):
    """Command: a customer asks to place an order; keyed by user id (admission is per customer)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    payment: PaymentDetails
    idempotency_key: str
    requested_at: datetime
    user_version: int | None = None
    """Decide only once the customer is known at least at this version (v2; None: no such wish)."""


@dataclass(frozen=True, kw_only=True)
class ReleaseHeldOrders(Message):
    """Command from the orders worker's timer: decide the customer's held orders that are due."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "requested_at"
    user_id: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderPlaced(Message):
    """Event: an order was admitted and its saga started."""

    TIME_FIELD: ClassVar[str] = "placed_at"
    order_id: str
    user_id: str
    lines: tuple[OrderLine, ...]
    total_cents: int
    currency: str
    placed_at: datetime
    deadline_at: datetime
    channel: str = "api"
    note: str | None = None
    payment_method: str = ""
    payment_token: str = ""


@dataclass(frozen=True, kw_only=True)
class OrderRejected(Message):
    """Event: a PlaceOrder was refused before any saga step ran."""

    TIME_FIELD: ClassVar[str] = "rejected_at"
    order_id: str
    user_id: str
    reason: str
    rejected_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderConfirmed(Message):
    """Event: terminal; stock reserved and payment taken."""

    TIME_FIELD: ClassVar[str] = "confirmed_at"
    order_id: str
    payment_id: str
    confirmed_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderCancelled(Message):
    """Event: terminal; the saga failed or timed out, compensation follows."""

    TIME_FIELD: ClassVar[str] = "cancelled_at"
    order_id: str
    reason: str
    cancelled_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderCompensationFailed(Message):
    """Event: a cancelled order could not be compensated; it needs a person."""

    TIME_FIELD: ClassVar[str] = "failed_at"
    order_id: str
    failed_step: str
    reason: str
    attempts: int
    payment_id: str | None = None
    amount_cents: int | None = None
    failed_at: datetime


@dataclass(frozen=True, kw_only=True)
class OrderDeadlineReached(Message):
    """Event: the timer saw an unfinished order's deadline pass (may repeat)."""

    TIME_FIELD: ClassVar[str] = "observed_at"
    order_id: str
    deadline_at: datetime
    observed_at: datetime
