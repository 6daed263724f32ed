"""Notifications: one notice per finished order, to the right user, with a reason a person understands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    NotificationSent,
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    OrderRejected,
)
from streams.domain.notifications import NoticeState, decide

pytestmark = pytest.mark.unit

T0 = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
PLACED = OrderPlaced(
    order_id="o-1",
    user_id="u-1",
    lines=(OrderLine(sku="a", quantity=1, unit_price_cents=1),),
    total_cents=1,
    currency="EUR",
    placed_at=T0,
    deadline_at=T0 + timedelta(minutes=5),
)
CONFIRMED = OrderConfirmed(order_id="o-1", payment_id="p-1", confirmed_at=T0)
CANCELLED = OrderCancelled(order_id="o-1", reason="out_of_stock", cancelled_at=T0)


def at(seconds: int) -> StepContext:
    return StepContext(now=T0 + timedelta(seconds=seconds))


def test_a_confirmed_order_is_notified_to_its_customer() -> None:
    state = decide(None, PLACED, at(1))
    assert state.events == ()
    decision = decide(state.state, CONFIRMED, at(2))
    assert decision.events == (
        NotificationSent(
            notification_id="o-1:order_confirmed",
            user_id="u-1",
            order_id="o-1",
            kind="order_confirmed",
            message="Your order o-1 is confirmed.",
            sent_at=at(2).now,
        ),
    )
    assert decision.events[0].key == "u-1"


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("out_of_stock", "some items are out of stock"),
        ("payment_failed", "the payment did not go through"),
        ("deadline_exceeded", "it could not be completed in time"),
        ("fraud_suspected", "fraud_suspected"),
    ],
)
def test_a_cancelled_order_is_notified_with_its_reason(reason: str, text: str) -> None:
    placed = decide(None, PLACED, at(1)).state
    (notice,) = decide(placed, OrderCancelled(order_id="o-1", reason=reason, cancelled_at=T0), at(2)).events
    assert isinstance(notice, NotificationSent)
    assert (notice.kind, notice.message) == ("order_cancelled", f"Your order o-1 was cancelled: {text}.")
    assert notice.notification_id == "o-1:order_cancelled"


def test_never_twice_for_one_order() -> None:
    first = decide(decide(None, PLACED, at(1)).state, CANCELLED, at(2))
    assert decide(first.state, CANCELLED, at(9)) == first, "a redelivery sends the very same notice"
    assert decide(first.state, CONFIRMED, at(9)) == Decision(first.state), "a second outcome is not notified"
    assert decide(first.state, PLACED, at(9)) == Decision(first.state)


def test_an_outcome_before_the_order_waits_for_the_customer() -> None:
    waiting = decide(None, CONFIRMED, at(1))
    assert waiting.events == () and waiting.state is not None and waiting.state.waiting == CONFIRMED
    assert decide(waiting.state, CANCELLED, at(2)) == Decision(waiting.state)
    sent = decide(waiting.state, PLACED, at(3))
    (notice,) = sent.events
    assert isinstance(notice, NotificationSent) and notice.kind == "order_confirmed" and notice.user_id == "u-1"
    assert decide(sent.state, PLACED, at(9)) == sent
    assert decide(sent.state, CONFIRMED, at(9)) == Decision(sent.state)


def test_other_messages_leave_the_state_alone() -> None:
    rejected = OrderRejected(order_id="o-1", user_id="u-1", reason="unknown_user", rejected_at=T0)
    assert decide(None, rejected, at(1)) == Decision(None)


def test_state_survives_json() -> None:
    state = decide(decide(None, CONFIRMED, at(1)).state, PLACED, at(2)).state
    assert state is not None
    assert NoticeState.from_json(json.loads(json.dumps(state.to_json()))) == state
