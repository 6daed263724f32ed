"""Avro in the Confluent wire format: ``00`` + 4-byte big-endian schema id + Avro binary body (fastavro).

The id names the writer's schema in the schema registry (:mod:`schemas.registry`), so a consumer resolves any
version it has never been told about: it fetches that writer schema once, caches it, and resolves it against its
own reader version; any Confluent-compatible client reads the same bytes. Ids, parsed schemas and writer/reader
pairs are cached: after the first record of each schema there is no registry call, and a record costs what fastavro
costs. Every decode failure is a :class:`~schemas.errors.DecodeError` with a message fit for a dead-letter header:
a malformed message must never stop a partition. A registry that cannot be reached is not the message's fault:
that is :class:`~schemas.registry.RegistryUnavailable`, never a ``DecodeError``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from schemas.catalog import SchemaCatalog, SchemaVersion, fingerprint
from schemas.errors import (
    CorruptPayload,
    IncompatibleReader,
    InvalidRecord,
    NotConfluentFramed,
    UnexpectedRecord,
    UnknownFingerprint,
    UnknownRecord,
    UnknownVersion,
)
from schemas.registry import PROCESS_REGISTRY, SchemaRegistry, schema_text, subject_of

MAGIC = b"\x00"
HEADER_SIZE = len(MAGIC) + 4
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
"""The single-object encoding's marker: what this pipeline wrote before the registry (recognised, refused)."""

_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_TIMESTAMP_UNITS = {"timestamp-millis": 1_000, "timestamp-micros": 1_000_000}
# Integers beyond datetime's range would encode but then fail to decode; refuse them when writing.
_EPOCH_DAY = datetime(1970, 1, 1).toordinal()
_TIMESTAMP_SECONDS = (
    (datetime.min.toordinal() - _EPOCH_DAY) * 86_400,
    (datetime.max.toordinal() - _EPOCH_DAY + 1) * 86_400 - 1,
)


@dataclass(frozen=True)
class Decoded:
    """A decoded message: which record and versions were involved, and the value as the reader sees it."""

    name: str
    full_name: str
    writer_version: int
    reader_version: int
    value: dict[str, Any]


def frame(schema_id: int) -> bytes:
    """The 5-byte header of a value written with schema ``schema_id``."""
    return MAGIC + schema_id.to_bytes(4, "big")


