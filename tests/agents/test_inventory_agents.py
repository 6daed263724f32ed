"""The inventory service's real ``keep_stock`` agent, driven through Faust's own in-memory test context.

The app is the one ``create_app("inventory", ...)`` builds (``store="memory://"``, a broker nobody listens
on), its agent is run by ``app.agents["keep_stock"].test_context()`` and fed raw Avro bytes with envelope
headers. Faust's test context carries raw-bytes values, keys and headers unchanged; only two seams are
replaced (see ``conftest.faust_service``): the sender, and the producer flush behind ``make_durable``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest

from schemas.codec import HEADER_SIZE, frame
from streams.domain.messages import AddStock, OrderPlaced, ReserveStock, from_jsonable, from_record
from streams.domain.stock import REMEMBERED_ADDITIONS, HoldStatus, OrderHold, Stock
from streams.incoming import Incoming
from streams.outbox import EVENT_ID_NAMESPACE, derived_event_id
from streams.stores import additions_key, hold_key
from tests.agents.harness import (
    CATALOG,
    T0,
    TRACEPARENT,
    FaustService,
    FaustServiceFactory,
    encoded,
    envelope_headers,
    partition_of,
)

pytestmark = pytest.mark.agents

SKU = "sku-1"
ADD = AddStock(sku=SKU, quantity=5, reason="restock")
RESERVE = ReserveStock(order_id="o-1", sku=SKU, quantity=2, requested_at=T0)
OTHER_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
P = partition_of(ADD)
"""The SKU's partition: every message of the SKU is on it (the key contract)."""


def stock(service: FaustService) -> Stock:
    """The SKU's levels with every hold the service keeps for it (held apart, one entry per order)."""
    stored = service.table("inventory_stock").get(SKU)
    assert stored is not None, "no stock stored for the SKU"
    holds = {
        key.split("/", 1)[1]: from_jsonable(OrderHold, value)
        for key, value in service.table("inventory_holds").items()
        if key.startswith(f"{SKU}/")
    }
    return replace(Stock.from_json(stored), orders=holds)


async def test_added_then_reserved_stock_is_stored_and_sent_with_its_envelope(
    faust_service: FaustServiceFactory,
) -> None:
    inventory = faust_service("inventory")
    add_id, reserve_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with inventory.agent("keep_stock") as agent:
        await agent.deliver(ADD, event_id=add_id, correlation_id="restock-42")
        await agent.deliver(RESERVE, event_id=reserve_id, correlation_id="o-1", traceparent=OTHER_TRACE)

    added, reserved = inventory.recorder.sent
    assert (added.topic, added.key) == ("inventory.stock.v1", SKU.encode())
    assert (reserved.topic, reserved.key) == ("inventory.events.v1", b"o-1")

    added_value = added.decoded()
    assert added_value.name == "StockAdded"
    assert {k: added_value.value[k] for k in ("sku", "quantity", "available", "reserved", "stock_version")} == {
        "sku": SKU,
        "quantity": 5,
        "available": 5,
        "reserved": 0,
        "stock_version": 1,
    }
    reserved_value = reserved.decoded()
    assert reserved_value.name == "StockLineReserved"
    assert reserved_value.writer_version == CATALOG.latest("StockLineReserved").version
    assert {k: reserved_value.value[k] for k in ("order_id", "sku", "quantity", "available", "reserved")} == {
        "order_id": "o-1",
        "sku": SKU,
        "quantity": 2,
        "available": 3,
        "reserved": 2,
    }

    assert added.header["ce_type"] == "pipeline.inventory.StockAdded"
    assert added.header["ce_source"] == "/order-pipeline/inventory"
    assert added.header["ce_causationid"] == add_id
    assert added.header["ce_correlationid"] == "restock-42", "no order named: the input's correlation carries on"
    assert added.header["traceparent"] == TRACEPARENT
    assert added.ce_id == derived_event_id(add_id, 0, "StockAdded", added_value.value, SKU) != add_id

    assert reserved.header["ce_type"] == "pipeline.inventory.StockLineReserved"
    assert reserved.header["ce_dataschema"] == "schemas/inventory/StockLineReserved.v1.avsc"
    assert reserved.header["content-type"] == "application/avro"
    assert reserved.header["ce_causationid"] == reserve_id
    assert reserved.header["ce_correlationid"] == "o-1"
    assert reserved.header["traceparent"] == OTHER_TRACE
    assert reserved.ce_id == str(uuid.uuid5(EVENT_ID_NAMESPACE, f"StockLineReserved/o-1/{SKU}"))

    state = stock(inventory)
    assert (state.available, state.reserved, state.sold, state.version) == (3, 2, 0, 2)
    assert state.orders["o-1"].status is HoldStatus.RESERVED
    assert state.orders["o-1"].reserve_answer == from_record("StockLineReserved", reserved_value.value)


