"""The user service, keyed by user id: an event-sourced aggregate with snapshots and optimistic concurrency.

**The aggregate** (:mod:`streams.domain.user_aggregate`): a :class:`User` is only ever the fold of its events.

**The step's state** (:class:`UserHistory`) is the event-sourcing state, not the aggregate: the newest
UserSnapshot plus the events after it, so it stays bounded. At registration, and whenever the version reaches a
multiple of ``ctx.users.snapshot_every`` (``UsersConfig.snapshot_due``), the step also emits a UserSnapshot (to the
compacted ``users.snapshots.v1``) and the tail starts empty again. So every user has a snapshot, and a reader that
loads users from them (:mod:`consumers.user_log`) never has to look for where a history begins. Beside it: the
e-mail claim in flight, and the inputs handled lately.

**Commands** (``users.commands.v1``): each one is accepted or answered with UserCommandRejected, whose reason
a person can read; a rejected command changes nothing but the memory of handled inputs. Checks, in order: every
string of the command (user id, username, e-mail, profile keys and values, reason) is clean text
(:mod:`streams.domain.text`; the rejection names the field and the character); the user exists (or, for
RegisterUser, does not and has no registration in flight); ``expected_version``, when given, equals the version
("concurrency conflict", both versions in the rejection); then the command's own rules. A deactivated user
accepts only ReactivateUser (and DeactivateUser is refused as "already").

**E-mail uniqueness** goes through :mod:`streams.domain.emails`, which owns each address. A valid
RegisterUser or ChangeEmail does not produce its event at once: the step records a :class:`PendingClaim` and
emits ClaimEmail (``users.emails.v1``, keyed by the address). The answer (``users.commands.v1``, keyed by
user id) completes it: EmailClaimed gives UserRegistered, or UserEmailChanged plus ReleaseEmail of the old
address; EmailClaimRefused gives UserCommandRejected("e-mail already in use"). An answer that matches no
claim in flight is stale and ignored. While a claim is in flight:

* a pending registration: the user does not exist yet, so every other command of that user is refused
  ("registration pending"), and so is a second RegisterUser;
* a pending e-mail change: a second ChangeEmail is refused ("e-mail change pending"); every other command is
  handled as usual (none depends on the address, and ``expected_version`` was checked when the change was
  accepted, so the change lands at whatever version the aggregate has when the answer comes). If the user was
  deactivated meanwhile, the change is refused when the answer comes and a granted address is released.

**Outcomes name their command.** Every command ends in exactly one event on ``users.events.v1``, the fact it
asked for or UserCommandRejected, and that event's cause (``ce_causationid``) is the command: the input's id as
usual, and for a command that waited for its address, the command's id kept in the :class:`PendingClaim`
(:attr:`Decision.causes`). The command-status view (:mod:`streams.views.commands`) folds it by that id.

**Redelivery.** Every input with an id (``ctx.message_id``) that produced events is remembered with those
events (the last ``ctx.users.remembered_inputs``): the same input again changes nothing and re-emits them. A user
id that is not clean text names no user: its command is rejected and nothing is kept under it (a redelivery is
rejected again), so no stored key ever holds such a string.

**Reactions** to the user's events (onboarding, notices) are not part of this step: see
:mod:`streams.domain.user_reactions`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from streams.domain.core import Decision, StepContext
from streams.domain.emails import EMAIL_IN_USE
from streams.domain.messages import (
    ChangeEmail,
    ClaimEmail,
    DeactivateUser,
    EmailClaimed,
    EmailClaimRefused,
    JsonState,
    Message,
    ReactivateUser,
    RecordLogin,
    RegisterUser,
    ReleaseEmail,
    UpdateUserProfile,
    UserCommandRejected,
    UserDeactivated,
    UserEmailChanged,
    UserLoggedIn,
    UserProfileUpdated,
    UserReactivated,
    UserRegistered,
    UserSnapshot,
)
from streams.domain.text import is_clean_text, unclean_field
from streams.domain.user_aggregate import User, UserEvent, apply, load, take_snapshot

COMMANDS = frozenset(
    {"RegisterUser", "UpdateUserProfile", "ChangeEmail", "DeactivateUser", "ReactivateUser", "RecordLogin"}
)
HANDLES = COMMANDS | {"EmailClaimed", "EmailClaimRefused"}

"""The events the aggregate is folded from (``users.events.v1`` also carries reactions and rejections)."""
UserCommand = RegisterUser | UpdateUserProfile | ChangeEmail | DeactivateUser | ReactivateUser | RecordLogin

UNKNOWN_USER = "unknown user"
ALREADY_REGISTERED = "user already registered"
REGISTRATION_PENDING = "registration pending: the user's e-mail address is still being claimed"
EMAIL_CHANGE_PENDING = "e-mail change pending: wait for the previous change to complete"
USER_INACTIVE = "user is deactivated"
ALREADY_INACTIVE = "user is already deactivated"
ALREADY_ACTIVE = "user is already active"
DEACTIVATED_WHILE_PENDING = "user was deactivated while the e-mail change was pending"
EMPTY_USERNAME = "username must not be empty"
EMPTY_PROFILE_KEY = "profile attribute names must not be empty"
NO_CHANGES = "no profile changes given"
EMAIL_UNCHANGED = "the new e-mail address is the current one"
NO_REASON = "a deactivation needs a reason"
EMAIL_CHANGED = "e-mail changed"
CHANGE_ABANDONED = "e-mail change abandoned"
INVALID_TEXT = "invalid text"

_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
MAX_EMAIL_LENGTH = 254


def normalise_email(address: str) -> str:
    """The form addresses are compared, claimed and stored in: trimmed and lower-cased."""
    return address.strip().lower()


def email_problem(address: str) -> str | None:
    """Why a (normalised) address is not acceptable, or None: ``local@domain.tld``, no spaces, one ``@``."""
    if len(address) > MAX_EMAIL_LENGTH or _EMAIL.fullmatch(address) is None:
        return f"invalid e-mail address {address!r}"
    return None


def conflict(expected: int, actual: int) -> str:
    """The reason of a rejected command that expected another version."""
    return f"concurrency conflict: expected version {expected}, actual version {actual}"


# --- the step's state ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PendingClaim:
    """A RegisterUser or ChangeEmail waiting for its address: the ClaimEmail sent, and the command."""

    request_id: str
    email: str
    """The normalised address claimed."""
    command: RegisterUser | ChangeEmail
    command_id: str = ""
    """The command's id (``ctx.message_id``): the event that finishes it names it as its cause
    (:attr:`Decision.causes`), so its sender can find out what became of it."""


@dataclass(frozen=True, kw_only=True)
class HandledInput:
    """An input by its id, with the events it produced (re-emitted on redelivery)."""

    message_id: str
    events: tuple[Message, ...]
    causes: tuple[str, ...] = ()
    """The decision's :attr:`Decision.causes`, re-emitted with the events."""