class AvroCodec:
    """Encodes and decodes records of a :class:`SchemaCatalog` in the Confluent wire format against ``registry``.

    Without a registry, the process's own in memory (:data:`~schemas.registry.PROCESS_REGISTRY`): ids then mean
    something only inside this process (tests, the offline benchmark). Cheap per call: caches ids, writer schemas
    and writer/reader pairs."""

    def __init__(self, catalog: SchemaCatalog, registry: SchemaRegistry | None = None) -> None:
        self.catalog = catalog
        self.registry: SchemaRegistry = registry if registry is not None else PROCESS_REGISTRY
        self._writers: dict[tuple[str, int | None], tuple[SchemaVersion, _Check, bytes]] = {}
        self._ids: dict[tuple[str, int], int] = {}
        self._by_id: dict[int, SchemaVersion] = {}
        self._pairs: dict[tuple[int, int | None], tuple[SchemaVersion, SchemaVersion]] = {}

    def schema_id(self, sv: SchemaVersion) -> int:
        """The registry's id of a catalog schema, registering it if new (one call per schema per process)."""
        schema_id = self._ids.get((sv.full_name, sv.version))
        if schema_id is None:
            schema_id = self.registry.register(subject_of(sv.full_name), schema_text(sv))
            self._ids[(sv.full_name, sv.version)] = schema_id
            self._by_id.setdefault(schema_id, sv)
        return schema_id

    def warm(self, names: Collection[str] | None = None) -> None:
        """Resolve the id of every version of ``names`` (default: the whole catalog) now, so no registry call is
        made later for them, neither when writing nor when reading. Raises what the registry raises."""
        wanted = None if names is None else {self.catalog.resolve(n) for n in names}
        for sv in self.catalog:
            if wanted is None or sv.full_name in wanted:
                self._writer(sv.full_name, sv.version)

    def _writer(self, name: str, version: int | None) -> tuple[SchemaVersion, _Check, bytes]:
        sv = self.catalog.latest(name) if version is None else self.catalog.get(name, version)
        writer = self._writers[(name, version)] = (sv, _strict_check(sv), frame(self.schema_id(sv)))
        return writer

    def encode(self, name: str, value: Mapping[str, Any], version: int | None = None) -> bytes:
        """Validate ``value`` against the record (latest version unless given) and write it framed with its id.

        The first value of a schema asks the registry for its id (registering it if new); a refusal raises the
        registry's reason (:class:`~schemas.registry.RegistryError`)."""
        writer = self._writers.get((name, version))
        if writer is None:
            writer = self._writer(name, version)
        sv, strict, prefix = writer
        try:
            valid = strict(value) and validate(value, sv.parsed, raise_errors=False, strict=True)
        except Exception:  # a logical-type converter choking on an odd value: explain below
            valid = False
        if not valid:
            raise InvalidRecord(f"{sv.label}: {'; '.join(_explain(value, sv))}")
        out = io.BytesIO()
        out.write(prefix)
        try:
            schemaless_writer(out, sv.parsed, value)
        except Exception as exc:  # validated above, so a fastavro corner case; still the caller's value
            raise InvalidRecord(f"{sv.label}: cannot encode: {type(exc).__name__}: {exc}") from exc
        return out.getvalue()

    def decode(
        self,
        data: bytes | bytearray | memoryview,
        *,
        reader_version: int | None = None,
        expected: Collection[str] | None = None,
    ) -> Decoded:
        """Decode a Confluent-framed record, resolved to ``reader_version`` (default: latest).

        ``expected`` lists the short record names the caller accepts (a topic's records). Raises only
        :class:`~schemas.errors.DecodeError` subclasses, whatever the bytes, or
        :class:`~schemas.registry.RegistryUnavailable` when an id not yet cached cannot be looked up now.
        """
        if len(data) < HEADER_SIZE or data[:1] != MAGIC:
            raise NotConfluentFramed(_not_framed(data))
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        pair = self._pairs.get((schema_id, reader_version))
        if pair is None:
            pair = self._pair(schema_id, reader_version)
        writer, reader = pair
        if expected is not None and writer.name not in expected:
            allowed = ", ".join(sorted(expected))
            raise UnexpectedRecord(f"unexpected record {writer.label}; expected one of: {allowed}")
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            # Same version: no resolution needed, and fastavro skips its reader code path.
            value = schemaless_reader(buf, writer.parsed, None if reader is writer else reader.parsed)
        except SchemaResolutionError as exc:
            raise IncompatibleReader(f"{writer.label} data cannot be read as {reader.label}: {exc}") from exc
        except Exception as exc:  # garbage can make fastavro raise nearly anything
            detail = f"{type(exc).__name__}: {str(exc) or 'unexpected end of data'}"
            raise CorruptPayload(f"{writer.label}: body does not decode (corrupt or truncated): {detail}") from exc
        if (left := len(data) - buf.tell()) > 0:
            raise CorruptPayload(f"{writer.label}: {left} trailing byte(s) after the record")
        if not isinstance(value, dict):
            raise CorruptPayload(f"{writer.label}: decoded to {type(value).__name__}, not a record")
        return Decoded(writer.name, writer.full_name, writer.version, reader.version, value)

    def record_name(self, data: bytes | bytearray | memoryview) -> str | None:
        """The short name of the record ``data`` holds, read off its schema id without decoding the body; None
        when the bytes are not framed or the id is not (yet) known here (:meth:`decode` says why). Never calls
        the registry: an id not cached yet takes the full path."""
        if len(data) < HEADER_SIZE or data[:1] != MAGIC:
            return None
        writer = self._by_id.get(int.from_bytes(data[1:HEADER_SIZE], "big"))
        return None if writer is None else writer.name

    def unknown_id(self, data: bytes | bytearray | memoryview | None) -> int | None:
        """The schema id of Confluent-framed ``data`` when this codec has not met it yet (decoding it would ask the
        registry); None for a known id or bytes that are not framed."""
        if data is None or len(data) < HEADER_SIZE or data[:1] != MAGIC:
            return None
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        return None if schema_id in self._by_id else schema_id

    def writer(self, schema_id: int) -> SchemaVersion:
        """The writer schema of ``schema_id``: from the cache, else fetched from the registry once.

        A schema this catalog has (same canonical form) is its catalog version; one it was not shipped is made a
        version of its own from the registry's text (the registry's version number, the catalog's context)."""
        found = self._by_id.get(schema_id)
        if found is not None:
            return found
        registered = self.registry.lookup(schema_id)
        try:
            definition = json.loads(registered.schema)
            canonical = to_parsing_canonical_form(definition)
            try:
                sv = self.catalog.by_fingerprint(fingerprint(canonical))
            except UnknownFingerprint:
                parsed = cast(dict[str, Any], parse_schema(definition))
                full_name = str(parsed.get("name", ""))
                namespace, _, short = full_name.rpartition(".")
                sv = SchemaVersion(
                    full_name=full_name,
                    name=short,
                    context=namespace.rpartition(".")[2],
                    version=registered.version or 0,
                    path=Path(f"registry:{schema_id}"),
                    definition=definition,
                    parsed=parsed,
                    canonical_form=canonical,
                    fingerprint=fingerprint(canonical),
                )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not an Avro record schema
            raise IncompatibleReader(f"schema id {schema_id} is not an Avro record schema: {exc}") from None
        except Exception as exc:  # fastavro's SchemaParseException, UnknownType…
            raise IncompatibleReader(f"schema id {schema_id} does not parse: {type(exc).__name__}: {exc}") from None
        return self._by_id.setdefault(schema_id, sv)

    def _pair(self, schema_id: int, reader_version: int | None) -> tuple[SchemaVersion, SchemaVersion]:
        """Find writer and reader schema for an id once; later calls hit the cache."""
        writer = self.writer(schema_id)
        try:
            reader = (
                self.catalog.latest(writer.full_name)
                if reader_version is None
                else self.catalog.get(writer.full_name, reader_version)
            )
        except UnknownRecord:
            if reader_version is not None:
                raise IncompatibleReader(
                    f"cannot read {writer.label} as v{reader_version}: not in this catalog"
                ) from None
            reader = writer  # a record this catalog does not have: read as written (a topic's check refuses it)
        except UnknownVersion as exc:
            raise IncompatibleReader(f"cannot read {writer.label}: {exc}") from None
        if reader.fingerprint == writer.fingerprint:
            reader = writer  # same schema: no resolution
        self._pairs[(schema_id, reader_version)] = (writer, reader)
        return writer, reader


