"""What "durable" means at the edge: a table write or an event counts only once the broker acknowledged it.

Faust's ``producer.flush()`` waits for its send buffer at most 0.1 s, so the edge awaits each changelog
write's own future (``DurableTable``) and each event's delivery future (``Outbox.send_prepared``). These
tests hold those futures open and show that nothing moves on until they resolve, and that a failed one
raises instead of being logged and lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.topics import table
from streams.agents import ServiceApp
from streams.app import new_faust_app, new_table
from streams.bootstrap import create_app
from streams.domain.messages import StockAdded, to_record
from streams.faust_patches import DurableTable
from streams.outbox import Outbox
from tests.agents.conftest import agent_settings

pytestmark = pytest.mark.agents

CATALOG = SchemaCatalog.load()
CODEC = AvroCodec(CATALOG)


def _stock_added() -> StockAdded:
    from datetime import UTC, datetime

    return StockAdded(
        sku="SKU-1",
        quantity=5,
        reason="restock",
        available=5,
        reserved=0,
        sold=0,
        stock_version=1,
        added_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


async def _still_waiting(task: asyncio.Task[Any]) -> bool:
    for _ in range(20):  # let every ready callback run; the task must still be parked on its future
        await asyncio.sleep(0)
    return not task.done()


def _inventory_app(settings: Settings) -> ServiceApp:
    """The inventory service's app alone: no agents, and an outbox whose sends the test would resolve by hand."""
    return ServiceApp("inventory", new_faust_app("inventory", settings), Outbox(CODEC, CATALOG, HeldAcks(), "/test"))


async def test_confirm_writes_waits_for_the_changelog_ack(tmp_path: Path) -> None:
    settings = agent_settings(tmp_path)
    built = _inventory_app(settings)
    stock = new_table(built.app, table("inventory", "inventory_stock"))
    built.tables["inventory_stock"] = stock
    assert isinstance(stock, DurableTable)

    stock.send_changelog(0, "SKU-1", {"available": 5})
    [write] = stock._unconfirmed
    confirming = asyncio.ensure_future(built.confirm_writes())
    assert await _still_waiting(confirming), "a write the broker has not acknowledged is not durable"
    write.set_result(None)
    await asyncio.wait_for(confirming, 1.0)
    assert stock.unconfirmed() == [], "an acknowledged write is not waited for again"


def _inventory_with_one_stock_write(tmp_path: Path) -> tuple[ServiceApp, Any]:
    """The inventory service's app with its stock table and one changelog write sent, not yet acknowledged."""
    built = _inventory_app(agent_settings(tmp_path))
    stock = new_table(built.app, table("inventory", "inventory_stock"))
    built.tables["inventory_stock"] = stock
    stock.send_changelog(0, "SKU-1", {"available": 5})
    return built, stock


async def test_a_write_another_wait_already_holds_is_still_waited_for(tmp_path: Path) -> None:
    """Two agents of a service both wait for "every write so far": the second must not miss the first's write
    because the first is already waiting for it (an agent handling a batch yields between writes and wait)."""
    built, stock = _inventory_with_one_stock_write(tmp_path)
    [write] = stock._unconfirmed
    first = asyncio.ensure_future(built.confirm_writes())
    assert await _still_waiting(first)
    second = asyncio.ensure_future(built.confirm_writes())
    assert await _still_waiting(second), "the write is not acknowledged: the second wait holds too"
    write.set_result(None)
    await asyncio.wait_for(asyncio.gather(first, second), 1.0)


async def test_a_failed_write_fails_every_later_wait(tmp_path: Path) -> None:
    built, stock = _inventory_with_one_stock_write(tmp_path)
    stock._unconfirmed[0].set_exception(RuntimeError("NotEnoughReplicas"))
    for _ in range(2):
        with pytest.raises(RuntimeError, match="NotEnoughReplicas"):
            await built.confirm_writes()


async def test_a_failed_changelog_write_raises(tmp_path: Path) -> None:
    built, stock = _inventory_with_one_stock_write(tmp_path)
    stock._unconfirmed[0].set_exception(RuntimeError("NotEnoughReplicas"))
    with pytest.raises(RuntimeError, match="NotEnoughReplicas"):
        await built.confirm_writes()


async def test_the_service_app_awaits_every_table_it_owns(tmp_path: Path) -> None:
    built = create_app("orders", agent_settings(tmp_path))
    assert set(built.tables) == {
        "orders_customers",
        "orders_admission_holds",
        "orders_sagas",
        "orders_deadlines",
        "orders_parked_keys",
    }
    assert all(isinstance(t, DurableTable) for t in built.tables.values())


class HeldAcks:
    """A sender whose delivery acknowledgements the test resolves by hand."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[Any]] = []

    async def __call__(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, str | bytes | None]]
    ) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack


async def test_events_count_as_sent_only_once_acknowledged() -> None:
    sender = HeldAcks()
    outbox = Outbox(CODEC, CATALOG, sender, source="/test")
    event = _stock_added()
    sending = asyncio.ensure_future(
        outbox.send_all([(event.record_name, to_record(event))] * 2, cause=None, cause_id="c-1")
    )
    assert await _still_waiting(sending)
    assert len(sender.acks) == 2, "sends are pipelined; only their acknowledgements are awaited together"
    sender.acks[0].set_result(None)
    assert await _still_waiting(sending)
    sender.acks[1].set_result(None)
    await asyncio.wait_for(sending, 1.0)


async def test_an_event_the_broker_refused_raises() -> None:
    sender = HeldAcks()
    outbox = Outbox(CODEC, CATALOG, sender, source="/test")
    event = _stock_added()
    sending = asyncio.ensure_future(outbox.send_all([(event.record_name, to_record(event))], cause=None, cause_id="c"))
    assert await _still_waiting(sending)
    sender.acks[0].set_exception(RuntimeError("RecordTooLarge"))
    with pytest.raises(RuntimeError, match="RecordTooLarge"):
        await sending
