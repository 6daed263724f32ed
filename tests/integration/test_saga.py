"""The order saga end to end: real workers (one process per service), real Kafka, real Redis.

Orders go in as commands on ``orders.commands.v1``, exactly as a person would publish them; the tests watch
the outcome where a person would: the Redis views, the provider's ledger and the topics.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Producer

from common.admin import admin_client, apply_topics
from common.encoding import registry_codec
from common.settings import Settings
from consumers.toolkit import EventConsumer
from producers.toolkit import EventPublisher, producer_config
from schemas.catalog import SCHEMA_ROOT, SchemaCatalog
from schemas.errors import DecodeError
from schemas.registry import HttpRegistry, RegistryError, apply_catalog
from schemas.topics import INVENTORY_COMMANDS, INVENTORY_EVENTS, ORDER_COMMANDS, ORDER_EVENTS, USER_COMMANDS
from streams.domain.orders import TERMINAL_STATUSES
from streams.payment_provider import LEDGER
from streams.views import read as views
from tests.seeding import register_users, uid
from tests.stack import RegistryNode, wait_until
from tests.workers import Pipeline, running_pipeline

SAGA_TIMEOUT_S = 8
MAX_REFUND_ATTEMPTS = 3


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    workdir = tmp_path_factory.mktemp("saga")
    with running_pipeline(
        settings,
        workdir,
        PIPELINE_SAGA_TIMEOUT_S=str(SAGA_TIMEOUT_S),
        PIPELINE_ADMISSION_HOLD_S="2",
        PIPELINE_PAYMENT_SLOW_S=str(SAGA_TIMEOUT_S + 4),
        PIPELINE_PAYMENT_LATENCY_MS="2",
        PIPELINE_MAX_REFUND_ATTEMPTS=str(MAX_REFUND_ATTEMPTS),
        PIPELINE_REFUND_BACKOFF_BASE_S="0.05",
        PIPELINE_REFUND_BACKOFF_CAP_S="0.2",
    ) as running:
        yield running


def now_ms() -> int:
    return int(time.time() * 1000)


def add_stock(publisher: EventPublisher, sku: str, quantity: int) -> None:
    publisher.publish(INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": quantity, "reason": "test"})
    publisher.flush()


def place_order(
    publisher: EventPublisher,
    user_id: str,
    lines: list[tuple[str, int]],
    *,
    token: str = "tok_ok",
    order_id: str = "",
    user_version: int | None = None,
) -> str:
    order_id = order_id or uid("o")
    publisher.publish(
        ORDER_COMMANDS, "PlaceOrder", user_id,
        {"order_id": order_id, "user_id": user_id,
         "lines": [{"sku": sku, "quantity": q, "unit_price_cents": 1000} for sku, q in lines],
         "payment": {"method": "card", "token": token}, "idempotency_key": order_id, "requested_at": now_ms(),
         "user_version": user_version},
    )  # fmt: skip
    publisher.flush()
    return order_id


def wait_for_order(
    pipeline: Pipeline, store: redis.Redis, order_id: str, *, until: Any = None, timeout: float = 60
) -> dict[str, Any]:
    """Poll the order's Redis view until ``until(view)`` holds (default: a terminal status)."""
    seen: dict[str, Any] = {}

    def check() -> bool:
        pipeline.assert_alive()
        view = views.get_order(store, order_id)
        if view is None:
            return False
        seen["view"] = view
        return bool(until(view)) if until else view.get("status") in TERMINAL_STATUSES

    wait_until(check, timeout=timeout, what=lambda: f"order {order_id} to settle (last view: {seen.get('view')})")
    return seen["view"]


def events_of(view: dict[str, Any]) -> list[str]:
    return [entry["event"] for entry in view["timeline"]]


def ledger_entry(settings: Settings, order_id: str) -> dict[str, Any] | None:
    raw = redis.Redis.from_url(settings.provider_store).hget(LEDGER, order_id)
    return None if raw is None else json.loads(raw)


@pytest.fixture
def customer(publisher: EventPublisher, pipeline: Pipeline, store: redis.Redis) -> str:
    user_id = uid("u")
    register_users(publisher, store, [user_id], alive=pipeline.assert_alive)
    return user_id


