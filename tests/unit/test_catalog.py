"""The catalog: fingerprints against the spec, a pinned value and Apache avro, lookups, and load-time errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import avro.schema
import fastavro.schema
import pytest

from schemas import SchemaCatalog, SchemaError, SchemaLoadError, UnknownFingerprint, UnknownRecord, UnknownVersion
from schemas.catalog import SCHEMA_ROOT, fingerprint

pytestmark = pytest.mark.unit

CATALOG = SchemaCatalog.load()


def signed(fp: bytes) -> int:
    """The spec's test vectors print fingerprints as Java longs: the little-endian bytes read as signed."""
    return int.from_bytes(fp, "little", signed=True)


# --- fingerprints -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canonical", "expected"),
    [('"null"', 7195948357588979594), ('"int"', 8247732601305521295)],
)
def test_spec_vectors(canonical: str, expected: int) -> None:
    assert signed(fingerprint(canonical)) == expected


def test_fingerprint_is_little_endian() -> None:
    """Single-object encoding writes the low byte first; ``"null"`` is 0x63DD24E7CC258F8A."""
    assert fingerprint('"null"').hex() == "8a8f25cce724dd63"
    assert int.from_bytes(fingerprint('"null"'), "little") == 0x63DD24E7CC258F8A


def test_a_written_schema_keeps_its_fingerprint() -> None:
    """Messages already in the topics name their writer's schema by these bytes: a library upgrade that changed
    the canonical form or the CRC would leave them unreadable."""
    assert CATALOG.get("OrderPlaced", 1).fingerprint.hex() == "eefe1675e8aa8fa0"


@pytest.mark.parametrize("sv", list(CATALOG), ids=lambda sv: sv.label)
def test_every_schema_fingerprint_matches_fastavro_and_apache(sv: Any) -> None:
    assert len(sv.fingerprint) == 8
    assert sv.canonical_form == fastavro.schema.to_parsing_canonical_form(sv.definition)
    assert sv.fingerprint == bytes.fromhex(fastavro.schema.fingerprint(sv.canonical_form, "CRC-64-AVRO"))
    # Apache avro re-canonicalises the canonical form (a fixed point) and fingerprints it with its own CRC.
    assert avro.schema.parse(sv.canonical_form).fingerprint() == sv.fingerprint


@pytest.mark.parametrize("sv", list(CATALOG), ids=lambda sv: sv.label)
def test_apache_canonical_form_differs_only_in_logical_type_spelling(sv: Any) -> None:
    """avro 1.12 (Python) writes a primitive with a logicalType as ``{"type":"long"}`` in the canonical form,
    against the spec's [PRIMITIVES] rule, so its fingerprint of such schemas differs from fastavro, Java and
    this catalog. Without logical types the two agree exactly."""
    apache = avro.schema.parse(json.dumps(sv.definition))
    assert apache.canonical_form.replace('{"type":"long"}', '"long"') == sv.canonical_form
    if "logicalType" not in json.dumps(sv.definition):
        assert apache.fingerprint() == sv.fingerprint


# --- the real catalog ---------------------------------------------------------------------------------------


def test_loads_every_file() -> None:
    files = sorted(SCHEMA_ROOT.glob("*/*.avsc"))
    assert len(files) == len(CATALOG) == len(list(CATALOG))
    assert sorted(sv.path for sv in CATALOG) == files


def test_lookups_by_short_and_full_name() -> None:
    assert CATALOG.resolve("OrderPlaced") == CATALOG.resolve("pipeline.orders.OrderPlaced")
    files = sorted(SCHEMA_ROOT.glob("orders/OrderPlaced.v*.avsc"))
    assert [sv.version for sv in CATALOG.versions("OrderPlaced")] == list(range(1, len(files) + 1))
    latest = CATALOG.latest("pipeline.orders.OrderPlaced")
    assert (latest.name, latest.full_name, latest.context, latest.version) == (
        "OrderPlaced",
        "pipeline.orders.OrderPlaced",
        "orders",
        len(files),
    )
    assert latest.path.name == f"OrderPlaced.v{len(files)}.avsc"
    assert CATALOG.get("OrderPlaced", 1).version == 1
    assert CATALOG.by_fingerprint(latest.fingerprint) is latest
    assert "pipeline.users.UserSnapshot" in CATALOG.names()
    assert CATALOG.names() == sorted(CATALOG.names())


def test_schema_versions_are_hashable_values() -> None:
    assert len(set(CATALOG)) == len(CATALOG)
    assert CATALOG.latest("PlaceOrder") == SchemaCatalog.load().latest("PlaceOrder")


def test_unknown_record_suggests_close_names() -> None:
    with pytest.raises(UnknownRecord, match="did you mean 'OrderPlaced'"):
        CATALOG.resolve("OrderPlacd")
    with pytest.raises(UnknownRecord, match="known records: AddStock, ChangeEmail"):
        CATALOG.versions("Xyzzy")
    with pytest.raises(LookupError):
        CATALOG.latest("Xyzzy")


def test_unknown_version_and_fingerprint() -> None:
    newest = CATALOG.latest("OrderPlaced").version
    with pytest.raises(UnknownVersion, match=f"OrderPlaced has no version {newest + 1}; it has v1..v{newest}"):
        CATALOG.get("OrderPlaced", newest + 1)
    with pytest.raises(UnknownVersion):
        CATALOG.get("OrderPlaced", 0)
    with pytest.raises(UnknownFingerprint, match="0123456789abcdef") as info:
        CATALOG.by_fingerprint(bytes.fromhex("0123456789abcdef"))
    assert info.value.fingerprint == bytes.fromhex("0123456789abcdef")


