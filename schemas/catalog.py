"""The schema catalog: every ``schemas/<context>/<Record>.v<N>.avsc`` file, parsed once and indexed.

Producers pick a record's latest version by name; consumers find the writer's version by the fingerprint
carried in each message. Layout and versioning are checked at load time: a bad schema fails fast, by name.

Fingerprints are CRC-64-AVRO (the Rabin fingerprint of the Avro spec) of the Parsing Canonical Form, both as
fastavro computes them, stored as the 8 bytes **little-endian**, which is the byte order of the single-object
encoding header. The spec's test vectors print the same value as a signed 64-bit integer:
``int.from_bytes(fp, "little", signed=True)``.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import avro.schema
from fastavro import parse_schema
from fastavro.schema import fingerprint as avro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import validate

from schemas.errors import SchemaLoadError, UnknownFingerprint, UnknownRecord, UnknownVersion

SCHEMA_ROOT = Path(__file__).parent
"""The package's own directory, where the project's schema files live."""

NAMESPACE_PREFIX = "pipeline."

_CONTEXT_RE = re.compile(r"[a-z][a-z0-9_]*")
_FILE_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc")


def fingerprint(canonical_form: str) -> bytes:
    """The 8-byte CRC-64-AVRO of a canonical form, as written after ``C3 01``: fastavro gives it as the hex of
    those bytes, low byte first."""
    return bytes.fromhex(avro_fingerprint(canonical_form, "CRC-64-AVRO"))


@dataclass(frozen=True)
class SchemaVersion:
    """One schema file: a record at one version, parsed and fingerprinted."""

    full_name: str
    name: str
    context: str
    version: int
    path: Path
    definition: dict[str, Any] = field(compare=False, repr=False)
    parsed: dict[str, Any] = field(compare=False, repr=False)
    canonical_form: str = field(repr=False)
    fingerprint: bytes

    @property
    def label(self) -> str:
        """``OrderPlaced v2``: how messages name a version."""
        return f"{self.name} v{self.version}"


def _problem(path: Path, message: str) -> SchemaLoadError:
    return SchemaLoadError(f"{path}: {message}")


def _lint(schema: Any, named: dict[str, Any], where: str = "") -> Iterator[str]:
    """Rules the parsers let through: a union default must match the first branch (the spec's rule), and
    array items must take a byte or more, or a garbage block count makes the decoder spin without reading."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _lint(branch, named, where)
    elif isinstance(schema, dict):
        for f in schema.get("fields", ()):
            at = f"{where}.{f['name']}" if where else f["name"]
            union = f["type"] if isinstance(f["type"], list) else None
            if union and "default" in f and not _default_fits(f["default"], union[0], named):
                yield f"field {at!r}: default {f['default']!r} does not match the first branch of its union"
            yield from _lint(f["type"], named, at)
        if schema.get("type") == "array" and _zero_width(schema["items"], named, set()):
            yield f"field {where!r}: array items that encode to zero bytes are not allowed"
        for key in ("items", "values"):
            if key in schema:
                yield from _lint(schema[key], named, where)


def _default_fits(default: Any, branch: Any, named: dict[str, Any]) -> bool:
    try:
        return bool(validate(default, named.get(branch, branch), raise_errors=False))
    except Exception:  # a named type referring to further named types: leave it to the parsers
        return True


def _zero_width(schema: Any, named: dict[str, Any], seen: set[str]) -> bool:
    """Whether every value of ``schema`` encodes to zero bytes (null, fixed(0), records of only such)."""
    if isinstance(schema, str):
        if schema in seen or schema not in named:
            return schema == "null"
        schema = named[schema]
    if not isinstance(schema, dict):
        return False  # a union: its branch index takes a byte
    if schema["type"] == "record":
        inner = seen | {schema["name"]}
        return all(_zero_width(f["type"], named, inner) for f in schema["fields"])
    return bool(schema["type"] == "null" or (schema["type"] == "fixed" and schema["size"] == 0))


def load_file(path: Path, context: str) -> SchemaVersion:
    """Read, check and parse one schema file; every problem is a :class:`SchemaLoadError` naming the file."""
    match = _FILE_RE.fullmatch(path.name)
    if not match:
        raise _problem(path, "file name must be <RecordName>.v<N>.avsc with N >= 1")
    name, version = match["name"], int(match["version"])
    try:
        definition = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _problem(path, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _problem(path, f"cannot read: {exc}") from None
    if not isinstance(definition, dict) or definition.get("type") != "record":
        raise _problem(path, 'the top level must be a record schema ({"type": "record", ...})')
    declared = str(definition.get("name", ""))
    namespace, _, short = declared.rpartition(".")
    namespace = namespace or str(definition.get("namespace", ""))
    if short != name:
        raise _problem(path, f"record name {declared!r} does not match the file name (expected {name!r})")
    if namespace != (expected := NAMESPACE_PREFIX + context):
        raise _problem(path, f"namespace {namespace!r} must be {expected!r} (from its directory)")
    try:
        parsed = cast(dict[str, Any], parse_schema(definition))
        canonical = to_parsing_canonical_form(definition)
    except Exception as exc:  # fastavro raises ValueError, KeyError, SchemaParseException, UnknownType…
        raise _problem(path, f"invalid Avro schema (fastavro): {type(exc).__name__}: {exc}") from None
    try:
        avro.schema.parse(json.dumps(definition))
    except Exception as exc:  # avro.errors.* and others; the compatibility check needs this parser too
        raise _problem(path, f"invalid Avro schema (Apache avro): {exc}") from None
    if (message := next(_lint(parsed, parsed["__named_schemas"]), None)) is not None:
        raise _problem(path, message)
    return SchemaVersion(
        full_name=f"{namespace}.{name}",
        name=name,
        context=context,
        version=version,
        path=path,
        definition=definition,
        parsed=parsed,
        canonical_form=canonical,
        fingerprint=fingerprint(canonical),
    )


class SchemaCatalog:
    """All schema versions, indexed by record name (short or full), version and fingerprint."""

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        """Index ``versions``; raises :class:`SchemaLoadError` on gaps, duplicates and ambiguous names."""
        by_name: dict[str, list[SchemaVersion]] = {}
        self._by_fp: dict[bytes, SchemaVersion] = {}
        self._short: dict[str, str] = {}
        for sv in versions:
            by_name.setdefault(sv.full_name, []).append(sv)
            if (twin := self._by_fp.setdefault(sv.fingerprint, sv)) is not sv:
                raise _problem(sv.path, f"same schema (fingerprint {sv.fingerprint.hex()}) as {twin.path}")
            if (other := self._short.setdefault(sv.name, sv.full_name)) != sv.full_name:
                raise _problem(sv.path, f"record name {sv.name!r} is also defined as {other!r}")
        self._versions: dict[str, tuple[SchemaVersion, ...]] = {}
        for full_name, svs in sorted(by_name.items()):
            svs.sort(key=lambda sv: sv.version)
            numbers = [sv.version for sv in svs]
            if numbers != list(range(1, len(svs) + 1)):
                missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
                if missing:
                    detail = f"missing {', '.join(f'v{n}' for n in missing)}"
                else:
                    detail = "a version is defined twice"
                message = f"versions of {full_name} must run from v1 without gaps: {detail}"
                raise _problem(svs[-1].path, message)
            self._versions[full_name] = tuple(svs)

    @classmethod
    def load(cls, root: Path = SCHEMA_ROOT) -> SchemaCatalog:
        """Load every ``<context>/<Record>.v<N>.avsc`` under ``root``."""
        if not root.is_dir():
            raise SchemaLoadError(f"{root}: schema directory does not exist")
        if strays := sorted(root.glob("*.avsc")):
            raise _problem(strays[0], "schema files belong in a context directory: <root>/<context>/")
        versions = []
        for path in sorted(root.glob("*/*.avsc")):
            context = path.parent.name
            if not _CONTEXT_RE.fullmatch(context):
                raise _problem(path, f"context directory {context!r} must be lower_snake_case")
            versions.append(load_file(path, context))
        return cls(versions)

    def names(self) -> list[str]:
        """Full names of every record, sorted."""
        return list(self._versions)

    def resolve(self, name: str) -> str:
        """The full name of a record given by short or full name, or :class:`UnknownRecord`."""
        if name in self._versions:
            return name
        if (full := self._short.get(name)) is not None:
            return full
        candidates = [*self._short, *self._versions]
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
        known = ", ".join(sorted(self._short))
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"known records: {known}"
        raise UnknownRecord(f"unknown record {name!r}; {hint}")

    def versions(self, name: str) -> list[SchemaVersion]:
        """Every version of a record, oldest first."""
        return list(self._versions[self.resolve(name)])

    def latest(self, name: str) -> SchemaVersion:
        """The newest version of a record: what producers write."""
        return self._versions[self.resolve(name)][-1]

    def get(self, name: str, version: int) -> SchemaVersion:
        """One version of a record, or :class:`UnknownVersion`."""
        svs = self._versions[self.resolve(name)]
        if not 1 <= version <= len(svs):
            raise UnknownVersion(f"{svs[0].name} has no version {version}; it has v1..v{len(svs)}")
        return svs[version - 1]

    def by_fingerprint(self, fp: bytes) -> SchemaVersion:
        """The version with fingerprint ``fp`` (8 bytes, little-endian), or :class:`UnknownFingerprint`."""
        try:
            return self._by_fp[fp]
        except KeyError:
            raise UnknownFingerprint(bytes(fp)) from None

    def __iter__(self) -> Iterator[SchemaVersion]:
        """Every version of every record, by full name then version."""
        for svs in self._versions.values():
            yield from svs

    def __len__(self) -> int:
        return len(self._by_fp)
