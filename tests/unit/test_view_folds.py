"""The views' pure folds: order views as a fold of their events, stock by version, attention, notices; the tables
they are kept in and the Redis writes that mirror them."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.toolkit import Consumed
from consumers.view_log import LogFold, event_of, fold_into
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.topics import (
    INVENTORY_EVENTS,
    ORDER_DEADLINES,
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    TOPICS,
)
from streams.views.events import TIME_FIELDS, CannotProject, Event, Op, make_event
from streams.views.keys import (
    ATTENTION_KEY,
    notifications_key,
    order_key,
    stock_key,
    user_order_summaries_key,
    user_orders_key,
)
from streams.views.notifications import NOTIFICATIONS_KEPT
from streams.views.orders import SAGA_ORDER, STATUS_BY_RECORD, apply_to_order, attention_entry
from streams.views.stock import STOCK_LINE_RECORDS, apply_to_stock
from streams.views.tables import STOCK_VIEWS, VIEW_TABLES, mirror, mirror_ops
from streams.views.tables import fold as fold_views

pytestmark = pytest.mark.unit

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def ev(record: str, at: int, event_id: str | None = None, service: str = "orders", **value: Any) -> Event:
    value.setdefault("order_id", "o-1")
    return Event(record=record, value=value, event_id=event_id or f"{record}-{at}", at=at, service=service)


def placed(at: int = T0, event_id: str | None = None, **extra: Any) -> Event:
    value = {
        "user_id": "u-1",
        "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}],
        "total_cents": 2500,
        "currency": "EUR",
        "deadline_at": at + 30_000,
        "channel": "api",
        "note": None,
        "payment_method": "card",
        "payment_token": "tok-secret",
        **extra,
    }
    return ev("OrderPlaced", at, event_id, **value)


def stock_line(record: str, at: int, version: int, *, available: int, reserved: int, sold: int = 0) -> Event:
    return ev(
        record,
        at,
        service="inventory",
        sku="SKU-1",
        quantity=2,
        available=available,
        reserved=reserved,
        sold=sold,
        stock_version=version,
    )


def fold(*events: Event, order_id: str = "o-1") -> dict[str, Any]:
    doc: dict[str, Any] | None = None
    for event in events:
        doc = apply_to_order(doc, order_id, event) or doc
    assert doc is not None
    return doc


class FakeViews:
    """The view tables as dicts, and the ops' Redis semantics in a dict, so whole sequences can be checked without
    Kafka or Redis. A stock line is folded twice, as the view service folds it: from the order-keyed topic and,
    forwarded, keyed by its SKU."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.tables: dict[str, dict[str, Any]] = {name: {} for name in VIEW_TABLES}

    def apply(self, event: Event) -> list[Op]:
        lookup = lambda table, key: self.tables[table].get(key)  # noqa: E731
        changes = fold_views(event, lookup)
        if event.record in STOCK_LINE_RECORDS:
            changes += fold_views(event, lookup, as_stock=True)
        ops = [op for change in changes for op in change.ops]
        for change in changes:
            self.tables[change.table][change.key] = change.after
        for op in ops:
            self._run(op)
        return ops

    def apply_batch(self, events: list[Event]) -> int:
        """Fold ``events`` as the view service folds a batch: each against the entries the ones before it left,
        then each changed entry's writes once, from the batch's start to its end; how many writes."""
        overlay: dict[tuple[str, str], Any] = {}
        started_as: dict[tuple[str, str], Any] = {}

        def lookup(table: str, key: str) -> Any:
            return overlay[(table, key)] if (table, key) in overlay else self.tables[table].get(key)

        for event in events:
            changes = fold_views(event, lookup)
            if event.record in STOCK_LINE_RECORDS:
                changes += fold_views(event, lookup, as_stock=True)
            for change in changes:
                started_as.setdefault((change.table, change.key), change.before)
                overlay[(change.table, change.key)] = change.after
        ops = [op for (t, k), after in overlay.items() for op in mirror_ops(t, k, started_as[(t, k)], after)]
        for op in ops:
            self._run(op)
        for (table, key), after in overlay.items():
            self.tables[table][key] = after
        return len(ops)

    def remirrored(self) -> dict[str, Any]:
        """What Redis holds when it is written again from the tables alone (a flushed Redis re-mirrored)."""
        fresh = FakeViews()
        for table, entries in self.tables.items():
            for key, entry in entries.items():
                for op in mirror(table, key, entry):
                    fresh._run(op)
        return fresh.data

    def _run(self, op: Op) -> None:
        args = [str(a) if not isinstance(a, int) else a for a in op.args]
        match op.command:
            case "SET":
                self.data[op.key] = args[0]
            case "HSET":
                h = self.data.setdefault(op.key, {})
                h.update({str(args[i]): str(args[i + 1]) for i in range(0, len(args), 2)})
            case "HDEL":
                self.data.get(op.key, {}).pop(args[0], None)
            case "ZADD":
                self.data.setdefault(op.key, {})[args[1]] = float(args[0])
            case "ZREM":
                self.data.get(op.key, {}).pop(args[0], None)
            case "SADD":
                self.data.setdefault(op.key, set()).add(args[0])
            case "DEL":
                self.data.pop(op.key, None)
            case "RPUSH":
                self.data.setdefault(op.key, []).extend(args)
            case _:
                raise AssertionError(op.command)
        self.data = {k: v for k, v in self.data.items() if v or isinstance(v, str)}


