"""The users context's records (``pipeline.users``): the event-sourced user aggregate, its commands and
snapshot, and the claims that keep each e-mail address owned by one user."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from streams.domain.messages.base import Message


@dataclass(frozen=True, kw_only=True)
class UserRegistered(Message):
    """Event: a user exists (the admission step's view of customers starts here)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "registered_at"
    user_id: str
    version: int
    username: str
    email: str
    profile: dict[str, str] = field(default_factory=dict)
    registered_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserDeactivated(Message):
    """Event: a user may no longer order."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "deactivated_at"
    user_id: str
    version: int
    reason: str
    deactivated_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserReactivated(Message):
    """Event: a deactivated user may order again."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "reactivated_at"
    user_id: str
    version: int
    reactivated_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserProfileUpdated(Message):
    """Event: profile attributes of a user were set (merged into the profile; others stay)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "updated_at"
    user_id: str
    version: int
    changes: dict[str, str]
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserEmailChanged(Message):
    """Event: a user's e-mail address changed (the new one was claimed first)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "changed_at"
    user_id: str
    version: int
    old_email: str
    new_email: str
    changed_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserLoggedIn(Message):
    """Event: a user logged in."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "logged_in_at"
    user_id: str
    version: int
    logged_in_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserOnboardingStarted(Message):
    """Event: the welcome flow of a newly registered user started (a reaction; not part of the aggregate)."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "started_at"
    user_id: str
    started_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserCommandRejected(Message):
    """Event: a user command was refused; the aggregate is unchanged."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "rejected_at"
    user_id: str
    command: str
    reason: str
    expected_version: int | None = None
    actual_version: int | None = None
    rejected_at: datetime


@dataclass(frozen=True, kw_only=True)
class UserSnapshot(Message):
    """The user aggregate at ``version``; loading resumes with the events after it. v2 added ``registered_at`` …
    ``last_login_at`` and v3 ``updated_at``, so an older snapshot loads with them defaulted."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "taken_at"
    user_id: str
    version: int
    username: str
    email: str
    profile: dict[str, str] = field(default_factory=dict)
    active: bool
    taken_at: datetime
    registered_at: datetime | None = None
    deactivation_reason: str | None = None
    login_count: int = 0
    last_login_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class RegisterUser(Message):
    """Command: create a user; its address is claimed first (ClaimEmail), so it may still be refused."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    username: str
    email: str
    profile: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class UpdateUserProfile(Message):
    """Command: set profile attributes; ``expected_version`` None means no concurrency check."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    expected_version: int | None = None
    changes: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class ChangeEmail(Message):
    """Command: change a user's address; the new one is claimed first."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    expected_version: int | None = None
    new_email: str


@dataclass(frozen=True, kw_only=True)
class DeactivateUser(Message):
    """Command: deactivate a user."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    expected_version: int | None = None
    reason: str


@dataclass(frozen=True, kw_only=True)
class ReactivateUser(Message):
    """Command: reactivate a deactivated user."""

    KEY_FIELD: ClassVar[str] = "user_id"
    user_id: str
    expected_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class RecordLogin(Message):
    """Command: record that a user logged in."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "logged_in_at"
    user_id: str
    logged_in_at: datetime


@dataclass(frozen=True, kw_only=True)
class ClaimEmail(Message):
    """Command: a user asks to own an address; keyed by the normalised address."""

    KEY_FIELD: ClassVar[str] = "email"
    TIME_FIELD: ClassVar[str] = "requested_at"
    email: str
    user_id: str
    request_id: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class ReleaseEmail(Message):
    """Command: a user gives up an address it owns under claim ``request_id``; keyed by the address."""

    KEY_FIELD: ClassVar[str] = "email"
    TIME_FIELD: ClassVar[str] = "requested_at"
    email: str
    user_id: str
    request_id: str
    reason: str
    requested_at: datetime


@dataclass(frozen=True, kw_only=True)
class EmailClaimed(Message):
    """Answer: the address is the user's; keyed by user id."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "claimed_at"
    user_id: str
    email: str
    request_id: str
    claimed_at: datetime


@dataclass(frozen=True, kw_only=True)
class EmailClaimRefused(Message):
    """Answer: another user owns the address; keyed by the asking user's id."""

    KEY_FIELD: ClassVar[str] = "user_id"
    TIME_FIELD: ClassVar[str] = "refused_at"
    user_id: str
    email: str
    request_id: str
    reason: str
    refused_at: datetime