async def test_state_is_written_and_made_durable_before_anything_is_sent(faust_service: FaustServiceFactory) -> None:
    inventory = faust_service("inventory")
    inventory.log_writes("inventory_stock")
    async with inventory.agent("keep_stock") as agent:
        await agent.deliver(ADD)
        assert inventory.recorder.log == [
            ("write", SKU),
            ("write", additions_key(SKU)),
            ("durable",),
            ("send", "inventory.stock.v1"),
        ]
        inventory.recorder.clear()
        await agent.deliver(RESERVE)
        assert inventory.recorder.log == [("write", SKU), ("durable",), ("send", "inventory.events.v1")]


async def test_a_redelivered_input_is_stored_once_and_re_emits_the_same_events(
    faust_service: FaustServiceFactory,
) -> None:
    inventory = faust_service("inventory")
    inventory.log_writes("inventory_stock")
    add_id, reserve_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with inventory.agent("keep_stock") as agent:
        await agent.deliver(ADD, event_id=add_id)
        await agent.deliver(RESERVE, event_id=reserve_id)
        first_sent, after_first = list(inventory.recorder.sent), stock(inventory)
        inventory.recorder.clear()
        await agent.deliver(ADD, event_id=add_id)
        await agent.deliver(RESERVE, event_id=reserve_id)

    assert inventory.recorder.log == [("send", "inventory.stock.v1"), ("send", "inventory.events.v1")], (
        "a duplicate changes nothing: no write, no make_durable, only the re-sent events"
    )
    assert stock(inventory) == after_first
    assert len(inventory.recorder.sent) == len(first_sent) == 2
    for again, first in zip(inventory.recorder.sent, first_sent, strict=True):
        assert again.ce_id == first.ce_id
        assert again.same_message(first), f"{again.topic}: the re-emitted message differs from the first"


def _single_object() -> bytes:
    """The wire format before the registry: ``C3 01`` + fingerprint + body."""
    return b"\xc3\x01" + CATALOG.latest("AddStock").fingerprint + encoded(ADD)[HEADER_SIZE:]


def _unknown_schema_id() -> bytes:
    return frame(2**31 - 1) + encoded(ADD)[HEADER_SIZE:]


BAD_VALUES: dict[str, tuple[Callable[[], bytes | None], str]] = {
    "garbage": (lambda: b"not avro at all\n", "NotConfluentFramed: not Confluent-framed Avro: wrong magic byte"),
    "single-object": (_single_object, "NotConfluentFramed: not Confluent-framed Avro: Avro single-object encoding"),
    "unknown-schema-id": (_unknown_schema_id, "UnknownSchemaId: schema id 2147483647 is not registered"),
    "truncated": (lambda: encoded(ADD)[:-2], "CorruptPayload: AddStock v1: body does not decode"),
    "wrong-record": (
        lambda: encoded(
            OrderPlaced(
                order_id="o-9", user_id="u-1", lines=(), total_cents=0, currency="EUR", placed_at=T0, deadline_at=T0
            )
        ),
        "UnexpectedRecord: unexpected record OrderPlaced",
    ),
    "tombstone": (lambda: None, "NotConfluentFramed: not Confluent-framed Avro: too short (0 bytes)"),
}


