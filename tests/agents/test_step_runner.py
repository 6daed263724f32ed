"""The edge itself — StepRunner, Outbox, the real steps and codec — over a dict table and a recording sender.

The Faust modules drive whole agents; these tests hand :class:`~streams.incoming.Incoming` messages straight to
a :class:`~streams.runner.StepRunner`, which makes positions, missing envelopes and multi-event decisions
easy to set up and every table write visible in one log with ``make_durable`` and the sends.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace

import pytest

from streams.domain.core import Decision
from streams.domain.messages import (
    AddStock,
    ChangeEmail,
    EmailClaimed,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    RegisterUser,
    ReserveStock,
    StockAdded,
)
from streams.domain.reservations import OrderReservation
from streams.domain.saga import RESERVATIONS, STOCK, USERS
from streams.domain.stock import Stock
from streams.incoming import Incoming
from streams.resilience import RetryPolicy
from tests.agents.harness import T0, TRACEPARENT, Edge, encoded, incoming, partition_of

pytestmark = pytest.mark.agents

TWO_LINES = OrderPlaced(
    order_id="o-1",
    user_id="u-1",
    lines=(OrderLine(sku="a", quantity=2, unit_price_cents=250), OrderLine(sku="b", quantity=1, unit_price_cents=99)),
    total_cents=599,
    currency="EUR",
    placed_at=T0,
    deadline_at=T0,
)
ADD = AddStock(sku="a", quantity=5, reason="restock")


async def test_every_event_of_a_decision_is_sent_after_the_state_is_durable() -> None:
    edge = Edge.build("reserve_inventory", RESERVATIONS)
    await edge.runner.handle(incoming(TWO_LINES, event_id="placed-1"))

    assert edge.recorder.log == [
        ("write", "o-1"),
        ("durable",),
        ("send", "inventory.commands.v1"),
        ("send", "inventory.commands.v1"),
    ]
    commands = [(s.key, s.decoded().name, s.decoded().value["quantity"]) for s in edge.recorder.sent]
    assert commands == [(b"a", "ReserveStock", 2), (b"b", "ReserveStock", 1)], "keyed by SKU, in the step's order"
    assert {s.header["ce_correlationid"] for s in edge.recorder.sent} == {"o-1"}
    assert {s.header["ce_causationid"] for s in edge.recorder.sent} == {"placed-1"}
    assert {s.header["traceparent"] for s in edge.recorder.sent} == {TRACEPARENT}
    assert len({s.ce_id for s in edge.recorder.sent}) == 2, "each line's command has its own id"
    assert OrderReservation.from_json(edge.table["o-1"]).order_id == "o-1"


async def test_a_record_the_step_does_not_handle_is_passed_by() -> None:
    edge = Edge.build("reserve_inventory", RESERVATIONS)
    rejected = OrderRejected(order_id="o-1", user_id="u-1", reason="unknown_user", rejected_at=T0)
    await edge.runner.handle(incoming(rejected))
    assert edge.recorder.log == []
    assert (edge.runner.processed, edge.runner.dead_lettered) == (0, 0)


async def test_a_record_the_step_does_not_handle_costs_no_decode_and_no_span_unless_its_key_is_parked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """About a third of what an agent is handed are records it ignores: they are recognised by the writer's
    fingerprint, before any span or decode, unless their key is parked (its queue may be waiting on them)."""
    from streams import runner as runner_module

    edge = Edge.build("reserve_inventory", RESERVATIONS)
    rejected = OrderRejected(order_id="o-1", user_id="u-1", reason="unknown_user", rejected_at=T0)
    decoded: list[str] = []
    spans: list[str] = []
    real_decode, real_span = edge.runner._decode, runner_module.consumer_span
    monkeypatch.setattr(edge.runner, "_decode", lambda i: decoded.append(i.topic) or real_decode(i))

    def counting_span(name: str, *args: object) -> object:
        spans.append(name)
        return real_span(name, *args)

    monkeypatch.setattr(runner_module, "consumer_span", counting_span)
    await edge.runner.handle(incoming(rejected))
    assert (decoded, spans, edge.recorder.log) == ([], [], [])

    edge.runner.parking.keys.save("o-1", ())  # nothing parked: still passed by
    await edge.runner.handle(incoming(rejected, offset=1))
    assert (decoded, spans) == ([], [])
    edge.runner.parking.keys.table["reserve_inventory/o-1"] = {"agent": "reserve_inventory", "key": "o-1", "queue": []}
    await edge.runner.handle(incoming(rejected, offset=2))
    assert decoded and spans, "a parked key's records take the full path"


async def test_a_message_without_an_envelope_gets_ids_from_its_position() -> None:
    """kcat input has no headers: its position is its id, so a redelivery (same offset) re-emits the same ids."""
    edge = Edge.build("keep_stock", STOCK)
    await edge.runner.handle(incoming(ADD, offset=7, headers=()))
    await edge.runner.handle(incoming(ADD, offset=7, headers=()))
    await edge.runner.handle(incoming(ADD, offset=8, headers=()))

    first, again, next_one = edge.recorder.sent
    assert first.header["ce_causationid"] == f"inventory.commands.v1:{partition_of(ADD)}:7"
    assert first.header["ce_correlationid"] == "a", "no envelope and no order: the key correlates"
    assert "traceparent" not in first.header
    assert again.ce_id == first.ce_id and again.same_message(first)
    assert next_one.ce_id != first.ce_id, "another message with the same content is another addition"
    assert Stock.from_json(edge.table["a"]).available == 10
    assert edge.recorder.writes("a") == 2 and edge.recorder.durable_calls == 2


async def test_a_dead_letter_of_a_message_without_headers_carries_only_the_reason() -> None:
    edge = Edge.build("keep_stock", STOCK)
    garbage = Incoming("inventory.commands.v1", 3, 41, None, b"\x00\x01", ())
    await edge.runner.handle(garbage)

    (dead,) = edge.recorder.sent
    assert (dead.topic, dead.key, dead.value) == ("inventory.commands.v1.dlq", b"", b"\x00\x01")
    assert [k for k, _ in dead.headers] == [
        "dlq_error",
        "dlq_agent",
        "dlq_attempts",
        "dlq_source_topic",
        "dlq_source_partition",
        "dlq_source_offset",
        "dlq_origin",
        "dlq_time",
    ]
    assert dead.header["dlq_source_offset"] == "41"
    assert edge.table == {}
    assert edge.parked == {}, "a message without a key parks no key"


async def test_a_step_raising_while_building_its_records_is_dead_lettered_before_any_write() -> None:
    edge = Edge.build("keep_stock", STOCK)
    await edge.runner.handle(incoming(ADD))
    before = copy.deepcopy(dict(edge.table))
    edge.recorder.clear()

    def unstorable(message: object) -> dict[str, object]:
        raise TypeError("cannot turn this into a record")

    edge.runner.step = replace(edge.runner.step, message_to_record=unstorable)
    reserve = ReserveStock(order_id="o-1", sku="a", quantity=1, requested_at=T0)
    await edge.runner.handle(incoming(reserve))

    assert edge.recorder.log == [("write", "keep_stock/a"), ("durable",), ("send", "inventory.commands.v1.dlq")], (
        "the key's queue is durable before its dead letter is sent"
    )
    assert edge.recorder.sent[0].header["dlq_error"] == "TypeError in keep_stock: cannot turn this into a record"
    assert dict(edge.table) == before


async def test_an_event_that_does_not_encode_is_dead_lettered_and_the_state_is_not_written() -> None:
    edge = Edge.build("keep_stock", STOCK)

    def too_much(state: Stock | None, message: object, ctx: object) -> Decision[Stock]:
        new = Stock(sku="a", available=1, total_added=1, version=1)
        huge = StockAdded(
            sku="a", quantity=2**40, reason="x", available=1, reserved=0, sold=0, stock_version=1, added_at=T0
        )
        return Decision(new, (huge,))  # quantity is an Avro int: it cannot be encoded

    edge.runner.step = replace(edge.runner.step, decide=too_much)
    try:
        await edge.runner.handle(incoming(ADD, offset=3))
    except Exception as exc:  # today: InvalidRecord escapes, which Faust would ack and lose
        raise AssertionError(f"handle() raised {type(exc).__name__} instead of dead-lettering") from exc
    assert [s.topic for s in edge.recorder.sent] == ["inventory.commands.v1.dlq"]
    assert edge.recorder.sent[0].header["dlq_error"].startswith("InvalidRecord")
    assert edge.table == {}, "nothing is stored for an input that was parked"
    assert edge.recorder.log == [("write", "keep_stock/a"), ("durable",), ("send", "inventory.commands.v1.dlq")], (
        "only its key's queue, made durable before the dead letter"
    )


def test_the_test_messages_are_what_the_topics_carry() -> None:
    """Guards the builders above: the bytes are the real Confluent framing of the latest version."""
    assert encoded(ADD)[:1] == b"\x00"
    assert incoming(ADD).topic == "inventory.commands.v1"
    assert incoming(TWO_LINES).key == b"o-1"


async def test_a_step_that_fails_for_a_while_is_retried_then_succeeds() -> None:
    """A dependency's hiccup (the payment provider's Redis, say) costs a retry, not a dead letter."""
    edge = Edge.build("keep_stock", STOCK)
    edge.runner.retry_policy = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.001)
    real_decide, failures = edge.runner.step.decide, [ConnectionError("blip"), ConnectionError("blip")]

    def flaky(state: Stock | None, message: object, ctx: object) -> Decision[Stock]:
        if failures:
            raise failures.pop()
        return real_decide(state, message, ctx)

    edge.runner.step = replace(edge.runner.step, decide=flaky)
    await edge.runner.handle(incoming(ADD))
    assert [s.topic for s in edge.recorder.sent] == ["inventory.stock.v1"]
    assert edge.runner.dead_lettered == 0 and failures == []


async def test_a_step_that_keeps_failing_is_parked_after_its_attempts() -> None:
    edge = Edge.build("keep_stock", STOCK)
    edge.runner.retry_policy = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.001)
    calls = []

    def broken(state: Stock | None, message: object, ctx: object) -> Decision[Stock]:
        calls.append(1)
        raise ConnectionError("still down")

    edge.runner.step = replace(edge.runner.step, decide=broken)
    await edge.runner.handle(incoming(ADD))
    assert len(calls) == 3
    [parked] = edge.recorder.sent
    assert parked.topic == "inventory.commands.v1.dlq" and parked.header["dlq_attempts"] == "3"
    assert parked.header["dlq_error"] == "ConnectionError in keep_stock: still down"
    assert edge.table == {}


async def test_a_batch_is_made_durable_once_and_sends_every_event_after_it_in_input_order() -> None:
    """Messages handled together: each decided against the state the one before it left, every write of the batch
    durable with one wait before any event goes out, and the events in the order of their inputs."""
    edge = Edge.build("keep_stock", STOCK)
    batch = [
        incoming(ADD, offset=0),
        incoming(ReserveStock(order_id="o-1", sku="a", quantity=2, requested_at=T0), offset=1),
        incoming(ReserveStock(order_id="o-2", sku="a", quantity=4, requested_at=T0), offset=2),
    ]
    assert await edge.runner.handle_batch(batch) == 3

    log = edge.recorder.log
    assert log.count(("durable",)) == 1
    assert all(entry[0] == "write" for entry in log[: log.index(("durable",))])
    assert [entry[0] for entry in log[log.index(("durable",)) + 1 :]] == ["send"] * 3
    answers = [(s.decoded().name, s.decoded().value.get("order_id")) for s in edge.recorder.sent]
    assert answers == [("StockAdded", None), ("StockLineReserved", "o-1"), ("StockLineRejected", "o-2")], (
        "the second reservation saw the first one's hold: only 3 of 5 were left"
    )
    assert edge.runner.processed == 3


async def test_a_batch_stops_at_the_first_message_not_admitted() -> None:
    """A rebalance began: that message and the ones after it are left unhandled (not decided, not written)."""
    edge = Edge.build("keep_stock", STOCK)
    batch = [incoming(ADD, offset=0), incoming(ADD, offset=1), incoming(ADD, offset=2)]
    assert await edge.runner.handle_batch(batch, lambda m: m.offset < 1) == 1
    assert Stock.from_json(edge.table["a"]).available == 5
    assert [s.decoded().name for s in edge.recorder.sent] == ["StockAdded"]


async def test_a_batch_whose_output_the_broker_refused_raises_and_counts_nothing() -> None:
    edge = Edge.build("keep_stock", STOCK)

    async def refusing(*args: object) -> object:
        await edge.recorder.send(*args)  # type: ignore[arg-type]
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(RuntimeError("NotEnoughReplicas"))
        return failed

    edge.runner._outbox._send = refusing  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="NotEnoughReplicas"):
        await edge.runner.handle_batch([incoming(ADD, offset=0), incoming(ADD, offset=1)])
    assert edge.runner.processed == 0, "the caller acks nothing of the batch"


async def test_a_parked_key_within_a_batch_parks_its_later_message_behind_it() -> None:
    """Parking holds inside a batch: the key's queue written for the first failure is seen by the next message."""
    edge = Edge.build("keep_stock", STOCK)
    garbage = Incoming("inventory.commands.v1", partition_of(ADD), 0, b"a", b"\x00\x01", ())
    await edge.runner.handle_batch([garbage, incoming(ADD, offset=1)])
    assert [s.topic for s in edge.recorder.sent] == ["inventory.commands.v1.dlq"] * 2
    assert edge.recorder.sent[1].header["dlq_parked_behind"] == f"inventory.commands.v1:{partition_of(ADD)}:0"
    assert edge.recorder.log.count(("durable",)) == 1 and edge.recorder.log[-3:] == [
        ("durable",),
        ("send", "inventory.commands.v1.dlq"),
        ("send", "inventory.commands.v1.dlq"),
    ]
    assert "a" not in edge.table


