"""The domain's messages against the real schemas: same names, same fields, same keys, lossless round trips."""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import fields, is_dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

import pytest

from schemas import AvroCodec, SchemaCatalog
from schemas.topics import TOPICS, topic_for_record
from streams.domain import core
from streams.domain.core import SagaConfig, StepContext
from streams.domain.messages import (
    MESSAGE_TYPES,
    AddStock,
    ChangeEmail,
    ClaimEmail,
    CommitStock,
    DeactivateUser,
    EmailClaimed,
    EmailClaimRefused,
    InventoryCommitted,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    Message,
    NotificationSent,
    OrderCancelled,
    OrderCompensationFailed,
    OrderConfirmed,
    OrderDeadlineReached,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    PaymentDetails,
    PaymentFailed,
    PaymentPending,
    PaymentRefunded,
    PaymentRefundFailed,
    PaymentSucceeded,
    PlaceOrder,
    ReactivateUser,
    RecordLogin,
    RegisterUser,
    ReleaseEmail,
    ReleaseHeldOrders,
    ReleaseStock,
    ReserveStock,
    RetryPayment,
    ShortLine,
    StockAdded,
    StockLine,
    StockLineCommitted,
    StockLineRejected,
    StockLineReleased,
    StockLineReserved,
    UnknownMessage,
    UpdateUserProfile,
    UserCommandRejected,
    UserDeactivated,
    UserEmailChanged,
    UserLoggedIn,
    UserOnboardingStarted,
    UserProfileUpdated,
    UserReactivated,
    UserRegistered,
    UserSnapshot,
    from_jsonable,
    from_record,
    to_jsonable,
    to_record,
)

pytestmark = pytest.mark.unit

