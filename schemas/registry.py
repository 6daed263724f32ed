"""The schema registry the codec names its writer schemas in: a Confluent-compatible HTTP API, or one in memory.

Values carry a schema id (the Confluent wire format), so a reader needs somewhere to look an id up: the stack runs
Apicurio Registry and this module speaks its Confluent-compatible API (``…/apis/ccompat/v7``), which any
Confluent client, kcat with Avro, Kafka UIs and Connect speak too. Subjects are named by record (the record's
full Avro name, Confluent's ``RecordNameStrategy``), because a topic carries several record types. Every subject
is FULL_TRANSITIVE: each version is readable by and can read every other, which is what ``pipeline schemas check``
promises offline and what the registry then enforces for every producer, ours or not.

:class:`MemoryRegistry` stands in where no registry runs (unit and agent tests, the codec benchmark): its ids
mean something only inside the process that made them.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.catalog import SchemaCatalog, SchemaVersion
from schemas.errors import SchemaError, UnknownSchemaId

COMPATIBILITY = "FULL_TRANSITIVE"
"""The level every subject is set to: the offline gate's rule (docs/architecture.md, "Topics")."""
CCOMPAT_PATH = "/apis/ccompat/v7"
"""Where Apicurio serves the Confluent-compatible API: a registry URL ends with it."""
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(SchemaError):
    """The registry answered with a refusal (an incompatible schema, an unknown subject); the message is its own."""

    def __init__(self, message: str, status: int = 0, code: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RegistryUnavailable(SchemaError):
    """The registry could not be reached or failed (5xx): transient, so a record waiting on it is not poison.

    Deliberately not a :class:`~schemas.errors.DecodeError`: nothing may be dead-lettered for it."""


@dataclass(frozen=True)
class RegisteredSchema:
    """A schema as the registry holds it: its text, and under which subject and version it was registered."""

    schema_id: int
    schema: str
    subject: str | None = None
    version: int | None = None


def subject_of(full_name: str) -> str:
    """The subject of a record: its full Avro name (``RecordNameStrategy``), whatever topic carries it."""
    return full_name


def schema_text(sv: SchemaVersion) -> str:
    """What is registered for a schema file: its whole definition (defaults and docs kept; the registry's
    compatibility check needs the defaults), compact JSON."""
    return json.dumps(sv.definition, separators=(",", ":"), sort_keys=False)


class SchemaRegistry(Protocol):
    """What the codec needs of a registry: an id for a schema, a schema for an id."""

    def register(self, subject: str, schema: str) -> int:
        """The id of ``schema`` under ``subject``, registering it if new (idempotent)."""
        ...

    def lookup(self, schema_id: int) -> RegisteredSchema:
        """The schema with ``schema_id``: :class:`UnknownSchemaId` if none, :class:`RegistryUnavailable`
        if the registry cannot say."""
        ...


class HttpRegistry:
    """A client of the Confluent-compatible API at ``url`` (ending ``/apis/ccompat/v7``). Blocking, small,
    stdlib only; the codec caches what it answers, so it is called once per schema per process."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"HttpRegistry({self.url!r})"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - our URL
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}")
            except ValueError:
                detail = {}
            code = int(detail.get("error_code") or 0) if isinstance(detail, dict) else 0
            message = (detail.get("message") if isinstance(detail, dict) else None) or exc.reason
            if exc.code >= 500:
                raise RegistryUnavailable(f"schema registry {self.url}: {exc.code} {message}") from None
            if code == 40403 or (exc.code == 404 and path.startswith("/schemas/ids/")):
                raise UnknownSchemaId(f"schema id unknown to the registry ({exc.code} {message})") from None
            raise RegistryError(
                f"schema registry refused {method} {path}: {exc.code} {message}", exc.code, code
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryUnavailable(f"schema registry {self.url} unreachable: {reason}") from None

    def register(self, subject: str, schema: str) -> int:
        """POST the schema to its subject: the registry answers the id it has, or refuses (409 incompatible)."""
        answer = self._call("POST", f"/subjects/{subject}/versions", {"schema": schema, "schemaType": "AVRO"})
        return int(answer["id"])

    def lookup(self, schema_id: int) -> RegisteredSchema:
        answer = self._call("GET", f"/schemas/ids/{schema_id}")
        subject = version = None
        try:
            versions = self._call("GET", f"/schemas/ids/{schema_id}/versions")
            if versions:
                subject, version = str(versions[0]["subject"]), int(versions[0]["version"])
        except (RegistryError, UnknownSchemaId):
            pass  # the version is a label; the schema text is what decodes
        return RegisteredSchema(schema_id, str(answer["schema"]), subject, version)

    def set_compatibility(self, level: str = COMPATIBILITY, subject: str | None = None) -> None:
        """Set the compatibility of one subject, or the registry's default when ``subject`` is None."""
        path = "/config" if subject is None else f"/config/{subject}"
        self._call("PUT", path, {"compatibility": level})

    def compatibility(self, subject: str | None = None) -> str:
        answer = self._call("GET", "/config" if subject is None else f"/config/{subject}")
        return str(answer.get("compatibilityLevel") or answer.get("compatibility"))

    def subjects(self) -> list[str]:
        return [str(s) for s in self._call("GET", "/subjects")]


class MemoryRegistry:
    """A registry inside this process (ids from 1, in registration order): for tests and the offline benchmark,
    where writer and reader share the process. No compatibility rule: ``pipeline schemas check`` is that gate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, RegisteredSchema] = {}
        self._versions: dict[str, int] = {}

    def register(self, subject: str, schema: str) -> int:
        with self._lock:
            if (found := self._ids.get((subject, schema))) is not None:
                return found
            schema_id = len(self._schemas) + 1
            version = self._versions[subject] = self._versions.get(subject, 0) + 1
            self._ids[(subject, schema)] = schema_id
            self._schemas[schema_id] = RegisteredSchema(schema_id, schema, subject, version)
            return schema_id

    def lookup(self, schema_id: int) -> RegisteredSchema:
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise UnknownSchemaId(f"schema id {schema_id} is not registered") from None


PROCESS_REGISTRY = MemoryRegistry()
"""The in-memory registry every codec made without one shares, so codecs of one process agree on ids."""
MEMORY_URL = "memory:"
"""The registry URL that means :data:`PROCESS_REGISTRY` (tests and offline benchmarks; never across processes)."""


def registry_at(url: str) -> SchemaRegistry:
    """The registry a URL names: :data:`MEMORY_URL` for this process's own, else the HTTP API at ``url``."""
    return PROCESS_REGISTRY if url == MEMORY_URL else HttpRegistry(url)


def apply_catalog(registry: HttpRegistry, catalog: SchemaCatalog, names: Iterable[str] | None = None) -> dict[str, int]:
    """Register every version of every record (oldest first) under FULL_TRANSITIVE; idempotent.

    The default level is set first, so a subject's first version is already under the rule; each subject is set
    too, in case the registry's default is changed later. Raises :class:`RegistryError` with the registry's
    reason for the first schema it refuses. Returns ``label -> id``."""
    registry.set_compatibility(COMPATIBILITY)
    wanted = None if names is None else {catalog.resolve(n) for n in names}
    ids: dict[str, int] = {}
    for sv in catalog:
        if wanted is not None and sv.full_name not in wanted:
            continue
        subject = subject_of(sv.full_name)
        try:
            ids[f"{sv.full_name} v{sv.version}"] = registry.register(subject, schema_text(sv))
        except RegistryError as exc:
            raise RegistryError(f"{sv.label} ({sv.path.name}) refused: {exc}", exc.status, exc.code) from None
        if sv.version == 1:
            registry.set_compatibility(COMPATIBILITY, subject)
    return ids
