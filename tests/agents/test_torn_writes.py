"""The real ``keep_stock`` agent replaying a command whose two table records were only half stored.

A SKU's levels and an order's hold are separate entries, so separate changelog records: a worker killed
between them leaves one stored and the other not, and the command is replayed (its input was never acked).
The replay must apply it once, re-send the same answer, and make the record it rewrites durable before
that answer goes out (tests/unit/test_stores.py covers every command; this is the edge around it).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from streams.domain.messages import AddStock, ReserveStock
from streams.stores import hold_key
from tests.agents.harness import T0, FaustService, FaustServiceFactory

pytestmark = pytest.mark.agents

SKU = "sku-1"
ADD = AddStock(sku=SKU, quantity=5, reason="restock")
RESERVE = ReserveStock(order_id="o-1", sku=SKU, quantity=2, requested_at=T0)


def _forget(service: FaustService, table: str, key: str, value: Any) -> None:
    """Put ``value`` back under ``key`` in the table's memory, as a restarted worker rebuilt it from a changelog
    that lacks the newer record (the store is written directly: no changelog record, nothing logged)."""
    data = service.table(table).data
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value


@pytest.mark.parametrize("lost", ["inventory_holds", "inventory_stock"])
async def test_a_replay_over_a_torn_write_reserves_once_and_stores_the_lost_record_first(
    faust_service: FaustServiceFactory, lost: str
) -> None:
    inventory = faust_service("inventory")
    reserve_id = str(uuid.uuid4())
    async with inventory.agent("keep_stock") as agent:
        await agent.deliver(ADD)
        key = SKU if lost == "inventory_stock" else hold_key(SKU, "o-1")
        before = inventory.table(lost).get(key)
        await agent.deliver(RESERVE, event_id=reserve_id)
        (answer,) = inventory.recorder.sent[1:]
        _forget(inventory, lost, key, before)
        inventory.log_writes("inventory_stock")
        inventory.log_writes("inventory_holds")
        inventory.recorder.clear()

        await agent.deliver(RESERVE, event_id=reserve_id)

    assert inventory.recorder.log == [("write", key), ("durable",), ("send", "inventory.events.v1")], (
        "the lost record is written again and made durable before the answer is re-sent"
    )
    (again,) = inventory.recorder.sent
    assert again.same_message(answer)
    levels = inventory.table("inventory_stock")[SKU]
    assert (levels["available"], levels["reserved"], levels["version"]) == (3, 2, 2)
    assert inventory.table("inventory_holds")[hold_key(SKU, "o-1")]["status"] == "RESERVED"