@pytest.mark.parametrize("bad", BAD_VALUES, ids=str)
async def test_an_undecodable_value_is_dead_lettered_and_the_partition_flows_on(
    faust_service: FaustServiceFactory, bad: str
) -> None:
    make_value, error_start = BAD_VALUES[bad]
    value = make_value()
    inventory = faust_service("inventory")
    async with inventory.agent("keep_stock") as agent:
        await agent.deliver(ADD)
        before = dict(inventory.table("inventory_stock").items())
        inventory.recorder.clear()

        headers = envelope_headers("AddStock", correlation_id="restock-7")
        offset = agent.next_offset("inventory.commands.v1", P)
        await agent.deliver_raw("inventory.commands.v1", SKU.encode(), value, headers, partition=P)

        assert inventory.recorder.log == [("durable",), ("send", "inventory.commands.v1.dlq")], (
            "only the dead letter is sent, once its key's queue is durable"
        )
        (dead,) = inventory.recorder.sent
        assert (dead.key, dead.value) == (SKU.encode(), value or b"")
        assert dead.headers[: len(headers)] == headers, "the original headers lead, unchanged"
        extra = dict(dead.headers[len(headers) :])
        assert extra.keys() == {
            "dlq_error",
            "dlq_agent",
            "dlq_attempts",
            "dlq_source_topic",
            "dlq_source_partition",
            "dlq_source_offset",
            "dlq_origin",
            "dlq_time",
        }
        assert extra["dlq_error"].decode().startswith(error_start), extra["dlq_error"]
        assert extra["dlq_agent"] == b"keep_stock"
        assert extra["dlq_attempts"] == b"1"
        assert extra["dlq_source_topic"] == b"inventory.commands.v1"
        assert (extra["dlq_source_partition"], extra["dlq_source_offset"]) == (str(P).encode(), str(offset).encode())
        assert extra["dlq_origin"] == f"inventory.commands.v1:{P}:{offset}".encode()
        assert dict(inventory.table("inventory_stock").items()) == before, "the table is untouched"
        assert agent.runner.dead_lettered == 1

        inventory.recorder.clear()
        await agent.deliver(AddStock(sku="sku-2", quantity=3, reason="restock"))
        assert [s.topic for s in inventory.recorder.sent] == ["inventory.stock.v1"], "another key flows on"
        inventory.recorder.clear()
        await agent.deliver(RESERVE)
        assert [s.topic for s in inventory.recorder.sent] == ["inventory.commands.v1.dlq"], "its key is parked"
        assert stock(inventory).reserved == 0
        assert agent.runner.processed == 2