@dataclass(frozen=True, kw_only=True)
class UserHistory(JsonState):
    """What the user step keeps per user: the newest snapshot and the events after it, plus the claim in
    flight and the inputs handled lately. The aggregate is :attr:`user`."""

    user_id: str
    snapshot: UserSnapshot | None = None
    events: tuple[UserEvent, ...] = ()
    """The events after ``snapshot`` (fewer than ``snapshot_every``)."""
    pending: PendingClaim | None = None
    claims: int = 0
    """Claims sent so far; the next one is ``<user id>/claim/<claims + 1>``."""
    email_claim: str = ""
    """The claim under which the user owns its current address ("" if unknown): ReleaseEmail names it."""
    handled: tuple[HandledInput, ...] = ()
    """The last inputs (by ``ctx.message_id``) that produced events, oldest first."""

    @property
    def user(self) -> User | None:
        """The aggregate: the snapshot with the events after it; None before registration."""
        return load(self.snapshot, self.events)


# --- the step -----------------------------------------------------------------------------------------------


def decide(state: UserHistory | None, message: Message, ctx: StepContext) -> Decision[UserHistory]:
    """Apply one command or claim answer; a redelivered input re-emits what it emitted the first time."""
    if message.record_name not in HANDLES:
        return Decision(state)
    if state is not None and ctx.message_id:
        for handled in state.handled:
            if handled.message_id == ctx.message_id:
                return Decision(state, handled.events, causes=handled.causes)
    empty = UserHistory(user_id=message.key)
    history = state or empty
    match message:
        case EmailClaimed():
            decision = on_email_claimed(history, message, ctx)
        case EmailClaimRefused():
            decision = on_email_claim_refused(history, message, ctx)
        case _:
            decision = on_command(history, message, ctx)
    if not is_clean_text(message.key):  # names no user: answered (a rejection), nothing kept
        return Decision(state, decision.events)
    new = decision.state or history
    if ctx.message_id and decision.events:
        handled = HandledInput(message_id=ctx.message_id, events=decision.events, causes=decision.causes)
        remembered = (*new.handled, handled)
        new = replace(new, handled=remembered[-ctx.users.remembered_inputs :])
    if state is None and new == empty:
        return Decision(None, decision.events)  # nothing worth keeping for a user that does not exist
    return Decision(new, decision.events, causes=decision.causes)


