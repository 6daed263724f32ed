"""The command-status view: each user command's outcome folded from the event that names it as its cause, kept
(bounded) in the user's view table entry and mirrored to one key per command; a PlaceOrder's outcome read from its
order view."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.views.commands import (
    APPLIED_RECORDS,
    COMMAND_TTL_MS,
    COMMANDS_KEPT,
    order_outcome,
    outcome_of,
    remember,
)
from streams.views.events import Event, Op, make_event
from streams.views.keys import command_key, order_key
from streams.views.orders import order_ops
from streams.views.tables import USER_VIEWS, Change, fold, mirror

pytestmark = pytest.mark.unit

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def ev(record: str, cause: str = "cmd-1", at: int = T0, event_id: str | None = None, **value: Any) -> Event:
    return Event(
        record=record,
        value={"user_id": "u-1", **value},
        event_id=event_id or f"{record}-{cause}",
        at=at,
        service="users",
        causation_id=cause,
    )


CONFLICT = ev(
    "UserCommandRejected",
    cause="cmd-3",
    command="DeactivateUser",
    reason="concurrency conflict: expected version 3, actual version 4",
    expected_version=3,
    actual_version=4,
    rejected_at=T0,
)


def command_ops(event: Event, kept: list[dict[str, Any]] | None = None) -> list[Op]:
    remembered = remember(kept or [], event)
    return [] if remembered is None else remembered[1]


def stored(ops: list[Op]) -> dict[str, Any]:
    [op] = ops
    assert op.command == "SET" and op.args[1:] == ("PXAT", T0 + COMMAND_TTL_MS)
    return {"key": op.key, **json.loads(str(op.args[0]))}


def test_the_aggregate_s_events_are_the_applied_outcomes() -> None:
    assert {
        "UserRegistered",
        "UserProfileUpdated",
        "UserEmailChanged",
        "UserDeactivated",
        "UserReactivated",
        "UserLoggedIn",
    } == APPLIED_RECORDS


def test_an_applied_command_records_its_event_and_the_version_it_made() -> None:
    outcome = stored(command_ops(ev("UserDeactivated", version=5, reason="asked", deactivated_at=T0)))
    assert outcome == {
        "key": command_key("cmd-1"),
        "command_id": "cmd-1",
        "status": "applied",
        "event": "UserDeactivated",
        "event_id": "UserDeactivated-cmd-1",
        "decided_at": T0,
        "user_id": "u-1",
        "version": 5,
    }


def test_a_refused_command_records_the_reason_and_a_conflict_s_versions() -> None:
    outcome = stored(command_ops(CONFLICT))
    assert (outcome["status"], outcome["command"], outcome["reason"]) == (
        "refused",
        "DeactivateUser",
        "concurrency conflict: expected version 3, actual version 4",
    )
    assert (outcome["expected_version"], outcome["actual_version"]) == (3, 4)


def test_events_that_decide_no_command_fold_to_nothing() -> None:
    assert command_ops(ev("UserDeactivated", cause="", version=2)) == [], "published by hand: no cause"
    assert command_ops(ev("UserOnboardingStarted", started_at=T0)) == [], "a reaction, not an outcome"
    assert outcome_of(ev("OrderPlaced", order_id="o-1")) is None


def test_an_outcome_expires_a_day_after_the_event_not_after_the_write() -> None:
    """A re-mirror or a rebuild sets the same deadline as the first write; an old outcome is gone at once."""
    [op] = command_ops(ev("UserLoggedIn", at=T0 + 5, version=2, logged_in_at=T0 + 5))
    assert op.args[1:] == ("PXAT", T0 + 5 + COMMAND_TTL_MS)


def fold_user(event: Event, entry: dict[str, Any] | None) -> list[Change]:
    return fold(event, lambda table, key: entry if (table, key) == (USER_VIEWS, "u-1") else None)


def test_the_user_s_entry_keeps_it_beside_the_view_and_a_redelivery_changes_nothing() -> None:
    registered = ev("UserRegistered", version=1, username="ada", email="a@x.io", profile={})
    [change] = fold_user(registered, None)
    assert change.after["user"]["version"] == 1 and change.after["commands"] == [outcome_of(registered)]
    assert change.ops[-1] == command_ops(registered)[0] and len(change.ops) > 1
    assert fold_user(registered, change.after) == [], "a redelivery: the view and the outcome are there"
    [refused] = fold_user(CONFLICT, change.after)
    assert [c["command_id"] for c in refused.after["commands"]] == ["cmd-3", "cmd-1"]
    assert refused.after["rejections"][0]["reason"] == CONFLICT.value["reason"], "the rejections list as before"
    assert fold_user(CONFLICT, refused.after) == []


def test_a_flushed_redis_gets_the_same_keys_back_from_the_entry() -> None:
    [change] = fold_user(ev("UserRegistered", cause="c-1", version=1, username="a", email="a@x.io", profile={}), None)
    [later] = fold_user(ev("UserLoggedIn", cause="c-2", version=2, logged_in_at=T0), change.after)
    remirrored = [op for op in mirror(USER_VIEWS, "u-1", later.after) if op.key.startswith("view:command:")]
    written = [op for c in (change, later) for op in c.ops if op.key.startswith("view:command:")]
    assert sorted(remirrored, key=lambda op: op.key) == sorted(written, key=lambda op: op.key)


def decided(cause: str, at: int) -> dict[str, Any]:
    outcome = outcome_of(ev("UserLoggedIn", cause=cause, at=at, version=2))
    assert outcome is not None
    return outcome


def test_the_entry_keeps_a_day_of_outcomes_and_at_most_its_bound() -> None:
    kept, ops = remember([decided("old", T0 - COMMAND_TTL_MS)], ev("UserLoggedIn", cause="new", version=3)) or ([], [])
    assert [c["command_id"] for c in kept] == ["new"] and Op("DEL", command_key("old")) in ops
    full = [decided(f"c-{n}", T0) for n in range(COMMANDS_KEPT)]
    kept, ops = remember(full, ev("UserLoggedIn", cause="one-more", version=999)) or ([], [])
    assert len(kept) == COMMANDS_KEPT and kept[0]["command_id"] == "one-more"
    assert ops[1:] == [Op("DEL", command_key(f"c-{COMMANDS_KEPT - 1}"))]


def test_the_envelope_s_cause_reaches_the_event() -> None:
    event = make_event("UserLoggedIn", {"user_id": "u-1", "version": 2, "logged_in_at": T0}, event_id="e-1",
                       position="users.events.v1:0:7", source="/order-pipeline/users", fallback_time_ms=0,
                       causation_id="cmd-9")  # fmt: skip
    assert event.causation_id == "cmd-9" and command_ops(event)[0].key == command_key("cmd-9")
    without = make_event("UserLoggedIn", {"user_id": "u-1", "version": 2, "logged_in_at": T0}, event_id=None,
                         position="users.events.v1:0:7", source=None, fallback_time_ms=0)  # fmt: skip
    assert without.causation_id == "" and command_ops(without) == []


OUTCOMES = [
    ev("UserRegistered", cause="c-1", version=1, username="ada", email="a@x.io", profile={}),
    ev("UserProfileUpdated", cause="c-2", version=2, changes={"city": "Oslo"}),
    CONFLICT,
    ev("UserLoggedIn", cause="c-4", version=3, logged_in_at=T0),
    ev("UserDeactivated", cause="c-5", version=4, reason="asked"),
]


@given(st.lists(st.integers(min_value=0, max_value=len(OUTCOMES) - 1), max_size=8))
def test_redeliveries_of_earlier_outcomes_change_nothing(replayed: list[int]) -> None:
    """At-least-once: earlier events come again after the later ones (one partition per user keeps the order)."""

    def folded(events: list[Event]) -> tuple[list[dict[str, Any]], dict[str, str]]:
        kept: list[dict[str, Any]] = []
        store: dict[str, str] = {}
        for event in events:
            remembered = remember(kept, event)
            if remembered is not None:
                kept, ops = remembered
                store.update({op.key: str(op.args[0]) for op in ops if op.command == "SET"})
        return kept, store

    assert folded([*OUTCOMES, *(OUTCOMES[i] for i in replayed)]) == folded(OUTCOMES)
    kept, store = folded(OUTCOMES)
    assert [c["command_id"] for c in kept] == ["c-5", "c-4", "cmd-3", "c-2", "c-1"] and len(store) == 5


# --- PlaceOrder: read from the order view -------------------------------------------------------------------


def order_view(*events: Event) -> dict[str, Any] | None:
    view: dict[str, Any] | None = None
    for event in events:
        for op in order_ops("o-1", view, event):
            if op.key == order_key("o-1"):
                view = json.loads(str(op.args[0]))
    return view


def order_ev(record: str, at: int, **value: Any) -> Event:
    return Event(record=record, value={"order_id": "o-1", **value}, event_id=f"{record}-1", at=at, service="orders")


def test_a_place_order_is_accepted_until_admission_shows_in_its_order_view() -> None:
    assert order_outcome(None) is None
    placed = order_ev("OrderPlaced", T0, user_id="u-1", lines=[], total_cents=0, currency="EUR", placed_at=T0)
    assert order_outcome(order_view(placed)) == {
        "status": "applied",
        "event": "OrderPlaced",
        "event_id": "OrderPlaced-1",
        "decided_at": T0,
        "user_id": "u-1",
    }
    rejected = order_ev("OrderRejected", T0 + 1, user_id="u-1", reason="user is deactivated", rejected_at=T0 + 1)
    outcome = order_outcome(order_view(rejected))
    assert outcome is not None and (outcome["status"], outcome["reason"], outcome["decided_at"]) == (
        "refused",
        "user is deactivated",
        T0 + 1,
    )


def test_a_later_saga_event_folded_before_order_placed_shows_an_admitted_order() -> None:
    """Topics are projected independently: inventory may be folded before the OrderPlaced it followed."""
    reserved = order_ev("InventoryReserved", T0 + 2, reserved_at=T0 + 2)
    outcome = order_outcome(order_view(reserved))
    assert outcome is not None and outcome["status"] == "applied" and outcome["decided_at"] is None