# --- status -------------------------------------------------------------------------------------------------


def test_status_moves_forward_through_the_saga() -> None:
    doc = fold(placed())
    assert doc["status"] == "PLACED"
    doc = fold(placed(), ev("InventoryReserved", T0 + 10, service="inventory", lines=[]))
    assert doc["status"] == "STOCK_RESERVED"
    doc = fold(
        placed(),
        ev("InventoryReserved", T0 + 10, lines=[]),
        ev("PaymentSucceeded", T0 + 20, payment_id="p-1", amount_cents=2500),
        ev("OrderConfirmed", T0 + 30, payment_id="p-1"),
    )
    assert doc["status"] == "CONFIRMED"
    assert doc["terminal_at"] == T0 + 30
    assert doc["payment_id"] == "p-1"
    assert doc["charged_cents"] == 2500


def test_a_late_order_placed_does_not_reset_a_confirmed_order() -> None:
    confirmed = fold(placed(), ev("OrderConfirmed", T0 + 30, payment_id="p-1"))
    late = apply_to_order(confirmed, "o-1", placed(at=T0 + 40, event_id="replayed-with-new-id"))
    assert late is not None
    assert late["status"] == "CONFIRMED"
    assert late["placed_at"] == T0  # the first placement stays the placement
    stock_after = apply_to_order(late, "o-1", stock_line("StockLineReserved", T0 + 50, 9, available=1, reserved=2))
    assert stock_after is not None and stock_after["status"] == "CONFIRMED"


def test_terminal_states_never_revert() -> None:
    confirmed = fold(placed(), ev("OrderConfirmed", T0 + 30, payment_id="p-1"))
    after = apply_to_order(confirmed, "o-1", ev("OrderCancelled", T0 + 60, reason="deadline"))
    assert after is not None
    assert after["status"] == "CONFIRMED"
    assert after["cancel_reason"] is None
    assert [e["event"] for e in after["timeline"]][-1] == "OrderCancelled"  # still in the timeline

    cancelled = fold(placed(), ev("OrderCancelled", T0 + 30, reason="out of stock"))
    after = apply_to_order(cancelled, "o-1", ev("OrderConfirmed", T0 + 60, payment_id="p-1"))
    assert after is not None and after["status"] == "CANCELLED"
    assert after["cancel_reason"] == "out of stock"


def test_compensation_failed_outranks_cancelled_and_keeps_the_cancel_reason() -> None:
    doc = fold(
        placed(),
        ev("PaymentSucceeded", T0 + 10, payment_id="p-1", amount_cents=2500),
        ev("OrderCancelled", T0 + 20, reason="deadline passed"),
        ev("OrderCompensationFailed", T0 + 30, failed_step="refund", reason="provider down", attempts=5,
           payment_id="p-1", amount_cents=2500),
    )  # fmt: skip
    assert doc["status"] == "COMPENSATION_FAILED"
    assert doc["cancel_reason"] == "deadline passed"
    assert doc["needs_attention"] is True


def test_rejected_order_has_its_user_and_reason() -> None:
    doc = fold(ev("OrderRejected", T0, user_id="u-9", reason="too many open orders"))
    assert (doc["status"], doc["user_id"], doc["cancel_reason"]) == ("REJECTED", "u-9", "too many open orders")


# --- idempotency --------------------------------------------------------------------------------------------


