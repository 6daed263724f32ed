"""The users part of the query side: user views folded from the user events, version-gated and idempotent."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.views.events import Event, Op
from streams.views.keys import PROFILES_KEY, USERNAMES_KEY, user_email_key, user_key, user_rejections_key
from streams.views.tables import USER_VIEWS, mirror
from streams.views.tables import fold as fold_views
from streams.views.users import apply_to_user, profile_member, username_member

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


def ev(record: str, version: int | None, at: int = T0, event_id: str | None = None, **value: Any) -> Event:
    data = {"user_id": "u-1", **value}
    if version is not None:
        data["version"] = version
    return Event(record=record, value=data, event_id=event_id or f"{record}-{version}", at=at, service="users")


REGISTERED = ev("UserRegistered", 1, username="Ada", email="ada@example.com", profile={"lang": "en"})


def fold(*events: Event) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = None
    for event in events:
        doc = apply_to_user(doc, event) or doc
    return doc


def test_registration_creates_the_view() -> None:
    doc = fold(REGISTERED)
    assert doc is not None
    assert (doc["username"], doc["email"], doc["active"], doc["version"]) == ("Ada", "ada@example.com", True, 1)
    assert doc["profile"] == {"lang": "en"} and doc["login_count"] == 0 and doc["registered_at"] == T0


def test_profile_changes_are_merged_not_replaced() -> None:
    doc = fold(REGISTERED, ev("UserProfileUpdated", 2, changes={"city": "Oslo"}))
    assert doc is not None and doc["profile"] == {"lang": "en", "city": "Oslo"} and doc["version"] == 2


def test_deactivation_reactivation_and_logins() -> None:
    doc = fold(
        REGISTERED,
        ev("UserLoggedIn", 2, at=T0 + 5, logged_in_at=T0 + 5),
        ev("UserDeactivated", 3, reason="fraud"),
        ev("UserLoggedIn", 4, at=T0 + 9, logged_in_at=T0 + 9),
    )
    assert doc is not None and (doc["active"], doc["deactivation_reason"]) == (False, "fraud")
    assert (doc["login_count"], doc["last_login_at"]) == (2, T0 + 9)
    doc = fold(REGISTERED, ev("UserDeactivated", 2, reason="x"), ev("UserReactivated", 3))
    assert doc is not None and doc["active"] is True and doc["deactivation_reason"] is None


def test_a_repeated_or_older_event_changes_nothing() -> None:
    doc = fold(REGISTERED, ev("UserProfileUpdated", 2, changes={"city": "Oslo"}))
    assert apply_to_user(doc, ev("UserProfileUpdated", 2, changes={"city": "Rome"})) is None
    assert apply_to_user(doc, REGISTERED) is None
    assert apply_to_user(None, ev("UserProfileUpdated", 2, changes={})) is None, "nothing before registration"


def test_onboarding_is_stamped_once() -> None:
    doc = fold(REGISTERED, ev("UserOnboardingStarted", None, at=T0 + 1))
    assert doc is not None and doc["onboarding_started_at"] == T0 + 1
    assert apply_to_user(doc, ev("UserOnboardingStarted", None, at=T0 + 2)) is None


def test_an_email_change_moves_only_this_user_between_address_sets() -> None:
    before = fold(REGISTERED)
    changed = ev("UserEmailChanged", 2, old_email="ada@example.com", new_email="ADA@new.org")
    (change,) = fold_views(changed, lambda table, key: {"user": before, "rejections": []})
    ops = change.ops
    assert Op("SREM", user_email_key("ada@example.com"), ("u-1",)) in ops
    assert Op("SADD", user_email_key("ada@new.org"), ("u-1",)) in ops
    assert not any(op.command == "DEL" for op in ops), "another user may own the old address by now"


def test_registration_indexes_username_and_time() -> None:
    (change,) = fold_views(REGISTERED, lambda table, key: None)
    ops = change.ops
    assert ops[0].command == "SET" and ops[0].key == user_key("u-1")
    assert Op("ZADD", USERNAMES_KEY, (0, username_member("Ada", "u-1"))) in ops


def test_every_profile_attribute_is_indexed_and_moved_when_its_value_changes() -> None:
    """The seed's "update the search index on a profile change": one member per attribute, by value."""

    def ops(event: Event, user: dict[str, Any] | None) -> tuple[Op, ...]:
        (change,) = fold_views(event, lambda table, key: {"user": user, "rejections": []})
        return change.ops

    assert Op("ZADD", PROFILES_KEY, (0, profile_member("lang", "en", "u-1"))) in ops(REGISTERED, None)
    assert profile_member("City", "Oslo", "u-1") == "City\x00oslo\x00u-1", "values compare case-insensitively"
    before = fold(REGISTERED)
    moved = ops(ev("UserProfileUpdated", 2, changes={"lang": "NO", "city": "Oslo"}), before)
    assert Op("ZREM", PROFILES_KEY, (profile_member("lang", "en", "u-1"),)) in moved
    added = (0, profile_member("city", "oslo", "u-1"), 0, profile_member("lang", "no", "u-1"))
    assert Op("ZADD", PROFILES_KEY, added) in moved
    same = ops(ev("UserProfileUpdated", 2, changes={"lang": "EN"}), before)
    assert same and not [op for op in same if op.key == PROFILES_KEY], "the same value in another case: no move"
    assert not [op for op in ops(ev("UserLoggedIn", 2, logged_in_at=T0 + 1), before) if op.key == PROFILES_KEY]
    # a Redis flushed is re-mirrored from the table entry: the index comes back with it
    after = fold(REGISTERED, ev("UserProfileUpdated", 2, changes={"city": "Oslo"}))
    remirrored = mirror(USER_VIEWS, "u-1", {"user": after, "rejections": []})
    members = [op.args for op in remirrored if op.key == PROFILES_KEY]
    assert members == [(0, profile_member("city", "oslo", "u-1"), 0, profile_member("lang", "en", "u-1"))]


def test_rejections_are_listed_once() -> None:
    rejected = ev("UserCommandRejected", None, event_id="r-1", command="ChangeEmail", reason="concurrency conflict")
    (change,) = fold_views(rejected, lambda table, key: None)
    assert (change.table, change.key) == (USER_VIEWS, "u-1") and change.after["rejections"][0]["event_id"] == "r-1"
    assert [op.command for op in change.ops] == ["DEL", "RPUSH"] and change.ops[0].key == user_rejections_key("u-1")
    assert fold_views(rejected, lambda table, key: change.after) == [], "a redelivered rejection changes nothing"


HISTORY = [
    REGISTERED,
    ev("UserProfileUpdated", 2, changes={"city": "Oslo"}),
    ev("UserLoggedIn", 3, at=T0 + 3, logged_in_at=T0 + 3),
    ev("UserEmailChanged", 4, old_email="ada@example.com", new_email="a@b.c"),
    ev("UserDeactivated", 5, reason="asked"),
]


@given(st.lists(st.integers(min_value=0, max_value=len(HISTORY) - 1), max_size=12))
def test_replays_and_duplicates_of_a_prefix_converge_to_the_full_history(replayed: list[int]) -> None:
    """At-least-once delivery re-sends earlier events; in partition order after them, they change nothing."""
    events = [*HISTORY, *(HISTORY[i] for i in replayed)]
    assert fold(*events) == fold(*HISTORY)
