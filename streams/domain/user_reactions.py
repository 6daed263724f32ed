"""What follows from a user's events (the seed's UserEventHandler), keyed by user id.

:func:`react` is the pure reaction to one event:

* UserRegistered → UserOnboardingStarted (``users.events.v1``), a welcome NotificationSent
  (``notifications.events.v1``, kind ``welcome``), and default preferences as an UpdateUserProfile command
  (``users.commands.v1``) carrying only the ``ctx.users.default_preferences`` the user did not register with.
  It is a command, not an event, so the aggregate stays the only writer of the profile. It expects version 1
  (the registration), so if the user changed anything first, the defaults are refused with a concurrency
  conflict rather than overwrite a choice the user made; the preferences then stay unset (readers default).
* UserEmailChanged → a NotificationSent (kind ``email_changed``) asking to confirm the new address; it names
  the address, and the notice goes to the user's current address, which is the new one.
* anything else (UserProfileUpdated included: the search index is the view service's job) → nothing.

Notices have deterministic ids (``<user id>:welcome``, ``<user id>:email_changed:<version>``), so a sender can
drop copies, and carry the address they are for (``email``: the registered one, the new one), so the e-mail goes
where the event meant, whatever the mail sender has seen of the user since. :func:`decide` wraps :func:`react` as
a step for the edge: user events arrive in version order (one topic, keyed by user id), so remembering the last
version reacted to, with what it emitted, is enough to answer a redelivery with the very same records and to
ignore older events.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.domain.core import Decision, StepContext
from streams.domain.messages import (
    JsonState,
    Message,
    NotificationSent,
    UpdateUserProfile,
    UserEmailChanged,
    UserOnboardingStarted,
    UserRegistered,
)

HANDLES = frozenset({"UserRegistered", "UserEmailChanged"})

WELCOME = "welcome"
EMAIL_CHANGED = "email_changed"


def react(event: Message, ctx: StepContext) -> tuple[Message, ...]:
    """The records that follow from ``event``, in the order to send them; deterministic given (event, ctx)."""
    match event:
        case UserRegistered():
            return on_user_registered(event, ctx)
        case UserEmailChanged():
            return on_user_email_changed(event, ctx)
    return ()


def on_user_registered(event: UserRegistered, ctx: StepContext) -> tuple[Message, ...]:
    """Start onboarding, welcome the user, and ask for the default preferences they did not set."""
    started = UserOnboardingStarted(user_id=event.user_id, started_at=ctx.now)
    welcome = NotificationSent(
        notification_id=f"{event.user_id}:{WELCOME}",
        user_id=event.user_id,
        kind=WELCOME,
        message=f"Welcome, {event.username}! Your account is ready.",
        sent_at=ctx.now,
        email=event.email,
    )
    defaults = {key: value for key, value in ctx.users.default_preferences if key not in event.profile}
    if not defaults:
        return (started, welcome)
    preferences = UpdateUserProfile(user_id=event.user_id, expected_version=event.version, changes=defaults)
    return (started, welcome, preferences)


def on_user_email_changed(event: UserEmailChanged, ctx: StepContext) -> tuple[Message, ...]:
    """Ask the user to confirm the new address."""
    notice = NotificationSent(
        notification_id=f"{event.user_id}:{EMAIL_CHANGED}:{event.version}",
        user_id=event.user_id,
        kind=EMAIL_CHANGED,
        message=f"Please confirm your new e-mail address {event.new_email}; "
        f"if you did not change it from {event.old_email}, contact support.",
        sent_at=ctx.now,
        email=event.new_email,
    )
    return (notice,)


@dataclass(frozen=True, kw_only=True)
class ReactionState(JsonState):
    """The last user event reacted to, and what the reaction emitted."""

    user_id: str
    version: int = 0
    emitted: tuple[Message, ...] = ()


def decide(state: ReactionState | None, message: Message, ctx: StepContext) -> Decision[ReactionState]:
    """React to a user event once; its redelivery re-emits the same records, an older event nothing."""
    version = getattr(message, "version", None)
    if message.record_name not in HANDLES or not isinstance(version, int):
        return Decision(state)
    if state is not None and version <= state.version:
        return Decision(state, state.emitted if version == state.version else ())
    emitted = react(message, ctx)
    return Decision(ReactionState(user_id=message.key, version=version, emitted=emitted), emitted)