def _not_framed(data: bytes | bytearray | memoryview) -> str:
    """Why ``data`` is not Confluent-framed, with its first bytes."""
    head = bytes(data[:HEADER_SIZE]).hex(" ") or "nothing"
    if data[:2] == SINGLE_OBJECT_MAGIC:
        why = "Avro single-object encoding (C3 01 + fingerprint), the format before the schema registry"
    elif not data or data[:1] == MAGIC:
        why = f"too short ({len(data)} bytes)"
    else:
        why = "wrong magic byte"
    return f"not Confluent-framed Avro: {why}; expected 00 + 4-byte schema id, got {head}"


_Check = Callable[[Any], bool]


def _strict_check(sv: SchemaVersion) -> _Check:
    """A fast yes/no test of what fastavro's validation lets through: unknown keys, naive or huge times."""
    named: Mapping[str, Any] = sv.parsed["__named_schemas"]
    compiled: dict[str, _Check | None] = {}

    def build(schema: Any) -> _Check | None:
        if isinstance(schema, str):
            if schema not in named:
                return None  # a primitive
            if schema in compiled:  # a reference back to a record being built: look it up when called
                return lambda v: (check := compiled[schema]) is None or check(v)
            schema = named[schema]
        if isinstance(schema, list):
            branches = [(b, check) for b in schema if (check := build(b)) is not None]
            return (lambda v: all(c(v) for b, c in branches if _matches(v, b, named))) if branches else None
        if schema.get("logicalType") in _TIMESTAMP_UNITS:
            return lambda v: _matches(v, schema, named) and not (isinstance(v, datetime) and v.tzinfo is None)
        kind = schema["type"]
        if kind == "record":
            compiled[schema["name"]] = None
            names = frozenset(f["name"] for f in schema["fields"])
            subs = [(f["name"], c) for f in schema["fields"] if (c := build(f["type"])) is not None]
            compiled[schema["name"]] = check = lambda v: (  # noqa: E731 - stored and returned
                isinstance(v, Mapping) and v.keys() <= names and all(n not in v or c(v[n]) for n, c in subs)
            )
            return check
        if kind == "array" and (items := build(schema["items"])) is not None:
            return lambda v: all(map(items, v))
        if kind == "map" and (values := build(schema["values"])) is not None:
            return lambda v: isinstance(v, Mapping) and all(map(values, v.values()))
        return None

    return build(sv.parsed) or (lambda v: True)


def _explain(value: Any, sv: SchemaVersion) -> list[str]:
    """Each problem of an invalid ``value`` with its field path; fastavro's view if the walk finds none."""
    problems: list[str] = []
    _walk(value, sv.parsed, "", sv.parsed["__named_schemas"], problems)
    if problems:
        return problems
    try:
        validate(value, sv.parsed, raise_errors=True, strict=True)
    except ValidationError as exc:
        return [f"field {e.field!r} expected {_type_name(e.schema)}, got {e.datum!r}" for e in exc.errors]
    except Exception as exc:  # a logical-type converter choking on the value
        return [f"{type(exc).__name__}: {exc}"]
    return ["invalid value"]