def test_the_same_event_twice_changes_nothing() -> None:
    doc = fold(placed(), ev("OrderConfirmed", T0 + 30, payment_id="p-1"))
    assert apply_to_order(doc, "o-1", ev("OrderConfirmed", T0 + 30, payment_id="p-1")) is None
    views = FakeViews()
    event = ev("PaymentSucceeded", T0 + 10, payment_id="p-1", amount_cents=2500)
    assert views.apply(placed()) and views.apply(event)
    before = json.loads(json.dumps(views.data, default=sorted))
    assert views.apply(event) == []
    assert json.loads(json.dumps(views.data, default=sorted)) == before


def test_a_second_charge_is_summed_so_double_charges_show() -> None:
    doc = fold(
        placed(),
        ev("PaymentSucceeded", T0 + 10, "charge-1", payment_id="p-1", amount_cents=2500),
        ev("PaymentSucceeded", T0 + 11, "charge-2", payment_id="p-2", amount_cents=2500),
    )
    assert doc["charged_cents"] == 5000
    assert doc["payment_id"] == "p-1"


# --- timeline -----------------------------------------------------------------------------------------------


def test_timeline_is_sorted_by_event_time_whatever_the_arrival_order() -> None:
    doc = fold(
        ev("OrderConfirmed", T0 + 30, payment_id="p-1"),
        stock_line("StockLineReserved", T0 + 5, 1, available=8, reserved=2),
        placed(),
        ev("PaymentSucceeded", T0 + 20, payment_id="p-1", amount_cents=2500, service="payments"),
    )
    assert [(e["at"], e["event"]) for e in doc["timeline"]] == [
        (T0, "OrderPlaced"),
        (T0 + 5, "StockLineReserved"),
        (T0 + 20, "PaymentSucceeded"),
        (T0 + 30, "OrderConfirmed"),
    ]
    line = doc["timeline"][1]
    assert line["service"] == "inventory"
    assert line["detail"] == {"sku": "SKU-1", "quantity": 2, "available": 8, "reserved": 2, "sold": 0,
                              "stock_version": 1}  # fmt: skip
    assert "payment_token" not in doc["timeline"][0]["detail"]
    assert "payment_token" not in json.dumps(doc)


def test_same_time_entries_follow_the_saga_order() -> None:
    doc = fold(ev("OrderConfirmed", T0, payment_id="p"), ev("InventoryReserved", T0, lines=[]), placed(at=T0))
    assert [e["event"] for e in doc["timeline"]] == ["OrderPlaced", "InventoryReserved", "OrderConfirmed"]


def saga(order_id: str = "o-1") -> list[Event]:
    def e(record: str, at: int, service: str, **value: Any) -> Event:
        return Event(record, {"order_id": order_id, **value}, f"{order_id}-{record}-{at}", at, service)

    return [
        e("OrderPlaced", T0, "orders", user_id="u-1", lines=[{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 5}],
          total_cents=10, currency="EUR", deadline_at=T0 + 1000, channel="api", note=None),
        e("StockLineReserved", T0 + 1, "inventory", sku="SKU-1", quantity=2, available=8, reserved=2, sold=0,
          stock_version=2),
        e("InventoryReserved", T0 + 2, "inventory", lines=[{"sku": "SKU-1", "quantity": 2}]),
        e("PaymentSucceeded", T0 + 3, "payments", payment_id="p-1", amount_cents=10),
        e("OrderCancelled", T0 + 4, "orders", reason="deadline"),
        e("StockLineReleased", T0 + 5, "inventory", sku="SKU-1", quantity=2, available=10, reserved=0, sold=0,
          stock_version=3),
        Event("StockLineRejected", {"order_id": "o-2", "sku": "SKU-1", "requested": 99, "available": 10,
                                    "reserved": 0, "sold": 0, "stock_version": 3, "reason": "short"},
              "o-2-rejected", T0 + 9, "inventory"),
        e("OrderCompensationFailed", T0 + 6, "orders", failed_step="refund", reason="provider down", attempts=5,
          payment_id="p-1", amount_cents=10),
        e("PaymentRefunded", T0 + 7, "payments", payment_id="p-1", amount_cents=10, reason="manual"),
        Event("StockAdded", {"sku": "SKU-1", "quantity": 10, "reason": "initial", "available": 10, "reserved": 0,
                             "sold": 0, "stock_version": 1}, "stock-added-1", T0 - 100, "inventory"),
        Event("NotificationSent", {"notification_id": "n-1", "user_id": "u-1", "order_id": order_id,
                                   "kind": "order_cancelled", "message": "sorry", "sent_at": T0 + 8},
              "n-ev-1", T0 + 8, "notifications"),
    ]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.permutations(saga()), st.data())
