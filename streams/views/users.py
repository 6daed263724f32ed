"""The user views, pure: each user's document folded from the user events, the search indexes over it
(e-mail, username prefix, registration time, profile attributes), and each user's rejected commands.

The profile index is the seed's "update the search index when the profile changes": every attribute of every
user is one member of :data:`~streams.views.keys.PROFILES_KEY`, moved when its value changes.

A document holds the user aggregate (:data:`AGGREGATE_FIELDS`, as :func:`aggregate_view` gives them) and one
field more, the onboarding stamp a reaction leaves. So a document can also begin from a UserSnapshot
(:func:`view_from_snapshot`) and fold only the events after it, and a document can be checked against the
aggregate loaded from the log (:func:`disagreements`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from schemas.topics import USER_EVENTS
from streams.domain.user_aggregate import User
from streams.views.events import CannotProject, Event, Op, canonical_json, required_str, to_millis
from streams.views.keys import (
    PROFILES_KEY,
    REGISTERED_KEY,
    USERNAMES_KEY,
    user_email_key,
    user_key,
)

USER_RECORDS = frozenset(USER_EVENTS.records)
"""The user events, as the topic contract declares them."""
REJECTIONS_KEPT = 20
"""How many rejected commands a user's list keeps (the newest)."""
AGGREGATE_FIELDS = (
    "user_id",
    "username",
    "email",
    "profile",
    "active",
    "deactivation_reason",
    "version",
    "registered_at",
    "updated_at",
    "login_count",
    "last_login_at",
)
"""The fields of a user's document that the aggregate holds: all but ``onboarding_started_at``."""


def aggregate_view(user: User) -> dict[str, Any]:
    """The aggregate's fields of ``user``'s document, as its events fold them (times in epoch milliseconds)."""

    def millis(moment: datetime | None) -> int | None:
        return None if moment is None else to_millis(moment)

    return {
        "user_id": user.user_id,
        "username": user.username,
        "email": user.email,
        "profile": dict(user.profile),
        "active": user.active,
        "deactivation_reason": user.deactivation_reason,
        "version": user.version,
        "registered_at": millis(user.registered_at),
        "updated_at": millis(user.updated_at),
        "login_count": user.login_count,
        "last_login_at": millis(user.last_login_at),
    }


def view_from_snapshot(user: User) -> dict[str, Any] | None:
    """The document a user loaded from a snapshot begins with: not yet stamped onboarded (a reaction does that,
    the aggregate does not know it). None when the snapshot lacks a time the document shows (one written as v1
    or v2): such a user's document is folded from its whole history."""
    if user.registered_at is None or user.updated_at is None:
        return None
    return {**aggregate_view(user), "onboarding_started_at": None}


def disagreements(doc: Mapping[str, Any] | None, user: User | None) -> dict[str, tuple[Any, Any]]:
    """The aggregate's fields on which a user's document and the aggregate differ: field → (document, aggregate);
    empty when they agree (neither existing counts as agreeing)."""
    if doc is None and user is None:
        return {}
    mine = aggregate_view(user) if user is not None else {}
    theirs = doc or {}
    return {
        name: (theirs.get(name), mine.get(name))
        for name in AGGREGATE_FIELDS
        if doc is None or user is None or theirs.get(name) != mine.get(name)
    }


def apply_to_user(doc: Mapping[str, Any] | None, event: Event) -> dict[str, Any] | None:
    """The user view after ``event``, or None when it changes nothing.

    User events of one user share one partition, so they arrive in version order in every run; each carries
    the aggregate's version after it and is applied only if that is newer than the view's (a replay or a
    duplicate changes nothing). UserOnboardingStarted has no version: it only stamps the view once.
    """
    value = event.value
    if event.record == "UserOnboardingStarted":
        if doc is None or doc.get("onboarding_started_at") is not None:
            return None
        return {**doc, "onboarding_started_at": event.at}
    version = value.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CannotProject(f"{event.record} has no version; user views are version-gated")
    if event.record == "UserRegistered":
        if doc is not None and int(doc["version"]) >= version:
            return None
        return {
            "user_id": required_str(event, "user_id"),
            "username": value.get("username"),
            "email": value.get("email"),
            "profile": dict(value.get("profile") or {}),
            "active": True,
            "deactivation_reason": None,
            "version": version,
            "registered_at": event.at,
            "updated_at": event.at,
            "login_count": 0,
            "last_login_at": None,
            "onboarding_started_at": None,
        }
    if doc is None or int(doc["version"]) >= version:
        return None  # before its registration (cannot happen on one partition) or already applied
    after = {**doc, "version": version, "updated_at": event.at}
    match event.record:
        case "UserProfileUpdated":
            after["profile"] = {**doc.get("profile", {}), **dict(value.get("changes") or {})}
        case "UserEmailChanged":
            after["email"] = value.get("new_email")
        case "UserDeactivated":
            after["active"] = False
            after["deactivation_reason"] = value.get("reason")
        case "UserReactivated":
            after["active"] = True
            after["deactivation_reason"] = None
        case "UserLoggedIn":
            after["login_count"] = int(doc.get("login_count") or 0) + 1
            after["last_login_at"] = event.at
    return after


def username_member(username: str, user_id: str) -> str:
    """The user's member of the username index: sorts by lower-cased username, unique per user."""
    return f"{username.lower()}\x00{user_id}"


def profile_member(name: str, value: str, user_id: str) -> str:
    """The member of the profile index for one attribute: sorts by attribute, then lower-cased value."""
    return f"{name}\x00{value.lower()}\x00{user_id}"


def profile_members(doc: Mapping[str, Any] | None) -> set[str]:
    """The profile index's members for the user view ``doc`` (none for no view)."""
    if not doc:
        return set()
    user_id = str(doc["user_id"])
    return {profile_member(str(k), str(v), user_id) for k, v in (doc.get("profile") or {}).items()}


def user_ops(doc: Mapping[str, Any] | None, event: Event) -> list[Op]:
    """The writes that bring the user view and the user search indexes from ``doc`` to after ``event``."""
    after = apply_to_user(doc, event)
    return [] if after is None else user_diff(doc, after)


def user_diff(doc: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Op]:
    """The writes that bring the user view and the search indexes from ``doc`` (None: nothing shown) to ``after``."""
    user_id = str(after["user_id"])
    ops = [Op("SET", user_key(user_id), (canonical_json(after),))]
    old_email = doc.get("email") if doc else None
    if after.get("email") != old_email:  # a set per address: each user moves only itself, in any interleaving
        if old_email:
            ops.append(Op("SREM", user_email_key(str(old_email)), (user_id,)))
        ops.append(Op("SADD", user_email_key(str(after["email"])), (user_id,)))
    old_name = doc.get("username") if doc else None
    if after.get("username") != old_name:
        if old_name:
            ops.append(Op("ZREM", USERNAMES_KEY, (username_member(str(old_name), user_id),)))
        ops.append(Op("ZADD", USERNAMES_KEY, (0, username_member(str(after["username"]), user_id))))
    if doc is None or doc.get("registered_at") != after["registered_at"]:
        ops.append(Op("ZADD", REGISTERED_KEY, (int(after["registered_at"]), user_id)))
    before_members, after_members = profile_members(doc), profile_members(after)
    if gone := sorted(before_members - after_members):
        ops.append(Op("ZREM", PROFILES_KEY, tuple(gone)))
    if added := sorted(after_members - before_members):
        ops.append(Op("ZADD", PROFILES_KEY, tuple(arg for member in added for arg in (0, member))))
    return ops
