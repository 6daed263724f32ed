"""The orders service's real agents (``admit_orders``, ``run_order_sagas``) in Faust's in-memory test context.

Built by ``create_app("orders", Settings(kafka_bootstrap="127.0.0.1:1", ...))`` — nothing connects until an
app starts, which one test checks against a socket that listens and counts. Both agents consume several
topics; Faust's test wrapper cannot name the topic of a message on a multi-topic channel (it says
``<internal>``, which the runner rejects), so each delivery names its topic (see ``harness.AgentDriver``).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from faust.types import TP

from streams.domain.messages import (
    InventoryReservationFailed,
    InventoryReserved,
    Message,
    OrderDeadlineReached,
    OrderLine,
    OrderPlaced,
    PaymentDetails,
    PaymentFailed,
    PaymentSucceeded,
    PlaceOrder,
    ShortLine,
    StockLine,
    UserRegistered,
)
from streams.domain.orders import OrderSaga, SagaStatus
from streams.due import RESEND_S
from streams.outbox import EVENT_ID_NAMESPACE
from tests.agents.harness import FaustService, FaustServiceFactory

pytestmark = pytest.mark.agents

NOW = datetime.now(UTC).replace(microsecond=0)
DEADLINE = NOW + timedelta(seconds=30)
LINES = (OrderLine(sku="a", quantity=2, unit_price_cents=250),)


def placed(order_id: str = "o-1", deadline: datetime = DEADLINE) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        user_id="u-1",
        lines=LINES,
        total_cents=500,
        currency="EUR",
        placed_at=NOW,
        deadline_at=deadline,
        payment_method="card",
        payment_token="tok",
    )


def place_order(order_id: str = "o-1", idempotency_key: str = "k-1") -> PlaceOrder:
    return PlaceOrder(
        order_id=order_id,
        user_id="u-1",
        lines=LINES,
        payment=PaymentDetails(method="card", token="tok"),
        idempotency_key=idempotency_key,
        requested_at=NOW,
    )


def saga(orders: FaustService, order_id: str = "o-1") -> OrderSaga:
    stored = orders.table("orders_sagas").get(order_id)
    assert stored is not None, f"no saga stored for {order_id}"
    return OrderSaga.from_json(stored)


def deadline_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


async def test_a_repeated_order_re_emits_order_placed_with_the_same_id(faust_service: FaustServiceFactory) -> None:
    orders = faust_service("orders")
    first_id, repeat_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with orders.agent("admit_orders") as agent:
        await agent.deliver(UserRegistered(user_id="u-1", version=1, username="ann", email="a@x", registered_at=NOW))
        assert orders.recorder.sent == [], "a customer becoming known emits nothing"
        await agent.deliver(place_order(), event_id=first_id)
        # the gateway's retry: same order, new idempotency key, new event id
        await agent.deliver(place_order(idempotency_key="k-2"), event_id=repeat_id)
        await agent.deliver(place_order(order_id="o-2", idempotency_key="k-3"))

    first, repeat, other = orders.recorder.sent
    assert [(s.topic, s.key) for s in (first, repeat, other)] == [
        ("orders.events.v1", b"o-1"),
        ("orders.events.v1", b"o-1"),
        ("orders.events.v1", b"o-2"),
    ]
    assert first.decoded().name == "OrderPlaced"
    assert first.ce_id == repeat.ce_id == str(uuid.uuid5(EVENT_ID_NAMESPACE, "OrderPlaced/o-1/"))
    assert repeat.value == first.value, "the very same OrderPlaced, not a second order"
    assert (first.header["ce_causationid"], repeat.header["ce_causationid"]) == (first_id, repeat_id)
    assert first.header["ce_correlationid"] == repeat.header["ce_correlationid"] == "o-1"
    assert other.ce_id != first.ce_id
    assert orders.recorder.durable_calls == 3, (
        "the registration and the two orders were made durable; the repeat changed nothing, so it was not again"
    )


async def test_a_stale_user_event_changes_nothing_and_is_not_made_durable(faust_service: FaustServiceFactory) -> None:
    orders = faust_service("orders")
    orders.log_writes("orders_customers")
    registered = UserRegistered(user_id="u-1", version=2, username="ann", email="a@x", registered_at=NOW)
    async with orders.agent("admit_orders") as agent:
        await agent.deliver(registered)
        assert orders.recorder.log == [("write", "u-1"), ("durable",)], (
            "a change with nothing to send is durable too before its input is acked"
        )
        orders.recorder.clear()
        await agent.deliver(UserRegistered(user_id="u-1", version=1, username="old", email="o@x", registered_at=NOW))
    assert orders.recorder.log == []


TERMINAL_PATHS: dict[str, tuple[tuple[Message, ...], str, SagaStatus]] = {
    "confirmed": (
        (
            InventoryReserved(order_id="o-1", lines=(StockLine(sku="a", quantity=2),), reserved_at=NOW),
            PaymentSucceeded(order_id="o-1", payment_id="p-1", amount_cents=500, charged_at=NOW),
        ),
        "OrderConfirmed",
        SagaStatus.CONFIRMED,
    ),
    "payment-failed": (
        (PaymentFailed(order_id="o-1", reason="card declined", failed_at=NOW),),
        "OrderCancelled",
        SagaStatus.CANCELLED,
    ),
    "out-of-stock": (
        (
            InventoryReservationFailed(
                order_id="o-1",
                failed_lines=(ShortLine(sku="a", requested=2, available=0),),
                reason="insufficient_stock",
                failed_at=NOW,
            ),
        ),
        "OrderCancelled",
        SagaStatus.CANCELLED,
    ),
    "deadline": (
        (OrderDeadlineReached(order_id="o-1", deadline_at=DEADLINE, observed_at=DEADLINE + timedelta(seconds=1)),),
        "OrderCancelled",
        SagaStatus.CANCELLED,
    ),
}


@pytest.mark.parametrize("path", TERMINAL_PATHS, ids=str)
async def test_a_deadline_is_kept_while_the_saga_is_open_and_dropped_when_it_ends(
    faust_service: FaustServiceFactory, path: str
) -> None:
    inputs, outcome, status = TERMINAL_PATHS[path]
    orders = faust_service("orders")
    deadlines = orders.table("orders_deadlines")
    async with orders.agent("run_order_sagas") as agent:
        await agent.deliver(placed("o-1"))
        await agent.deliver(placed("o-2"))
        assert dict(deadlines.items()) == {"o-1": deadline_ms(DEADLINE), "o-2": deadline_ms(DEADLINE)}
        assert orders.recorder.sent == [], "OrderPlaced starts the saga and emits nothing"

        early = OrderDeadlineReached(order_id="o-1", deadline_at=DEADLINE, observed_at=DEADLINE - timedelta(seconds=1))
        await agent.deliver(early)
        assert deadlines.get("o-1") == deadline_ms(DEADLINE), "a deadline seen early cancels nothing"

        *progress, last = inputs
        for message in progress:
            await agent.deliver(message)
            assert saga(orders).status.is_open
            assert deadlines.get("o-1") == deadline_ms(DEADLINE), f"still open after {message.record_name}"
        await agent.deliver(last)

    assert saga(orders).status is status
    assert "o-1" not in deadlines, "a finished saga has no deadline left"
    assert deadlines.get("o-2") == deadline_ms(DEADLINE), "other orders keep theirs"
    (ended,) = orders.recorder.sent
    assert (ended.topic, ended.key, ended.decoded().name) == ("orders.events.v1", b"o-1", outcome)
    assert ended.header["ce_correlationid"] == "o-1"


async def test_nothing_connects_to_the_broker_before_the_app_starts(faust_service: FaustServiceFactory) -> None:
    with socket.socket() as broker:
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        broker.setblocking(False)
        host, port = broker.getsockname()
        orders = faust_service("orders", bootstrap=f"{host}:{port}")
        assert orders.built.app.conf.broker[0].port == port, "the app does point at the listening socket"
        async with orders.agent("run_order_sagas") as agent:
            await agent.deliver(placed())
        assert "o-1" in orders.table("orders_deadlines")
        with pytest.raises(TimeoutError):  # give any background connect a moment to show up
            await asyncio.wait_for(asyncio.get_running_loop().sock_accept(broker), timeout=0.2)


async def test_an_order_for_a_customer_not_known_yet_is_held_and_its_due_time_kept(
    faust_service: FaustServiceFactory,
) -> None:
    orders = faust_service("orders")
    holds = orders.table("orders_admission_holds")
    async with orders.agent("admit_orders") as agent:
        await agent.deliver(place_order())
        assert orders.recorder.sent == [], "held, not refused: the registration may be on its way"
        (due_ms,) = holds.values()
        assert set(holds) == {"u-1"} and due_ms > deadline_ms(datetime.now(UTC))
        await agent.deliver(UserRegistered(user_id="u-1", version=1, username="ann", email="a@x", registered_at=NOW))
        assert "u-1" not in holds, "nothing held any more"

    (placed,) = orders.recorder.sent
    assert placed.topic == "orders.events.v1" and placed.decoded().name == "OrderPlaced"


async def test_a_held_order_decided_later_continues_its_own_trace(faust_service: FaustServiceFactory) -> None:
    """The user event that releases a held order belongs to another trace (the user's): the OrderPlaced must go
    on in the PlaceOrder's, so the order's trace still runs from the caller through every hop."""
    order_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    orders = faust_service("orders")
    async with orders.agent("admit_orders") as agent:
        await agent.deliver(place_order(), traceparent=order_trace)
        await agent.deliver(UserRegistered(user_id="u-1", version=1, username="ann", email="a@x", registered_at=NOW))

    (placed,) = orders.recorder.sent
    assert placed.decoded().name == "OrderPlaced"
    assert placed.header["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


# --- the deadline sweep: a due-time index over orders_deadlines -----------------------------------------------


def reported(orders: FaustService) -> list[tuple[str, str]]:
    """The (order id, record) of each report the sweep sent, in order."""
    return [(s.key.decode(), s.decoded().name) for s in orders.recorder.sent if s.topic == "orders.deadlines.v1"]


def never_listed(*args: object) -> object:
    raise AssertionError("a sweep must not list the table: its cost would grow with the open sagas")


async def test_a_sweep_reports_only_due_deadlines_of_open_sagas_without_listing_the_table(
    faust_service: FaustServiceFactory,
) -> None:
    orders = faust_service("orders")
    sweep = orders.built.timers["sweep_deadlines"]
    deadlines = orders.table("orders_deadlines")
    async with orders.agent("run_order_sagas") as agent:
        await agent.deliver(placed("o-due", DEADLINE))
        await agent.deliver(placed("o-ended", DEADLINE))
        await agent.deliver(placed("o-later", DEADLINE + timedelta(hours=1)))  # on its key's partition, 1
        await agent.deliver(PaymentFailed(order_id="o-ended", reason="card declined", failed_at=NOW))
        orders.recorder.clear()
        orders.monkeypatch.setattr(deadlines, "items", never_listed)

        await sweep(DEADLINE - timedelta(milliseconds=1))
        assert reported(orders) == [], "nothing is due before its deadline"
        await sweep(DEADLINE + timedelta(seconds=1))
        assert reported(orders) == [("o-due", "OrderDeadlineReached")], "the ended saga is skipped, the later one waits"
        (report,) = orders.recorder.sent
        assert report.decoded().value["deadline_at"] == DEADLINE

        orders.recorder.clear()
        await sweep(DEADLINE + timedelta(seconds=2))
        assert reported(orders) == [], "a report is not repeated at once"
        await sweep(DEADLINE + timedelta(seconds=2 + RESEND_S))
        assert reported(orders) == [("o-due", "OrderDeadlineReached")], "still open a while later: reported again"

        orders.recorder.clear()
        await agent.deliver(OrderDeadlineReached(order_id="o-due", deadline_at=DEADLINE, observed_at=DEADLINE))
        assert saga(orders, "o-due").status is SagaStatus.CANCELLED
        orders.recorder.clear()
        await sweep(DEADLINE + timedelta(hours=2))
        assert reported(orders) == [("o-later", "OrderDeadlineReached")], "the cancelled saga is not reported again"


async def test_the_index_is_rebuilt_from_the_table_when_recovery_completes(faust_service: FaustServiceFactory) -> None:
    """Another worker takes over: its table is filled by recovery from the changelog, not by its agent, and only
    the partitions it is now active for count (the in-memory store keeps what was written for the others)."""
    orders = faust_service("orders")
    sweep = orders.built.timers["sweep_deadlines"]
    deadlines = orders.table("orders_deadlines")
    async with orders.agent("run_order_sagas") as agent:
        await agent.deliver(placed("o-kept-1", DEADLINE), partition=1)
        await agent.deliver(placed("o-moved", DEADLINE), partition=3)
    deadlines.data["o-recovered"] = deadline_ms(DEADLINE)  # read back from the changelog by recovery
    orders.recorder.clear()

    changelog = deadlines.changelog_topic_name
    actives = {TP(changelog, 0), TP(changelog, 1)}
    orders.monkeypatch.setattr(orders.built.app.assignor, "assigned_actives", lambda: actives)
    await deadlines.on_recovery_completed(actives, set())

    await sweep(DEADLINE + timedelta(seconds=1))
    assert sorted(reported(orders)) == [
        ("o-kept-1", "OrderDeadlineReached"),
        ("o-recovered", "OrderDeadlineReached"),
    ], "partition 3 is another worker's now; what recovery brought back is due here"
