"""Avro schemas of the pipeline: the schema files, their catalog, the registry client, the codec (Confluent
wire format) and the CI check.

Nothing is read at import time; call :meth:`SchemaCatalog.load`.
"""

from schemas.catalog import SchemaCatalog, SchemaVersion
from schemas.codec import AvroCodec, Decoded, to_json_compatible
from schemas.errors import (
    CorruptPayload,
    DecodeError,
    IncompatibleReader,
    InvalidRecord,
    NotConfluentFramed,
    SchemaError,
    SchemaLoadError,
    UnexpectedRecord,
    UnknownFingerprint,
    UnknownRecord,
    UnknownSchemaId,
    UnknownVersion,
)
from schemas.registry import HttpRegistry, MemoryRegistry, RegistryError, RegistryUnavailable

__all__ = [
    "AvroCodec",
    "CorruptPayload",
    "DecodeError",
    "Decoded",
    "IncompatibleReader",
    "InvalidRecord",
    "HttpRegistry",
    "MemoryRegistry",
    "NotConfluentFramed",
    "RegistryError",
    "RegistryUnavailable",
    "SchemaCatalog",
    "SchemaError",
    "SchemaLoadError",
    "SchemaVersion",
    "UnexpectedRecord",
    "UnknownFingerprint",
    "UnknownRecord",
    "UnknownSchemaId",
    "UnknownVersion",
    "to_json_compatible",
]