def test_views_do_not_depend_on_arrival_order_or_duplicates(events: list[Event], data: st.DataObject) -> None:
    expected = FakeViews()
    for event in saga():
        expected.apply(event)
    views = FakeViews()
    for event in events:
        views.apply(event)
        if data.draw(st.booleans()):
            views.apply(event)  # redelivered
    assert views.data == expected.data


# --- user's orders ------------------------------------------------------------------------------------------


def test_user_orders_follow_the_order_status() -> None:
    views = FakeViews()
    views.apply(placed())
    summaries = views.data[user_order_summaries_key("u-1")]
    assert json.loads(summaries["o-1"])["status"] == "PLACED"
    assert views.data[user_orders_key("u-1")] == {"o-1": float(T0)}
    views.apply(ev("OrderConfirmed", T0 + 30, payment_id="p-1"))
    assert json.loads(views.data[user_order_summaries_key("u-1")]["o-1"])["status"] == "CONFIRMED"
    ops = views.apply(ev("PaymentSucceeded", T0 + 10, payment_id="p-1", amount_cents=2500))
    assert ops and not [op for op in ops if op.key.startswith("view:user")]  # summary unchanged: not rewritten


def test_user_orders_wait_for_the_user_to_be_known() -> None:
    views = FakeViews()
    ops = views.apply(stock_line("StockLineReserved", T0 + 5, 1, available=8, reserved=2))
    assert not any(op.key.startswith("view:user") for op in ops)
    views.apply(placed())
    assert user_orders_key("u-1") in views.data


# --- stock --------------------------------------------------------------------------------------------------


def test_stock_applies_only_newer_versions() -> None:
    first = apply_to_stock(None, stock_line("StockLineReserved", T0, 5, available=8, reserved=2))
    assert first is not None
    assert (first["available"], first["reserved"], first["stock_version"]) == ("8", "2", "5")
    assert apply_to_stock(first, stock_line("StockLineReserved", T0 + 1, 5, available=1, reserved=9)) is None
    assert apply_to_stock(first, stock_line("StockLineReleased", T0 + 2, 4, available=10, reserved=0)) is None
    newer = apply_to_stock(first, stock_line("StockLineCommitted", T0 + 3, 6, available=8, reserved=0, sold=2))
    assert newer is not None
    assert (newer["sold"], newer["stock_version"], newer["last_event"]) == ("2", "6", "StockLineCommitted")


def test_of_events_reporting_one_version_the_earliest_stays_whatever_the_order() -> None:
    released = stock_line("StockLineReleased", T0 + 10, 7, available=10, reserved=0)
    rejected = stock_line("StockLineRejected", T0 + 20, 7, available=10, reserved=0)
    one = apply_to_stock(apply_to_stock(None, released), rejected)
    other = apply_to_stock(apply_to_stock(None, rejected), released)
    assert one is None  # the later report changes nothing
    assert other is not None and other == apply_to_stock(None, released)
    assert other["last_event"] == "StockLineReleased"


def test_stock_added_goes_to_the_stock_view_only() -> None:
    added = Event("StockAdded", {"sku": "SKU-9", "quantity": 5, "reason": "delivery", "available": 5,
                                 "reserved": 0, "sold": 0, "stock_version": 1}, "id-1", T0, "inventory")  # fmt: skip
    (change,) = fold_views(added, lambda table, key: None)
    assert (change.table, change.key) == (STOCK_VIEWS, "SKU-9")
    assert {op.key for op in change.ops} == {stock_key("SKU-9"), "view:skus"}
    assert fold_views(added, lambda table, key: {"stock_version": "1"}) == []


def test_stock_without_absolute_counts_cannot_be_projected() -> None:
    old_style = Event("StockAdded", {"sku": "SKU-9", "quantity": 5, "reason": "delivery"}, "id-1", T0)
    with pytest.raises(CannotProject, match="available"):
        fold_views(old_style, lambda table, key: None)


def test_an_order_event_without_an_order_id_cannot_be_projected() -> None:
    with pytest.raises(CannotProject, match="order_id"):
        fold_views(Event("OrderConfirmed", {"payment_id": "p"}, "x", T0), lambda table, key: None)


# --- needs attention ----------------------------------------------------------------------------------------


def failure(at: int) -> Event:
    return ev("OrderCompensationFailed", at, failed_step="refund", reason="provider down", attempts=5,
              payment_id="p-1", amount_cents=2500)  # fmt: skip


