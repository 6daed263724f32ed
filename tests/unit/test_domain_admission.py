"""Order admission: who may order, what a valid order is, and one order per idempotency key."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from streams.domain import admission
from streams.domain.admission import CustomerState, decide
from streams.domain.core import Decision, SagaConfig, StepContext
from streams.domain.messages import (
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    OrderRejected,
    PaymentDetails,
    PlaceOrder,
    ReleaseHeldOrders,
    UserDeactivated,
    UserProfileUpdated,
    UserReactivated,
    UserRegistered,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
CTX = StepContext(now=NOW)
LATER = StepContext(now=NOW + timedelta(minutes=1))


def registered(user_id: str = "u-1", version: int = 1) -> UserRegistered:
    return UserRegistered(user_id=user_id, version=version, username="ann", email="a@x", registered_at=NOW)


def customer(*, active: bool = True) -> CustomerState:
    state = decide(None, registered(), CTX).state
    if not active:
        state = decide(state, UserDeactivated(user_id="u-1", version=2, reason="x", deactivated_at=NOW), CTX).state
    assert state is not None
    return state


def place(order_id: str = "o-1", key: str = "k-1", lines: tuple[OrderLine, ...] | None = None) -> PlaceOrder:
    return PlaceOrder(
        order_id=order_id,
        user_id="u-1",
        lines=lines
        if lines is not None
        else (
            OrderLine(sku="a", quantity=2, unit_price_cents=250),
            OrderLine(sku="b", quantity=1, unit_price_cents=99),
        ),
        payment=PaymentDetails(method="card", token="tok-1"),
        idempotency_key=key,
        requested_at=NOW - timedelta(seconds=1),
    )


def test_an_active_customer_places_an_order() -> None:
    decision = decide(customer(), place(), CTX)
    assert decision.events == (
        OrderPlaced(
            order_id="o-1",
            user_id="u-1",
            lines=place().lines,
            total_cents=2 * 250 + 99,
            currency="EUR",
            placed_at=NOW,
            deadline_at=NOW + SagaConfig().saga_timeout,
            channel="api",
            note=None,
            payment_method="card",
            payment_token="tok-1",
        ),
    )
    assert decision.effects == ()
    assert decision.state is not None and decision.state.order_keys == {"o-1": "k-1"}


def test_config_sets_currency_and_deadline() -> None:
    ctx = StepContext(now=NOW, config=SagaConfig(saga_timeout=timedelta(seconds=30), default_currency="CHF"))
    (placed,) = decide(customer(), place(), ctx).events
    assert isinstance(placed, OrderPlaced)
    assert (placed.currency, placed.deadline_at) == ("CHF", NOW + timedelta(seconds=30))


def test_an_inactive_customer_s_order_is_rejected() -> None:
    decision = decide(customer(active=False), place(), CTX)
    assert decision.events == (OrderRejected(order_id="o-1", user_id="u-1", reason="user_inactive", rejected_at=NOW),)
    assert decision.state is not None and decision.state.outcomes["k-1"] == decision.events[0]


HOLD = timedelta(seconds=10)
DUE = StepContext(now=NOW + HOLD)


def release(ctx: StepContext = DUE) -> ReleaseHeldOrders:
    return ReleaseHeldOrders(user_id="u-1", requested_at=ctx.now)


def test_an_unknown_customer_s_order_is_held_then_refused_once_the_hold_is_over() -> None:
    held = decide(None, place(), CTX)
    assert held.events == () and held.state is not None and len(held.state.held) == 1
    assert held.state.hold_expires_at(HOLD) == NOW + HOLD
    early = decide(held.state, release(StepContext(now=NOW + HOLD / 2)), StepContext(now=NOW + HOLD / 2))
    assert early.events == () and early.state == held.state, "not due yet"
    due = decide(held.state, release(), DUE)
    assert due.events == (OrderRejected(order_id="o-1", user_id="u-1", reason="unknown_user", rejected_at=DUE.now),)
    assert due.state is not None and due.state.held == () and due.state.outcomes["k-1"] == due.events[0]


def test_a_held_order_is_admitted_when_the_registration_arrives() -> None:
    held = decide(None, place(), CTX).state
    again = decide(held, place(), CTX)
    assert again.events == () and again.state == held, "a repeat of a held order waits with it"
    registered_now = decide(held, registered(), LATER)
    (placed,) = registered_now.events
    assert isinstance(placed, OrderPlaced) and placed.placed_at == LATER.now
    assert registered_now.state is not None and registered_now.state.held == ()
    assert decide(registered_now.state, place(), LATER).events == (placed,), "answered once, then remembered"


def test_an_order_waits_for_the_customer_version_its_sender_saw() -> None:
    deactivation = UserDeactivated(user_id="u-1", version=2, reason="x", deactivated_at=NOW)
    held = decide(customer(), replace(place(), user_version=2), CTX)
    assert held.events == (), "admission knows version 1; the sender saw 2"
    (rejected,) = decide(held.state, deactivation, LATER).events
    assert isinstance(rejected, OrderRejected) and rejected.reason == "user_inactive"
    (placed,) = decide(customer(), replace(place(), user_version=1), CTX).events
    assert isinstance(placed, OrderPlaced), "a version admission has seen needs no wait"


def test_a_redelivered_release_re_emits_what_it_decided() -> None:
    held = decide(None, place(), CTX).state
    ctx = StepContext(now=LATER.now, message_id="registration-1")
    first = decide(held, registered(), ctx)
    again = decide(first.state, registered(), ctx)
    assert again.events == first.events and again.state == first.state
    assert decide(first.state, registered(), StepContext(now=LATER.now, message_id="other")).events == ()


BAD_LINES = {
    "no lines": (),
    "zero quantity": (OrderLine(sku="a", quantity=0, unit_price_cents=1),),
    "negative quantity": (OrderLine(sku="a", quantity=-1, unit_price_cents=1),),
    "negative price": (OrderLine(sku="a", quantity=1, unit_price_cents=-5),),
    "duplicate sku": (
        OrderLine(sku="a", quantity=1, unit_price_cents=1),
        OrderLine(sku="a", quantity=2, unit_price_cents=1),
    ),
    "empty sku": (OrderLine(sku="", quantity=1, unit_price_cents=1),),
}


@pytest.mark.parametrize("lines", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_invalid_orders_are_rejected(lines: tuple[OrderLine, ...]) -> None:
    (event,) = decide(customer(), place(lines=lines), CTX).events
    assert isinstance(event, OrderRejected) and event.reason == "invalid_order"


def test_a_free_line_is_valid() -> None:
    (event,) = decide(customer(), place(lines=(OrderLine(sku="gift", quantity=1, unit_price_cents=0),)), CTX).events
    assert isinstance(event, OrderPlaced) and event.total_cents == 0


def test_unknown_user_is_checked_before_the_lines() -> None:
    held = decide(None, place(lines=()), CTX).state
    (event,) = decide(held, release(), DUE).events
    assert isinstance(event, OrderRejected) and event.reason == "unknown_user"


UNCLEAN = {
    "sku": (replace(place(), lines=(OrderLine(sku="a\x82", quantity=1, unit_price_cents=1),)), "lines[0].sku"),
    "second sku": (replace(place(), lines=(*place().lines, OrderLine(sku="c\n", quantity=1, unit_price_cents=1))),
                   "lines[2].sku"),
    "payment method": (replace(place(), payment=PaymentDetails(method="ca\x00rd", token="t")), "payment.method"),
    "payment token": (replace(place(), payment=PaymentDetails(method="card", token="t\ud800")), "payment.token"),
    "order id": (replace(place(), order_id="o-\x9f"), "order_id"),
    "user id": (replace(place(), user_id="u-1\t"), "user_id"),
    "idempotency key": (replace(place(), idempotency_key="k\x7f"), "idempotency_key"),
}  # fmt: skip
"""A PlaceOrder with one string that is not clean text, and the field the refusal names."""
NAMES_AN_ENTRY = {"order id", "user id", "idempotency key"}


@pytest.mark.parametrize("case", UNCLEAN, ids=UNCLEAN.keys())
@pytest.mark.parametrize("known", [True, False], ids=["customer", "unknown customer"])
def test_an_order_with_unclean_text_is_refused_at_once_naming_the_field(case: str, known: bool) -> None:
    command, field = UNCLEAN[case]
    state = customer() if known else None
    decision = decide(state, command, CTX)
    assert decision.events == (
        OrderRejected(
            order_id=command.order_id, user_id=command.user_id, reason=f"invalid_text: {field}", rejected_at=NOW
        ),
    ), "refused, never admitted, and never held for a user event"
    if case in NAMES_AN_ENTRY:
        assert decision.state == state, "nothing kept: the string would name a stored entry"
    else:
        assert decision.state is not None and decision.state.held == ()
        assert decision.state.outcomes == {**(state.outcomes if state else {}), "k-1": decision.events[0]}
        assert (decision.state.known, decision.state.active) == (known, known), "the customer is as it was"


def test_a_refusal_for_unclean_text_is_the_order_s_answer_from_then_on() -> None:
    command, _ = UNCLEAN["sku"]
    refused = decide(customer(), command, CTX)
    assert [type(event) for event in refused.events] == [OrderRejected]
    assert decide(refused.state, command, LATER).events == refused.events, "a redelivery: the same event again"
    cleaned = decide(refused.state, place(key="k-2"), LATER)
    assert cleaned.events == refused.events, "the order id names the refused order: no OrderPlaced after it"


def test_a_refusal_that_keeps_nothing_is_answered_again_on_redelivery() -> None:
    command, _ = UNCLEAN["idempotency key"]
    (first,) = decide(customer(), command, CTX).events
    (again,) = decide(customer(), command, LATER).events
    assert isinstance(again, OrderRejected) and again.reason == first.reason and again.rejected_at == LATER.now


def test_a_repeat_of_an_admitted_order_with_unclean_text_is_the_admitted_order_again() -> None:
    admitted = decide(customer(), place(), CTX)
    repeat = decide(admitted.state, UNCLEAN["payment method"][0], LATER)
    assert repeat.events == admitted.events and repeat.state == admitted.state


def test_the_same_idempotency_key_gets_the_same_order_again() -> None:
    first = decide(customer(), place(), CTX)
    again = decide(first.state, place(order_id="o-other"), LATER)
    assert again.state == first.state
    assert again.events == first.events  # same order id, same times: one order


def test_a_redelivered_rejection_stays_a_rejection_even_once_the_user_is_back() -> None:
    rejected = decide(customer(active=False), place(), CTX)
    back = decide(rejected.state, UserReactivated(user_id="u-1", version=3, reactivated_at=NOW), CTX).state
    again = decide(back, place(), LATER)
    assert again.events == rejected.events and again.state == back


def test_a_reused_order_id_under_a_new_key_is_the_first_order_again() -> None:
    first = decide(customer(), place(), CTX)
    reused = decide(first.state, place(key="k-2", lines=(OrderLine(sku="z", quantity=9, unit_price_cents=1),)), LATER)
    assert reused.events == first.events and reused.state == first.state


def test_a_new_key_and_order_id_is_a_second_order() -> None:
    first = decide(customer(), place(), CTX)
    second = decide(first.state, place(order_id="o-2", key="k-2"), LATER)
    (event,) = second.events
    assert isinstance(event, OrderPlaced) and event.order_id == "o-2" and event.placed_at == LATER.now
    assert second.state is not None and set(second.state.outcomes) == {"k-1", "k-2"}


def test_user_events_switch_ordering_on_and_off() -> None:
    state: CustomerState | None = customer(active=False)
    assert state is not None and (state.known, state.active, state.user_version) == (True, False, 2)
    state = decide(state, UserReactivated(user_id="u-1", version=3, reactivated_at=NOW), CTX).state
    assert state is not None and state.active
    (event,) = decide(state, place(), CTX).events
    assert isinstance(event, OrderPlaced)


def test_stale_or_repeated_user_events_change_nothing() -> None:
    state = customer(active=False)
    for stale in (registered(version=1), UserReactivated(user_id="u-1", version=2, reactivated_at=NOW)):
        decision = decide(state, stale, CTX)
        assert decision.state == state and decision.events == ()


def test_any_user_event_proves_the_user_exists() -> None:
    state = decide(None, UserDeactivated(user_id="u-1", version=4, reason="x", deactivated_at=NOW), CTX).state
    assert state == CustomerState(user_id="u-1", known=True, active=False, user_version=4)


def test_other_messages_leave_the_state_alone() -> None:
    state = customer()
    decision = decide(state, OrderConfirmed(order_id="o-1", payment_id="p", confirmed_at=NOW), CTX)
    assert decision.state is state and decision.events == ()
    assert "OrderConfirmed" not in admission.HANDLES


def test_state_survives_json() -> None:
    state = decide(decide(customer(), place(), CTX).state, place(order_id="o-2", key="k-2", lines=()), CTX).state
    assert state is not None
    assert CustomerState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert replace(state, outcomes={}) != state


def test_any_user_event_advances_the_version_a_held_order_waits_for() -> None:
    held = decide(customer(), replace(place(), user_version=2), CTX).state
    updated = UserProfileUpdated(user_id="u-1", version=2, changes={"pref.language": "en"}, updated_at=NOW)
    (placed,) = decide(held, updated, LATER).events
    assert isinstance(placed, OrderPlaced), "a profile update is version 2 too: the order goes on"


def test_a_held_order_is_decided_in_its_own_trace_not_in_the_releasing_event_s() -> None:
    order_trace, user_trace = "00-" + "a" * 32 + "-" + "1" * 16 + "-01", "00-" + "b" * 32 + "-" + "2" * 16 + "-01"
    admitted_at_once = decide(customer(), place(), replace(CTX, trace=order_trace))
    assert admitted_at_once.traces == (), "decided at once: the input's own trace"
    held = decide(None, place(), replace(CTX, trace=order_trace)).state
    assert held is not None and held.held[0].trace == order_trace
    assert CustomerState.from_json(json.loads(json.dumps(held.to_json()))) == held, "kept through the changelog"
    released = decide(held, registered(), replace(LATER, trace=user_trace))
    assert [type(e).__name__ for e in released.events] == ["OrderPlaced"] and released.traces == (order_trace,)
    refused = decide(held, release(), replace(DUE, trace=user_trace))
    assert [type(e).__name__ for e in refused.events] == ["OrderRejected"] and refused.traces == (order_trace,)


def _held_then_released(state: CustomerState | None, order_id: str, version: int, message_id: str) -> Decision:
    """Hold an order for user ``version``, then deliver that version's user event as input ``message_id``."""
    held = decide(state, replace(place(order_id=order_id, key=f"k-{order_id}"), user_version=version), CTX).state
    updated = UserProfileUpdated(user_id="u-1", version=version, changes={"pref.language": "en"}, updated_at=NOW)
    return decide(held, updated, StepContext(now=LATER.now, message_id=message_id))