async def test_a_step_that_raises_is_dead_lettered_with_the_exception_named(
    faust_service: FaustServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = faust_service("inventory")
    inventory.log_writes("inventory_stock")

    def broken_decide(state: object, message: object, ctx: object) -> object:
        raise ZeroDivisionError("stock arithmetic went wrong")

    async with inventory.agent("keep_stock") as agent:
        await agent.deliver(ADD)
        before = dict(inventory.table("inventory_stock").items())
        inventory.recorder.clear()

        real_step = agent.runner.step
        monkeypatch.setattr(agent.runner, "step", replace(real_step, decide=broken_decide))
        headers = await agent.deliver(RESERVE)

        assert inventory.recorder.log == [("durable",), ("send", "inventory.commands.v1.dlq")], (
            "no state written, no event: only its key's queue, durable before the dead letter"
        )
        (dead,) = inventory.recorder.sent
        assert (dead.key, dead.value) == (SKU.encode(), encoded(RESERVE))
        assert dead.headers[: len(headers)] == headers
        assert dead.header["dlq_error"] == "ZeroDivisionError in keep_stock: stock arithmetic went wrong"
        assert dead.header["dlq_agent"] == "keep_stock"
        assert dead.header["dlq_source_partition"] == str(P)
        assert dict(inventory.table("inventory_stock").items()) == before

        monkeypatch.setattr(agent.runner, "step", real_step)
        inventory.recorder.clear()
        await agent.deliver(AddStock(sku="sku-2", quantity=3, reason="restock"))
        assert [s.topic for s in inventory.recorder.sent] == ["inventory.stock.v1"], "the agent is still running"


async def test_the_agent_sees_the_message_as_kafka_delivered_it(faust_service: FaustServiceFactory) -> None:
    """Faust's test context hands our agent the raw bytes, key, headers and position untouched."""
    inventory = faust_service("inventory")
    seen: list[Incoming] = []
    async with inventory.agent("keep_stock") as agent:
        handle_batch = agent.runner.handle_batch

        async def spy(batch: Sequence[Incoming], *args: Any) -> int:
            seen.extend(batch)
            return await handle_batch(batch, *args)

        inventory.monkeypatch.setattr(agent.runner, "handle_batch", spy)
        offset = agent.next_offset_of(ADD)
        headers = await agent.deliver(ADD)

    (message,) = seen
    assert (message.topic, message.partition, message.offset) == ("inventory.commands.v1", P, offset)
    assert (message.key, message.value, message.headers) == (SKU.encode(), encoded(ADD), headers)


async def test_each_order_s_hold_is_its_own_entry_so_writes_stay_small(faust_service: FaustServiceFactory) -> None:
    inventory = faust_service("inventory")
    async with inventory.agent("keep_stock") as agent:
        await agent.deliver(ADD)
        await agent.deliver(RESERVE)
        inventory.log_writes("inventory_stock")
        inventory.log_writes("inventory_holds")
        inventory.recorder.clear()
        await agent.deliver(replace(RESERVE, order_id="o-2", quantity=1))

    assert inventory.recorder.log == [
        ("write", SKU),
        ("write", f"{SKU}/o-2"),
        ("durable",),
        ("send", "inventory.events.v1"),
    ], "a reservation rewrites the levels and its own order's hold, never the other orders' holds"
    assert not inventory.table("inventory_stock")[SKU].get("orders"), "the levels entry holds no per-order data"
    assert set(inventory.table("inventory_holds")) == {f"{SKU}/o-1", f"{SKU}/o-2"}
    assert stock(inventory).reserved == 3


async def test_messages_fetched_but_never_handed_over_stop_the_worker_before_anything_after_them(
    faust_service: FaustServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offsets 1–4 of the partition never reached the agent (Faust dropped them and would commit past them as a
    gap): the worker exits for a restart before it handles offset 5, so nothing after the hole is acked."""
    import streams.faust_patches

    exits: list[str] = []
    monkeypatch.setattr(streams.faust_patches, "exit_for_restart", lambda: exits.append("exit"))
    inventory = faust_service("inventory")
    async with inventory.agent("keep_stock") as agent:
        await agent.deliver(AddStock(sku=SKU, quantity=5, reason="restock"))
        assert exits == [] and agent.next_offset("inventory.commands.v1", P) == 1
        agent.skip("inventory.commands.v1", P, 4)  # the next message the agent sees is offset 5
        inventory.recorder.clear()
        # the agent stops (the real exit ends the process here): it never hands the message to its step
        with pytest.raises(streams.faust_patches.RestartForRedelivery):
            await agent.deliver(AddStock(sku=SKU, quantity=1, reason="restock"))
    assert exits == ["exit"] and inventory.recorder.sent == []
    assert stock(inventory).available == 5


async def test_messages_arriving_while_the_agent_waits_for_the_broker_are_handled_together(
    faust_service: FaustServiceFactory,
) -> None:
    """The real agent: the first message goes alone and at once; those that arrive while its write is being made
    durable are taken as one batch, with one durable wait before their events, sent in input order."""
    import asyncio

    import streams.agents

    inventory = faust_service("inventory")
    recorder = inventory.recorder
    skus = [f"sku-{i}" for i in range(5)]
    all_arrived = asyncio.Event()
    real_ready_batches = streams.agents.ready_batches

    def counting_ready_batches(source: AsyncIterable[Any], most: int) -> AsyncGenerator[list[Any], None]:
        """The agent's real batching, told when its read-ahead has taken every message from the stream."""

        async def counted() -> AsyncIterator[Any]:
            arrived = 0
            async for item in source:
                arrived += 1
                if arrived == len(skus):
                    all_arrived.set()  # the reader queues this item before the waiting broker runs again
                yield item

        return real_ready_batches(counted(), most)

    async def slow_broker() -> None:
        """The broker acknowledges nothing until every message has arrived behind the first one."""
        recorder.log.append(("durable",))
        await all_arrived.wait()

    inventory.monkeypatch.setattr(streams.agents, "ready_batches", counting_ready_batches)
    inventory.monkeypatch.setattr(inventory.built, "confirm_writes", slow_broker)
    async with inventory.agent("keep_stock") as agent:
        for sku in skus:
            add = AddStock(sku=sku, quantity=1, reason="restock")
            headers = envelope_headers(add.record_name)
            await agent.put_raw(
                "inventory.commands.v1", sku.encode(), encoded(add), headers, partition=partition_of(add)
            )
        for _ in skus:
            assert await asyncio.wait_for(agent._done.get(), 2.0) is None

    durable_waits = recorder.log.count(("durable",))
    assert durable_waits < len(skus), "messages that waited were handled together, with one durable wait"
    assert recorder.log[0] == ("durable",) and len(recorder.log) == durable_waits + len(skus)
    assert [s.key.decode() for s in recorder.sent] == skus
    assert all(Stock.from_json(inventory.table("inventory_stock")[sku]).available == 1 for sku in skus)


async def test_additions_stay_out_of_the_levels_and_a_replay_of_the_window_adds_nothing(
    faust_service: FaustServiceFactory,
) -> None:
    """A SKU restocked many times keeps a small levels entry (what a reservation reads and rewrites) and its last
    additions in an entry of their own; a crash that redelivers those additions, in order, changes nothing."""
    inventory = faust_service("inventory")
    ids = [str(uuid.UUID(int=n + 1)) for n in range(3 * REMEMBERED_ADDITIONS)]
    async with inventory.agent("keep_stock") as agent:
        for event_id in ids:
            await agent.deliver(ADD, event_id=event_id)
        first_sent = list(inventory.recorder.sent[-REMEMBERED_ADDITIONS:])
        inventory.log_writes("inventory_stock")
        inventory.log_writes("inventory_holds")
        inventory.recorder.clear()
        await agent.deliver(RESERVE)
        assert [entry for entry in inventory.recorder.log if entry[0] == "write"] == [
            ("write", SKU),
            ("write", hold_key(SKU, "o-1")),
        ], "a reservation writes the levels and its hold, never the additions"
        after = stock(inventory)
        entries = dict(inventory.table("inventory_stock").items())
        inventory.recorder.clear()
        for event_id in ids[-REMEMBERED_ADDITIONS:]:
            await agent.deliver(ADD, event_id=event_id)

    assert [entry for entry in inventory.recorder.log if entry[0] == "write"] == [], "nothing written"
    assert stock(inventory) == after and after.total_added == 5 * len(ids)
    assert dict(inventory.table("inventory_stock").items()) == entries
    for again, first in zip(inventory.recorder.sent, first_sent, strict=True):
        assert again.ce_id == first.ce_id and again.same_message(first)
    assert len(json.dumps(entries[SKU])) < 1024
    assert max(len(json.dumps(value)) for value in entries.values()) <= 4096
