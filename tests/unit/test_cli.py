"""The CLI's offline commands and its refusal of malformed calls (nothing reaches a broker here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from schemas.catalog import SCHEMA_ROOT

pytestmark = pytest.mark.unit


@pytest.fixture
def schema_tree(tmp_path: Path) -> Path:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMA_ROOT, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def test_schemas_check_passes_on_the_shipped_schemas() -> None:
    result = CliRunner().invoke(main, ["schemas", "check"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")


def test_schemas_check_fails_on_an_incompatible_version(schema_tree: Path) -> None:
    v2 = json.loads((schema_tree / "orders" / "OrderPlaced.v2.avsc").read_text())
    v2["fields"].append({"name": "gift_wrap", "type": "boolean"})  # no default: v3 cannot read v1/v2 data
    (schema_tree / "orders" / "OrderPlaced.v3.avsc").write_text(json.dumps(v2))

    result = CliRunner().invoke(main, ["schemas", "check", "--root", str(schema_tree)])
    assert result.exit_code == 1
    assert "OrderPlaced v3 cannot read data written by OrderPlaced v1" in result.output
    assert "gift_wrap" in result.output


def test_schemas_check_accepts_a_compatible_version(schema_tree: Path) -> None:
    v2 = json.loads((schema_tree / "orders" / "OrderPlaced.v2.avsc").read_text())
    v2["fields"].append({"name": "gift_wrap", "type": "boolean", "default": False})
    (schema_tree / "orders" / "OrderPlaced.v3.avsc").write_text(json.dumps(v2))

    result = CliRunner().invoke(main, ["schemas", "check", "--root", str(schema_tree)])
    assert result.exit_code == 0, result.output


def test_schemas_check_reports_an_unparsable_file(schema_tree: Path) -> None:
    (schema_tree / "orders" / "OrderPlaced.v3.avsc").write_text("{ not json")
    result = CliRunner().invoke(main, ["schemas", "check", "--root", str(schema_tree)])
    assert result.exit_code == 1
    assert "OrderPlaced.v3.avsc" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publish", "orders.events.v1", "OrderPlaced", "--key", "k", "--data", "{oops"], "not valid JSON"),
        (["publish", "orders.events.v1", "OrderPlaced", "--key", "k", "--data", "3"], "must be a JSON object"),
        (["publish", "orders.events.v1", "OrderPlaced", "--data", "{}"], "Missing option '--key'"),
        (["publish", "orders.events.v1", "OrderPlaced", "--key", "", "--data", "{}"], "--key must not be empty"),
        (["tail", "nope.v1", "--max", "1"], "unknown topic 'nope.v1'"),
        (
            [
                "publish",
                "orders.events.v1",
                "OrderConfirmed",
                "--key",
                "o-2",
                "--data",
                '{"order_id": "o-1", "payment_id": "p-1", "confirmed_at": 1767225600000}',
            ],
            "keyed by order_id",
        ),
    ],
)
def test_malformed_calls_exit_non_zero_before_connecting(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args, env={"PIPELINE_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code != 0
    assert message in result.output


def test_topics_list_names_every_declared_topic() -> None:
    result = CliRunner().invoke(main, ["topics", "list"])
    assert result.exit_code == 0
    assert "orders.events.v1" in result.output
    assert "orders.events.v1.dlq" in result.output
    assert "users.snapshots.v1" in result.output
