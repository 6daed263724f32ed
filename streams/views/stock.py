"""The stock view, pure: each SKU's counts, taken from the newest ``stock_version`` any event reports.

Why it converges to the log whatever the interleaving of topics: stock is applied only when the event's
``stock_version`` is newer than the view's, so it converges to the newest version whatever order the per-order
inventory events and ``StockAdded`` arrive in (of several events reporting the same version, the earliest is
kept).
"""

from __future__ import annotations

from collections.abc import Mapping

from streams.views.events import CannotProject, Event, Op, required_str
from streams.views.keys import SKUS_KEY, stock_key

STOCK_LINE_RECORDS = frozenset({"StockLineReserved", "StockLineRejected", "StockLineReleased", "StockLineCommitted"})
"""The per-order inventory events that report a SKU's absolute counts."""
STOCK_FIELDS = ("available", "reserved", "sold", "stock_version")


def apply_to_stock(current: Mapping[str, str] | None, event: Event) -> dict[str, str] | None:
    """The SKU's stock after ``event``, or None unless its ``stock_version`` is newer than the view's.

    Several events can report one version (a rejected line reports the stock it found, unchanged); of those
    the earliest (event time, then id) is kept, so the view does not depend on which one arrives first.
    """
    sku = required_str(event, "sku")
    counts: dict[str, int] = {}
    for name in STOCK_FIELDS:
        value = event.value.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CannotProject(f"{event.record} for {sku} has no {name!r}; stock views need absolute counts")
        counts[name] = value
    if current:
        held_version = int(current.get("stock_version", -1))
        held_since = (int(current.get("updated_at", 0)), current.get("event_id", ""))
        version = counts["stock_version"]
        if held_version > version or (held_version == version and held_since <= (event.at, event.event_id)):
            return None  # same version: the earliest event that reported it stays (e.g. not a later rejection)
    return {
        "sku": sku,
        **{name: str(v) for name, v in counts.items()},
        "updated_at": str(event.at),
        "last_event": event.record,
        "event_id": event.event_id,
    }


def stock_ops(current: Mapping[str, str] | None, event: Event) -> list[Op]:
    """The writes that bring the SKU's stock view (and the SKU list) to after ``event``."""
    after = apply_to_stock(current, event)
    return [] if after is None else stock_writes(after)


def stock_writes(after: Mapping[str, str]) -> list[Op]:
    """The writes that show a SKU's stock whole (and list the SKU)."""
    fields: list[str | int] = []
    for name, value in after.items():
        fields += [name, value]
    return [Op("HSET", stock_key(after["sku"]), tuple(fields)), Op("SADD", SKUS_KEY, (after["sku"],))]
