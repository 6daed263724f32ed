"""Deadlines under a backlog: a burst well above saturation against a short deadline, on real workers.

Promise 8: a saga is never confirmed after its deadline, however large the backlog; a charge that lands late is
refunded. The saga decides by the times its events carry (``PaymentSucceeded.charged_at`` against
``OrderPlaced.deadline_at``), not by whether the deadline timer's report happens to reach it first. So here the
timer runs only every few seconds, as a backlogged worker's would.

The load: a few orders to warm the workers up, then 200 orders at 100 a second, several times today's
saturation (15–27 orders/s), against a deadline of 2.5 s. The first ones are confirmed in time; the backlog then
outgrows the deadline. One slow charge early in the load (longer than the deadline) holds the payments worker,
so the charges of the orders reserved meanwhile land late, whatever the throughput. Checked on the log itself:
no order confirmed on a charge taken after its deadline, every such charge refunded, and every other promise
(see ``promises``) kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from common.admin import admin_client, apply_topics
from common.encoding import registry_codec
from common.settings import Settings
from consumers.toolkit import EventConsumer
from schemas.catalog import SchemaCatalog
from schemas.topics import ORDER_EVENTS, PAYMENT_EVENTS
from tests.integration.promises import OrderLoad
from tests.workers import Pipeline, running_pipeline

SAGA_TIMEOUT_S = 2.5
SLOW_CHARGE_S = 3
"""A ``tok_slow`` charge takes this long: longer than the deadline, so it lands after it."""
SWEEP_S = 4
ORDERS, RATE = 200, 100.0
SLOW_ORDER = 15
"""The order paying with a slow card: early, so it is reserved in time (the backlog is still short)."""


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(
        settings,
        tmp_path_factory.mktemp("deadlines"),
        PIPELINE_SAGA_TIMEOUT_S=str(SAGA_TIMEOUT_S),
        PIPELINE_DEADLINE_SWEEP_S=str(SWEEP_S),
        PIPELINE_PAYMENT_SLOW_S=str(SLOW_CHARGE_S),
        PIPELINE_PAYMENT_LATENCY_MS="2",
        PIPELINE_REFUND_BACKOFF_BASE_S="0.05",
        PIPELINE_REFUND_BACKOFF_CAP_S="0.2",
    ) as running:
        yield running


def _at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromtimestamp(int(value) / 1000, UTC)


def saga_facts(settings: Settings, order_ids: set[str]) -> dict[str, dict[str, Any]]:
    """Per order, what the log says: its deadline, its charge's time, how it ended, whether it was refunded."""
    codec = registry_codec(SchemaCatalog.load(), settings)
    facts: dict[str, dict[str, Any]] = {o: {} for o in order_ids}
    with EventConsumer.reader(settings) as consumer:
        for message in consumer.read_log([ORDER_EVENTS.name, PAYMENT_EVENTS.name]):
            if message.key not in order_ids:
                continue
            decoded = codec.decode(message.value or b"")
            fact, value = facts[message.key], decoded.value
            if decoded.name == "OrderPlaced":
                fact["deadline_at"] = _at(value["deadline_at"])
            elif decoded.name == "PaymentSucceeded":
                fact["charged_at"] = _at(value["charged_at"])
            elif decoded.name in ("OrderConfirmed", "OrderCancelled", "OrderRejected"):
                fact.setdefault("ends", set()).add((decoded.name, value.get("reason")))
            elif decoded.name == "PaymentRefunded":
                fact["refunded"] = True
        assert not consumer.unfinished
    return facts


def test_no_order_is_confirmed_on_a_charge_after_its_deadline_and_every_late_charge_is_refunded(
    pipeline: Pipeline, settings: Settings
) -> None:
    store = redis.Redis.from_url(settings.redis_url)
    warm_up = OrderLoad(settings, orders=5, customers=5, decline_rate=0.0)
    warm_up.publish(store, pipeline.assert_alive)
    warm_up.wait_settled(store, pipeline.assert_alive, timeout=120)

    load = OrderLoad(settings, orders=ORDERS, stock_per_sku=1000, decline_rate=0.0, customers=20)
    commands = load.prepare(store, pipeline.assert_alive)
    commands[SLOW_ORDER][1]["payment"] = {"method": "card", "token": "tok_slow"}
    load.place(commands, rate=RATE)
    load.wait_settled(store, pipeline.assert_alive, timeout=300)
    outcomes = load.check_promises(store)

    facts = saga_facts(settings, set(load.ordered))
    late = {o for o, f in facts.items() if "charged_at" in f and f["charged_at"] > f["deadline_at"]}
    confirmed = {o for o, f in facts.items() if ("OrderConfirmed", None) in f.get("ends", set())}
    print(f"late charges: {len(late)}, confirmed: {len(confirmed)}, outcomes: {dict(outcomes)}")
    for order_id in confirmed:
        fact = facts[order_id]
        assert fact["charged_at"] <= fact["deadline_at"], f"{order_id} confirmed on a charge after its deadline"
    for order_id in late:
        assert facts[order_id]["ends"] == {("OrderCancelled", "deadline_exceeded")}, (order_id, facts[order_id])
        assert facts[order_id].get("refunded"), f"{order_id}: charged after its deadline and not refunded"
    assert late, "the burst must have charged some order after its deadline, or this test shows nothing"
    assert confirmed, "orders charged in time are confirmed"
    timed_out = {o for o, f in facts.items() if ("OrderCancelled", "deadline_exceeded") in f.get("ends", set())}
    assert len(timed_out) == outcomes["CANCELLED:deadline_exceeded"] and late <= timed_out
    for order_id in timed_out:
        # a charge made in time can still reach the order service after its deadline timer fired under backlog;
        # that order is cancelled too, and its charge must be refunded like a late one
        if "charged_at" in facts[order_id]:
            assert facts[order_id].get("refunded"), f"{order_id}: charged, cancelled for its deadline, not refunded"
    # how the burst splits between late charges and no charge at all depends on the machine's speed (a faster
    # pipeline charges every one of them, late); the timer cancelling a charge never made is pinned by
    # test_resilience.py::test_a_charge_still_waiting_at_the_deadline_is_cancelled_with_nothing_charged
