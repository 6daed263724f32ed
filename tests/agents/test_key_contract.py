"""Every real agent refuses a record that breaks its topic's key contract, before any step or table sees it.

A record without a key, with a key other than its record's key field, or on another partition than its key's
(kcat's CRC32 instead of the pipeline's murmur2) would put its key's state into a second changelog partition. Each
agent of each service, built by ``create_app`` and run in Faust's test context, dead-letters such a record with
the reason, writes nothing (no state, no parked key, no durable wait), and goes on with the next message.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from schemas.topics import PARTITIONS, SERVICES, topic_for_record
from streams.domain.messages import (
    AddStock,
    ClaimEmail,
    Message,
    OrderLine,
    OrderPlaced,
    PaymentDetails,
    PlaceOrder,
    RegisterUser,
    ReserveStock,
    UserRegistered,
)
from streams.domain.saga import STOCK
from streams.incoming import key_partition, murmur2
from tests.agents.harness import (
    T0,
    Edge,
    FaustService,
    FaustServiceFactory,
    encoded,
    envelope_headers,
    incoming,
    partition_of,
)

pytestmark = pytest.mark.agents

NOW = datetime.now(UTC).replace(microsecond=0)
LINES = (OrderLine(sku="sku-1", quantity=2, unit_price_cents=250),)
PLACED = OrderPlaced(
    order_id="o-1", user_id="u-1", lines=LINES, total_cents=500, currency="EUR", placed_at=NOW, deadline_at=NOW,
    payment_method="card", payment_token="tok",
)  # fmt: skip

AGENTS: dict[str, tuple[str, Message]] = {
    "admit_orders": ("orders", PlaceOrder(
        order_id="o-1", user_id="u-1", lines=LINES, payment=PaymentDetails(method="card", token="tok"),
        idempotency_key="k-1", requested_at=NOW,
    )),
    "run_order_sagas": ("orders", PLACED),
    "reserve_inventory": ("inventory", PLACED),
    "keep_stock": ("inventory", AddStock(sku="sku-1", quantity=5, reason="restock")),
    "settle_payments": ("payments", PLACED),
    "notify_customers": ("notifications", PLACED),
    "handle_user_commands": ("users", RegisterUser(user_id="u-1", username="ann", email="ann@example.com")),
    "own_emails": ("users", ClaimEmail(email="ann@example.com", user_id="u-1", request_id="u-1/claim/1",
                                       requested_at=NOW)),
    "react_to_user_events": ("users", UserRegistered(user_id="u-1", version=1, username="ann",
                                                     email="ann@example.com", registered_at=NOW)),
}  # fmt: skip
"""Each agent of every service, with a record it consumes (keyed by its topic's key field)."""


def other_key(message: Message) -> str:
    """A key other than ``message``'s, on another partition than its own (so its partition alone shows nothing)."""
    spec = topic_for_record(message.record_name)
    return next(
        key
        for n in range(100)
        if key_partition((key := f"{message.key}-{n}").encode(), spec.partitions) != partition_of(message)
    )


def refusals(message: Message) -> dict[str, tuple[bytes | None, int, str]]:
    """How ``message`` may break its topic's key contract: (Kafka key, partition, the dead letter's reason)."""
    spec = topic_for_record(message.record_name)
    home, key = partition_of(message), message.key
    wrong = (home + 1) % PARTITIONS
    other = other_key(message)
    return {
        "missing key": (None, home, f"missing key: {spec.name} is keyed by {spec.key_field}"),
        "key differs": (
            other.encode(),
            key_partition(other.encode(), spec.partitions),
            f"key {other!r} differs from the record's {spec.key_field} {key!r}",
        ),
        "wrong partition": (key.encode(), wrong, f"wrong partition {wrong} for key {key!r}, expected {home}"),
    }


def log_every_table(service: FaustService) -> None:
    """Log every write to every table of the service (its state and its parked keys)."""
    for name in service.built.tables:
        service.log_writes(name)


async def test_every_agent_of_every_service_is_checked_here(faust_service: FaustServiceFactory) -> None:
    """A new agent joins :data:`AGENTS`, so its refusals are tested too."""
    registered = {agent for service in SERVICES for agent in faust_service(service).built.runners}
    assert registered == set(AGENTS)


@pytest.mark.parametrize("reason", ["missing key", "key differs", "wrong partition"])
@pytest.mark.parametrize("agent_name", sorted(AGENTS))
async def test_a_record_breaking_its_key_contract_is_dead_lettered_with_the_reason_and_changes_nothing(
    faust_service: FaustServiceFactory, agent_name: str, reason: str
) -> None:
    service_name, message = AGENTS[agent_name]
    key, partition, error = refusals(message)[reason]
    service = faust_service(service_name)
    spec = topic_for_record(message.record_name)
    headers = envelope_headers(message.record_name)
    async with service.agent(agent_name) as agent:
        before = {name: dict(table.items()) for name, table in service.built.tables.items()}
        log_every_table(service)
        offset = agent.next_offset(spec.name, partition)
        await agent.deliver_raw(spec.name, key, encoded(message), headers, partition=partition)

        assert service.recorder.log == [("send", spec.dead_letter_name)], (
            "only the dead letter: no state, no parked key, nothing to make durable"
        )
        (dead,) = service.recorder.sent
        assert (dead.key, dead.value) == (key or b"", encoded(message)), "the original key and bytes"
        assert dead.headers[: len(headers)] == headers
        assert dead.header["dlq_error"] == error
        assert dead.header["dlq_agent"] == agent_name
        assert dead.header["dlq_origin"] == f"{spec.name}:{partition}:{offset}"
        assert {name: dict(table.items()) for name, table in service.built.tables.items()} == before
        assert (agent.runner.dead_lettered, agent.runner.processed) == (1, 0)

        service.recorder.clear()
        await agent.deliver(message)  # the same record, keyed and placed as the contract says
        assert spec.dead_letter_name not in {s.topic for s in service.recorder.sent}, "the agent goes on"
        assert agent.runner.dead_lettered == 1


async def test_the_partition_is_checked_before_the_value_is_decoded_so_bad_bytes_park_nothing(
    faust_service: FaustServiceFactory,
) -> None:
    """Undecodable bytes on their key's partition park their key; on another partition they are refused for that,
    and the key stays free (its queue would otherwise be written to the other partition's changelog)."""
    inventory = faust_service("inventory")
    stock = AddStock(sku="sku-1", quantity=5, reason="restock")
    home = partition_of(stock)
    wrong = (home + 1) % PARTITIONS
    async with inventory.agent("keep_stock") as agent:
        await agent.deliver_raw("inventory.commands.v1", b"sku-1", b"\x00garbage", (), partition=wrong)
        (dead,) = inventory.recorder.sent
        assert dead.header["dlq_error"] == f"wrong partition {wrong} for key 'sku-1', expected {home}"
        assert dict(inventory.table("inventory_parked_keys").items()) == {}, "no key parked"

        inventory.recorder.clear()
        await agent.deliver(stock)
        assert [s.topic for s in inventory.recorder.sent] == ["inventory.stock.v1"], "the key is free"


async def test_a_discard_is_not_refused_for_its_placement() -> None:
    """``pipeline dlq discard`` sends a dead letter back to the partition it was read from; a discard runs no step
    and only drops a head parked on that very partition, so a misplaced one is refused as a discard (nothing
    parked there), never dead-lettered again."""
    edge = Edge.build("keep_stock", STOCK)
    reserve = ReserveStock(order_id="o-1", sku="sku-1", quantity=1, requested_at=T0)
    wrong = (partition_of(reserve) + 1) % PARTITIONS
    discard = replace(
        incoming(reserve, partition=wrong),
        headers=(("dlq_replay_of", b"inventory.commands.v1.dlq:0:0"), ("dlq_action", b"discard")),
    )
    await edge.runner.handle(discard)
    assert edge.recorder.sent == [] and edge.recorder.log == []
    assert edge.runner.dead_lettered == 0


# --- the partitioner the check assumes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "java"),
    [
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_is_the_java_clients_hash(data: str, java: int) -> None:
    """Kafka's own vectors (``UtilsTest.testMurmur2``), as signed 32-bit ints."""
    assert murmur2(data.encode()) == java & 0xFFFFFFFF


def test_a_key_s_partition_is_the_one_faust_s_producer_picks() -> None:
    """aiokafka's ``DefaultPartitioner`` is what Faust sends with (confluent-kafka's ``murmur2_random`` is the
    same hash; the integration test checks a delivery report against it)."""
    from aiokafka.partitioner import DefaultPartitioner

    partitioner = DefaultPartitioner()
    rng = random.Random(17)
    keys = [rng.randbytes(rng.randrange(1, 48)) for _ in range(500)] + [b"u-1", b"sku-1", b"o-1"]
    everything = list(range(PARTITIONS))
    assert [key_partition(k, PARTITIONS) for k in keys] == [partitioner(k, everything, everything) for k in keys]