def wait_for_stock(pipeline: Pipeline, store: redis.Redis, sku: str, available: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        pipeline.assert_alive()
        seen["view"] = views.stock(store, sku)
        return seen["view"] is not None and int(seen["view"]["available"]) == available

    wait_until(check, timeout=60, what=lambda: f"stock of {sku} at {available} (last: {seen.get('view')})")
    return seen["view"]


def test_happy_order_is_confirmed_charged_and_notified(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku_a, sku_b = uid("sku"), uid("sku")
    add_stock(publisher, sku_a, 5)
    add_stock(publisher, sku_b, 5)
    wait_for_stock(pipeline, store, sku_b, 5)

    order_id = place_order(publisher, customer, [(sku_a, 2), (sku_b, 1)])
    view = wait_for_order(pipeline, store, order_id, until=lambda v: "InventoryCommitted" in events_of(v))

    assert view["status"] == "CONFIRMED"
    assert view["total_cents"] == 3000
    for event in ("OrderPlaced", "InventoryReserved", "PaymentSucceeded", "OrderConfirmed", "InventoryCommitted"):
        assert event in events_of(view), events_of(view)
    a = wait_for_stock(pipeline, store, sku_a, 3)
    assert (int(a["reserved"]), int(a["sold"])) == (0, 2)
    entry = ledger_entry(pipeline.settings, order_id)
    assert entry is not None and entry["status"] == "charged" and entry["amount_cents"] == 3000

    wait_until(lambda: bool(views.notifications(store, customer)), timeout=30, what="a notification")
    notice = views.notifications(store, customer)[0]
    assert notice["order_id"] == order_id and notice["kind"] == "order_confirmed"
    assert [o["order_id"] for o in views.recent_orders(store, customer)] == [order_id]


def test_out_of_stock_cancels_and_leaves_stock_untouched(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    plenty, scarce = uid("sku"), uid("sku")
    add_stock(publisher, plenty, 10)
    add_stock(publisher, scarce, 1)
    wait_for_stock(pipeline, store, scarce, 1)

    order_id = place_order(publisher, customer, [(plenty, 3), (scarce, 2)])
    view = wait_for_order(
        pipeline,
        store,
        order_id,
        until=lambda v: (
            "InventoryReleased" in events_of(v)
            or v["status"] == "CANCELLED"
            and "InventoryReservationFailed" in events_of(v)
        ),
    )

    assert view["status"] == "CANCELLED"
    assert view["cancel_reason"] == "out_of_stock"
    # all or nothing: the line that could be reserved was released again
    wait_for_stock(pipeline, store, plenty, 10)
    assert int(views.stock(store, scarce)["available"]) == 1  # type: ignore[index]
    assert ledger_entry(pipeline.settings, order_id) is None  # never charged


def test_payment_failure_is_compensated(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 4)
    wait_for_stock(pipeline, store, sku, 4)

    order_id = place_order(publisher, customer, [(sku, 3)], token="tok_decline")
    view = wait_for_order(pipeline, store, order_id, until=lambda v: "InventoryReleased" in events_of(v))

    assert view["status"] == "CANCELLED"
    assert view["cancel_reason"] == "payment_failed"
    assert events_of(view).index("PaymentFailed") < events_of(view).index("OrderCancelled")
    stock = wait_for_stock(pipeline, store, sku, 4)
    assert (int(stock["reserved"]), int(stock["sold"])) == (0, 0)
    entry = ledger_entry(pipeline.settings, order_id)
    assert entry is not None and entry["status"] == "declined"


def test_deadline_cancels_and_a_late_payment_is_refunded(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 2)
    wait_for_stock(pipeline, store, sku, 2)

    order_id = place_order(publisher, customer, [(sku, 1)], token="tok_slow")
    view = wait_for_order(pipeline, store, order_id, timeout=SAGA_TIMEOUT_S + 60,
                          until=lambda v: "PaymentRefunded" in events_of(v))  # fmt: skip

    assert view["status"] == "CANCELLED"
    assert view["cancel_reason"] == "deadline_exceeded"
    timeline = events_of(view)
    assert timeline.index("OrderCancelled") < timeline.index("PaymentSucceeded") < timeline.index("PaymentRefunded")
    assert "OrderConfirmed" not in timeline
    entry = ledger_entry(pipeline.settings, order_id)
    assert entry is not None and entry["status"] == "refunded"
    wait_for_stock(pipeline, store, sku, 2)


def test_a_duplicate_command_yields_one_order(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 10)
    wait_for_stock(pipeline, store, sku, 10)

    order_id = place_order(publisher, customer, [(sku, 1)])
    place_order(publisher, customer, [(sku, 1)], order_id=order_id)
    view = wait_for_order(pipeline, store, order_id, until=lambda v: "InventoryCommitted" in events_of(v))

    assert view["status"] == "CONFIRMED"
    assert events_of(view).count("OrderPlaced") == 1
    stock = wait_for_stock(pipeline, store, sku, 9)
    assert int(stock["sold"]) == 1
    assert ledger_entry(pipeline.settings, order_id)["amount_cents"] == 1000  # type: ignore[index]


def test_orders_of_unknown_or_inactive_users_are_rejected(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 10)
    stranger = place_order(publisher, uid("nobody"), [(sku, 1)])
    view = wait_for_order(pipeline, store, stranger)
    assert view["status"] == "REJECTED"

    publisher.publish(USER_COMMANDS, "DeactivateUser", customer, {"user_id": customer, "reason": "test"})
    publisher.flush()
    wait_until(lambda: views.get_user(store, customer)["active"] is False, timeout=60, what="deactivated")  # type: ignore[index]
    seen = views.get_user(store, customer)["version"]  # type: ignore[index]
    inactive = place_order(publisher, customer, [(sku, 1)], user_version=seen)
    view = wait_for_order(pipeline, store, inactive)
    assert view["status"] == "REJECTED"
    assert "inactive" in json.dumps(view["timeline"])


def test_a_refund_that_keeps_failing_parks_the_saga_for_attention(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str
) -> None:
    sku = uid("sku")
    add_stock(publisher, sku, 2)
    wait_for_stock(pipeline, store, sku, 2)

    # the charge answers after the deadline, so the order is cancelled; its refund then fails every time
    order_id = place_order(publisher, customer, [(sku, 1)], token="tok_slow_refund_fails")
    view = wait_for_order(pipeline, store, order_id, timeout=SAGA_TIMEOUT_S + 90,
                          until=lambda v: v["status"] == "COMPENSATION_FAILED")  # fmt: skip

    timeline = events_of(view)
    assert timeline.index("OrderCancelled") < timeline.index("PaymentSucceeded") < timeline.index("PaymentRefundFailed")
    assert "OrderCompensationFailed" in timeline
    attention = {entry["order_id"]: entry for entry in views.needs_attention(store)}
    assert order_id in attention
    assert attention[order_id]["attempts"] == MAX_REFUND_ATTEMPTS
    assert attention[order_id]["amount_cents"] == 1000
    entry = ledger_entry(pipeline.settings, order_id)
    assert entry is not None and entry["status"] == "charged"  # the money is still out: a person must act
    wait_for_stock(pipeline, store, sku, 2)  # the stock side of the compensation did complete


# --- the schema registry: versions a worker was not shipped, and ids that outlive the registry ---------------


def catalog_with_field(root: Path, record: str, field: dict[str, Any]) -> SchemaCatalog:
    """The shipped catalog plus a next version of ``record`` with ``field`` added: a producer deployed before its
    consumers."""
    shipped = SchemaCatalog.load()
    tree = root / "schemas"
    shutil.copytree(SCHEMA_ROOT, tree, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    latest = shipped.latest(record)
    definition = {**latest.definition, "fields": [*latest.definition["fields"], field]}
    (tree / latest.context / f"{latest.name}.v{latest.version + 1}.avsc").write_text(json.dumps(definition))
    return SchemaCatalog.load(tree)


def test_a_version_the_workers_were_not_shipped_is_read_and_the_saga_completes(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, customer: str, settings: Settings, tmp_path: Path
) -> None:
    """A producer with a newer PlaceOrder (an added field with a default) publishes before any worker has that
    schema: the orders worker fetches the writer schema by id from the registry, reads the command as its own
    latest version, and the saga completes; nothing is dead-lettered. A consumer built with the newer catalog
    sees the new field."""
    shipped = SchemaCatalog.load()
    newer = catalog_with_field(
        tmp_path, "PlaceOrder", {"name": "gift_note", "type": ["null", "string"], "default": None}
    )
    version = newer.latest("PlaceOrder").version
    assert version == shipped.latest("PlaceOrder").version + 1
    sku = uid("sku")
    add_stock(publisher, sku, 3)
    wait_for_stock(pipeline, store, sku, 3)

    order_id = uid("o")
    value = {"order_id": order_id, "user_id": customer,
             "lines": [{"sku": sku, "quantity": 2, "unit_price_cents": 1000}],
             "payment": {"method": "card", "token": "tok_ok"}, "idempotency_key": order_id, "requested_at": now_ms(),
             "user_version": None, "gift_note": "happy birthday"}  # fmt: skip
    with EventPublisher(
        Producer(producer_config(settings)), registry_codec(newer, settings), newer, source="/order-pipeline/test"
    ) as newer_publisher:  # registers the new version on its first record (FULL_TRANSITIVE: accepted)
        newer_publisher.publish(ORDER_COMMANDS, "PlaceOrder", customer, value, version=version)
        newer_publisher.flush()

    view = wait_for_order(pipeline, store, order_id, until=lambda v: "InventoryCommitted" in events_of(v))
    assert view["status"] == "CONFIRMED" and view["total_cents"] == 2000

    with EventConsumer.reader(settings) as consumer:
        sent = [m for m in consumer.read_log([ORDER_COMMANDS.name]) if m.key == customer]
        dead = [m for m in consumer.read_log([f"{ORDER_COMMANDS.name}.dlq"]) if m.key == customer]
    assert dead == [], [m.headers for m in dead]
    mine = [m.value or b"" for m in sent if m.headers.get("ce_type") == "pipeline.orders.PlaceOrder"]
    as_newer = [d for d in map(registry_codec(newer, settings).decode, mine) if d.value["order_id"] == order_id]
    assert [(d.writer_version, d.value["gift_note"]) for d in as_newer] == [(version, "happy birthday")]
    as_shipped = [d for d in map(registry_codec(shipped, settings).decode, mine) if d.value["order_id"] == order_id]
    assert [(d.writer_version, d.reader_version) for d in as_shipped] == [(version, version - 1)]
    assert "gift_note" not in as_shipped[0].value


def test_the_registry_refuses_an_incompatible_version(settings: Settings, tmp_path: Path) -> None:
    """A new required field (no default) breaks FULL_TRANSITIVE: registering it fails with the registry's reason,
    and nothing can be written with it."""
    broken = catalog_with_field(tmp_path, "OrderConfirmed", {"name": "approved_by", "type": "string"})
    with pytest.raises(RegistryError, match=r"OrderConfirmed v\d+ \(OrderConfirmed\.v\d+\.avsc\) refused: .*409"):
        apply_catalog(HttpRegistry(settings.schema_registry_url), broken, ["OrderConfirmed"])
    value = {"order_id": "o-x", "payment_id": "p-x", "confirmed_at": now_ms(), "approved_by": "ada"}
    with pytest.raises(RegistryError, match="409"):
        registry_codec(broken, settings).encode("OrderConfirmed", value)


def test_every_record_still_decodes_after_the_registry_restarts(
    pipeline: Pipeline,
    publisher: EventPublisher,
    store: redis.Redis,
    customer: str,
    settings: Settings,
    schema_registry: RegistryNode,
) -> None:
    """The registry's ids are on disk: after a restart, a reader with an empty cache asks for every id again and
    decodes every record as before; the running workers, whose ids are cached, go on meanwhile."""
    sku = uid("sku")
    add_stock(publisher, sku, 2)
    wait_for_stock(pipeline, store, sku, 2)
    before_order = place_order(publisher, customer, [(sku, 1)])
    assert wait_for_order(pipeline, store, before_order)["status"] == "CONFIRMED"
    topics = [ORDER_COMMANDS.name, ORDER_EVENTS.name, INVENTORY_EVENTS.name]

    def decoded_log() -> dict[tuple[str, int, int], Any]:
        codec = registry_codec(SchemaCatalog.load(), settings)  # a new cache: every id is asked of the registry
        out: dict[tuple[str, int, int], Any] = {}
        with EventConsumer.reader(settings) as consumer:
            for m in consumer.read_log(topics):
                try:
                    out[(m.topic, m.partition, m.offset)] = codec.decode(m.value or b"")
                except DecodeError as exc:  # another module's poison on the shared broker
                    out[(m.topic, m.partition, m.offset)] = type(exc).__name__
        return out

    before = decoded_log()
    assert sum(1 for d in before.values() if not isinstance(d, str)) > 5
    schema_registry.stop()
    during = place_order(publisher, customer, [(sku, 1)])  # cached ids: the pipeline does not need the registry
    assert wait_for_order(pipeline, store, during)["status"] == "CONFIRMED"
    schema_registry.start()
    after = decoded_log()
    assert {k: after[k] for k in before} == before
