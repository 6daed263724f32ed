"""The AsyncAPI document: made from the catalog and the topic contract, and docs/asyncapi.yaml is its output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from common.envelope import Envelope
from pipeline.asyncapi import AVRO_FORMAT, HEADERS, REGENERATE, document, envelope_headers, render
from schemas.catalog import SchemaCatalog
from schemas.flows import PARTIES, Party
from schemas.topics import TOPICS, TopicSpec

pytestmark = pytest.mark.unit

CATALOG = SchemaCatalog.load()
COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_the_committed_document_is_the_generated_one() -> None:
    generated = render(document(CATALOG))
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    assert committed == generated, f"docs/asyncapi.yaml is out of date with schemas/: run `{REGENERATE}`"


def test_every_topic_is_a_channel_carrying_its_records_with_their_newest_schema() -> None:
    doc = document(CATALOG)
    assert doc["asyncapi"] == "3.0.0"
    assert list(doc["channels"]) == [t.name for t in TOPICS]
    for spec in TOPICS:
        channel = doc["channels"][spec.name]
        assert channel["address"] == spec.name
        assert channel["bindings"]["kafka"]["partitions"] == spec.partitions
        assert list(channel["messages"]) == list(spec.records)
        for record, ref in channel["messages"].items():
            message = resolve(doc, ref["$ref"])
            assert message["payload"]["schemaFormat"] == AVRO_FORMAT
            assert message["payload"]["schema"] == CATALOG.latest(record).definition
            assert spec.key_field in message["bindings"]["kafka"]["key"]["description"]
            assert message["bindings"]["kafka"]["schemaIdPayloadEncoding"] == "confluent"


def test_older_versions_are_named_in_the_message() -> None:
    message = document(CATALOG)["components"]["messages"]["OrderPlaced"]
    assert all(f"v{v.version} (" in message["description"] for v in CATALOG.versions("OrderPlaced"))


def test_the_headers_are_the_envelope_s_with_the_always_present_ones_required() -> None:
    every, required = envelope_headers()
    assert set(HEADERS) == set(every)
    assert set(required) < set(every)
    headers = document(CATALOG)["components"]["schemas"]["Envelope"]
    assert list(headers["properties"]) == every
    assert headers["required"] == [k for k, _ in Envelope("pipeline.a.B", 1, "/s").to_headers()]


def test_operations_say_who_sends_and_who_receives_each_topic() -> None:
    spec = TopicSpec("a.events.v1", records=("OrderPlaced", "OrderRejected"), description="d", key_field="order_id")
    parties = (
        Party("writer", "w", sends=("OrderPlaced",)),
        Party("reader", "r", receives=(spec,)),
        Party("elsewhere", "e", sends=("AddStock",)),
    )
    ops = document(CATALOG, topics=(spec,), parties=parties)["operations"]
    assert list(ops) == ["writer.send.a.events.v1", "reader.receive.a.events.v1"]
    assert ops["writer.send.a.events.v1"]["action"] == "send"
    assert ops["writer.send.a.events.v1"]["messages"] == [{"$ref": "#/channels/a.events.v1/messages/OrderPlaced"}]
    assert ops["reader.receive.a.events.v1"]["action"] == "receive"
    assert len(ops["reader.receive.a.events.v1"]["messages"]) == 2


def test_every_reference_resolves_and_every_topic_has_a_sender_and_a_receiver() -> None:
    doc = yaml.safe_load(render(document(CATALOG)))

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref
    for spec in TOPICS:
        actions = {op["action"] for op in doc["operations"].values() if op["channel"]["$ref"].endswith(spec.name)}
        assert actions == {"send", "receive"}, spec.name
    assert {t["name"] for t in doc["info"]["tags"]} == {p.name for p in PARTIES}
