"""The inventory context's records (``pipeline.inventory``): stock per SKU and each order's reservation of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from streams.domain.messages.base import Message


@dataclass(frozen=True, kw_only=True)
class StockLine:
    """A quantity of one SKU."""

    sku: str
    quantity: int


@dataclass(frozen=True, kw_only=True)
class ShortLine:
    """A SKU with less stock than an order asked for."""

    sku: str
    requested: int
    available: int


@dataclass(frozen=True, kw_only=True)
class AddStock(Message):
    """Command: put units of a SKU into available stock."""

    KEY_FIELD: ClassVar[str] = "sku"
    sku: str
    quantity: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class StockAdded(Message):
    """Event: units arrived for a SKU; carries the SKU's levels after the change."""

    KEY_FIELD: ClassVar[str] = "sku"
    TIME_FIELD: ClassVar[str] = "added_at"
    sku: str
    quantity: int
    reason: str
    available: int
    reserved: int
    sold: int
    stock_version: int
    added_at: datetime


@dataclass(frozen=True, kw_only=True)
class ReserveStock(Message):
    """Command: hold units of one SKU for one order."""

    KEY_FIELD: ClassVar[str] = "sku"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    sku: str
    quantity: int
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class ReleaseStock(Message):
    """Command: give back whatever one order holds of one SKU (possibly nothing yet)."""

    KEY_FIELD: ClassVar[str] = "sku"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    sku: str
    quantity: int
    reason: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class CommitStock(Message):
    """Command: one order's reservation of one SKU is sold."""

    KEY_FIELD: ClassVar[str] = "sku"
    TIME_FIELD: ClassVar[str] = "requested_at"
    order_id: str
    sku: str
    quantity: int
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class StockLineReserved(Message):
    """Event: one SKU reserved units for one order."""

    TIME_FIELD: ClassVar[str] = "reserved_at"
    order_id: str
    sku: str
    quantity: int
    available: int
    reserved: int
    sold: int
    stock_version: int
    reserved_at: datetime


@dataclass(frozen=True, kw_only=True)
class StockLineRejected(Message):
    """Event: one SKU could not reserve units for one order."""

    TIME_FIELD: ClassVar[str] = "rejected_at"
    order_id: str
    sku: str
    requested: int
    available: int
    reserved: int
    sold: int
    stock_version: int
    reason: str
    rejected_at: datetime


@dataclass(frozen=True, kw_only=True)
class StockLineReleased(Message):
    """Event: one SKU released what one order held there (0 when it held nothing)."""

    TIME_FIELD: ClassVar[str] = "released_at"
    order_id: str
    sku: str
    quantity: int
    available: int
    reserved: int
    sold: int
    stock_version: int
    released_at: datetime


@dataclass(frozen=True, kw_only=True)
class StockLineCommitted(Message):
    """Event: one order's reservation of one SKU was sold."""

    TIME_FIELD: ClassVar[str] = "committed_at"
    order_id: str
    sku: str
    quantity: int
    available: int
    reserved: int
    sold: int
    stock_version: int
    committed_at: datetime


@dataclass(frozen=True, kw_only=True)
class InventoryReserved(Message):
    """Event: every line of an order is reserved."""

    TIME_FIELD: ClassVar[str] = "reserved_at"
    order_id: str
    lines: tuple[StockLine, ...]
    reserved_at: datetime


@dataclass(frozen=True, kw_only=True)
class InventoryReservationFailed(Message):
    """Event: the order could not be reserved as a whole; partial holds are being released."""

    TIME_FIELD: ClassVar[str] = "failed_at"
    order_id: str
    failed_lines: tuple[ShortLine, ...]
    reason: str
    failed_at: datetime


@dataclass(frozen=True, kw_only=True)
class InventoryReleased(Message):
    """Event: compensation done; everything the order held went back to available."""

    TIME_FIELD: ClassVar[str] = "released_at"
    order_id: str
    lines: tuple[StockLine, ...]
    reason: str
    released_at: datetime


@dataclass(frozen=True, kw_only=True)
class InventoryCommitted(Message):
    """Event: the order's reservation became sold stock."""

    TIME_FIELD: ClassVar[str] = "committed_at"
    order_id: str
    lines: tuple[StockLine, ...]
    committed_at: datetime
