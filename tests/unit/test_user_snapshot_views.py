"""The user view and the user aggregate fold the same events to the same fields, so a user's document can begin
from a snapshot and fold only the events after it, and can be checked against the aggregate loaded from the log."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.domain import user_aggregate
from streams.domain.messages import (
    UserDeactivated,
    UserEmailChanged,
    UserLoggedIn,
    UserProfileUpdated,
    UserReactivated,
    UserRegistered,
    to_record,
)
from streams.domain.user_aggregate import UserEvent
from streams.views.events import Event, make_event
from streams.views.users import (
    AGGREGATE_FIELDS,
    aggregate_view,
    apply_to_user,
    disagreements,
    view_from_snapshot,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def history(kinds: list[tuple[str, int]]) -> list[UserEvent]:
    """UserRegistered, then one event per ``(kind, seconds later)``; versions consecutive."""
    events: list[UserEvent] = [
        UserRegistered(user_id="u-1", version=1, username="ada", email="a@x.io", profile={"k": "0"}, registered_at=T0)
    ]
    for version, (kind, seconds) in enumerate(kinds, start=2):
        at = T0 + timedelta(seconds=seconds)
        match kind:
            case "profile":
                events.append(UserProfileUpdated(user_id="u-1", version=version, changes={"k": str(version)},
                                                 updated_at=at))  # fmt: skip
            case "email":
                address = f"{version}@x.io"
                events.append(UserEmailChanged(user_id="u-1", version=version, old_email="x", new_email=address,
                                               changed_at=at))  # fmt: skip
            case "deactivate":
                events.append(UserDeactivated(user_id="u-1", version=version, reason=f"r{version}", deactivated_at=at))
            case "reactivate":
                events.append(UserReactivated(user_id="u-1", version=version, reactivated_at=at))
            case _:
                events.append(UserLoggedIn(user_id="u-1", version=version, logged_in_at=at))
    return events


def as_view_event(event: UserEvent) -> Event:
    """The event as the view service takes it off the topic: plain values, its own time."""
    return make_event(event.record_name, to_record(event), event_id=f"e-{event.version}", position="p",
                      source="/order-pipeline/users", fallback_time_ms=0)  # fmt: skip


def fold_views(doc: dict[str, Any] | None, events: list[UserEvent]) -> dict[str, Any] | None:
    for event in events:
        doc = apply_to_user(doc, as_view_event(event)) or doc
    return doc


KINDS = st.lists(
    st.tuples(st.sampled_from(["profile", "email", "deactivate", "reactivate", "login"]), st.integers(-3600, 3600)),
    max_size=12,
)


@given(kinds=KINDS)
def test_the_view_holds_exactly_what_the_aggregate_holds(kinds: list[tuple[str, int]]) -> None:
    events = history(kinds)
    doc = fold_views(None, events)
    user = user_aggregate.replay(events)
    assert doc is not None and user is not None
    assert {name: doc[name] for name in AGGREGATE_FIELDS} == aggregate_view(user)
    assert set(doc) == {*AGGREGATE_FIELDS, "onboarding_started_at"}
    assert disagreements(doc, user) == {}


@given(kinds=KINDS, data=st.data())
def test_a_document_begun_from_any_snapshot_folds_to_the_same_fields(kinds: list[tuple[str, int]], data: Any) -> None:
    events = history(kinds)
    cut = data.draw(st.integers(1, len(events)))
    snapshot = user_aggregate.take_snapshot(user_aggregate.replay(events[:cut]), T0)  # type: ignore[arg-type]
    seed = view_from_snapshot(user_aggregate.from_snapshot(snapshot))
    assert seed is not None and seed["onboarding_started_at"] is None
    resumed = fold_views(seed, events)  # the events up to the snapshot's version change nothing: version-gated
    full = fold_views(None, events)
    assert resumed is not None and full is not None
    assert resumed == full, "nothing onboarded here, so the whole document"
    assert fold_views(seed, events[cut:]) == full


def test_a_snapshot_without_the_times_a_document_shows_begins_no_document() -> None:
    user = user_aggregate.replay(history([("login", 5)]))
    assert user is not None
    v2 = replace(user_aggregate.take_snapshot(user, T0), updated_at=None)
    assert view_from_snapshot(user_aggregate.from_snapshot(v2)) is None, "v1 and v2 do not say when it last changed"


def test_disagreements_name_each_field_with_both_values() -> None:
    user = user_aggregate.replay(history([("email", 1), ("login", 2)]))
    assert user is not None
    doc = {**aggregate_view(user), "onboarding_started_at": 5}
    assert disagreements(doc, user) == {}, "the onboarding stamp is not the aggregate's"
    stale = {**doc, "version": 2, "email": "a@x.io"}
    assert disagreements(stale, user) == {"version": (2, 3), "email": ("a@x.io", "2@x.io")}
    missing = disagreements(None, user)
    assert set(missing) == set(AGGREGATE_FIELDS) and missing["version"] == (None, 3)
    assert set(disagreements(doc, None)) == set(AGGREGATE_FIELDS), "a view of a user the log does not hold"
    assert disagreements(None, None) == {}