def on_command(history: UserHistory, command: Message, ctx: StepContext) -> Decision[UserHistory]:
    """Check what every command needs (existence, no registration in flight, expected version), then route."""
    user = history.user
    reason = _text_problem(command) or _precondition_problem(history, user, command)
    if reason is not None:
        return _reject(history, command, reason, ctx)
    match command:
        case RegisterUser():
            return on_register_user(history, command, ctx)
    if user is None:  # pragma: no cover - _precondition_problem refuses commands to unknown users
        return _reject(history, command, UNKNOWN_USER, ctx)
    match command:
        case UpdateUserProfile():
            return on_update_user_profile(history, user, command, ctx)
        case ChangeEmail():
            return on_change_email(history, user, command, ctx)
        case DeactivateUser():
            return on_deactivate_user(history, user, command, ctx)
        case ReactivateUser():
            return on_reactivate_user(history, user, command, ctx)
        case RecordLogin():
            return on_record_login(history, user, command, ctx)
    return Decision(history)  # pragma: no cover - COMMANDS and the cases above list the same records


def on_register_user(history: UserHistory, command: RegisterUser, ctx: StepContext) -> Decision[UserHistory]:
    """Claim the address; UserRegistered follows when it is granted."""
    email = normalise_email(command.email)
    reason = (
        (EMPTY_USERNAME if not command.username.strip() else None)
        or email_problem(email)
        or _profile_problem(command.profile)
    )
    if reason is not None:
        return _reject(history, command, reason, ctx)
    return _claim(history, command, email, ctx)


def on_update_user_profile(
    history: UserHistory, user: User, command: UpdateUserProfile, ctx: StepContext
) -> Decision[UserHistory]:
    """Merge the changes into the profile."""
    reason = (
        (USER_INACTIVE if not user.active else None)
        or (NO_CHANGES if not command.changes else None)
        or _profile_problem(command.changes)
    )
    if reason is not None:
        return _reject(history, command, reason, ctx)
    event = UserProfileUpdated(
        user_id=user.user_id, version=user.version + 1, changes=dict(command.changes), updated_at=ctx.now
    )
    return _record(history, user, event, ctx)


def on_change_email(history: UserHistory, user: User, command: ChangeEmail, ctx: StepContext) -> Decision[UserHistory]:
    """Claim the new address; UserEmailChanged follows when it is granted."""
    email = normalise_email(command.new_email)
    reason = (
        (USER_INACTIVE if not user.active else None)
        or (EMAIL_CHANGE_PENDING if history.pending is not None else None)
        or email_problem(email)
        or (EMAIL_UNCHANGED if email == user.email else None)
    )
    if reason is not None:
        return _reject(history, command, reason, ctx)
    return _claim(history, command, email, ctx)


def on_deactivate_user(
    history: UserHistory, user: User, command: DeactivateUser, ctx: StepContext
) -> Decision[UserHistory]:
    """The user may no longer log in or order."""
    reason = (ALREADY_INACTIVE if not user.active else None) or (NO_REASON if not command.reason.strip() else None)
    if reason is not None:
        return _reject(history, command, reason, ctx)
    event = UserDeactivated(
        user_id=user.user_id, version=user.version + 1, reason=command.reason, deactivated_at=ctx.now
    )
    return _record(history, user, event, ctx)


def on_reactivate_user(
    history: UserHistory, user: User, command: ReactivateUser, ctx: StepContext
) -> Decision[UserHistory]:
    """A deactivated user may log in and order again."""
    if user.active:
        return _reject(history, command, ALREADY_ACTIVE, ctx)
    event = UserReactivated(user_id=user.user_id, version=user.version + 1, reactivated_at=ctx.now)
    return _record(history, user, event, ctx)


def on_record_login(history: UserHistory, user: User, command: RecordLogin, ctx: StepContext) -> Decision[UserHistory]:
    """Count a login, at the time the command says it happened."""
    if not user.active:
        return _reject(history, command, USER_INACTIVE, ctx)
    event = UserLoggedIn(user_id=user.user_id, version=user.version + 1, logged_in_at=command.logged_in_at)
    return _record(history, user, event, ctx)


def on_email_claimed(history: UserHistory, answer: EmailClaimed, ctx: StepContext) -> Decision[UserHistory]:
    """The address is ours: finish the registration or the change in flight; a stale answer is ignored."""
    pending = history.pending
    if pending is None or pending.request_id != answer.request_id:
        return Decision(history)
    return _finishing(pending, _on_claim_granted(history, pending, ctx))


