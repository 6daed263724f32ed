"""The schema files themselves: every topic's records exist, and the project's conventions hold."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from schemas import SchemaCatalog, SchemaVersion
from schemas.topics import records_by_topic

pytestmark = pytest.mark.unit

CATALOG = SchemaCatalog.load()
ALL = list(CATALOG)
TIMESTAMP = {"type": "long", "logicalType": "timestamp-millis"}


def fields(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field of a raw schema definition, nested records included, with a dotted path."""
    if isinstance(schema, list):
        for branch in schema:
            yield from fields(branch, path)
    elif isinstance(schema, dict):
        for f in schema.get("fields", ()):
            at = f"{path}.{f['name']}" if path else f["name"]
            yield at, f
            yield from fields(f["type"], at)
        for key in ("items", "values"):
            if key in schema:
                yield from fields(schema[key], path)


@pytest.mark.parametrize("record", sorted({r for rs in records_by_topic().values() for r in rs}))
def test_every_topic_record_has_a_v1(record: str) -> None:
    assert CATALOG.get(record, 1).name == record


def test_no_schema_is_orphaned() -> None:
    carried = {r for rs in records_by_topic().values() for r in rs}
    assert {sv.name for sv in CATALOG} == carried


@pytest.mark.parametrize("sv", ALL, ids=lambda sv: sv.label)
def test_conventions(sv: SchemaVersion) -> None:
    d = sv.definition
    assert d["namespace"] == f"pipeline.{sv.context}" and d["name"] == sv.name
    assert d.get("doc"), "every record says what it is"
    for path, f in fields(d):
        name, ftype = f["name"], f["type"]
        if name.endswith("_at"):
            assert ftype in (TIMESTAMP, ["null", TIMESTAMP]), f"{path}: times are (optional) timestamp-millis longs"
        if name.endswith("_cents"):
            assert ftype in ("long", ["null", "long"]), f"{path}: money is long cents"
        if name.endswith("_id") or name in ("sku", "idempotency_key"):
            assert ftype in ("string", ["null", "string"]), f"{path}: ids are strings"
        if isinstance(ftype, list):
            assert ftype[0] == "null" and f.get("default", "absent") is None, f"{path}: optional is null-first"
        if name in ("version", "expected_version", "actual_version"):
            assert ftype in ("long", ["null", "long"]), f"{path}: versions are longs"


def test_user_events_carry_the_aggregate_version() -> None:
    versioned = set(records_by_topic()["users.events.v1"]) - {"UserOnboardingStarted", "UserCommandRejected"}
    for name in versioned | {"UserSnapshot"}:
        assert any(f["name"] == "version" and f["type"] == "long" for f in CATALOG.latest(name).definition["fields"])


def test_order_placed_v2_is_v1_plus_channel_and_note() -> None:
    v1, v2 = (CATALOG.get("OrderPlaced", n).definition["fields"] for n in (1, 2))
    assert v2[: len(v1)] == v1
    assert [(f["name"], f["type"], f["default"]) for f in v2[len(v1) :]] == [
        ("channel", "string", "api"),
        ("note", ["null", "string"], None),
    ]


def test_order_placed_v3_is_v2_plus_payment_details() -> None:
    """The payment service needs PlaceOrder's payment instrument; v3 carries it, '' for older data."""
    v2, v3 = (CATALOG.get("OrderPlaced", n).definition["fields"] for n in (2, 3))
    assert v3[: len(v2)] == v2
    assert [(f["name"], f["type"], f["default"]) for f in v3[len(v2) :]] == [
        ("payment_method", "string", ""),
        ("payment_token", "string", ""),
    ]


@pytest.mark.parametrize(
    "record",
    ["StockAdded", "StockLineReserved", "StockLineRejected", "StockLineReleased", "StockLineCommitted"],
)
def test_stock_events_carry_the_levels_after_the_change(record: str) -> None:
    """A read view of a SKU applies an event only if its stock_version is newer than what it holds."""
    types = {f["name"]: f["type"] for f in CATALOG.latest(record).definition["fields"]}
    assert {k: types.get(k) for k in ("available", "reserved", "sold", "stock_version")} == {
        "available": "int",
        "reserved": "int",
        "sold": "int",
        "stock_version": "long",
    }


def test_shared_nested_types_keep_one_full_name() -> None:
    """Each file defines its nested records inline; the same type has the same full name in every file."""
    for name, nested in [("PlaceOrder", "pipeline.orders.OrderLine"), ("OrderPlaced", "pipeline.orders.OrderLine")]:
        assert nested in CATALOG.latest(name).parsed["__named_schemas"]
    for name in ("InventoryReserved", "InventoryReleased", "InventoryCommitted"):
        assert "pipeline.inventory.StockLine" in CATALOG.latest(name).parsed["__named_schemas"]
