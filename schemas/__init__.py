"""Avro schemas of the pipeline: the schema files, their catalog, the single-object codec and the CI check.

Nothing is read at import time; call :meth:`SchemaCatalog.load`.
"""

from schemas.catalog import SchemaCatalog, SchemaVersion
from schemas.codec import AvroCodec, Decoded, to_json_compatible
from schemas.errors import (
    CorruptPayload,
    DecodeError,
    IncompatibleReader,
    InvalidRecord,
    NotSingleObjectEncoded,
    SchemaError,
    SchemaLoadError,
    UnexpectedRecord,
    UnknownFingerprint,
    UnknownRecord,
    UnknownVersion,
)

__all__ = [
    "AvroCodec",
    "CorruptPayload",
    "DecodeError",
    "Decoded",
    "IncompatibleReader",
    "InvalidRecord",
    "NotSingleObjectEncoded",
    "SchemaCatalog",
    "SchemaError",
    "SchemaLoadError",
    "SchemaVersion",
    "UnexpectedRecord",
    "UnknownFingerprint",
    "UnknownRecord",
    "UnknownVersion",
    "to_json_compatible",
]