def _on_claim_granted(history: UserHistory, pending: PendingClaim, ctx: StepContext) -> Decision[UserHistory]:
    user = history.user
    cleared = replace(history, pending=None)
    command = pending.command
    if isinstance(command, RegisterUser):
        registered = UserRegistered(
            user_id=history.user_id,
            version=1,
            username=command.username.strip(),
            email=pending.email,
            profile=dict(command.profile),
            registered_at=ctx.now,
        )
        return _record(replace(cleared, email_claim=pending.request_id), None, registered, ctx)
    if user is None:  # pragma: no cover - a change is only accepted for an existing user
        return Decision(cleared)
    if not user.active:
        release = _release(history.user_id, pending.email, pending.request_id, CHANGE_ABANDONED, ctx)
        rejected = _reject(cleared, command, DEACTIVATED_WHILE_PENDING, ctx)
        return Decision(rejected.state, (*rejected.events, release))
    changed = UserEmailChanged(
        user_id=user.user_id,
        version=user.version + 1,
        old_email=user.email,
        new_email=pending.email,
        changed_at=ctx.now,
    )
    release = _release(user.user_id, user.email, history.email_claim, EMAIL_CHANGED, ctx)
    recorded = _record(replace(cleared, email_claim=pending.request_id), user, changed, ctx)
    return Decision(recorded.state, (*recorded.events, release))


def on_email_claim_refused(history: UserHistory, answer: EmailClaimRefused, ctx: StepContext) -> Decision[UserHistory]:
    """Another user owns the address: the registration or change in flight is rejected."""
    pending = history.pending
    if pending is None or pending.request_id != answer.request_id:
        return Decision(history)
    return _finishing(pending, _reject(replace(history, pending=None), pending.command, EMAIL_IN_USE, ctx))


# --- helpers ------------------------------------------------------------------------------------------------


def _text_problem(command: Message) -> str | None:
    unclean = unclean_field(command)
    return None if unclean is None else f"{INVALID_TEXT}: {unclean}"


def _precondition_problem(history: UserHistory, user: User | None, command: Message) -> str | None:
    if user is None:
        if history.pending is not None:
            return REGISTRATION_PENDING
        return None if isinstance(command, RegisterUser) else UNKNOWN_USER
    if isinstance(command, RegisterUser):
        return ALREADY_REGISTERED
    expected = _expected_version(command)
    if expected is not None and expected != user.version:
        return conflict(expected, user.version)
    return None


def _profile_problem(attributes: dict[str, str]) -> str | None:
    return EMPTY_PROFILE_KEY if any(not key.strip() for key in attributes) else None


def _expected_version(command: Message) -> int | None:
    expected = getattr(command, "expected_version", None)
    return expected if isinstance(expected, int) else None


def _claim(
    history: UserHistory, command: RegisterUser | ChangeEmail, email: str, ctx: StepContext
) -> Decision[UserHistory]:
    number = history.claims + 1
    request_id = f"{history.user_id}/claim/{number}"
    claim = ClaimEmail(email=email, user_id=history.user_id, request_id=request_id, requested_at=ctx.now)
    pending = PendingClaim(request_id=request_id, email=email, command=command, command_id=ctx.message_id)
    return Decision(replace(history, claims=number, pending=pending), (claim,))


def _finishing(pending: PendingClaim, decision: Decision[UserHistory]) -> Decision[UserHistory]:
    """``decision`` with its first event, the command's outcome, naming the command as its cause."""
    if not pending.command_id or not decision.events:
        return decision
    return replace(decision, causes=(pending.command_id,))


def _release(user_id: str, email: str, request_id: str, reason: str, ctx: StepContext) -> ReleaseEmail:
    return ReleaseEmail(email=email, user_id=user_id, request_id=request_id, reason=reason, requested_at=ctx.now)


def _record(history: UserHistory, user: User | None, event: UserEvent, ctx: StepContext) -> Decision[UserHistory]:
    """Append ``event``; when a snapshot is due the snapshot replaces the tail and is emitted."""
    after = apply(user, event)
    if ctx.users.snapshot_due(after.version):
        snapshot = take_snapshot(after, ctx.now)
        return Decision(replace(history, snapshot=snapshot, events=()), (event, snapshot))
    return Decision(replace(history, events=(*history.events, event)), (event,))


def _reject(history: UserHistory, command: Message, reason: str, ctx: StepContext) -> Decision[UserHistory]:
    user = history.user
    rejected = UserCommandRejected(
        user_id=history.user_id,
        command=command.record_name,
        reason=reason,
        expected_version=_expected_version(command),
        actual_version=user.version if user is not None else None,
        rejected_at=ctx.now,
    )
    return Decision(history, (rejected,))
