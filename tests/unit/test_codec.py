"""The codec (Confluent wire format): round trips, evolution, writer schemas from the registry, encode validation,
and decoding hostile bytes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    AvroCodec,
    CorruptPayload,
    DecodeError,
    IncompatibleReader,
    InvalidRecord,
    MemoryRegistry,
    NotConfluentFramed,
    RegistryUnavailable,
    SchemaCatalog,
    SchemaError,
    SchemaVersion,
    UnexpectedRecord,
    UnknownRecord,
    UnknownSchemaId,
    UnknownVersion,
    to_json_compatible,
)
from schemas.codec import HEADER_SIZE, MAGIC, frame
from schemas.registry import RegisteredSchema, schema_text, subject_of

pytestmark = pytest.mark.unit

CATALOG = SchemaCatalog.load()
CODEC = AvroCodec(CATALOG)
CODEC.warm()
WHEN = datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC)


def sample(schema: Any, named: dict[str, Any], *, nulls: bool = False) -> Any:
    """A valid value of a parsed schema: every optional filled (or null with ``nulls``), one item per list."""
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return None if nulls or not branches else sample(branches[0], named, nulls=nulls)
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, dict):
        if schema.get("logicalType") == "timestamp-millis":
            return WHEN
        kind = schema["type"]
        if kind == "record":
            return {f["name"]: sample(f["type"], named, nulls=nulls) for f in schema["fields"]}
        if kind == "array":
            return [sample(schema["items"], named, nulls=nulls)]
        if kind == "map":
            return {"key": sample(schema["values"], named, nulls=nulls)}
        if kind == "enum":
            return schema["symbols"][0]
        schema = kind
    return {"null": None, "boolean": True, "int": 7, "long": 2**40, "float": 1.5, "double": 2.5,
            "string": "text-é", "bytes": b"\x00\xff"}[schema]  # fmt: skip


def sample_of(sv: SchemaVersion, *, nulls: bool = False) -> dict[str, Any]:
    value: dict[str, Any] = sample(sv.parsed, sv.parsed["__named_schemas"], nulls=nulls)
    return value


ALL = list(CATALOG)
ORDER_PLACED_V1 = sample_of(CATALOG.get("OrderPlaced", 1))


def decode_error(data: bytes, **kwargs: Any) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(data, **kwargs)
    return info.value


# --- round trips --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sv", ALL, ids=lambda sv: sv.label)
@pytest.mark.parametrize("nulls", [False, True], ids=["filled", "nulls"])
def test_round_trip_every_record(sv: SchemaVersion, nulls: bool) -> None:
    value = sample_of(sv, nulls=nulls)
    data = CODEC.encode(sv.name, value, version=sv.version)
    decoded = CODEC.decode(data, reader_version=sv.version, expected={sv.name})
    assert decoded.value == value
    assert (decoded.name, decoded.full_name, decoded.writer_version, decoded.reader_version) == (
        sv.name,
        sv.full_name,
        sv.version,
        sv.version,
    )


def test_wire_format_is_magic_schema_id_body() -> None:
    sv = CATALOG.latest("PlaceOrder")
    value = sample_of(sv)
    data = CODEC.encode("PlaceOrder", value)
    body = io.BytesIO()
    schemaless_writer(body, sv.parsed, value)
    assert data[:1] == MAGIC == b"\x00"
    assert data[1:HEADER_SIZE] == CODEC.schema_id(sv).to_bytes(4, "big")
    assert data[HEADER_SIZE:] == body.getvalue()
    assert CODEC.registry.lookup(CODEC.schema_id(sv)).subject == "pipeline.orders.PlaceOrder"


def test_encode_uses_latest_version_unless_told() -> None:
    newest = CATALOG.latest("OrderPlaced").version
    v2 = {**ORDER_PLACED_V1, "channel": "web", "note": None}
    assert CODEC.decode(CODEC.encode("pipeline.orders.OrderPlaced", v2)).writer_version == newest
    assert CODEC.decode(CODEC.encode("OrderPlaced", ORDER_PLACED_V1, version=1)).writer_version == 1


def test_defaulted_fields_may_be_omitted() -> None:
    value = {k: v for k, v in sample_of(CATALOG.latest("UserCommandRejected")).items() if "version" not in k}
    decoded = CODEC.decode(CODEC.encode("UserCommandRejected", value))
    assert decoded.value["expected_version"] is None and decoded.value["actual_version"] is None


def test_epoch_integers_are_accepted_for_timestamps() -> None:
    data = CODEC.encode("RecordLogin", {"user_id": "u1", "logged_in_at": 1_714_566_615_123})
    assert CODEC.decode(data).value["logged_in_at"] == WHEN


# --- evolution ----------------------------------------------------------------------------------------------


def test_v1_data_read_as_v2_gets_defaults() -> None:
    decoded = CODEC.decode(CODEC.encode("OrderPlaced", ORDER_PLACED_V1, version=1), reader_version=2)
    assert (decoded.writer_version, decoded.reader_version) == (1, 2)
    assert decoded.value == {**ORDER_PLACED_V1, "channel": "api", "note": None}


def test_v2_data_read_as_v1_drops_new_fields() -> None:
    data = CODEC.encode("OrderPlaced", {**ORDER_PLACED_V1, "channel": "web", "note": "ring twice"}, version=2)
    decoded = CODEC.decode(data, reader_version=1)
    assert (decoded.writer_version, decoded.reader_version) == (2, 1)
    assert decoded.value == ORDER_PLACED_V1


def test_v1_data_read_as_v1() -> None:
    decoded = CODEC.decode(CODEC.encode("OrderPlaced", ORDER_PLACED_V1, version=1), reader_version=1)
    assert decoded.value == ORDER_PLACED_V1


def test_missing_reader_version_is_incompatible_reader() -> None:
    missing = CATALOG.latest("OrderPlaced").version + 1
    error = decode_error(CODEC.encode("OrderPlaced", ORDER_PLACED_V1, version=1), reader_version=missing)
    assert isinstance(error, IncompatibleReader)
    assert "OrderPlaced v1" in str(error) and f"no version {missing}" in str(error)


def test_unresolvable_pair_is_incompatible_reader(tmp_path: Path) -> None:
    """The catalog does not judge compatibility (CI does); the codec still fails cleanly on a bad pair."""
    base = {
        "type": "record",
        "name": "Cart",
        "namespace": "pipeline.shop",
        "fields": [{"name": "id", "type": "string"}],
    }
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop/Cart.v1.avsc").write_text(json.dumps(base))
    v2 = {**base, "fields": [*base["fields"], {"name": "qty", "type": "int"}]}
    (tmp_path / "shop/Cart.v2.avsc").write_text(json.dumps(v2))
    codec = AvroCodec(SchemaCatalog.load(tmp_path))
    data = codec.encode("Cart", {"id": "c1"}, version=1)
    with pytest.raises(IncompatibleReader, match="Cart v1 data cannot be read as Cart v2"):
        codec.decode(data)
    assert codec.decode(data, reader_version=1).value == {"id": "c1"}


# --- encode validation --------------------------------------------------------------------------------------


def place_order(**changes: Any) -> dict[str, Any]:
    return {**sample_of(CATALOG.latest("PlaceOrder")), **changes}


def invalid(name: str, value: Any, version: int | None = None) -> str:
    with pytest.raises(InvalidRecord) as info:
        CODEC.encode(name, value, version)
    assert isinstance(info.value, SchemaError) and isinstance(info.value, ValueError)
    return str(info.value)


def test_wrong_type_names_the_field_path() -> None:
    lines = [{"sku": "A", "quantity": 1, "unit_price_cents": 5}, {"sku": "B", "quantity": "x", "unit_price_cents": 5}]
    assert invalid("PlaceOrder", place_order(lines=lines)) == (
        "PlaceOrder v2: field 'lines[1].quantity' expected int, got 'x'"
    )


def test_missing_field() -> None:
    value = place_order()
    del value["user_id"]
    assert invalid("PlaceOrder", value) == "PlaceOrder v2: missing required field 'user_id'"


def test_missing_nested_field() -> None:
    message = invalid("PlaceOrder", place_order(payment={"method": "card"}))
    assert message == "PlaceOrder v2: missing required field 'payment.token'"


def test_extra_keys_are_refused_not_dropped() -> None:
    message = invalid("PlaceOrder", place_order(coupon="X", payment={"method": "card", "token": "t", "cvv": "1"}))
    assert message.startswith("PlaceOrder v2: ")
    assert "unknown field 'coupon'" in message and "unknown field 'payment.cvv'" in message


def test_extra_key_in_array_item() -> None:
    lines = [{"sku": "A", "quantity": 1, "unit_price_cents": 5, "colour": "red"}]
    assert "unknown field 'lines[0].colour'" in invalid("PlaceOrder", place_order(lines=lines))


def test_several_problems_are_all_reported() -> None:
    value = place_order(idempotency_key=5, lines="A")
    del value["order_id"]
    message = invalid("PlaceOrder", value)
    assert "missing required field 'order_id'" in message
    assert "field 'lines' expected array, got 'A'" in message
    assert "field 'idempotency_key' expected string, got 5" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"requested_at": datetime(2024, 5, 1)}, "field 'requested_at' is a naive datetime"),
        ({"requested_at": "2024-05-01"}, "field 'requested_at' expected timestamp-millis"),
        ({"requested_at": 10**20}, "field 'requested_at' expected timestamp-millis"),
        ({"lines": [{"sku": "A", "quantity": 2**31, "unit_price_cents": 1}]}, "'lines[0].quantity' expected int"),
        ({"lines": [{"sku": "A", "quantity": True, "unit_price_cents": 1}]}, "'lines[0].quantity' expected int"),
        ({"lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 2**63}]}, "'lines[0].unit_price_cents'"),
        ({"payment": None}, "field 'payment' expected record pipeline.orders.PaymentDetails, got None"),
    ],
)
def test_bad_values(changes: dict[str, Any], expected: str) -> None:
    assert expected in invalid("PlaceOrder", place_order(**changes))


def test_optional_and_map_values() -> None:
    notification = sample_of(CATALOG.latest("NotificationSent"))
    assert "field 'order_id' expected null or string, got 5" in invalid(
        "NotificationSent", {**notification, "order_id": 5}
    )
    user = sample_of(CATALOG.latest("RegisterUser"))
    assert "field \"profile['age']\" expected string, got 42" in invalid(
        "RegisterUser", {**user, "profile": {"age": 42}}
    )
    assert "expected map with string keys" in invalid("RegisterUser", {**user, "profile": {1: "x"}})


def test_not_a_mapping() -> None:
    assert invalid("PlaceOrder", None) == "PlaceOrder v2: expected record pipeline.orders.PlaceOrder, got None"


def test_encoding_an_older_version_checks_that_version() -> None:
    message = invalid("OrderPlaced", {**ORDER_PLACED_V1, "channel": "web"}, version=1)
    assert message == "OrderPlaced v1: unknown field 'channel' (not in the schema; it would be dropped)"


def test_unknown_record_or_version_on_encode() -> None:
    with pytest.raises(UnknownRecord):
        CODEC.encode("OrderPlacd", ORDER_PLACED_V1)
    with pytest.raises(UnknownVersion):
        CODEC.encode("OrderPlaced", ORDER_PLACED_V1, version=9)


# --- decoding bad bytes -------------------------------------------------------------------------------------

GOOD = CODEC.encode("PlaceOrder", place_order())


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x00", GOOD[: HEADER_SIZE - 1]], ids=["1", "2", "4"])
def test_too_short(data: bytes) -> None:
    error = decode_error(data)
    assert isinstance(error, NotConfluentFramed)
    assert f"too short ({len(data)} bytes)" in str(error)


def test_wrong_magic_shows_the_bytes() -> None:
    error = decode_error(b'{"order_id": "o1"}')
    assert isinstance(error, NotConfluentFramed)
    assert "wrong magic byte" in str(error) and "7b 22 6f 72" in str(error)
    assert isinstance(decode_error(b""), NotConfluentFramed)
    assert isinstance(decode_error(b"\x01" + GOOD[1:]), NotConfluentFramed)


def test_single_object_encoding_says_what_it_is() -> None:
    """What this pipeline wrote before the registry: refused, with a reason that names it."""
    error = decode_error(b"\xc3\x01" + bytes.fromhex("eefe1675e8aa8fa0") + b"\x02o")
    assert isinstance(error, NotConfluentFramed)
    assert "single-object encoding (C3 01 + fingerprint)" in str(error) and "c3 01 ee fe 16" in str(error)


def test_unknown_schema_id() -> None:
    error = decode_error(frame(999_999) + GOOD[HEADER_SIZE:])
    assert isinstance(error, UnknownSchemaId)
    assert "999999" in str(error)


def test_every_truncation_is_a_decode_error() -> None:
    for size in range(len(GOOD)):
        error = decode_error(GOOD[:size])
        assert isinstance(error, CorruptPayload if size >= HEADER_SIZE else NotConfluentFramed), size
    assert "PlaceOrder v2: body does not decode (corrupt or truncated): " in str(decode_error(GOOD[:-1]))


def test_trailing_bytes() -> None:
    error = decode_error(GOOD + b"\x00\x01")
    assert isinstance(error, CorruptPayload)
    assert str(error) == "PlaceOrder v2: 2 trailing byte(s) after the record"


def test_invalid_utf8() -> None:
    data = CODEC.encode("RecordLogin", {"user_id": "ab", "logged_in_at": WHEN})
    error = decode_error(data[:HEADER_SIZE] + b"\x04\xff\xfe" + data[HEADER_SIZE + 3 :])
    assert isinstance(error, CorruptPayload) and "UnicodeDecodeError" in str(error)


def zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes([*out, n])


@pytest.mark.parametrize("length", [2**62, 2**63 - 1, -(2**63), -5, 2**31])
def test_huge_declared_lengths_fail_fast(length: int) -> None:
    """A string length or array block count from garbage must neither allocate nor loop."""
    head = frame(CODEC.schema_id(CATALOG.latest("RecordLogin")))
    assert isinstance(decode_error(head + zigzag(length) + b"abc"), CorruptPayload)
    head = frame(CODEC.schema_id(CATALOG.latest("InventoryReserved")))
    assert isinstance(decode_error(head + b"\x02o" + zigzag(length) + b"\x02s\x02" * 3), CorruptPayload)


def test_unexpected_record_is_checked_before_the_body() -> None:
    error = decode_error(GOOD, expected=("OrderPlaced", "OrderCancelled"))
    assert isinstance(error, UnexpectedRecord)
    assert str(error) == "unexpected record PlaceOrder v2; expected one of: OrderCancelled, OrderPlaced"
    assert isinstance(decode_error(GOOD[:HEADER_SIZE] + b"\xff", expected=()), UnexpectedRecord)


def test_bytearray_and_memoryview_input() -> None:
    assert CODEC.decode(bytearray(GOOD)).value == CODEC.decode(memoryview(GOOD)).value == place_order()


HEADERS = [frame(CODEC.schema_id(sv)) for sv in ALL]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_decode_error(data: bytes, **kwargs: Any) -> None:
    try:
        CODEC.decode(data, **kwargs)
    except DecodeError:
        pass


@FUZZ
@given(st.binary(max_size=80))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    decode_or_decode_error(data)
    decode_or_decode_error(MAGIC + data)
    decode_or_decode_error(b"\xc3\x01" + data)


@FUZZ
@given(st.sampled_from(HEADERS), st.binary(max_size=120), st.sampled_from([None, 1, 2]))
def test_fuzz_body_after_valid_header(header: bytes, body: bytes, reader_version: int | None) -> None:
    decode_or_decode_error(header + body, reader_version=reader_version)


@FUZZ
@given(st.sampled_from(ALL), st.data())
def test_fuzz_mutated_valid_messages(sv: SchemaVersion, data: st.DataObject) -> None:
    encoded = bytearray(CODEC.encode(sv.name, sample_of(sv), version=sv.version))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(HEADER_SIZE, len(encoded) - 1))
        encoded[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(HEADER_SIZE, len(encoded)))
    decode_or_decode_error(bytes(encoded[:cut]) + data.draw(st.binary(max_size=8)))


# --- the rest -----------------------------------------------------------------------------------------------


def test_no_json_parsing_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Schemas are parsed once by the catalog; encode and decode never touch JSON."""
    codec = AvroCodec(CATALOG)
    codec.warm(["OrderPlaced"])

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("JSON parsed per call")

    monkeypatch.setattr(json, "loads", forbidden)
    monkeypatch.setattr(json, "load", forbidden)
    for _ in range(3):
        decoded = codec.decode(codec.encode("OrderPlaced", ORDER_PLACED_V1, version=1))
        assert decoded.reader_version == CATALOG.latest("OrderPlaced").version


