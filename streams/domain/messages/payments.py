"""The payments context's records (``pipeline.payments``): charging an order, retrying a parked charge, refunding."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from streams.domain.messages.base import Message


@dataclass(frozen=True, kw_only=True)
class PaymentSucceeded(Message):
    """Event: the order's total was charged."""

    TIME_FIELD: ClassVar[str] = "charged_at"
    order_id: str
    payment_id: str
    amount_cents: int
    charged_at: datetime


@dataclass(frozen=True, kw_only=True)
class PaymentFailed(Message):
    """Event: the charge was declined or could not be made."""

    TIME_FIELD: ClassVar[str] = "failed_at"
    order_id: str
    reason: str
    failed_at: datetime


@dataclass(frozen=True, kw_only=True)
class PaymentPending(Message):
    """Event: the provider is unavailable; the charge waits (nothing charged) and is retried later."""

    KEY_FIELD: ClassVar[str] = "order_id"
    TIME_FIELD: ClassVar[str] = "pending_at"
    order_id: str
    reason: str
    pending_at: datetime


@dataclass(frozen=True, kw_only=True)
class RetryPayment(Message):
    """Command from the payments worker's timer: try the order's parked charge again."""

    KEY_FIELD: ClassVar[str] = "order_id"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class PaymentRefunded(Message):
    """Event: compensation; the charge of a cancelled order was refunded."""

    TIME_FIELD: ClassVar[str] = "refunded_at"
    order_id: str
    payment_id: str
    amount_cents: int
    reason: str
    refunded_at: datetime


@dataclass(frozen=True, kw_only=True)
class PaymentRefundFailed(Message):
    """Event: the refund failed for good after every retry."""

    TIME_FIELD: ClassVar[str] = "failed_at"
    order_id: str
    payment_id: str
    amount_cents: int
    reason: str
    attempts: int
    failed_at: datetime
