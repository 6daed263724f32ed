"""A schema id an agent has not met is looked up off the event loop; while the registry is down, the batch waits.

The registry being unreachable is never a reason to dead-letter: the batch holds (its partition with it) and is
handled once the registry answers (:func:`streams.agents.resolve_schema_ids`)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from common.telemetry import REGISTRY_WAITS
from schemas import AvroCodec, MemoryRegistry, RegistryUnavailable, SchemaCatalog
from schemas.registry import RegisteredSchema
from streams.agents import resolve_schema_ids
from streams.incoming import Incoming

pytestmark = pytest.mark.agents

CATALOG = SchemaCatalog.load()


class FlakyRegistry(MemoryRegistry):
    """A registry in memory that can be down; counts the lookups it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.lookups = 0
        self.asked_thrice = threading.Event()

    def lookup(self, schema_id: int) -> RegisteredSchema:
        self.lookups += 1
        if self.lookups >= 3:
            self.asked_thrice.set()
        if self.down:
            raise RegistryUnavailable("connection refused")
        return super().lookup(schema_id)


def incoming(value: bytes, offset: int = 0) -> Incoming:
    return Incoming(topic="inventory.commands.v1", partition=0, offset=offset, key=b"s", value=value, headers={})


async def test_a_batch_waits_for_the_registry_then_every_id_is_known() -> None:
    registry = FlakyRegistry()
    data = AvroCodec(CATALOG, registry).encode("AddStock", {"sku": "s", "quantity": 1, "reason": "x"})
    reader = AvroCodec(CATALOG, registry)
    assert reader.unknown_id(data) is not None
    registry.down = True
    waits = REGISTRY_WAITS.labels("keep_stock")._value.get()
    task = asyncio.create_task(resolve_schema_ids(reader, [incoming(data), incoming(data, 1)], "keep_stock"))
    assert await asyncio.to_thread(registry.asked_thrice.wait, 10), "it asks again with backoff"
    assert not task.done(), "and does not give up"
    assert REGISTRY_WAITS.labels("keep_stock")._value.get() >= waits + 3
    registry.down = False
    await asyncio.wait_for(task, 10)
    assert reader.unknown_id(data) is None
    assert reader.decode(data).value == {"sku": "s", "quantity": 1, "reason": "x"}


async def test_known_ids_and_unframed_bytes_need_no_lookup() -> None:
    registry = FlakyRegistry()
    codec = AvroCodec(CATALOG, registry)
    data = codec.encode("AddStock", {"sku": "s", "quantity": 1, "reason": "x"})
    registry.down = True
    await asyncio.wait_for(resolve_schema_ids(codec, [incoming(data), incoming(b"garbage", 1)], "keep_stock"), 5)
    assert registry.lookups == 0


async def test_an_id_the_registry_does_not_know_is_left_to_the_decode() -> None:
    """Unknown to the registry: a dead letter on the full path (UnknownSchemaId), not a wait."""
    registry = FlakyRegistry()
    codec = AvroCodec(CATALOG, registry)
    await asyncio.wait_for(resolve_schema_ids(codec, [incoming(b"\x00\x7f\xff\xff\xff\x02s")], "keep_stock"), 5)
    assert registry.lookups == 1