# --- load errors --------------------------------------------------------------------------------------------


def record(name: str, context: str = "shop", **extra_fields: Any) -> dict[str, Any]:
    fields = [{"name": "id", "type": "string"}]
    fields += [{"name": k, **v} for k, v in extra_fields.items()]
    return {"type": "record", "name": name, "namespace": f"pipeline.{context}", "fields": fields}


def write(root: Path, rel: str, content: dict[str, Any] | str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def load_error(root: Path) -> str:
    with pytest.raises(SchemaLoadError) as info:
        SchemaCatalog.load(root)
    assert isinstance(info.value, SchemaError)
    return str(info.value)


def test_small_tree_loads(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", record("Cart"))
    write(tmp_path, "shop/Cart.v2.avsc", record("Cart", note={"type": ["null", "string"], "default": None}))
    catalog = SchemaCatalog.load(tmp_path)
    assert catalog.names() == ["pipeline.shop.Cart"]
    assert catalog.latest("Cart").version == 2


def test_copy_of_the_real_tree_loads(tmp_path: Path) -> None:
    shutil.copytree(SCHEMA_ROOT, tmp_path / "s", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    assert [sv.fingerprint for sv in SchemaCatalog.load(tmp_path / "s")] == [sv.fingerprint for sv in CATALOG]


def test_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "shop/Cart.v1.avsc", '{\n  "type": "record",\n  "name": "Cart"\n  "fields": []\n}')
    message = load_error(tmp_path)
    assert str(path) in message and "invalid JSON at line 4" in message


def test_record_name_must_match_file_name(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", record("Basket"))
    assert "record name 'Basket' does not match the file name (expected 'Cart')" in load_error(tmp_path)


def test_namespace_must_match_directory(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", record("Cart", context="orders"))
    assert "namespace 'pipeline.orders' must be 'pipeline.shop'" in load_error(tmp_path)


def test_full_name_in_name_attribute_is_accepted(tmp_path: Path) -> None:
    schema = record("Cart")
    del schema["namespace"]
    schema["name"] = "pipeline.shop.Cart"
    write(tmp_path, "shop/Cart.v1.avsc", schema)
    assert SchemaCatalog.load(tmp_path).names() == ["pipeline.shop.Cart"]


def test_version_gap(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", record("Cart"))
    write(tmp_path, "shop/Cart.v3.avsc", record("Cart", n={"type": "int", "default": 0}))
    message = load_error(tmp_path)
    assert "Cart.v3.avsc" in message and "without gaps: missing v2" in message


def test_versions_start_at_one(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v2.avsc", record("Cart"))
    assert "missing v1" in load_error(tmp_path)


def test_duplicate_schema_is_an_error(tmp_path: Path) -> None:
    """A v2 that differs from v1 only in docs has the same canonical form, so the same fingerprint."""
    write(tmp_path, "shop/Cart.v1.avsc", record("Cart"))
    write(tmp_path, "shop/Cart.v2.avsc", {**record("Cart"), "doc": "now with docs"})
    message = load_error(tmp_path)
    assert "same schema (fingerprint" in message and "Cart.v1.avsc" in message and "Cart.v2.avsc" in message


def test_invalid_avro(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", record("Cart", n={"type": "strin"}))
    message = load_error(tmp_path)
    assert "Cart.v1.avsc" in message and "invalid Avro schema" in message and "strin" in message


def test_default_of_wrong_type(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", record("Cart", n={"type": "int", "default": "zero"}))
    assert "invalid Avro schema" in load_error(tmp_path)


def test_union_default_must_match_first_branch(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", record("Cart", n={"type": ["null", "int"], "default": 3}))
    assert "field 'n': default 3 does not match the first branch of its union" in load_error(tmp_path)


def test_array_of_zero_width_items_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", record("Cart", n={"type": {"type": "array", "items": "null"}}))
    assert "array items that encode to zero bytes" in load_error(tmp_path)


def test_top_level_must_be_a_record(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", '"string"')
    assert "top level must be a record" in load_error(tmp_path)


@pytest.mark.parametrize("name", ["Cart.avsc", "Cart.v0.avsc", "Cart.v01.avsc", "Cart.vx.avsc", "Cart-x.v1.avsc"])
def test_file_naming(tmp_path: Path, name: str) -> None:
    write(tmp_path, f"shop/{name}", record("Cart"))
    assert "file name must be <RecordName>.v<N>.avsc" in load_error(tmp_path)


def test_files_belong_in_a_context_directory(tmp_path: Path) -> None:
    write(tmp_path, "Cart.v1.avsc", record("Cart"))
    assert "context directory" in load_error(tmp_path)


def test_short_names_are_unique_across_contexts(tmp_path: Path) -> None:
    write(tmp_path, "shop/Cart.v1.avsc", record("Cart"))
    write(tmp_path, "store/Cart.v1.avsc", record("Cart", context="store"))
    assert "record name 'Cart' is also defined as 'pipeline.shop.Cart'" in load_error(tmp_path)


def test_missing_root(tmp_path: Path) -> None:
    assert "does not exist" in load_error(tmp_path / "nope")
