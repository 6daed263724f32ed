"""``--json`` on the commands that print data, and ``--version``: output a script can parse, same facts as the text."""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any

import pytest
from click.testing import CliRunner

from common.admin import TopicChange, all_topics
from pipeline.cli import main
from schemas.catalog import SchemaCatalog

pytestmark = pytest.mark.unit

ORDER = {
    "order_id": "o-1",
    "status": "CANCELLED",
    "cancel_reason": "payment declined",
    "timeline": [
        {"at": 1000, "event": "OrderPlaced", "service": "orders", "detail": {}},
        {"at": 1010, "event": "InventoryReserved", "service": "inventory", "detail": {}},
        {"at": 1100, "event": "OrderCancelled", "service": "orders", "detail": {}},
    ],
}
STOCK = {"sku": "SKU-1", "available": 7, "reserved": 2, "sold": 1, "stock_version": 4, "updated_at": 1000}


def run(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


@pytest.fixture
def views(monkeypatch: pytest.MonkeyPatch) -> None:
    """The query side's reads answer from the dicts above, with no Redis behind them."""
    monkeypatch.setattr("pipeline.cli.queries.query_redis", lambda *a: object())
    monkeypatch.setattr("streams.views.read.get_order", lambda client, order_id: ORDER if order_id == "o-1" else None)
    monkeypatch.setattr("streams.views.read.stock", lambda client, sku: STOCK if sku == "SKU-1" else None)


def test_version_names_the_installed_distribution() -> None:
    assert run("--version").output.strip() == f"pipeline {version('order-pipeline')}"


def test_topics_list_json_has_one_object_per_declared_topic() -> None:
    rows = json_lines(run("topics", "list", "--json").output)
    assert [row["topic"] for row in rows] == [spec.name for spec in all_topics()]
    placed = next(row for row in rows if row["topic"] == "orders.events.v1")
    assert placed["key_field"] == "order_id" and "OrderPlaced" in placed["records"]
    assert placed["policy"] == "forever" and placed["retention_ms"] == -1


def test_schemas_list_json_has_one_object_per_schema_version() -> None:
    rows = json_lines(run("schemas", "list", "--json").output)
    catalog = list(SchemaCatalog.load())
    assert len(rows) == len(catalog)
    assert {(r["record"], r["version"], r["fingerprint"]) for r in rows} == {
        (s.full_name, s.version, s.fingerprint.hex()) for s in catalog
    }


def test_schemas_check_json_reports_ok_and_the_counts() -> None:
    doc = json.loads(run("schemas", "check", "--json").output)
    catalog = SchemaCatalog.load()
    assert doc == {"ok": True, "versions": len(catalog), "records": len(catalog.names()), "problems": []}


def test_schemas_check_json_lists_problems_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("schemas.compat.check_compatibility", lambda catalog, topics: ["OrderPlaced v3: no"])
    result = CliRunner().invoke(main, ["schemas", "check", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["problems"] == ["OrderPlaced v3: no"]


def test_topics_apply_json_has_one_object_per_change(monkeypatch: pytest.MonkeyPatch) -> None:
    changes = [TopicChange("orders.events.v1", "created"), TopicChange("users.events.v1", "config", "retention")]
    monkeypatch.setattr("pipeline.cli.reach.require", lambda *deps: None)
    monkeypatch.setattr("common.admin.admin_client", lambda settings: object())
    monkeypatch.setattr("common.admin.apply_topics", lambda admin, settings: changes)
    rows = json_lines(run("topics", "apply", "--json").output)
    assert rows == [
        {"topic": "orders.events.v1", "action": "created", "detail": ""},
        {"topic": "users.events.v1", "action": "config", "detail": "retention"},
    ]


def test_stock_json_is_the_view(views: None) -> None:
    assert json.loads(run("stock", "SKU-1", "--json").output) == STOCK


def test_trace_json_gives_each_steps_offset_and_gap(views: None) -> None:
    doc = json.loads(run("trace", "o-1", "--json").output)
    assert (doc["order_id"], doc["status"], doc["cancel_reason"]) == ("o-1", "CANCELLED", "payment declined")
    assert [(s["event"], s["service"], s["offset_ms"], s["gap_ms"]) for s in doc["steps"]] == [
        ("OrderPlaced", "orders", 0, 0),
        ("InventoryReserved", "inventory", 10, 10),
        ("OrderCancelled", "orders", 100, 90),
    ]


def test_trace_and_stock_json_of_a_missing_view_exit_1(views: None) -> None:
    for args in (["trace", "o-404", "--json"], ["stock", "SKU-404", "--json"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "error:" in result.output, args
