"""The orders service's real ``admit_orders`` agent over its split store: a customer's history stays out of the
entry every PlaceOrder reads, and a crash's redelivery of their orders is answered as the first time.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from streams.domain.messages import OrderLine, PaymentDetails, PlaceOrder, UserRegistered
from streams.stores import answer_key, request_key
from tests.agents.harness import FaustServiceFactory

pytestmark = pytest.mark.agents

NOW = datetime.now(UTC).replace(microsecond=0)
ORDERS = 60


def place_order(n: int) -> PlaceOrder:
    return PlaceOrder(
        order_id=f"o-{n}",
        user_id="u-1",
        lines=(OrderLine(sku="a", quantity=2, unit_price_cents=250),),
        payment=PaymentDetails(method="card", token="tok"),
        idempotency_key=f"k-{n}",
        requested_at=NOW,
    )


async def test_each_answer_has_its_own_entry_and_a_replay_of_the_orders_is_answered_alike(
    faust_service: FaustServiceFactory,
) -> None:
    orders = faust_service("orders")
    ids = [str(uuid.UUID(int=n + 1)) for n in range(ORDERS)]
    async with orders.agent("admit_orders") as agent:
        await agent.deliver(UserRegistered(user_id="u-1", version=1, username="ann", email="a@x", registered_at=NOW))
        customer = dict(orders.table("orders_customers")["u-1"])
        for n, event_id in enumerate(ids):
            await agent.deliver(place_order(n), event_id=event_id)
        first_sent = list(orders.recorder.sent)
        orders.log_writes("orders_customers")
        orders.recorder.clear()
        for n, event_id in enumerate(ids):  # the crash's redelivery: everything after the committed offset
            await agent.deliver(place_order(n), event_id=event_id)

    assert orders.recorder.log == [("send", "orders.events.v1")] * ORDERS, "nothing written, every answer re-sent"
    for again, first in zip(orders.recorder.sent, first_sent, strict=True):
        assert again.ce_id == first.ce_id and again.same_message(first)
    table = orders.table("orders_customers")
    assert table["u-1"] == customer, "the customer's own entry holds none of their orders"
    assert table[answer_key("u-1", "o-7")]["key"] == "k-7" and table[request_key("u-1", "k-7")] == "o-7"
    assert max(len(json.dumps(value)) for _, value in table.items()) < 1024
