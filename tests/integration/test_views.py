"""The view service on a real broker and Redis: saga events in, views folded into its tables and mirrored to
Redis, garbage dead-lettered; Redis flushed is re-mirrored from the tables; the log folded again gives the same."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from confluent_kafka import Producer

from common.admin import admin_client, apply_topics, groups_not_ready
from common.encoding import registry_codec
from common.envelope import Envelope
from common.settings import Settings
from consumers.toolkit import EventConsumer
from consumers.view_log import fold_log, write_views
from producers.toolkit import EventPublisher, producer_config
from schemas.catalog import SchemaCatalog
from schemas.topics import (
    INVENTORY_EVENTS,
    INVENTORY_STOCK,
    NOTIFICATION_EVENTS,
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    USER_EVENTS,
    TopicSpec,
)
from streams.views import read as views
from streams.views.keys import ATTENTION_KEY, MIRRORED_KEY, order_key
from streams.views.read import views_whole
from tests.integration.promises import VIEWS_GROUP, dump_views, scratch_redis, wait_fully_projected
from tests.stack import wait_until
from tests.workers import PIPELINE, Process, run_cli, worker_env


@pytest.fixture(scope="module")
def topics_ready(settings: Settings) -> None:
    apply_topics(admin_client(settings), settings)


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis[Any]]:
    c = redis.Redis.from_url(settings.redis_url)
    yield c
    c.close()


class Scenario:
    """Publishes a saga's events the way its services would: each with its own ce_source."""

    def __init__(self, settings: Settings) -> None:
        self.catalog = SchemaCatalog.load()
        self.codec = registry_codec(self.catalog, settings)
        self.settings = settings
        self.publishers = {
            service: EventPublisher(
                Producer(producer_config(settings)), self.codec, self.catalog, source=f"/order-pipeline/{service}"
            )
            for service in ("orders", "inventory", "payments", "notifications", "users")
        }
        self.sent: list[tuple[TopicSpec, str, str, dict[str, Any], Envelope]] = []

    def emit(
        self, service: str, spec: TopicSpec, record: str, value: dict[str, Any], cause: str | None = None
    ) -> Envelope:
        key = str(value[spec.key_field])
        envelope = self.publishers[service].publish(
            spec, record, key, value, correlation_id=value.get("order_id"), causation_id=cause
        )
        self.sent.append((spec, record, key, value, envelope))
        return envelope

    def flush(self) -> None:
        for publisher in self.publishers.values():
            publisher.flush()

    def redeliver(self, envelope: Envelope) -> None:
        """The same message again, same ce_id: what a producer retry or a replay looks like."""
        spec, record, key, value, _ = next(s for s in self.sent if s[4] is envelope)
        raw = Producer(producer_config(self.settings))
        payload = self.codec.encode(record, value, version=envelope.schema_version)
        raw.produce(spec.name, key=key.encode(), value=payload, headers=envelope.to_headers())
        assert raw.flush(30) == 0


def dead_letters(settings: Settings, topic: str, key: str) -> list[Any]:
    with EventConsumer.reader(settings) as consumer:
        consumer.assign_all(topic, from_beginning=True)
        return [message for message in consumer.messages(idle_timeout=5) if message.key == key]


def view_service(settings: Settings, workdir: Path, name: str = "views") -> Process:
    """A view service worker process (``pipeline worker views``), started."""
    process = Process(
        name, [PIPELINE, "worker", "views"], worker_env(settings, workdir / name), workdir / f"{name}.log"
    )
    process.start()
    return process


def running(process: Process) -> Any:
    """A check for bounded waits: raises once ``process`` has died (its log tail says why)."""

    def check() -> None:
        if not process.alive:
            raise AssertionError(f"{process.name} exited:\n{process.log_tail(60)}")

    return check


