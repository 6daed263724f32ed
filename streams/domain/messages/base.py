"""What every record shares: :class:`Message` (its Kafka key, record name and time) and the domain's time rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar


@dataclass(frozen=True, kw_only=True)
class Message:
    """An Avro record a step reads or writes. ``KEY_FIELD`` names the field holding its Kafka key."""

    KEY_FIELD: ClassVar[str] = "order_id"
    TIME_FIELD: ClassVar[str] = ""

    @property
    def key(self) -> str:
        """The message key on its topic (order id, SKU, user id or e-mail address)."""
        return str(getattr(self, self.KEY_FIELD))

    @property
    def record_name(self) -> str:
        """The Avro short name, e.g. ``OrderPlaced``."""
        return type(self).__name__

    @property
    def occurred_at(self) -> datetime | None:
        """When the fact happened (or the command was sent), if the record says."""
        return getattr(self, self.TIME_FIELD) if self.TIME_FIELD else None


def utc_millis(when: datetime) -> datetime:
    """``when`` in UTC, cut to whole milliseconds: what an Avro timestamp-millis keeps."""
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: the domain only takes timezone-aware times")
    when = when.astimezone(UTC)
    return when.replace(microsecond=when.microsecond // 1000 * 1000)