def test_to_json_compatible() -> None:
    decoded = CODEC.decode(CODEC.encode("PlaceOrder", place_order()))
    printable = to_json_compatible(decoded.value)
    assert printable["requested_at"] == "2024-05-01T12:30:15.123000+00:00"
    assert json.loads(json.dumps(printable)) == printable
    odd = {"b": b"\x01\xff", "d": Decimal("1.50"), "u": UUID(int=1), "t": (1, 2), "f": float("nan")}
    assert to_json_compatible(odd) == {
        "b": "01ff",
        "d": "1.50",
        "u": "00000000-0000-0000-0000-000000000001",
        "t": [1, 2],
        "f": "nan",
    }


def test_error_hierarchy() -> None:
    for error in (NotConfluentFramed, UnknownSchemaId, CorruptPayload, UnexpectedRecord, IncompatibleReader):
        assert issubclass(error, DecodeError) and issubclass(error, SchemaError)
    assert not issubclass(RegistryUnavailable, DecodeError)  # a registry down is never a dead letter


# --- the registry -------------------------------------------------------------------------------------------


class CountingRegistry(MemoryRegistry):
    """An in-memory registry that counts the calls made to it, and can be taken down."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.down = False

    def register(self, subject: str, schema: str) -> int:
        self.calls += 1
        if self.down:
            raise RegistryUnavailable("down")
        return super().register(subject, schema)

    def lookup(self, schema_id: int) -> RegisteredSchema:
        self.calls += 1
        if self.down:
            raise RegistryUnavailable("down")
        return super().lookup(schema_id)


def newer_order_placed() -> dict[str, Any]:
    """A version of OrderPlaced this catalog was not shipped: the latest plus a defaulted field."""
    latest = CATALOG.latest("OrderPlaced").definition
    return {**latest, "fields": [*latest["fields"], {"name": "gift_wrap", "type": "boolean", "default": False}]}


def test_a_reader_resolves_a_writer_schema_it_was_not_shipped() -> None:
    """The writer's schema comes from the registry by id, once; the value is read as the reader's latest."""
    registry = CountingRegistry()
    reader = AvroCodec(CATALOG, registry)
    newer = newer_order_placed()
    schema_id = registry.register(subject_of("pipeline.orders.OrderPlaced"), json.dumps(newer))
    value = {**sample_of(CATALOG.latest("OrderPlaced")), "gift_wrap": True}
    body = io.BytesIO()
    from fastavro import parse_schema

    schemaless_writer(body, parse_schema(newer), value)
    data = frame(schema_id) + body.getvalue()
    registry.calls = 0
    decoded = reader.decode(data, expected=("OrderPlaced",))
    latest = CATALOG.latest("OrderPlaced").version
    assert decoded.name == "OrderPlaced" and decoded.reader_version == latest
    assert decoded.writer_version == 1  # its version under the subject of this registry
    assert decoded.value == {k: v for k, v in value.items() if k != "gift_wrap"}
    assert reader.record_name(data) == "OrderPlaced"
    looked_up = registry.calls
    registry.down = True  # cached: neither the id nor the pair is asked again
    for _ in range(3):
        assert reader.decode(data).value == decoded.value
    assert registry.calls == looked_up == 1


def test_a_known_writer_schema_is_the_catalogs_version() -> None:
    """Another process registered the catalog's schema: this reader maps its id to its own catalog version."""
    registry = MemoryRegistry()
    writer, reader = AvroCodec(CATALOG, registry), AvroCodec(CATALOG, registry)
    data = writer.encode("OrderPlaced", ORDER_PLACED_V1, version=1)
    decoded = reader.decode(data, reader_version=2)
    assert (decoded.writer_version, decoded.reader_version) == (1, 2)
    assert decoded.value == {**ORDER_PLACED_V1, "channel": "api", "note": None}


