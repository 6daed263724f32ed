"""Avro single-object encoding: ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint + Avro binary body.

The fingerprint names the writer's schema, so a consumer resolves any version it has never been told about
against its own reader version. Every decode failure is a :class:`~schemas.errors.DecodeError` with a message
fit for a dead-letter header: a malformed message must never stop a partition.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.validation import ValidationError, validate

from schemas.catalog import SchemaCatalog, SchemaVersion
from schemas.errors import (
    CorruptPayload,
    DecodeError,
    IncompatibleReader,
    InvalidRecord,
    NotSingleObjectEncoded,
    UnexpectedRecord,
    UnknownVersion,
)

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

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


class AvroCodec:
    """Encodes and decodes records of a :class:`SchemaCatalog`; cheap per call, caches per schema pair."""

    def __init__(self, catalog: SchemaCatalog) -> None:
        self.catalog = catalog
        self._writers: dict[tuple[str, int | None], tuple[SchemaVersion, _Check]] = {}
        self._pairs: dict[tuple[bytes, int | None], tuple[SchemaVersion, SchemaVersion]] = {}

    def encode(self, name: str, value: Mapping[str, Any], version: int | None = None) -> bytes:
        """Validate ``value`` against the record (latest version unless given) and single-object encode it."""
        writer = self._writers.get((name, version))
        if writer is None:
            sv = self.catalog.latest(name) if version is None else self.catalog.get(name, version)
            writer = self._writers[(name, version)] = (sv, _strict_check(sv))
        sv, strict = writer
        try:
            valid = strict(value) and validate(value, sv.parsed, raise_errors=False, strict=True)
        except Exception:  # a logical-type converter choking on an odd value: explain below
            valid = False
        if not valid:
            raise InvalidRecord(f"{sv.label}: {'; '.join(_explain(value, sv))}")
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(sv.fingerprint)
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
        """Decode a single-object encoded record, resolved to ``reader_version`` (default: latest).

        ``expected`` lists the short record names the caller accepts (a topic's records). Raises only
        :class:`~schemas.errors.DecodeError` subclasses, whatever the bytes.
        """
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            head = bytes(data[:HEADER_SIZE]).hex(" ") or "nothing"
            why = f"too short ({len(data)} bytes)" if data[:2] == MAGIC[: len(data[:2])] else "wrong marker"
            raise NotSingleObjectEncoded(
                f"not Avro single-object encoded: {why}; expected C3 01 + 8-byte fingerprint, got {head}"
            )
        fp = bytes(data[2:HEADER_SIZE])
        pair = self._pairs.get((fp, reader_version))
        if pair is None:
            pair = self._pair(fp, reader_version)
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
        """The short name of the record ``data`` holds, read off its fingerprint without decoding the body; None
        when the bytes are not single-object encoded or the fingerprint is unknown (:meth:`decode` says why)."""
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            return None
        fp = bytes(data[2:HEADER_SIZE])
        pair = self._pairs.get((fp, None))
        if pair is not None:
            return pair[0].name
        try:
            return self._pair(fp, None)[0].name
        except DecodeError:
            return None

    def _pair(self, fp: bytes, reader_version: int | None) -> tuple[SchemaVersion, SchemaVersion]:
        """Find writer and reader schema for a fingerprint once; later calls hit the cache."""
        writer = self.catalog.by_fingerprint(fp)
        try:
            reader = (
                self.catalog.latest(writer.full_name)
                if reader_version is None
                else self.catalog.get(writer.full_name, reader_version)
            )
        except UnknownVersion as exc:
            raise IncompatibleReader(f"cannot read {writer.label}: {exc}") from None
        self._pairs[(fp, reader_version)] = (writer, reader)
        return writer, reader


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
