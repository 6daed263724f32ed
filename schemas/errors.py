"""The schema package's exceptions: one base class, so callers can catch everything schema-related at once.

Every failure of :meth:`schemas.codec.AvroCodec.decode` is a :class:`DecodeError`, so a consumer can
dead-letter a message with ``str(exc)`` as the reason without knowing fastavro's exception zoo.
"""

from __future__ import annotations


class SchemaError(Exception):
    """Base of every error raised by the ``schemas`` package."""


class SchemaLoadError(SchemaError):
    """A schema file (or the tree as a whole) is unusable; the message names the file and the problem."""


class UnknownRecord(SchemaError, LookupError):
    """A record name that no schema file defines."""


class UnknownVersion(SchemaError, LookupError):
    """A version of a known record that no schema file defines."""


class InvalidRecord(SchemaError, ValueError):
    """A value that does not match the schema it is to be encoded with."""


class DecodeError(SchemaError):
    """Bytes that cannot be turned into a record; the base of every decode failure."""


class NotConfluentFramed(DecodeError):
    """Too short, or not starting with the Confluent wire format's magic byte ``00`` (e.g. the single-object
    encoding ``C3 01`` this pipeline wrote before it had a schema registry)."""


class UnknownSchemaId(DecodeError, LookupError):
    """A schema id the registry does not know (error 40403): the bytes name a schema never registered there."""


class UnknownFingerprint(DecodeError, LookupError):
    """A schema fingerprint that no schema in the catalog has."""

    def __init__(self, fingerprint: bytes) -> None:
        super().__init__(
            f"unknown schema fingerprint {fingerprint.hex()} (CRC-64-AVRO, little-endian): "
            "written with a schema this catalog does not have"
        )
        self.fingerprint = fingerprint


class CorruptPayload(DecodeError):
    """The body does not decode under the writer schema, or bytes remain after the record."""


class UnexpectedRecord(DecodeError):
    """A well-formed record of a type the caller (e.g. a topic) does not accept."""


class IncompatibleReader(DecodeError):
    """The writer's data cannot be resolved to the requested reader schema version."""
