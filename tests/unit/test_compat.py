"""The CI compatibility check: the real catalog passes; breaking changes dropped into a copy are caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from schemas import SchemaCatalog
from schemas.catalog import SCHEMA_ROOT
from schemas.compat import Incompatibility, check_compatibility, format_report
from schemas.topics import records_by_topic

pytestmark = pytest.mark.unit

TOPIC = "orders.events.v1"


def test_real_catalog_is_compatible() -> None:
    problems = check_compatibility(SchemaCatalog.load(), records_by_topic())
    assert problems == [], format_report(problems)
    assert "every record version is compatible" in format_report(problems)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the project's schema files, to drop new versions into."""
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMA_ROOT, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def add_order_placed_v3(root: Path, change: Any) -> list[Incompatibility]:
    v3 = json.loads((root / "orders/OrderPlaced.v2.avsc").read_text())
    change(v3)
    (root / "orders/OrderPlaced.v3.avsc").write_text(json.dumps(v3, indent=2))
    return check_compatibility(SchemaCatalog.load(root), records_by_topic())


def test_new_field_without_default_is_caught(tree: Path) -> None:
    problems = add_order_placed_v3(tree, lambda s: s["fields"].append({"name": "gift_wrap", "type": "boolean"}))
    # v3 cannot read v1 or v2 data (no value for gift_wrap); old readers simply skip the new field.
    assert [(p.topic, p.record, p.reader_version, p.writer_version) for p in problems] == [
        (TOPIC, "OrderPlaced", 3, 1),
        (TOPIC, "OrderPlaced", 3, 2),
    ]
    first = problems[0]
    assert first.kinds == ("reader_field_missing_default_value",)
    assert first.messages == ("gift_wrap",)
    assert first.locations == ("/fields/9",)
    text = str(first)
    assert text.startswith(f"{TOPIC}: OrderPlaced v3 cannot read data written by OrderPlaced v1: ")
    assert "gift_wrap" in text and "give it one" in text and "/fields/9" in text


def test_changed_type_is_caught_both_ways(tree: Path) -> None:
    def quantity_to_string(schema: dict[str, Any]) -> None:
        line = schema["fields"][2]["type"]["items"]
        line["fields"][1]["type"] = "string"

    problems = add_order_placed_v3(tree, quantity_to_string)
    pairs = {(p.reader_version, p.writer_version) for p in problems}
    assert pairs == {(3, 1), (3, 2), (1, 3), (2, 3)}
    assert all(p.kinds == ("type_mismatch",) for p in problems)
    text = str(next(p for p in problems if (p.reader_version, p.writer_version) == (1, 3)))
    assert "OrderPlaced v1 cannot read data written by OrderPlaced v3" in text
    assert "reader type: int not compatible with writer type: string" in text
    assert "/fields/2/type/items/fields/1/type" in text


def test_promotion_is_checked_in_both_directions(tree: Path) -> None:
    """int -> long is a legal promotion one way only: a v1 reader cannot read a long."""

    def widen(schema: dict[str, Any]) -> None:
        schema["fields"][2]["type"]["items"]["fields"][1]["type"] = "long"

    problems = add_order_placed_v3(tree, widen)
    assert {(p.reader_version, p.writer_version) for p in problems} == {(1, 3), (2, 3)}


def test_compatible_addition_passes(tree: Path) -> None:
    def add_optional(schema: dict[str, Any]) -> None:
        schema["fields"].append({"name": "coupon", "type": ["null", "string"], "default": None})
        schema["fields"].append({"name": "priority", "type": "int", "default": 0})

    assert add_order_placed_v3(tree, add_optional) == []


def test_removing_a_field_with_default_passes(tree: Path) -> None:
    assert add_order_placed_v3(tree, lambda s: s["fields"].remove(s["fields"][-1])) == []


def test_record_without_schema_file_is_reported() -> None:
    topics = {**records_by_topic(), "returns.events.v1": ("ReturnRequested",)}
    problems = check_compatibility(SchemaCatalog.load(), topics)
    assert len(problems) == 1
    problem = problems[0]
    assert (problem.topic, problem.record, problem.reader_version, problem.writer_version) == (
        "returns.events.v1",
        "ReturnRequested",
        None,
        None,
    )
    assert str(problem).startswith("returns.events.v1: ReturnRequested: no schema file <context>/ReturnRequested.v1")
    assert "unknown record 'ReturnRequested'" in str(problem)


def test_report_lists_every_problem(tree: Path) -> None:
    problems = add_order_placed_v3(tree, lambda s: s["fields"].append({"name": "gift_wrap", "type": "boolean"}))
    report = format_report(problems)
    lines = report.splitlines()
    assert lines[0] == "schemas: 2 compatibility problem(s):"
    assert lines[1:] == [f"  - {p}" for p in problems]


def test_each_topic_carrying_a_record_is_reported(tree: Path) -> None:
    problems = add_order_placed_v3(tree, lambda s: s["fields"].append({"name": "gift_wrap", "type": "boolean"}))
    topics = {TOPIC: ("OrderPlaced",), "orders.audit.v1": ("OrderPlaced", "OrderCancelled")}
    again = check_compatibility(SchemaCatalog.load(tree), topics)
    assert len(problems) == 2 and len(again) == 4
    assert {p.topic for p in again} == {TOPIC, "orders.audit.v1"}