def test_no_registry_call_after_warm_up() -> None:
    registry = CountingRegistry()
    codec = AvroCodec(CATALOG, registry)
    codec.warm()
    assert registry.calls == len(CATALOG)
    registry.down = True
    for sv in ALL:
        data = codec.encode(sv.name, sample_of(sv), version=sv.version)
        assert codec.decode(data).writer_version == sv.version
        assert codec.record_name(data) == sv.name
    assert registry.calls == len(CATALOG)


def test_registry_down_is_not_a_decode_error() -> None:
    """An id not cached yet while the registry is down: RegistryUnavailable, which no consumer dead-letters."""
    registry = CountingRegistry()
    writer = AvroCodec(CATALOG, registry)
    data = writer.encode("OrderPlaced", ORDER_PLACED_V1, version=1)
    reader = AvroCodec(CATALOG, registry)
    registry.down = True
    with pytest.raises(RegistryUnavailable):
        reader.decode(data)
    assert reader.record_name(data) is None  # never asks the registry
    registry.down = False
    assert reader.decode(data).value["order_id"] == ORDER_PLACED_V1["order_id"]


def test_registered_text_is_the_whole_definition() -> None:
    """Defaults and docs are registered (the registry's compatibility check needs the defaults)."""
    sv = CATALOG.get("OrderPlaced", 2)
    assert json.loads(schema_text(sv)) == sv.definition
    assert '"default"' in schema_text(sv)
