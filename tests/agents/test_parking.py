"""A dead letter parks its key: the key's later messages queue behind it, other keys flow on, replays release it.

The real inventory service in Faust's test context (``keep_stock``, keyed by SKU, its ``inventory_parked_keys``
table), and the bare edge for a redelivery after a crash. Dead letters are replayed with the very headers
``pipeline dlq replay`` sends (:func:`consumers.deadletter.replay_headers`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from consumers.deadletter import DeadLetter, as_dead_letter, replay_headers, replay_partition
from consumers.toolkit import Consumed
from streams.domain.messages import AddStock, ReserveStock
from streams.domain.saga import STOCK
from streams.domain.stock import Stock
from streams.incoming import Incoming
from tests.agents.harness import (
    T0,
    AgentDriver,
    Edge,
    FaustService,
    FaustServiceFactory,
    Sent,
    incoming,
    partition_of,
)

pytestmark = pytest.mark.agents

SKU, OTHER = "sku-p", "sku-q"
TOPIC = "inventory.commands.v1"


def reserve(order_id: str, quantity: int = 1) -> ReserveStock:
    return ReserveStock(order_id=order_id, sku=SKU, quantity=quantity, requested_at=T0)


P = partition_of(reserve("o"))
"""The SKU's partition, where its messages stand and its key's queue is kept."""


def as_letter(sent: Sent, offset: int) -> DeadLetter:
    """A dead letter as ``pipeline dlq`` reads it back from its topic."""
    return as_dead_letter(Consumed(sent.topic, 0, offset, 0, sent.key.decode(), sent.value, sent.headers, sent.key))


async def replay(agent: AgentDriver, letter: DeadLetter) -> None:
    await agent.deliver_raw(letter.source_topic, letter.key, letter.value, tuple(
        (k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in replay_headers(letter)
    ), partition=replay_partition(letter))  # fmt: skip


def depth() -> float | None:
    return REGISTRY.get_sample_value("pipeline_dead_letter_depth", {"agent": "keep_stock", "topic": TOPIC})


def queued(service: FaustService) -> list[int] | None:
    entry = service.table("inventory_parked_keys").get(f"keep_stock/{SKU}")
    return None if entry is None else [m["offset"] for m in entry["queue"]]


async def test_a_dead_letter_parks_its_key_until_replays_release_it_in_order(
    faust_service: FaustServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = faust_service("inventory")
    inventory.log_writes("inventory_parked_keys")
    async with inventory.agent("keep_stock") as agent:
        await agent.deliver(AddStock(sku=SKU, quantity=10, reason="restock"))
        real_step = agent.runner.step

        def broken(state: object, message: object, ctx: object) -> object:
            raise RuntimeError("a bug in reservations")

        monkeypatch.setattr(agent.runner, "retry_policy", replace(agent.runner.retry_policy, attempts=1))
        monkeypatch.setattr(agent.runner, "step", replace(real_step, decide=broken))
        inventory.recorder.clear()
        first = agent.next_offset(TOPIC, P)
        await agent.deliver(reserve("o-1", 2))
        assert inventory.recorder.log == [("write", f"keep_stock/{SKU}"), ("durable",), ("send", f"{TOPIC}.dlq")], (
            "the key's queue is durable before its dead letter is sent"
        )
        assert queued(inventory) == [first] and depth() == 1
        monkeypatch.setattr(agent.runner, "step", real_step)  # the bug is fixed

        second = agent.next_offset(TOPIC, P)
        await agent.deliver(reserve("o-2", 3))
        head, behind = inventory.recorder.sent[0], inventory.recorder.sent[-1]
        assert behind.topic == f"{TOPIC}.dlq", "a later message of the key is not processed"
        assert behind.header["dlq_error"] == f"parked behind {TOPIC}[{P}]@{first} (key {SKU!r} waits for its replay)"
        assert behind.header["dlq_parked_behind"] == f"{TOPIC}:{P}:{first}"
        assert queued(inventory) == [first, second] and depth() == 2

        inventory.recorder.clear()
        await agent.deliver(AddStock(sku=OTHER, quantity=1, reason="restock"))
        assert [s.topic for s in inventory.recorder.sent] == ["inventory.stock.v1"], "another key flows on"

        inventory.recorder.clear()
        await replay(agent, as_letter(behind, 1))
        assert inventory.recorder.sent == [], "a replay ahead of its key's head is refused"
        assert queued(inventory) == [first, second]

        await replay(agent, as_letter(head, 0))
        [reserved] = inventory.recorder.sent
        assert reserved.decoded().value["order_id"] == "o-1" and queued(inventory) == [second] and depth() == 1

        inventory.recorder.clear()
        await replay(agent, as_letter(behind, 1))
        [reserved] = inventory.recorder.sent
        assert reserved.decoded().value["order_id"] == "o-2"
        assert queued(inventory) is None and depth() == 0, "an empty queue releases the key"
        assert Stock.from_json(inventory.table("inventory_stock")[SKU]).reserved == 5

        inventory.recorder.clear()
        await agent.deliver(reserve("o-3"))
        assert [s.topic for s in inventory.recorder.sent] == ["inventory.events.v1"], "the released key flows again"


async def test_a_replayed_head_that_fails_again_is_parked_again_and_stays_head() -> None:
    edge = Edge.build("keep_stock", STOCK)
    garbage = incoming(reserve("o-1"), offset=4)
    garbage = replace(garbage, value=b"\x00not avro")
    await edge.runner.handle(garbage)
    [dead] = edge.recorder.sent
    letter = as_letter(dead, 0)

    edge.recorder.clear()
    replayed = replace(garbage, offset=9, headers=tuple(
        (k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in replay_headers(letter)
    ))  # fmt: skip
    await edge.runner.handle(replayed)
    [again] = edge.recorder.sent
    assert again.header["dlq_origin"] == f"{TOPIC}:{P}:4" and again.header["dlq_source_offset"] == "9"
    assert again.header["dlq_attempts"] == "2" and "dlq_parked_behind" not in again.header
    assert [m["offset"] for m in edge.parked[f"keep_stock/{SKU}"]["queue"]] == [4], "still the head, queued once"
    assert edge.recorder.log == [("send", f"{TOPIC}.dlq")], "nothing else written"


async def test_a_parked_message_redelivered_after_a_crash_is_dead_lettered_again_not_processed() -> None:
    """The queue was stored, then the worker died before the input was acked: the input comes again."""
    edge = Edge.build("keep_stock", STOCK)
    await edge.runner.handle(incoming(AddStock(sku=SKU, quantity=5, reason="restock"), offset=1))
    poison = replace(incoming(reserve("o-1"), offset=2), value=b"\x00")
    later = incoming(reserve("o-2"), offset=3)
    await edge.runner.handle(poison)
    await edge.runner.handle(later)
    edge.recorder.clear()

    await edge.runner.handle(poison)
    await edge.runner.handle(later)
    assert [s.topic for s in edge.recorder.sent] == [f"{TOPIC}.dlq", f"{TOPIC}.dlq"]
    assert edge.recorder.sent[1].header["dlq_parked_behind"] == f"{TOPIC}:{P}:2"
    assert ("durable",) not in edge.recorder.log, "the queue is unchanged: queued once each"
    assert [m["offset"] for m in edge.parked[f"keep_stock/{SKU}"]["queue"]] == [2, 3]
    assert Stock.from_json(edge.table[SKU]).reserved == 0


async def test_a_handled_head_is_popped_in_the_durable_write_of_the_state() -> None:
    edge = Edge.build("keep_stock", STOCK)
    await edge.runner.handle(incoming(AddStock(sku=SKU, quantity=5, reason="restock"), offset=1))
    real_step = edge.runner.step
    edge.runner.retry_policy = replace(edge.runner.retry_policy, attempts=1)
    edge.runner.step = replace(real_step, decide=lambda *_: 1 / 0)
    await edge.runner.handle(incoming(reserve("o-1"), offset=2))
    letter = as_letter(edge.recorder.sent[-1], 0)
    edge.runner.step = real_step
    edge.recorder.clear()

    replayed = incoming(reserve("o-1"), offset=7, headers=tuple(
        (k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in replay_headers(letter)
    ))  # fmt: skip
    await edge.runner.handle(replayed)
    assert edge.recorder.log == [
        ("write", SKU),
        ("delete", f"keep_stock/{SKU}"),
        ("durable",),
        ("send", "inventory.events.v1"),
    ], "state and release are durable together, before the events are sent"
    assert edge.parked == {}


async def test_a_head_that_can_never_be_handled_is_discarded_and_the_next_becomes_head() -> None:
    """Bytes that will never decode park their key for good unless an operator gives up on them: a discard drops
    the head unhandled (durably, no step run, nothing sent); the message behind it is then replayed as usual."""
    edge = Edge.build("keep_stock", STOCK)
    await edge.runner.handle(incoming(AddStock(sku=SKU, quantity=5, reason="restock"), offset=1))
    edge.recorder.clear()
    garbage = replace(incoming(reserve("o-1"), offset=2), value=b"\x00never avro")
    await edge.runner.handle(garbage)
    await edge.runner.handle(incoming(reserve("o-2", 2), offset=3))
    head, behind = (as_letter(sent, n) for n, sent in enumerate(edge.recorder.sent))
    edge.recorder.clear()

    def replayed(letter: DeadLetter, offset: int, *, discard: bool = False) -> Incoming:
        headers = tuple(
            (k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in replay_headers(letter, discard=discard)
        )
        return replace(incoming(reserve("o-x"), offset=offset), value=letter.value, headers=headers)

    await edge.runner.handle(replayed(behind, 8, discard=True))
    assert [m["offset"] for m in edge.parked[f"keep_stock/{SKU}"]["queue"]] == [2, 3], "only the head is discarded"

    await edge.runner.handle(replayed(head, 9, discard=True))
    assert edge.recorder.sent == [] and edge.recorder.log == [("write", f"keep_stock/{SKU}"), ("durable",)]
    assert [m["offset"] for m in edge.parked[f"keep_stock/{SKU}"]["queue"]] == [3], "the next one is head"

    await edge.runner.handle(replayed(behind, 10))
    assert [s.topic for s in edge.recorder.sent] == ["inventory.events.v1"]
    assert edge.parked == {} and Stock.from_json(edge.table[SKU]).reserved == 2