def test_attention_is_added_on_compensation_failure_and_removed_by_a_later_refund() -> None:
    views = FakeViews()
    views.apply(placed())
    views.apply(ev("OrderCancelled", T0 + 20, reason="deadline"))
    views.apply(failure(T0 + 30))
    entry = json.loads(views.data[ATTENTION_KEY]["o-1"])
    assert entry["failed_step"] == "refund" and entry["attempts"] == 5 and entry["failed_at"] == T0 + 30
    assert entry["order"]["status"] == "COMPENSATION_FAILED"
    assert entry["order"]["user_id"] == "u-1"

    views.apply(ev("PaymentRefunded", T0 + 90, payment_id="p-1", amount_cents=2500, reason="manual"))
    assert ATTENTION_KEY not in views.data
    doc = json.loads(views.data[order_key("o-1")])
    assert doc["status"] == "COMPENSATION_FAILED"  # terminal; the record says it was resolved
    assert doc["compensation"]["resolved_at"] == T0 + 90
    assert doc["refunded_cents"] == 2500


def test_a_refund_before_the_failure_does_not_clear_attention() -> None:
    doc = fold(placed(), ev("PaymentRefunded", T0 + 10, payment_id="p-1", amount_cents=100, reason="partial"),
               failure(T0 + 30))  # fmt: skip
    assert attention_entry(doc) is not None


def test_attention_entry_follows_later_order_changes() -> None:
    views = FakeViews()
    views.apply(failure(T0 + 30))
    assert json.loads(views.data[ATTENTION_KEY]["o-1"])["order"]["user_id"] is None
    views.apply(placed())  # read later (another topic): the attention record gets the full order
    assert json.loads(views.data[ATTENTION_KEY]["o-1"])["order"]["user_id"] == "u-1"


# --- notifications ------------------------------------------------------------------------------------------


def notice(n: int, user: str = "u-1") -> Event:
    value = {"notification_id": f"n-{n}", "user_id": user, "order_id": None, "kind": "k", "message": f"m{n}",
             "sent_at": T0 + n}  # fmt: skip
    return Event("NotificationSent", value, f"ev-{n}", T0 + n, "notifications")


def test_notifications_newest_first_deduplicated_and_bounded() -> None:
    views = FakeViews()
    for n in range(NOTIFICATIONS_KEPT + 5):
        views.apply(notice(n))
    assert views.apply(notice(NOTIFICATIONS_KEPT)) == []  # the same notification again, among the kept ones
    listed = [json.loads(v)["notification_id"] for v in views.data[notifications_key("u-1")]]
    assert len(listed) == NOTIFICATIONS_KEPT
    assert listed[0] == f"n-{NOTIFICATIONS_KEPT + 4}"
    redelivered = Event("NotificationSent", dict(notice(50).value), "another-envelope-id", T0 + 50)
    assert views.apply(redelivered) == []


# --- events from messages -----------------------------------------------------------------------------------


def test_make_event_reads_time_id_and_service() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    event = make_event("OrderConfirmed", {"order_id": "o", "payment_id": "p", "confirmed_at": at},
                       event_id=None, position="orders.events.v1:3:17", source="/order-pipeline/orders",
                       fallback_time_ms=1)  # fmt: skip
    assert (event.event_id, event.at, event.service) == ("orders.events.v1:3:17", T0, "orders")
    unknown = make_event("StockLineReserved", {"order_id": "o", "sku": "s", "reserved_at": at}, event_id="id",
                         position="x", source=None, fallback_time_ms=5)  # fmt: skip
    assert (unknown.at, unknown.value["reserved_at"], unknown.service) == (T0, T0, "")
    timeless = make_event("X", {"order_id": "o"}, event_id="id", position="x", source=None, fallback_time_ms=5)
    assert timeless.at == 5


# --- the record names the views route and fold by -----------------------------------------------------------


def test_the_views_name_only_records_the_topic_contract_declares() -> None:
    """Where a view lists record names it cannot derive (an order, a time field each), they match the contract."""
    order_keyed = {*ORDER_EVENTS.records, *ORDER_DEADLINES.records, *INVENTORY_EVENTS.records, *PAYMENT_EVENTS.records}
    assert set(SAGA_ORDER) == order_keyed and len(SAGA_ORDER) == len(order_keyed)
    assert set(STATUS_BY_RECORD) <= order_keyed
    assert STOCK_LINE_RECORDS <= set(INVENTORY_EVENTS.records)
    assert set(TIME_FIELDS) <= {record for topic in TOPICS for record in topic.records}


