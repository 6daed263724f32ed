"""The CLI's offline commands and its refusal of malformed calls (nothing reaches a broker here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.cli.errors import CliError
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


PLACE_ORDER = {
    "order_id": "o-1",
    "user_id": "u-1",
    "lines": [{"sku": "a", "quantity": 1, "unit_price_cents": 100}, {"sku": "b", "quantity": 2, "unit_price_cents": 5}],
    "payment": {"method": "card", "token": "tok"},
    "idempotency_key": "k-1",
    "requested_at": 1767225600000,
}


def _publish(record: str, data: str, *extra: str, key: str = "u-1") -> list[str]:
    topic = "users.commands.v1" if record == "RegisterUser" else "orders.commands.v1"
    return ["publish", topic, record, "--key", key, "--data", data, *extra]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            _publish("PlaceOrder", json.dumps(PLACE_ORDER).replace('"b"', '"b\\u0082"')),
            "--data: lines[1].sku contains a control character (U+0082) at position 1",
        ),
        (
            _publish("PlaceOrder", json.dumps(PLACE_ORDER).replace('"card"', '"ca\\ud800rd"')),
            "--data: payment.method contains an unpaired surrogate (U+D800) at position 2",
        ),
        (
            _publish("PlaceOrder", json.dumps({**PLACE_ORDER, "idempotency_key": "k\x7f"})),
            "--data: idempotency_key contains a control character (U+007F) at position 1",
        ),
        (
            _publish("RegisterUser", json.dumps({"user_id": "u-1", "username": "ann", "email": "ann\u0085@x.io"})),
            "--data: email contains a control character (U+0085) at position 3",
        ),
        (
            _publish(
                "RegisterUser",
                json.dumps({"user_id": "u-1", "username": "a", "email": "a@x.io", "profile": {"ci\ty": "x"}}),
            ),
            "--data: profile key 'ci\\ty' contains a control character (U+0009) at position 2",
        ),
        (_publish("PlaceOrder", json.dumps(PLACE_ORDER), key="u-1\n"), "--key contains a control character (U+000A)"),
        (
            _publish("PlaceOrder", json.dumps(PLACE_ORDER), "--correlation-id", "\x9b"),
            "--correlation-id contains a control character (U+009B) at position 0",
        ),
    ],
)
def test_publish_refuses_unclean_text_naming_the_field_before_it_reaches_for_the_broker(
    args: list[str], line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from producers.toolkit import EventPublisher

    asked: list[str] = []
    monkeypatch.setattr("pipeline.cli.reach.require", lambda *dependencies: asked.append("broker"))
    monkeypatch.setattr(EventPublisher, "from_settings", lambda *a, **k: asked.append("publisher") or 1 / 0)
    result = CliRunner().invoke(main, args, env={"PIPELINE_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {line}")
    assert result.output.count("\n") == 1, "one line"
    assert asked == [], "refused before the broker is probed or a publisher built: nothing published"


def test_publish_of_the_same_record_in_clean_text_gets_as_far_as_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The records above are refused for their text alone: clean, the same one passes every check."""
    asked: list[str] = []

    def require(*dependencies: object) -> None:
        asked.append("broker")
        raise CliError("stop here")

    monkeypatch.setattr("pipeline.cli.reach.require", require)
    result = CliRunner().invoke(main, _publish("PlaceOrder", json.dumps(PLACE_ORDER)))
    assert (result.exit_code, asked) == (1, ["broker"]), result.output
    assert "error: stop here" in result.output


def test_topics_list_names_every_declared_topic() -> None:
    result = CliRunner().invoke(main, ["topics", "list"])
    assert result.exit_code == 0
    assert "orders.events.v1" in result.output
    assert "orders.events.v1.dlq" in result.output
    assert "users.snapshots.v1" in result.output
