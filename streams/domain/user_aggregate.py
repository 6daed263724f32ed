"""The user aggregate, event-sourced: a :class:`User` is only ever the fold of its events.

:func:`apply` folds one event (UserRegistered, UserProfileUpdated merged into the profile, UserEmailChanged,
UserDeactivated, UserReactivated, UserLoggedIn); its version is the number of events applied, and every event
carries the version after it, so the first is 1. :func:`replay` folds a whole history, :func:`load` resumes from a
snapshot with the events after it, and :func:`events_of` picks a user's aggregate events out of what was read back
from the topic; :func:`tail_after` does so for a read that began somewhere inside it, after a snapshot. The user
service's step (:mod:`streams.domain.users`) decides with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from streams.domain.messages import (
    Message,
    UserDeactivated,
    UserEmailChanged,
    UserLoggedIn,
    UserProfileUpdated,
    UserReactivated,
    UserRegistered,
    UserSnapshot,
)

UserEvent = UserRegistered | UserProfileUpdated | UserEmailChanged | UserDeactivated | UserReactivated | UserLoggedIn


class HistoryError(ValueError):
    """Events that are not a user's history (a gap, a repeat, another user's event): a bug or corrupt data."""


@dataclass(frozen=True, kw_only=True)
class User:
    """A user as its events made it."""

    user_id: str
    version: int
    username: str
    email: str
    profile: dict[str, str] = field(default_factory=dict)
    active: bool = True
    registered_at: datetime | None = None
    """None if loaded from a v1 snapshot, which did not record it."""
    deactivation_reason: str | None = None
    login_count: int = 0
    last_login_at: datetime | None = None
    updated_at: datetime | None = None
    """When the last event happened (its own time); None if loaded from a v1 or v2 snapshot, which did not record
    it, until the next event."""


def apply(user: User | None, event: UserEvent) -> User:
    """The aggregate after ``event``; ``user`` None means no event yet, so ``event`` must be UserRegistered."""
    if user is None:
        if not isinstance(event, UserRegistered) or event.version != 1:
            raise HistoryError(f"a user's history starts with UserRegistered version 1, not {event!r}")
        return User(
            user_id=event.user_id,
            version=1,
            username=event.username,
            email=event.email,
            profile=dict(event.profile),
            registered_at=event.registered_at,
            updated_at=event.registered_at,
        )
    if event.user_id != user.user_id or event.version != user.version + 1:
        raise HistoryError(f"{event!r} does not follow user {user.user_id!r} at version {user.version}")
    user = replace(user, version=event.version, updated_at=event.occurred_at)
    match event:
        case UserRegistered():
            raise HistoryError(f"user {user.user_id!r} registered twice")
        case UserProfileUpdated():
            return replace(user, profile={**user.profile, **event.changes})
        case UserEmailChanged():
            return replace(user, email=event.new_email)
        case UserDeactivated():
            return replace(user, active=False, deactivation_reason=event.reason)
        case UserReactivated():
            return replace(user, active=True, deactivation_reason=None)
        case UserLoggedIn():
            return replace(user, login_count=user.login_count + 1, last_login_at=event.logged_in_at)


def load(snapshot: UserSnapshot | None, events_after: Iterable[UserEvent]) -> User | None:
    """The aggregate from its newest snapshot (None: from scratch) and the events after it; None if none."""
    user = from_snapshot(snapshot) if snapshot is not None else None
    for event in events_after:
        user = apply(user, event)
    return user


def replay(events: Iterable[UserEvent]) -> User | None:
    """The aggregate folded from its whole history; None for an empty one."""
    return load(None, events)


def events_of(messages: Iterable[Message], after: int = 0) -> tuple[UserEvent, ...]:
    """The aggregate's events among ``messages`` as read back from ``users.events.v1`` (one user's, in log
    order), with versions above ``after`` (a snapshot's version): reactions and rejections are skipped, and so
    is a copy of a version already seen (delivery is at-least-once)."""
    picked: dict[int, UserEvent] = {}
    for message in messages:
        if isinstance(message, UserEvent) and message.version > after:
            picked.setdefault(message.version, message)
    return tuple(picked[version] for version in sorted(picked))


def tail_after(snapshot: UserSnapshot, messages: Iterable[Message]) -> tuple[UserEvent, ...] | None:
    """The events after ``snapshot`` among ``messages``, one user's as read from some offset of its partition up
    to the end; None when they do not include the snapshot's own event (its version).

    The snapshot is emitted with the event that reached its version, and every later version's first copy comes
    after that event's first copy in the partition. So a read that shows the snapshot's event has every event
    after it; one that does not may have begun too late (a clock that stepped back), and the caller reads again
    from the partition's start."""
    seen = tuple(messages)
    if not any(isinstance(m, UserEvent) and m.version == snapshot.version for m in seen):
        return None
    return events_of(seen, after=snapshot.version)


def take_snapshot(user: User, taken_at: datetime) -> UserSnapshot:
    """The aggregate as a UserSnapshot (latest schema version)."""
    return UserSnapshot(
        user_id=user.user_id,
        version=user.version,
        username=user.username,
        email=user.email,
        profile=dict(user.profile),
        active=user.active,
        taken_at=taken_at,
        registered_at=user.registered_at,
        deactivation_reason=user.deactivation_reason,
        login_count=user.login_count,
        last_login_at=user.last_login_at,
        updated_at=user.updated_at,
    )


def from_snapshot(snapshot: UserSnapshot) -> User:
    """The aggregate a snapshot holds; fields an older snapshot lacks come with their defaults."""
    return User(
        user_id=snapshot.user_id,
        version=snapshot.version,
        username=snapshot.username,
        email=snapshot.email,
        profile=dict(snapshot.profile),
        active=snapshot.active,
        registered_at=snapshot.registered_at,
        deactivation_reason=snapshot.deactivation_reason,
        login_count=snapshot.login_count,
        last_login_at=snapshot.last_login_at,
        updated_at=snapshot.updated_at,
    )