def test_the_view_service_folds_mirrors_dead_letters_re_mirrors_and_rebuilds_the_same_views(
    settings: Settings, topics_ready: None, client: redis.Redis[Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    user_a, user_b, sku = f"u-{run}-a", f"u-{run}-b", f"SKU-{run}"
    confirmed, cancelled, stuck, resolved = (f"o-{run}-{n}" for n in ("confirmed", "cancelled", "stuck", "resolved"))
    t = int(time.time() * 1000) // 1000 * 1000
    s = Scenario(settings)

    def placed(order_id: str, user: str, at: int, qty: int) -> dict[str, Any]:
        return {
            "order_id": order_id,
            "user_id": user,
            "lines": [{"sku": sku, "quantity": qty, "unit_price_cents": 500}],
            "total_cents": 500 * qty,
            "currency": "EUR",
            "placed_at": at,
            "deadline_at": at + 30_000,
            "channel": "web",
            "note": None,
            "payment_method": "card",
            "payment_token": "tok-secret",
        }

    def line(order_id: str, at_field: str, at: int, version: int, avail: int, res: int, sold: int, **extra: Any):
        return {
            "order_id": order_id,
            "sku": sku,
            **extra,
            "available": avail,
            "reserved": res,
            "sold": sold,
            "stock_version": version,
            at_field: at,
        }

    # the log of four sagas on one SKU that starts with 10 units (stock versions 1..5)
    s.emit(
        "inventory",
        INVENTORY_STOCK,
        "StockAdded",
        {
            "sku": sku,
            "quantity": 10,
            "reason": "initial",
            "available": 10,
            "reserved": 0,
            "sold": 0,
            "stock_version": 1,
            "added_at": t,
        },
    )
    first_placed = s.emit("orders", ORDER_EVENTS, "OrderPlaced", placed(confirmed, user_a, t + 100, 2))
    s.emit(
        "inventory",
        INVENTORY_EVENTS,
        "StockLineReserved",
        line(confirmed, "reserved_at", t + 110, 2, 8, 2, 0, quantity=2),
    )
    s.emit(
        "inventory",
        INVENTORY_EVENTS,
        "InventoryReserved",
        {"order_id": confirmed, "lines": [{"sku": sku, "quantity": 2}], "reserved_at": t + 111},
    )
    s.emit(
        "payments",
        PAYMENT_EVENTS,
        "PaymentSucceeded",
        {"order_id": confirmed, "payment_id": f"p-{run}-1", "amount_cents": 1000, "charged_at": t + 120},
    )
    s.emit(
        "orders",
        ORDER_EVENTS,
        "OrderConfirmed",
        {"order_id": confirmed, "payment_id": f"p-{run}-1", "confirmed_at": t + 130},
    )
    s.emit(
        "inventory",
        INVENTORY_EVENTS,
        "StockLineCommitted",
        line(confirmed, "committed_at", t + 140, 4, 5, 3, 2, quantity=2),
    )
    s.emit(
        "inventory",
        INVENTORY_EVENTS,
        "InventoryCommitted",
        {"order_id": confirmed, "lines": [{"sku": sku, "quantity": 2}], "committed_at": t + 141},
    )
    notice = {
        "notification_id": f"n-{run}-1",
        "user_id": user_a,
        "order_id": confirmed,
        "kind": "order_confirmed",
        "message": "Your order is confirmed",
        "sent_at": t + 150,
    }
    s.emit("notifications", NOTIFICATION_EVENTS, "NotificationSent", notice)

    s.emit("orders", ORDER_EVENTS, "OrderPlaced", placed(cancelled, user_a, t + 200, 3))
    s.emit(
        "inventory",
        INVENTORY_EVENTS,
        "StockLineReserved",
        line(cancelled, "reserved_at", t + 210, 3, 5, 5, 0, quantity=3),
    )
    s.emit(
        "payments",
        PAYMENT_EVENTS,
        "PaymentSucceeded",
        {"order_id": cancelled, "payment_id": f"p-{run}-2", "amount_cents": 1500, "charged_at": t + 220},
    )
    s.emit(
        "inventory",
        INVENTORY_EVENTS,
        "StockLineReleased",
        line(cancelled, "released_at", t + 230, 5, 8, 0, 2, quantity=3),
    )
    s.emit(
        "inventory",
        INVENTORY_EVENTS,
        "InventoryReleased",
        {
            "order_id": cancelled,
            "lines": [{"sku": sku, "quantity": 3}],
            "reason": "deadline passed",
            "released_at": t + 231,
        },
    )
    s.emit(
        "payments",
        PAYMENT_EVENTS,
        "PaymentRefunded",
        {
            "order_id": cancelled,
            "payment_id": f"p-{run}-2",
            "amount_cents": 1500,
            "reason": "deadline passed",
            "refunded_at": t + 240,
        },
    )
    s.emit(
        "orders",
        ORDER_EVENTS,
        "OrderCancelled",
        {"order_id": cancelled, "reason": "deadline passed", "cancelled_at": t + 250},
    )

    for order_id, at in ((stuck, t + 300), (resolved, t + 400)):
        s.emit("orders", ORDER_EVENTS, "OrderPlaced", placed(order_id, user_b, at, 20))
        s.emit(
            "payments",
            PAYMENT_EVENTS,
            "PaymentSucceeded",
            {"order_id": order_id, "payment_id": f"p-{order_id}", "amount_cents": 10000, "charged_at": at + 5},
        )
        s.emit(
            "inventory",
            INVENTORY_EVENTS,
            "StockLineRejected",
            line(order_id, "rejected_at", at + 10, 5, 8, 0, 2, requested=20, reason="insufficient stock"),
        )
        s.emit(
            "inventory",
            INVENTORY_EVENTS,
            "InventoryReservationFailed",
            {
                "order_id": order_id,
                "failed_lines": [{"sku": sku, "requested": 20, "available": 8}],
                "reason": "insufficient stock",
                "failed_at": at + 11,
            },
        )
        s.emit(
            "orders",
            ORDER_EVENTS,
            "OrderCancelled",
            {"order_id": order_id, "reason": "insufficient stock", "cancelled_at": at + 20},
        )
        s.emit(
            "payments",
            PAYMENT_EVENTS,
            "PaymentRefundFailed",
            {
                "order_id": order_id,
                "payment_id": f"p-{order_id}",
                "amount_cents": 10000,
                "reason": "provider unavailable",
                "attempts": 5,
                "failed_at": at + 30,
            },
        )
        s.emit(
            "orders",
            ORDER_EVENTS,
            "OrderCompensationFailed",
            {
                "order_id": order_id,
                "failed_step": "refund_payment",
                "reason": "provider unavailable",
                "attempts": 5,
                "payment_id": f"p-{order_id}",
                "amount_cents": 10000,
                "failed_at": at + 40,
            },
        )
    s.emit(
        "payments",
        PAYMENT_EVENTS,
        "PaymentRefunded",
        {
            "order_id": resolved,
            "payment_id": f"p-{resolved}",
            "amount_cents": 10000,
            "reason": "manual refund",
            "refunded_at": t + 900,
        },
    )

    # a user's commands, each ending in the event that names it as its cause (the command-status view), and the
    # profile index moving with the profile
    registered = {"user_id": user_a, "version": 1, "username": f"ann-{run}", "email": f"{user_a}@example.com",
                  "profile": {"city": "Oslo"}, "registered_at": t}  # fmt: skip
    s.emit("users", USER_EVENTS, "UserRegistered", registered, cause=f"cmd-{run}-1")
    s.emit(
        "users",
        USER_EVENTS,
        "UserProfileUpdated",
        {"user_id": user_a, "version": 2, "changes": {"city": "Bergen"}, "updated_at": t + 1},
        cause=f"cmd-{run}-2",
    )
    s.emit("users", USER_EVENTS, "UserCommandRejected",
           {"user_id": user_a, "command": "DeactivateUser", "reason": "concurrency conflict: expected version 1, "
            "actual version 2", "expected_version": 1, "actual_version": 2, "rejected_at": t + 2},
           cause=f"cmd-{run}-3")  # fmt: skip

    # duplicates: the same message again, a late re-placement, a notice re-sent under a new envelope
    s.flush()
    s.redeliver(first_placed)
    s.emit("orders", ORDER_EVENTS, "OrderPlaced", placed(confirmed, user_a, t + 500, 2))
    s.emit("notifications", NOTIFICATION_EVENTS, "NotificationSent", notice)
    s.flush()
    garbage_key = f"garbage-{run}"
    raw = Producer(producer_config(settings))
    raw.produce(ORDER_EVENTS.name, key=garbage_key.encode(), value=b"this is not avro", headers=[("origin", b"test")])
    assert raw.flush(30) == 0

    worker = view_service(settings, tmp_path)
    try:
        wait_fully_projected(settings, running(worker), timeout=240)
        wait_until(
            lambda: (views.get_order(client, confirmed) or {}).get("status") == "CONFIRMED",
            timeout=30,
            what="confirmed order view",
        )
    except BaseException:
        print(worker.log_tail(80))
        worker.stop()
        raise

    # --- the views ---
    order = views.get_order(client, confirmed)
    assert order is not None
    assert order["status"] == "CONFIRMED"
    assert (order["user_id"], order["total_cents"], order["currency"]) == (user_a, 1000, "EUR")
    assert (order["placed_at"], order["deadline_at"], order["payment_method"]) == (t + 100, t + 30_100, "card")
    assert order["payment_id"] == f"p-{run}-1"
    assert order["charged_cents"] == 1000
    assert [(e["event"], e["service"]) for e in order["timeline"]] == [
        ("OrderPlaced", "orders"),
        ("StockLineReserved", "inventory"),
        ("InventoryReserved", "inventory"),
        ("PaymentSucceeded", "payments"),
        ("OrderConfirmed", "orders"),
        ("StockLineCommitted", "inventory"),
        ("InventoryCommitted", "inventory"),
        ("OrderPlaced", "orders"),  # the late re-placement is a distinct event: shown, but it resets nothing
    ]
    assert order["timeline"][0]["id"] == first_placed.event_id
    assert b"tok-secret" not in (client.get(order_key(confirmed)) or b"")

    gone = views.get_order(client, cancelled)
    assert gone is not None
    assert (gone["status"], gone["cancel_reason"], gone["refunded_cents"]) == ("CANCELLED", "deadline passed", 1500)
    assert [e["at"] for e in gone["timeline"]] == sorted(e["at"] for e in gone["timeline"])

    stuck_view = views.get_order(client, stuck)
    assert stuck_view is not None and stuck_view["status"] == "COMPENSATION_FAILED"
    assert stuck_view["needs_attention"] is True
    resolved_view = views.get_order(client, resolved)
    assert resolved_view is not None and resolved_view["status"] == "COMPENSATION_FAILED"
    assert resolved_view["needs_attention"] is False
    assert resolved_view["compensation"]["resolved_at"] == t + 900

    attention = {e["order_id"]: e for e in views.needs_attention(client) if e["order_id"] in (stuck, resolved)}
    assert list(attention) == [stuck]
    entry = attention[stuck]
    assert (entry["failed_step"], entry["reason"], entry["attempts"]) == ("refund_payment", "provider unavailable", 5)
    assert (entry["payment_id"], entry["amount_cents"], entry["failed_at"]) == (f"p-{stuck}", 10000, t + 340)
    assert entry["order"]["user_id"] == user_b and entry["order"]["cancel_reason"] == "insufficient stock"

    assert [(o["order_id"], o["status"]) for o in views.recent_orders(client, user_a, 10)] == [
        (cancelled, "CANCELLED"),
        (confirmed, "CONFIRMED"),
    ]
    assert [o["order_id"] for o in views.recent_orders(client, user_b, 1)] == [resolved]

    stock = views.stock(client, sku)
    assert stock is not None
    assert {k: v for k, v in stock.items() if k != "event_id"} == {
        "sku": sku,
        "available": 8,
        "reserved": 0,
        "sold": 2,
        "stock_version": 5,
        "updated_at": t + 230,
        "last_event": "StockLineReleased",
    }
    assert sku in views.skus(client)

    async def read_async() -> tuple[Any, ...]:
        async_client = aioredis.Redis.from_url(settings.redis_url)
        try:
            return (
                await views.get_order_async(async_client, confirmed),
                await views.recent_orders_async(async_client, user_a, 10),
                await views.stock_async(async_client, sku),
                await views.needs_attention_async(async_client),
                await views.notifications_async(async_client, user_a, 10),
            )
        finally:
            await async_client.aclose()  # type: ignore[attr-defined]

    assert asyncio.run(read_async()) == (
        order,
        views.recent_orders(client, user_a, 10),
        stock,
        views.needs_attention(client),
        views.notifications(client, user_a, 10),
    )

    applied, refused = (views.get_command_outcome(client, f"cmd-{run}-{n}") for n in (2, 3))
    assert applied is not None and (applied["status"], applied["event"], applied["version"]) == (
        "applied",
        "UserProfileUpdated",
        2,
    )
    assert refused is not None and (refused["status"], refused["expected_version"], refused["actual_version"]) == (
        "refused",
        1,
        2,
    )
    assert [u["user_id"] for u in views.search_users(client, profile=("city", "BERGEN"))] == [user_a]
    assert views.search_users(client, profile=("city", "oslo"), username_prefix=f"ann-{run}") == []

    notes = views.notifications(client, user_a, 10)
    assert [n["notification_id"] for n in notes] == [f"n-{run}-1"]  # sent twice, listed once
    assert notes[0]["message"] == "Your order is confirmed"

    parked = dead_letters(settings, ORDER_EVENTS.dead_letter_name, garbage_key)
    assert len(parked) == 1
    headers = parked[0].headers
    assert "NotConfluentFramed" in headers["dlq_error"]
    assert headers["dlq_agent"] == "fold_order_views"
    assert headers["dlq_attempts"] == "1"
    assert headers["dlq_source_topic"] == ORDER_EVENTS.name
    assert int(headers["dlq_source_offset"]) >= 0 and "dlq_source_partition" in headers
    assert headers["origin"] == "test"
    assert parked[0].value == b"this is not avro"

    # --- the CLI reads the same views ---
    shown = run_cli(cli_env, "order", confirmed)
    assert shown.returncode == 0, shown.stderr
    assert f"order {confirmed}  CONFIRMED" in shown.stdout
    assert "StockLineCommitted" in shown.stdout and "inventory" in shown.stdout
    traced = run_cli(cli_env, "trace", confirmed)
    assert traced.returncode == 0, traced.stderr
    steps = [line.split() for line in traced.stdout.splitlines() if "|" in line]
    assert steps[0][5] == "OrderPlaced" and "█" in traced.stdout
    assert any(row[4:6] == ["orders", "OrderConfirmed"] for row in steps)
    unknown = run_cli(cli_env, "order", f"o-{run}-never")
    assert unknown.returncode == 1
    assert "no order" in unknown.stderr
    stock_line = run_cli(cli_env, "stock", sku)
    assert stock_line.returncode == 0 and "available=8 reserved=0 sold=2" in stock_line.stdout

    try:
        before = dump_views(client)
        assert before and client.hexists(ATTENTION_KEY, stuck)

        # --- Redis flushed: the running view service re-mirrors its tables (O(keys)), nothing replayed ---
        client.flushdb()
        flushed = time.monotonic()
        wait_until(lambda: views_whole(client), timeout=60, what="the views re-mirrored after a flush")
        print(f"re-mirrored {len(before)} view keys in {time.monotonic() - flushed:.2f}s")
        assert dump_views(client) == before
        assert "re-mirrored" in worker.log_path.read_text(errors="replace")

        # --- `views rebuild`: the view keys dropped and written again from the tables ---
        rebuilt = run_cli(cli_env, "views", "rebuild", "--json")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert dump_views(client) == before
    finally:
        worker.stop()

    # --- `views rebuild --from-log`: the view service reset, its tables folded again from the topics ---
    refused_while_running = None
    again = view_service(settings, tmp_path, "views-again")
    try:
        admin = admin_client(settings)
        wait_until(lambda: not groups_not_ready(admin, [VIEWS_GROUP]), timeout=120, what="a view service in its group")
        refused_while_running = run_cli(cli_env, "views", "rebuild", "--from-log")
    finally:
        again.stop()
    assert refused_while_running.returncode == 1 and "stop it first" in refused_while_running.stderr
    wait_until(
        lambda: run_cli(cli_env, "views", "rebuild", "--from-log").returncode == 0,
        timeout=60,
        what="the view service's group empty, so that it can be reset",
    )
    assert not client.exists(MIRRORED_KEY) and not client.exists(order_key(confirmed))
    fresh = view_service(settings, tmp_path, "views-fresh")
    try:
        wait_fully_projected(settings, running(fresh), timeout=240)
        assert dump_views(client) == before
    finally:
        fresh.stop()

    # --- the log folded in one pass, outside the service, gives the same views ---
    scratch = scratch_redis(settings)
    folded = fold_log(settings)
    assert not folded.incomplete
    write_views(scratch, folded.tables)
    assert dump_views(scratch) == before