CATALOG = SchemaCatalog.load()
CODEC = AvroCodec(CATALOG)
WHEN = datetime(2025, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
LATER = WHEN + timedelta(minutes=5)
LEVELS = {"available": 3, "reserved": 2, "sold": 1, "stock_version": 2**40}

SAMPLES: list[Message] = [
    PlaceOrder(
        order_id="o-1",
        user_id="u-1",
        lines=(
            OrderLine(sku="a", quantity=2, unit_price_cents=250),
            OrderLine(sku="b", quantity=1, unit_price_cents=0),
        ),
        payment=PaymentDetails(method="card", token="tok"),
        idempotency_key="k-1",
        requested_at=WHEN,
        user_version=3,
    ),
    OrderPlaced(
        order_id="o-1",
        user_id="u-1",
        lines=(OrderLine(sku="a", quantity=2, unit_price_cents=250),),
        total_cents=500,
        currency="EUR",
        placed_at=WHEN,
        deadline_at=LATER,
        channel="web",
        note="ring twice",
        payment_method="card",
        payment_token="tok",
    ),
    OrderRejected(order_id="o-1", user_id="u-1", reason="unknown_user", rejected_at=WHEN),
    OrderConfirmed(order_id="o-1", payment_id="p-1", confirmed_at=WHEN),
    OrderCancelled(order_id="o-1", reason="deadline_exceeded", cancelled_at=WHEN),
    OrderCompensationFailed(
        order_id="o-1",
        failed_step="refund_payment",
        reason="provider down",
        attempts=5,
        payment_id="p-1",
        amount_cents=500,
        failed_at=WHEN,
    ),
    OrderDeadlineReached(order_id="o-1", deadline_at=WHEN, observed_at=LATER),
    AddStock(sku="a", quantity=5, reason="restock"),
    StockAdded(sku="a", quantity=5, reason="restock", **LEVELS, added_at=WHEN),
    ReserveStock(order_id="o-1", sku="a", quantity=2, requested_at=WHEN),
    ReleaseStock(order_id="o-1", sku="a", quantity=2, reason="order cancelled: out_of_stock", requested_at=WHEN),
    CommitStock(order_id="o-1", sku="a", quantity=2, requested_at=WHEN),
    StockLineReserved(order_id="o-1", sku="a", quantity=2, **LEVELS, reserved_at=WHEN),
    StockLineRejected(order_id="o-1", sku="a", requested=9, **LEVELS, reason="insufficient_stock", rejected_at=WHEN),
    StockLineReleased(order_id="o-1", sku="a", quantity=0, **LEVELS, released_at=WHEN),
    StockLineCommitted(order_id="o-1", sku="a", quantity=2, **LEVELS, committed_at=WHEN),
    InventoryReserved(order_id="o-1", lines=(StockLine(sku="a", quantity=2),), reserved_at=WHEN),
    InventoryReservationFailed(
        order_id="o-1", failed_lines=(ShortLine(sku="a", requested=9, available=3),), reason="x", failed_at=WHEN
    ),
    InventoryReleased(order_id="o-1", lines=(), reason="payment_failed", released_at=WHEN),
    InventoryCommitted(order_id="o-1", lines=(StockLine(sku="a", quantity=2),), committed_at=WHEN),
    PaymentSucceeded(order_id="o-1", payment_id="p-1", amount_cents=500, charged_at=WHEN),
    PaymentFailed(order_id="o-1", reason="card declined", failed_at=WHEN),
    PaymentRefunded(order_id="o-1", payment_id="p-1", amount_cents=500, reason="order cancelled", refunded_at=WHEN),
    PaymentRefundFailed(order_id="o-1", payment_id="p-1", amount_cents=500, reason="no", attempts=3, failed_at=WHEN),
    NotificationSent(
        notification_id="o-1:order_confirmed",
        user_id="u-1",
        order_id="o-1",
        kind="order_confirmed",
        message="Your order o-1 is confirmed.",
        sent_at=WHEN,
    ),
    UserRegistered(user_id="u-1", version=1, username="ann", email="a@x", profile={"tier": "gold"}, registered_at=WHEN),
    UserDeactivated(user_id="u-1", version=2, reason="fraud", deactivated_at=WHEN),
    UserReactivated(user_id="u-1", version=3, reactivated_at=WHEN),
    UserProfileUpdated(user_id="u-1", version=4, changes={"tier": "silver"}, updated_at=WHEN),
    UserEmailChanged(user_id="u-1", version=5, old_email="a@x.io", new_email="b@x.io", changed_at=WHEN),
    UserLoggedIn(user_id="u-1", version=6, logged_in_at=WHEN),
    UserOnboardingStarted(user_id="u-1", started_at=WHEN),
    UserCommandRejected(
        user_id="u-1",
        command="ChangeEmail",
        reason="concurrency conflict: expected version 2, actual version 6",
        expected_version=2,
        actual_version=6,
        rejected_at=WHEN,
    ),
    UserSnapshot(
        user_id="u-1",
        version=5,
        username="ann",
        email="b@x.io",
        profile={"tier": "silver"},
        active=False,
        taken_at=LATER,
        registered_at=WHEN,
        deactivation_reason="fraud",
        login_count=2**33,
        last_login_at=WHEN,
    ),
    RegisterUser(user_id="u-1", username="ann", email="a@x.io", profile={"tier": "gold"}),
    UpdateUserProfile(user_id="u-1", expected_version=3, changes={"tier": "silver"}),
    ChangeEmail(user_id="u-1", expected_version=4, new_email="b@x.io"),
    DeactivateUser(user_id="u-1", expected_version=5, reason="fraud"),
    ReactivateUser(user_id="u-1", expected_version=6),
    RecordLogin(user_id="u-1", logged_in_at=WHEN),
    ClaimEmail(email="b@x.io", user_id="u-1", request_id="u-1/claim/2", requested_at=WHEN),
    ReleaseEmail(email="a@x.io", user_id="u-1", request_id="u-1/claim/1", reason="e-mail changed", requested_at=WHEN),
    EmailClaimed(user_id="u-1", email="b@x.io", request_id="u-1/claim/2", claimed_at=WHEN),
    EmailClaimRefused(
        user_id="u-1", email="b@x.io", request_id="u-1/claim/2", reason="e-mail already in use", refused_at=WHEN
    ),
    ReleaseHeldOrders(user_id="u-1", requested_at=WHEN),
    PaymentPending(order_id="o-1", reason="provider unavailable", pending_at=WHEN),
    RetryPayment(order_id="o-1", requested_at=WHEN),
]
WITH_NULLS: list[Message] = [
    OrderPlaced(
        order_id="o-2",
        user_id="u-1",
        lines=(),
        total_cents=0,
        currency="EUR",
        placed_at=WHEN,
        deadline_at=LATER,
    ),
    OrderCompensationFailed(order_id="o-1", failed_step="refund_payment", reason="r", attempts=1, failed_at=WHEN),
    NotificationSent(notification_id="n", user_id="u-1", kind="welcome", message="hi", sent_at=WHEN),
    UserRegistered(user_id="u-1", version=1, username="ann", email="a@x", registered_at=WHEN),
    UserCommandRejected(user_id="u-1", command="RegisterUser", reason="unknown user", rejected_at=WHEN),
    UserSnapshot(user_id="u-1", version=5, username="ann", email="a@x", active=True, taken_at=WHEN),
    UpdateUserProfile(user_id="u-1", changes={}),
    ChangeEmail(user_id="u-1", new_email="b@x.io"),
    DeactivateUser(user_id="u-1", reason="fraud"),
    ReactivateUser(user_id="u-1"),
]


def test_every_record_of_every_topic_has_a_class() -> None:
    assert set(MESSAGE_TYPES) == {r for t in TOPICS for r in t.records}
    assert {type(m).__name__ for m in SAMPLES} == set(MESSAGE_TYPES), "a sample per message class"


@pytest.mark.parametrize("name", sorted(MESSAGE_TYPES))
def test_key_is_the_topic_key_field(name: str) -> None:
    cls = MESSAGE_TYPES[name]
    assert cls.KEY_FIELD == topic_for_record(name).key_field
    sample = next(m for m in SAMPLES if type(m) is cls)
    assert sample.key == getattr(sample, topic_for_record(name).key_field)
    assert sample.record_name == name


def _avro_shape(schema: Any, named: dict[str, Any]) -> Any:
    """Field names of a record, nested records and arrays of records included."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        shapes = [s for s in (_avro_shape(b, named) for b in schema) if s is not None]
        return shapes[0] if shapes else None
    if isinstance(schema, dict):
        if schema["type"] == "record":
            return {f["name"]: _avro_shape(f["type"], named) for f in schema["fields"]}
        if schema["type"] == "array":
            return _avro_shape(schema["items"], named)
    return None


def _class_shape(tp: Any) -> Any:
    """Field names of a dataclass, nested dataclasses (also in tuples and optionals) included."""
    if get_origin(tp) in (tuple, UnionType):
        shapes = [s for s in (_class_shape(a) for a in get_args(tp)) if s is not None]
        return shapes[0] if shapes else None
    if isinstance(tp, type) and is_dataclass(tp):
        hints = get_type_hints(tp)
        return {f.name: _class_shape(hints[f.name]) for f in fields(tp)}
    return None


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.record_name)
def test_fields_are_the_latest_schemas_fields(message: Message) -> None:
    sv = CATALOG.latest(message.record_name)
    assert _class_shape(type(message)) == _avro_shape(sv.parsed, sv.parsed["__named_schemas"])


@pytest.mark.parametrize("message", SAMPLES + WITH_NULLS, ids=lambda m: m.record_name)
def test_round_trip_through_the_real_codec(message: Message) -> None:
    data = CODEC.encode(message.record_name, to_record(message))
    decoded = CODEC.decode(data, expected={message.record_name})
    assert from_record(decoded.name, decoded.value) == message
    assert from_record(decoded.full_name, decoded.value) == message


@pytest.mark.parametrize("message", SAMPLES + WITH_NULLS, ids=lambda m: m.record_name)
def test_json_round_trip_keeps_the_class(message: Message) -> None:
    text = json.dumps(to_jsonable(message))
    assert from_jsonable(Message, json.loads(text)) == message
    assert from_jsonable(type(message), json.loads(text)) == message


def test_older_versions_load_with_the_newer_fields_defaulted() -> None:
    placed = SAMPLES[1]
    assert isinstance(placed, OrderPlaced)
    v1_names = {f["name"] for f in CATALOG.get("OrderPlaced", 1).definition["fields"]}
    v1_value = {k: v for k, v in to_record(placed).items() if k in v1_names}
    expected = replace(placed, channel="api", note=None, payment_method="", payment_token="")
    v1_data_read_as_latest = CODEC.decode(CODEC.encode("OrderPlaced", v1_value, version=1))
    latest_data_read_as_v1 = CODEC.decode(CODEC.encode("OrderPlaced", to_record(placed)), reader_version=1)
    assert v1_data_read_as_latest.writer_version == 1 and latest_data_read_as_v1.writer_version == 3
    for decoded in (v1_data_read_as_latest, latest_data_read_as_v1):
        assert from_record("OrderPlaced", decoded.value) == expected


def test_unknown_fields_are_ignored_so_newer_versions_still_load() -> None:
    value = {**to_record(SAMPLES[3]), "loyalty_points": 12, "extra": {"nested": True}}
    assert from_record("OrderConfirmed", value) == SAMPLES[3]


def test_timestamps_load_from_datetimes_millis_and_iso_text() -> None:
    millis = int(WHEN.timestamp() * 1000)
    for stamp in (WHEN, millis, WHEN.isoformat(), WHEN.astimezone(timezone(timedelta(hours=2)))):
        confirmed = from_record("OrderConfirmed", {"order_id": "o", "payment_id": "p", "confirmed_at": stamp})
        assert isinstance(confirmed, OrderConfirmed)
        assert confirmed.confirmed_at == WHEN and confirmed.confirmed_at.tzinfo == UTC


def test_naive_timestamps_and_unknown_records_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        from_record("OrderConfirmed", {"order_id": "o", "payment_id": "p", "confirmed_at": datetime(2025, 1, 1)})
    with pytest.raises(UnknownMessage):
        from_record("NoSuchRecord", {"user_id": "u"})


def test_to_record_gives_lists_dicts_and_aware_datetimes() -> None:
    record = to_record(SAMPLES[0])
    assert record["lines"] == [
        {"sku": "a", "quantity": 2, "unit_price_cents": 250},
        {"sku": "b", "quantity": 1, "unit_price_cents": 0},
    ]
    assert record["payment"] == {"method": "card", "token": "tok"}
    assert record["requested_at"] is WHEN


def test_occurred_at_is_the_records_own_time() -> None:
    assert SAMPLES[6].occurred_at == LATER  # OrderDeadlineReached: when the timer saw it
    assert AddStock(sku="a", quantity=1, reason="r").occurred_at is None


def test_step_context_keeps_utc_milliseconds() -> None:
    ctx = StepContext(now=datetime(2025, 1, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))))
    assert ctx.now == datetime(2025, 1, 1, 12, 0, 0, 123000, tzinfo=UTC) and ctx.now.tzinfo == UTC
    with pytest.raises(ValueError, match="naive"):
        StepContext(now=datetime(2025, 1, 1))


def test_refund_backoff_doubles_up_to_the_cap() -> None:
    config = SagaConfig(refund_backoff_base=timedelta(seconds=1), refund_backoff_cap=timedelta(seconds=5))
    assert [config.refund_delay(n).total_seconds() for n in range(1, 7)] == [0, 1, 2, 4, 5, 5]
    with pytest.raises(ValueError):
        SagaConfig(max_refund_attempts=0)


def test_the_domain_imports_only_the_standard_library() -> None:
    package = Path(core.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or name.startswith("streams.domain"), f"{path.name}: {name}"
    assert core.__name__ == "streams.domain.core"


def test_plain_fields_load_and_dump_as_they_are_and_a_wrong_type_is_still_refused() -> None:
    """The loader's fast path for a field of its own plain type must not let other types through."""
    from streams.domain.messages.convert import _dump, _load

    assert _load(str, "x") == "x" and _load(int, 3) == 3 and _load(float, 1.5) == 1.5
    assert _load(int | None, None) is None
    with pytest.raises(TypeError):
        _load(int, "3")
    with pytest.raises(TypeError):
        _load(str, 3)
    assert _dump(3, as_json=True) == 3 and _dump(None, as_json=True) is None