async def test_a_user_command_s_outcome_names_the_command_even_after_waiting_for_its_address() -> None:
    """The command-status view finds a command's outcome by ``ce_causationid``: the command's id, also when the
    outcome came with the e-mail claim's answer; the events' own ids stay derived from the answer."""
    edge = Edge.build("handle_user_commands", USERS)
    register = RegisterUser(user_id="u-1", username="ann", email="ann@example.com", profile={})
    await edge.runner.handle(incoming(register, event_id="cmd-register"))
    [claim] = edge.recorder.sent
    assert claim.decoded().name == "ClaimEmail" and claim.header["ce_causationid"] == "cmd-register"

    edge.recorder.clear()
    granted = EmailClaimed(user_id="u-1", email="ann@example.com", request_id="u-1/claim/1", claimed_at=T0)
    await edge.runner.handle(incoming(granted, event_id="answer-1"))
    [registered, snapshot] = edge.recorder.sent  # every user has a snapshot from its registration on
    assert registered.decoded().name == "UserRegistered" and registered.header["ce_causationid"] == "cmd-register"
    assert snapshot.decoded().name == "UserSnapshot"

    edge.recorder.clear()
    await edge.runner.handle(incoming(ChangeEmail(user_id="u-1", new_email="b@x.io"), event_id="cmd-change"))
    answer = EmailClaimed(user_id="u-1", email="b@x.io", request_id="u-1/claim/2", claimed_at=T0)
    await edge.runner.handle(incoming(answer, event_id="answer-2"))
    causes = {s.decoded().name: s.header["ce_causationid"] for s in edge.recorder.sent}
    assert causes == {"ClaimEmail": "cmd-change", "UserEmailChanged": "cmd-change", "ReleaseEmail": "answer-2"}