def test_every_release_of_a_batch_re_emits_its_own_answers_when_the_batch_is_redelivered() -> None:
    """A batch is decided whole before any of its events is sent: after a crash between the two, each input of
    it is redelivered, and each must re-emit what it decided, not only the last one."""
    first = _held_then_released(customer(), "o-1", 2, "user-event-2")
    second = _held_then_released(first.state, "o-2", 3, "user-event-3")
    assert [e.order_id for e in first.events + second.events] == ["o-1", "o-2"]  # type: ignore[attr-defined]

    updated = UserProfileUpdated(user_id="u-1", version=2, changes={"pref.language": "en"}, updated_at=NOW)
    again = decide(second.state, updated, StepContext(now=LATER.now, message_id="user-event-2"))

    assert again.events == first.events and again.state == second.state


def test_a_customer_remembers_the_last_releases_only() -> None:
    state = customer()
    for version in range(2, admission.REMEMBERED_RELEASES + 4):
        state = _held_then_released(state, f"o-{version}", version, f"user-event-{version}").state
    assert state is not None and len(state.releases) == admission.REMEMBERED_RELEASES
    assert state.releases[0].message_id == "user-event-4"
    assert state.releases[-1].keys == (f"k-o-{admission.REMEMBERED_RELEASES + 3}",)
    forgotten = UserProfileUpdated(user_id="u-1", version=2, changes={}, updated_at=NOW)
    redelivered = decide(state, forgotten, StepContext(now=LATER.now, message_id="user-event-2"))
    assert redelivered.events == () and redelivered.state == state, "older than what a batch holds: seen, no-op"


def test_a_repeat_is_recognised_from_its_own_answer_alone() -> None:
    """The edge loads only the answers the command names (its order id's, its key's): that subset decides."""
    first = decide(customer(), place(), CTX)
    assert first.state is not None
    (answer,) = first.events
    split = replace(customer(), outcomes={"k-1": answer}, order_keys={"o-1": "k-1"})
    assert decide(split, place(), LATER).events == (answer,)
    assert decide(split, place(order_id="o-9"), LATER).events == (answer,), "by its key"
    assert decide(split, place(key="k-9"), LATER).events == (answer,), "by its order id"
