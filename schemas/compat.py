"""Full transitive compatibility of the record versions a topic may carry, judged by Apache avro's checker.

Inside one topic (one major version) every version of a record must read every other version's data and vice
versa; a breaking change needs a new topic. Apache avro's ``ReaderWriterCompatibilityChecker`` implements the
spec's resolution rules, so CI uses it rather than fastavro's more lenient reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import permutations

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas.catalog import SchemaCatalog, SchemaVersion
from schemas.errors import UnknownRecord

_HINTS = {
    "reader_field_missing_default_value": "a reader field the writer lacks has no default; give it one",
    "type_mismatch": "a field's type changed in a way Avro cannot promote",
    "missing_union_branch": "the reader's union lacks a branch the writer uses",
    "missing_enum_symbols": "the reader's enum lacks symbols the writer uses (or give the enum a default)",
    "name_mismatch": "a named type was renamed (use aliases)",
    "fixed_size_mismatch": "a fixed type changed size",
}


@dataclass(frozen=True)
class Incompatibility:
    """One problem: reader version ``reader_version`` cannot read data of ``writer_version``.

    Both versions are ``None`` when the topic names a record that has no schema file at all.
    """

    topic: str
    record: str
    reader_version: int | None
    writer_version: int | None
    kinds: tuple[str, ...]
    """The checker's incompatibility types, e.g. ``reader_field_missing_default_value``."""
    messages: tuple[str, ...]
    locations: tuple[str, ...]
    """JSON-pointer-like paths into the reader schema, e.g. ``/fields/7``."""

    def __str__(self) -> str:
        if self.reader_version is None:
            return f"{self.topic}: {self.record}: {'; '.join(self.messages)}"
        where = ", ".join(self.locations) or "/"
        kinds = "; ".join(f"{k} ({_HINTS.get(k, 'see the spec on schema resolution')})" for k in self.kinds)
        return (
            f"{self.topic}: {self.record} v{self.reader_version} cannot read data written by"
            f" {self.record} v{self.writer_version}: {kinds}; checker says: {', '.join(self.messages) or '-'}"
            f" at {where}"
        )


def _parse(sv: SchemaVersion, cache: dict[bytes, avro.schema.Schema]) -> avro.schema.Schema:
    if sv.fingerprint not in cache:
        cache[sv.fingerprint] = avro.schema.parse(json.dumps(sv.definition))
    return cache[sv.fingerprint]


_Verdict = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None
"""``(kinds, messages, locations)`` of a failing pair, ``None`` for a compatible one."""


def pair_problems(
    reader: SchemaVersion, writer: SchemaVersion, cache: dict[bytes, avro.schema.Schema] | None = None
) -> _Verdict:
    """``(kinds, messages, locations)`` if ``reader`` cannot read ``writer``'s data, else ``None``."""
    cache = {} if cache is None else cache
    # A fresh checker per pair: its memo is keyed by object identity.
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    result = checker.get_compatibility(_parse(reader, cache), _parse(writer, cache))
    if result.compatibility is SchemaCompatibilityType.compatible:
        return None
    locations = sorted(result.locations - {"/"}) or ["/"]
    kinds = dict.fromkeys(k.value for k in result.incompatibilities)
    return tuple(kinds), tuple(sorted(result.messages)), tuple(locations)


def check_compatibility(catalog: SchemaCatalog, records_by_topic: Mapping[str, Sequence[str]]) -> list[Incompatibility]:
    """Every problem of every topic: missing schemas, and each (reader, writer) version pair that fails."""
    problems: list[Incompatibility] = []
    cache: dict[bytes, avro.schema.Schema] = {}
    verdicts: dict[tuple[bytes, bytes], _Verdict] = {}
    for topic, records in records_by_topic.items():
        for record in records:
            try:
                versions = catalog.versions(record)
            except UnknownRecord as exc:
                why = f"no schema file <context>/{record}.v1.avsc ({exc})"
                missing = Incompatibility(topic, record, None, None, ("missing_schema",), (why,), ())
                problems.append(missing)
                continue
            for reader, writer in permutations(versions, 2):
                key = (reader.fingerprint, writer.fingerprint)
                if key not in verdicts:
                    verdicts[key] = pair_problems(reader, writer, cache)
                if (found := verdicts[key]) is not None:
                    problems.append(Incompatibility(topic, record, reader.version, writer.version, *found))
    return problems


def format_report(problems: Iterable[Incompatibility]) -> str:
    """A report for people: one line per problem, or a one-line all-clear."""
    lines = [str(p) for p in problems]
    if not lines:
        return "schemas: every record version is compatible both ways with every other version of its topic"
    return "\n".join([f"schemas: {len(lines)} compatibility problem(s):", *(f"  - {line}" for line in lines)])