# --- messages as the folds take them (the view service's checks, in the same order) ---------------------------


def consumed(value: bytes, offset: int = 0, headers: tuple[tuple[str, bytes], ...] = ()) -> Consumed:
    return Consumed("orders.events.v1", 0, offset, T0, "o-1", value, headers, b"o-1")


def test_garbage_cannot_be_folded_and_a_redelivery_changes_nothing() -> None:
    from schemas.errors import DecodeError

    codec = AvroCodec(SchemaCatalog.load())
    with pytest.raises(DecodeError, match="Confluent-framed"):
        event_of(consumed(b"not avro"), codec)
    good = codec.encode("OrderConfirmed", {"order_id": "o-1", "payment_id": "p-1", "confirmed_at": T0})
    headers = (("ce_id", b"e-1"), ("ce_source", b"/order-pipeline/orders"), ("ce_specversion", b"1.0"),
               ("ce_type", b"OrderConfirmed"), ("ce_time", b"2026-01-01T00:00:00Z"))  # fmt: skip
    views = LogFold()
    fold_into(views, event_of(consumed(good, 1, headers), codec), stock_line=False)
    fold_into(views, event_of(consumed(good, 2, headers), codec), stock_line=False)  # same ce_id at another offset
    doc = views.tables["views_orders"]["o-1"]
    assert doc["status"] == "CONFIRMED" and views.changed == 1
    assert [entry["id"] for entry in doc["timeline"]] == [event_of(consumed(good, 1, headers), codec).event_id]


def test_the_order_views_terminal_ranks_are_exactly_the_domains_terminal_statuses() -> None:
    from streams.domain.orders import TERMINAL_STATUSES
    from streams.views.orders import STATUS_RANK, TERMINAL_RANK

    assert {status for status, rank in STATUS_RANK.items() if rank >= TERMINAL_RANK} == TERMINAL_STATUSES


@pytest.mark.parametrize(
    ("key", "partition", "error"),
    [
        (None, 0, "missing key: orders.events.v1 is keyed by order_id"),
        ("o-2", 3, "key 'o-2' differs from the record's order_id 'o-1'"),  # o-2's own partition
        ("o-1", 4, "wrong partition 4 for key 'o-1', expected 0"),
    ],
    ids=["missing key", "key differs", "wrong partition"],
)
def test_a_record_breaking_its_key_contract_cannot_be_folded(key: str | None, partition: int, error: str) -> None:
    """What every agent refuses never reaches the views either (an unkeyed OrderConfirmed from kcat, say): the view
    service dead-letters it with this reason, and a fold of the log skips it, so both build the same views."""
    codec = AvroCodec(SchemaCatalog.load())
    good = codec.encode("OrderConfirmed", {"order_id": "o-1", "payment_id": "p-1", "confirmed_at": T0})
    raw_key = None if key is None else key.encode()
    message = Consumed("orders.events.v1", partition, 7, T0, key, good, (("ce_id", b"e-1"),), raw_key)
    with pytest.raises(CannotProject) as refused:
        event_of(message, codec)
    assert str(refused.value) == error
    assert event_of(replace(message, partition=0, key="o-1", raw_key=b"o-1"), codec).record == "OrderConfirmed"


@settings(max_examples=40, deadline=None)
@given(st.permutations(saga()))
def test_a_redis_written_again_from_the_tables_equals_the_one_written_event_by_event(events: list[Event]) -> None:
    """A flushed Redis re-mirrored from the tables (O(keys)) shows exactly what the live writes showed."""
    views = FakeViews()
    for event in events:
        views.apply(event)
    assert views.remirrored() == views.data


@settings(max_examples=60, deadline=None)
@given(st.permutations(saga()), st.integers(min_value=1, max_value=12))
def test_a_batch_written_once_per_changed_entry_shows_what_event_by_event_writes_show(
    events: list[Event], size: int
) -> None:
    """The view service writes each entry a batch changed once (its diff from the batch's start to its end)."""
    one_by_one, batched = FakeViews(), FakeViews()
    written_one_by_one = sum(len(one_by_one.apply(event)) for event in events)
    written = sum(batched.apply_batch(events[start : start + size]) for start in range(0, len(events), size))
    assert batched.data == one_by_one.data and batched.tables == one_by_one.tables
    assert written <= written_one_by_one
    if size >= len(events):
        assert written < written_one_by_one, "a batch holding an order's events writes its view once"
