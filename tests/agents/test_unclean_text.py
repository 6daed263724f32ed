"""Commands published straight to Kafka with a control character in a string, through the real edge and steps.

The gateway and ``pipeline publish`` refuse such text before anything is sent; a record written to the topic by
other means (kcat, a foreign producer) meets the domain's check instead. Control characters are valid UTF-8, so
these records encode and decode like any other: the steps, not the codec, must refuse them. Each is refused with
its reason (a rejection event, or a dead letter where the record has none) and nothing is stored.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from consumers.deadletter import as_dead_letter, replay_headers
from consumers.toolkit import Consumed
from streams.domain.messages import AddStock, OrderLine, PaymentDetails, PlaceOrder, RegisterUser, ReserveStock
from streams.domain.saga import ADMISSION, STOCK, USERS
from tests.agents.harness import T0, Edge, incoming

pytestmark = pytest.mark.agents


async def test_an_addition_with_an_unclean_sku_is_dead_lettered_with_the_reason_and_stores_nothing() -> None:
    edge = Edge.build("keep_stock", STOCK)
    add = AddStock(sku="sku-\x01", quantity=5, reason="restock")
    await edge.runner.handle(incoming(add, offset=4))

    assert edge.recorder.log == [("send", "inventory.commands.v1.dlq")], "no write, nothing to make durable"
    (dead,) = edge.recorder.sent
    assert (dead.key, dead.value) == (b"sku-\x01", incoming(add).value), "the original key and bytes"
    assert dead.header["dlq_error"] == "invalid_text: sku contains a control character (U+0001) at position 4"
    assert (dead.header["dlq_agent"], dead.header["dlq_attempts"]) == ("keep_stock", "1"), "refused, not retried"
    assert edge.table == {} and edge.parked == {}, "no stock, and no parked key"
    assert (edge.runner.dead_lettered, edge.runner.processed) == (1, 0)

    edge.recorder.clear()
    await edge.runner.handle(incoming(AddStock(sku="sku-1", quantity=5, reason="restock"), offset=5))
    assert [s.topic for s in edge.recorder.sent] == ["inventory.stock.v1"], "the agent goes on"


async def test_a_replayed_head_refused_for_its_text_releases_its_key_in_the_same_durable_write() -> None:
    """An AddStock parked as its key's head (its step failed then), replayed once the step refuses it: the head is
    popped and made durable before its new dead letter goes out, so the key's later messages flow again."""
    edge = Edge.build("keep_stock", STOCK)
    add = AddStock(sku="sku-1", quantity=5, reason="re\x00stock")
    real_step = edge.runner.step
    edge.runner.retry_policy = replace(edge.runner.retry_policy, attempts=1)
    edge.runner.step = replace(real_step, decide=lambda *_: 1 / 0)
    await edge.runner.handle(incoming(add, offset=2))
    assert list(edge.parked) == ["keep_stock/sku-1"]
    dead = edge.recorder.sent[-1]
    letter = as_dead_letter(Consumed(dead.topic, 0, 0, 0, dead.key.decode(), dead.value, dead.headers, dead.key))
    edge.runner.step = real_step
    edge.recorder.clear()

    raw = tuple((k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in replay_headers(letter))
    await edge.runner.handle(incoming(add, offset=7, headers=raw))
    assert edge.recorder.log == [("delete", "keep_stock/sku-1"), ("durable",), ("send", "inventory.commands.v1.dlq")]
    assert edge.recorder.sent[0].header["dlq_error"].startswith("invalid_text: reason contains a control character")
    assert edge.parked == {} and edge.table == {}


async def test_a_reservation_with_an_unclean_sku_is_rejected_and_stores_nothing() -> None:
    edge = Edge.build("keep_stock", STOCK)
    await edge.runner.handle(incoming(ReserveStock(order_id="o-1", sku="a\x85", quantity=1, requested_at=T0)))

    assert edge.recorder.log == [("send", "inventory.events.v1")]
    rejected = edge.recorder.sent[0].decoded()
    assert rejected.name == "StockLineRejected"
    assert (rejected.value["sku"], rejected.value["reason"]) == ("a\x85", "invalid_text: sku")
    assert edge.table == {}


async def test_an_order_with_an_unclean_payment_method_is_rejected_naming_the_field() -> None:
    edge = Edge.build("admit_orders", ADMISSION)
    order = PlaceOrder(
        order_id="o-1",
        user_id="u-1",
        lines=(OrderLine(sku="a", quantity=1, unit_price_cents=100),),
        payment=PaymentDetails(method="ca\x82rd", token="tok"),
        idempotency_key="k-1",
        requested_at=T0,
    )
    await edge.runner.handle(incoming(order))

    (sent,) = edge.recorder.sent
    assert (sent.topic, sent.key) == ("orders.events.v1", b"o-1")
    rejected = sent.decoded()
    assert (rejected.name, rejected.value["reason"]) == ("OrderRejected", "invalid_text: payment.method")
    assert not any(s.decoded().name == "OrderPlaced" for s in edge.recorder.sent)


async def test_a_registration_under_an_unclean_user_id_is_rejected_and_nothing_is_kept_under_it() -> None:
    edge = Edge.build("handle_user_commands", USERS)
    await edge.runner.handle(incoming(RegisterUser(user_id="u-\x07", username="ann", email="ann@example.com")))

    assert edge.recorder.log == [("send", "users.events.v1")], "no write"
    rejected = edge.recorder.sent[0].decoded()
    assert rejected.name == "UserCommandRejected"
    assert rejected.value["reason"] == "invalid text: user_id contains a control character (U+0007) at position 2"
    assert edge.table == {}