def _type_name(schema: Any) -> str:
    """A short human name of a schema: ``int``, ``null or string``, ``pipeline.orders.OrderLine``."""
    if isinstance(schema, list):
        return " or ".join(_type_name(s) for s in schema)
    if not isinstance(schema, dict):
        return str(schema)
    if schema.get("logicalType") in _TIMESTAMP_UNITS:
        return f"{schema['logicalType']} (an aware datetime or an epoch integer)"
    return str(schema.get("logicalType") or schema.get("name") or schema.get("type"))


def _walk(value: Any, schema: Any, path: str, named: Mapping[str, Any], out: list[str]) -> None:
    """Append a message per mismatch between ``value`` and the parsed ``schema``, with its field path."""
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        schema = named[schema]
    if isinstance(schema, list):
        if not any(_matches(value, s, named) for s in schema):
            out.append(f"field {path!r} expected {_type_name(schema)}, got {value!r}")
        else:  # describe what is wrong inside a matching record branch, if anything
            branch = next(s for s in schema if _matches(value, s, named))
            _walk(value, branch, path, named, out)
        return
    kind = schema["type"] if isinstance(schema, dict) else schema
    if kind == "record":
        if not isinstance(value, Mapping):
            where = f"field {path!r} " if path else ""
            out.append(f"{where}expected record {schema['name']}, got {value!r}")
            return
        names = {f["name"] for f in schema["fields"]}
        for f in schema["fields"]:
            sub = f"{path}.{f['name']}" if path else f["name"]
            if f["name"] in value:
                _walk(value[f["name"]], f["type"], sub, named, out)
            elif "default" not in f:
                out.append(f"missing required field {sub!r}")
        extra = [f"{path}.{k}" if path else str(k) for k in value if k not in names]
        out.extend(f"unknown field {k!r} (not in the schema; it would be dropped)" for k in extra)
    elif kind == "array":
        if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
            for i, item in enumerate(value):
                _walk(item, schema["items"], f"{path}[{i}]", named, out)
        else:
            out.append(f"field {path!r} expected array, got {value!r}")
    elif kind == "map":
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            for k, item in value.items():
                _walk(item, schema["values"], f"{path}[{k!r}]", named, out)
        else:
            out.append(f"field {path!r} expected map with string keys, got {value!r}")
    elif not _matches(value, schema, named):
        out.append(f"field {path!r} expected {_type_name(schema)}, got {value!r}")
    elif isinstance(value, datetime) and value.tzinfo is None:
        out.append(f"field {path!r} is a naive datetime; give an aware one (fastavro assumes local time)")


def _matches(value: Any, schema: Any, named: Mapping[str, Any]) -> bool:
    """Whether ``value`` is of ``schema``'s kind: shallow for containers, exact (with ranges) for scalars."""
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        schema = named[schema]
    if isinstance(schema, list):
        return any(_matches(value, s, named) for s in schema)
    if isinstance(schema, dict):
        if (unit := _TIMESTAMP_UNITS.get(schema.get("logicalType", ""))) is not None:
            if isinstance(value, datetime):
                return True
            low, high = _TIMESTAMP_SECONDS
            return _is_int(value) and low * unit <= value < (high + 1) * unit
        kind = schema["type"]
        if kind in ("record", "map"):
            return isinstance(value, Mapping)
        if kind == "array":
            return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)
        if kind == "enum":
            return value in schema["symbols"]
        if kind == "fixed":
            return isinstance(value, bytes | bytearray) and len(value) == schema["size"]
        if kind not in _PRIMITIVES or "logicalType" in schema:
            return True  # other logical types (decimal, uuid, date…): fastavro's validation decides
        schema = kind
    match schema:
        case "null":
            return value is None
        case "boolean":
            return isinstance(value, bool)
        case "int":
            return _is_int(value) and _INT_RANGE[0] <= value <= _INT_RANGE[1]
        case "long":
            return _is_int(value) and _LONG_RANGE[0] <= value <= _LONG_RANGE[1]
        case "float" | "double":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "string":
            return isinstance(value, str)
        case "bytes":
            return isinstance(value, bytes | bytearray)
    return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def to_json_compatible(value: Any) -> Any:
    """A JSON-serialisable copy of a decoded value, for printing: ISO-8601 times, hex bytes, str decimals."""
    if isinstance(value, Mapping):
        return {str(k): to_json_compatible(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_compatible(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, Enum):
        return to_json_compatible(value.value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity
    return value
