"""The user service's domain: the aggregate's fold, every command's accept and reject paths, the e-mail claim
flow, redelivery, snapshots (also v1 ones through the real codec) and the reactions."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from schemas import AvroCodec, SchemaCatalog
from schemas.topics import topic_for_record
from streams.domain import emails, user_aggregate, user_reactions, users
from streams.domain.core import Decision, StepContext, UsersConfig
from streams.domain.emails import EmailOwner, claim_email, release_email
from streams.domain.messages import (
    ChangeEmail,
    ClaimEmail,
    DeactivateUser,
    EmailClaimed,
    EmailClaimRefused,
    Message,
    NotificationSent,
    ReactivateUser,
    RecordLogin,
    RegisterUser,
    ReleaseEmail,
    UpdateUserProfile,
    UserCommandRejected,
    UserDeactivated,
    UserEmailChanged,
    UserLoggedIn,
    UserOnboardingStarted,
    UserProfileUpdated,
    UserReactivated,
    UserRegistered,
    UserSnapshot,
    from_record,
    to_record,
)
from streams.domain.saga import EMAILS, USER_REACTIONS, USER_SERVICES, USERS
from streams.domain.user_aggregate import HistoryError, User, load, replay
from streams.domain.users import UserHistory, decide

pytestmark = pytest.mark.unit

T0 = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
CATALOG = SchemaCatalog.load()
CODEC = AvroCodec(CATALOG)


def at(seconds: int = 0, message_id: str = "", *, snapshot_every: int = 5, remembered: int = 50) -> StepContext:
    config = UsersConfig(snapshot_every=snapshot_every, remembered_inputs=remembered)
    return StepContext(now=T0 + timedelta(seconds=seconds), message_id=message_id, users=config)


class Bus:
    """The user step and the e-mail step wired directly: every ClaimEmail / ReleaseEmail is answered at once."""

    def __init__(self, snapshot_every: int = 5) -> None:
        self.users: dict[str, UserHistory] = {}
        self.emails: dict[str, EmailOwner] = {}
        self.log: list[Message] = []
        self.clock = 0
        self.snapshot_every = snapshot_every

    def ctx(self, message_id: str = "") -> StepContext:
        self.clock += 1
        return at(self.clock, message_id, snapshot_every=self.snapshot_every)

    def send(self, message: Message, message_id: str = "") -> tuple[Message, ...]:
        """Deliver ``message`` and everything it causes; returns what the user step emitted, in order."""
        ctx = self.ctx(message_id or f"m-{self.clock}")
        if isinstance(message, ClaimEmail | ReleaseEmail):
            decision = emails.decide(self.emails.get(message.key), message, ctx)
            if decision.state is not None:
                self.emails[message.key] = decision.state
            out: list[Message] = []
            for answer in decision.events:
                out.extend(self.send(answer))
            return tuple(out)
        step = decide(self.users.get(message.key), message, ctx)
        if step.state is not None:
            self.users[message.key] = step.state
        self.log.extend(step.events)
        out = list(step.events)
        for event in step.events:
            if isinstance(event, ClaimEmail | ReleaseEmail):
                out.extend(self.send(event))
        return tuple(out)

    def user(self, user_id: str) -> User | None:
        history = self.users.get(user_id)
        return history.user if history is not None else None

    def history_of(self, user_id: str) -> list[users.UserEvent]:
        return [e for e in self.log if isinstance(e, users.UserEvent) and e.user_id == user_id]


def register(user_id: str = "u-1", email: str = "ann@example.com", username: str = "ann") -> RegisterUser:
    return RegisterUser(user_id=user_id, username=username, email=email, profile={"tier": "gold"})


def registered_bus(*user_ids: str, snapshot_every: int = 5) -> Bus:
    bus = Bus(snapshot_every)
    for user_id in user_ids or ("u-1",):
        bus.send(register(user_id, f"{user_id}@example.com", user_id))
    return bus


def rejection(events: tuple[Message, ...]) -> UserCommandRejected:
    rejected = [e for e in events if isinstance(e, UserCommandRejected)]
    assert len(rejected) == 1, events
    return rejected[0]


def aggregate_events(events: tuple[Message, ...]) -> list[users.UserEvent]:
    return [e for e in events if isinstance(e, users.UserEvent)]


# --- the aggregate ------------------------------------------------------------------------------------------

HISTORY: list[users.UserEvent] = [
    UserRegistered(user_id="u-1", version=1, username="ann", email="a@x.io", profile={"a": "1"}, registered_at=T0),
    UserProfileUpdated(user_id="u-1", version=2, changes={"b": "2", "a": "3"}, updated_at=T0),
    UserEmailChanged(user_id="u-1", version=3, old_email="a@x.io", new_email="b@x.io", changed_at=T0),
    UserLoggedIn(user_id="u-1", version=4, logged_in_at=T0 + timedelta(hours=1)),
    UserDeactivated(user_id="u-1", version=5, reason="fraud", deactivated_at=T0),
    UserReactivated(user_id="u-1", version=6, reactivated_at=T0),
    UserLoggedIn(user_id="u-1", version=7, logged_in_at=T0 + timedelta(hours=2)),
    UserDeactivated(user_id="u-1", version=8, reason="asked to", deactivated_at=T0 + timedelta(hours=3)),
]


def test_replay_folds_every_event_and_merges_profiles() -> None:
    assert replay([]) is None
    assert replay(HISTORY) == User(
        user_id="u-1",
        version=8,
        username="ann",
        email="b@x.io",
        profile={"a": "3", "b": "2"},
        active=False,
        registered_at=T0,
        deactivation_reason="asked to",
        login_count=2,
        last_login_at=T0 + timedelta(hours=2),
        updated_at=T0 + timedelta(hours=3),
    )
    reactivated = replay(HISTORY[:6])
    assert reactivated is not None and reactivated.active and reactivated.deactivation_reason is None
    logged_in = replay(HISTORY[:7])
    assert logged_in is not None and logged_in.updated_at == T0 + timedelta(hours=2), "a login's own time"


@pytest.mark.parametrize("cut", range(len(HISTORY) + 1))
def test_loading_from_any_snapshot_equals_replaying_everything(cut: int) -> None:
    before = replay(HISTORY[:cut])
    snapshot = user_aggregate.take_snapshot(before, T0) if before is not None else None
    assert load(snapshot, HISTORY[cut:]) == replay(HISTORY)


@pytest.mark.parametrize(
    "history",
    [
        [HISTORY[1]],  # does not start with a registration
        [replace(HISTORY[0], version=2)],  # the first event is version 1
        [HISTORY[0], HISTORY[2]],  # a gap
        [HISTORY[0], HISTORY[1], HISTORY[1]],  # a repeat
        [HISTORY[0], replace(HISTORY[0], version=2)],  # registered twice
        [HISTORY[0], replace(HISTORY[1], user_id="u-2")],  # another user's event
    ],
    ids=["no-registration", "first-not-1", "gap", "repeat", "registered-twice", "other-user"],
)
def test_a_broken_history_is_refused(history: list[users.UserEvent]) -> None:
    with pytest.raises(HistoryError):
        replay(history)


# --- registration and the e-mail claim ----------------------------------------------------------------------


def test_registration_claims_the_normalised_address_then_registers() -> None:
    command = RegisterUser(user_id="u-1", username=" ann ", email="  Ann@Example.COM ", profile={"tier": "gold"})
    first = decide(None, command, at(1, "c-1"))
    claim = ClaimEmail(email="ann@example.com", user_id="u-1", request_id="u-1/claim/1", requested_at=at(1).now)
    assert first.events == (claim,)
    assert first.state is not None and first.state.user is None and first.state.pending is not None
    assert topic_for_record("ClaimEmail").name == "users.emails.v1" and claim.key == "ann@example.com"

    answer = claim_email(None, claim, at(2)).events
    assert answer == (
        EmailClaimed(user_id="u-1", email="ann@example.com", request_id="u-1/claim/1", claimed_at=at(2).now),
    )
    assert topic_for_record("EmailClaimed").name == "users.commands.v1" and answer[0].key == "u-1"

    done = decide(first.state, answer[0], at(3, "a-1"))
    registered = UserRegistered(
        user_id="u-1",
        version=1,
        username="ann",
        email="ann@example.com",
        profile={"tier": "gold"},
        registered_at=at(3).now,
    )
    user = replay([registered])
    assert user is not None
    assert done.events == (registered, user_aggregate.take_snapshot(user, at(3).now)), "every user has a snapshot"
    assert done.state is not None and done.state.pending is None and done.state.email_claim == "u-1/claim/1"
    assert done.state.user == user and done.state.events == ()


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (RegisterUser(user_id="u-1", username="ann", email="not-an-address"), "invalid e-mail address"),
        (RegisterUser(user_id="u-1", username="ann", email="a b@x.io"), "invalid e-mail address"),
        (RegisterUser(user_id="u-1", username="ann", email="a@x"), "invalid e-mail address"),
        (RegisterUser(user_id="u-1", username="ann", email="a@@x.io"), "invalid e-mail address"),
        (RegisterUser(user_id="u-1", username="ann", email="a@x..io"), "invalid e-mail address"),
        (RegisterUser(user_id="u-1", username="ann", email="a" * 250 + "@x.io"), "invalid e-mail address"),
        (RegisterUser(user_id="u-1", username="  ", email="a@x.io"), users.EMPTY_USERNAME),
        (RegisterUser(user_id="u-1", username="ann", email="a@x.io", profile={" ": "x"}), users.EMPTY_PROFILE_KEY),
    ],
)
def test_an_invalid_registration_is_rejected_and_keeps_nothing(command: RegisterUser, reason: str) -> None:
    decision = decide(None, command, at(1))
    assert decision.state is None
    rejected = rejection(decision.events)
    assert reason in rejected.reason
    assert (rejected.command, rejected.expected_version, rejected.actual_version) == ("RegisterUser", None, None)
    remembered = decide(None, command, at(1, "c-1"))
    assert remembered.state is not None and remembered.state.user is None and remembered.state.pending is None
    assert [h.message_id for h in remembered.state.handled] == ["c-1"]


UNCLEAN_COMMANDS = {
    "username": (RegisterUser(user_id="u-1", username="an\x00n", email="a@x.io"), "username", 2),
    "e-mail": (RegisterUser(user_id="u-1", username="ann", email="ann\x82@example.com"), "email", 3),
    "profile value": (RegisterUser(user_id="u-1", username="ann", email="a@x.io", profile={"city": "\ud800"}),
                      "profile.city", 0),
    "profile key": (UpdateUserProfile(user_id="u-1", changes={"ci\x1bty": "x"}), "changes key 'ci\\x1bty'", 2),
    "profile change": (UpdateUserProfile(user_id="u-1", changes={"a": "b", "home town": "x\n"}),
                       "changes['home town']", 1),
    "new e-mail": (ChangeEmail(user_id="u-1", new_email="new\u0085@x.io"), "new_email", 3),
    "deactivation reason": (DeactivateUser(user_id="u-1", reason="spam\x7f"), "reason", 4),
}  # fmt: skip
"""A user command with one string that is not clean text: the field named, and the offending character's place."""


@pytest.mark.parametrize("case", UNCLEAN_COMMANDS, ids=UNCLEAN_COMMANDS.keys())
def test_a_command_with_unclean_text_is_rejected_naming_the_field_and_changes_nothing(case: str) -> None:
    command, field, position = UNCLEAN_COMMANDS[case]
    bus = registered_bus("u-9") if isinstance(command, RegisterUser) else registered_bus("u-1")
    before = bus.users.get("u-1", UserHistory(user_id="u-1"))
    events = bus.send(command)
    rejected = rejection(events)
    assert rejected.command == command.record_name
    assert rejected.reason.startswith(f"invalid text: {field} contains ")
    assert rejected.reason.endswith(f" at position {position}")
    assert not any(isinstance(e, ClaimEmail) for e in events), "no address is claimed for it"
    after = bus.users["u-1"]
    assert replace(after, handled=()) == replace(before, handled=()), "nothing but the memory of handled inputs"


def test_unclean_text_is_refused_before_the_user_s_existence_is_checked() -> None:
    rejected = rejection(decide(None, DeactivateUser(user_id="u-9", reason="\x00"), at(1)).events)
    assert rejected.reason == "invalid text: reason contains a control character (U+0000) at position 0"


@pytest.mark.parametrize("user_id", ["u-\x00", "\x9b1", "u\udfff"])
def test_a_user_id_that_is_not_clean_text_is_rejected_and_nothing_is_kept_under_it(user_id: str) -> None:
    command = register(user_id)
    decision = decide(None, command, at(1, "c-1"))
    rejected = rejection(decision.events)
    assert rejected.user_id == user_id and rejected.reason.startswith("invalid text: user_id contains ")
    assert decision.state is None, "no entry under a key that names no user, not even the input's memory"
    assert decide(None, command, at(2, "c-1")).events == (replace(rejected, rejected_at=T0 + timedelta(seconds=2)),)


def test_registering_an_existing_user_id_is_rejected() -> None:
    bus = registered_bus("u-1")
    before = bus.users["u-1"]
    events = bus.send(register("u-1", "other@example.com"))
    rejected = rejection(events)
    assert (rejected.reason, rejected.actual_version) == (users.ALREADY_REGISTERED, 1)
    assert replace(bus.users["u-1"], handled=()) == replace(before, handled=())


def test_while_registration_is_pending_every_command_of_that_user_is_refused() -> None:
    pending = decide(None, register(), at(1, "c-1")).state
    for command in (
        register(),
        UpdateUserProfile(user_id="u-1", changes={"a": "b"}),
        RecordLogin(user_id="u-1", logged_in_at=T0),
        DeactivateUser(user_id="u-1", reason="x"),
    ):
        decision = decide(pending, command, at(2))
        assert rejection(decision.events).reason == users.REGISTRATION_PENDING
        assert decision.state == pending


@pytest.mark.parametrize(
    "command",
    [
        UpdateUserProfile(user_id="u-9", changes={"a": "b"}),
        ChangeEmail(user_id="u-9", expected_version=3, new_email="a@x.io"),
        DeactivateUser(user_id="u-9", reason="x"),
        ReactivateUser(user_id="u-9"),
        RecordLogin(user_id="u-9", logged_in_at=T0),
    ],
    ids=lambda c: c.record_name,
)
def test_commands_to_an_unknown_user_are_rejected(command: Message) -> None:
    decision = decide(None, command, at(1))
    rejected = rejection(decision.events)
    assert (rejected.user_id, rejected.command, rejected.reason) == ("u-9", command.record_name, users.UNKNOWN_USER)
    assert rejected.actual_version is None and decision.state is None


def test_two_users_racing_for_one_address_one_wins() -> None:
    bus = Bus()
    a = decide(None, register("u-a", "Shared@Example.com"), bus.ctx("c-a"))
    b = decide(None, register("u-b", "shared@example.com"), bus.ctx("c-b"))
    claim_a, claim_b = a.events[0], b.events[0]
    assert isinstance(claim_a, ClaimEmail) and isinstance(claim_b, ClaimEmail)
    assert claim_a.key == claim_b.key == "shared@example.com", "both claims meet at one key"
    owner = claim_email(None, claim_b, bus.ctx())  # b's claim reaches the address first
    refused = claim_email(owner.state, claim_a, bus.ctx())
    assert isinstance(owner.events[0], EmailClaimed) and isinstance(refused.events[0], EmailClaimRefused)
    assert refused.state is not None and refused.state.owner == "u-b"

    lost = decide(a.state, refused.events[0], bus.ctx("r-a"))
    rejected = rejection(lost.events)
    assert (rejected.command, rejected.reason, rejected.actual_version) == ("RegisterUser", emails.EMAIL_IN_USE, None)
    assert lost.state is not None and lost.state.user is None and lost.state.pending is None
    won = decide(b.state, owner.events[0], bus.ctx("r-b"))
    assert won.state is not None and won.state.user is not None and won.state.user.email == "shared@example.com"

    retry = decide(lost.state, register("u-a", "mine@example.com"), bus.ctx("c-a2")).events[0]
    assert isinstance(retry, ClaimEmail) and retry.request_id == "u-a/claim/2", "a new claim, a new request id"


def test_an_address_is_owned_claimed_again_by_its_owner_and_released_only_by_its_claim() -> None:
    claim = ClaimEmail(email="a@x.io", user_id="u-1", request_id="u-1/claim/1", requested_at=T0)
    owned = claim_email(None, claim, at(1)).state
    again = claim_email(owned, replace(claim, request_id="u-1/claim/3"), at(2))
    assert isinstance(again.events[0], EmailClaimed), "a user that re-claims its own address gets it"
    assert again.state is not None and again.state.claim_id == "u-1/claim/3"

    stale = ReleaseEmail(email="a@x.io", user_id="u-1", request_id="u-1/claim/1", reason="x", requested_at=T0)
    assert release_email(again.state, stale, at(3)).state == again.state, "an older claim's release is stale"
    assert release_email(again.state, replace(stale, user_id="u-2"), at(3)).state == again.state
    freed = release_email(again.state, replace(stale, request_id="u-1/claim/3"), at(3))
    assert freed.events == () and freed.state is not None and freed.state.owner is None
    assert release_email(None, stale, at(3)).state is None

    other = claim_email(
        freed.state, ClaimEmail(email="a@x.io", user_id="u-2", request_id="u-2/claim/1", requested_at=T0), at(4)
    )
    assert isinstance(other.events[0], EmailClaimed)
    repeated = claim_email(other.state, claim, at(5))
    assert repeated.events == claim_email(None, claim, at(1)).events, "a repeated claim gets its first answer"
    assert repeated.state == other.state


def test_an_address_remembers_only_its_latest_answers() -> None:
    state: EmailOwner | None = None
    ctx = StepContext(now=T0, users=UsersConfig(remembered_claims=3))
    for n in range(5):
        claim = ClaimEmail(email="a@x.io", user_id=f"u-{n}", request_id=f"u-{n}/claim/1", requested_at=T0)
        state = claim_email(state, claim, ctx).state
    assert state is not None and [a.request_id for a in state.answers] == [f"u-{n}/claim/1" for n in (2, 3, 4)]


# --- the other commands -------------------------------------------------------------------------------------


def test_a_profile_update_is_merged_and_an_empty_one_refused() -> None:
    bus = registered_bus("u-1")
    events = bus.send(UpdateUserProfile(user_id="u-1", expected_version=1, changes={"city": "Oslo"}))
    assert events == (
        UserProfileUpdated(user_id="u-1", version=2, changes={"city": "Oslo"}, updated_at=at(bus.clock).now),
    )
    user = bus.user("u-1")
    assert user is not None and user.profile == {"tier": "gold", "city": "Oslo"}
    assert rejection(bus.send(UpdateUserProfile(user_id="u-1", changes={}))).reason == users.NO_CHANGES
    assert rejection(bus.send(UpdateUserProfile(user_id="u-1", changes={"": "x"}))).reason == users.EMPTY_PROFILE_KEY


@pytest.mark.parametrize(
    "command",
    [
        UpdateUserProfile(user_id="u-1", expected_version=0, changes={"a": "b"}),
        ChangeEmail(user_id="u-1", expected_version=0, new_email="new@x.io"),
        DeactivateUser(user_id="u-1", expected_version=0, reason="x"),
        ReactivateUser(user_id="u-1", expected_version=0),
    ],
    ids=lambda c: c.record_name,
)
def test_a_stale_expected_version_is_a_concurrency_conflict(command: Message) -> None:
    bus = registered_bus("u-1")
    bus.send(RecordLogin(user_id="u-1", logged_in_at=T0))
    before = replace(bus.users["u-1"], handled=())
    rejected = rejection(bus.send(command))
    assert rejected.reason == "concurrency conflict: expected version 0, actual version 2"
    assert (rejected.command, rejected.expected_version, rejected.actual_version) == (command.record_name, 0, 2)
    assert replace(bus.users["u-1"], handled=()) == before, "a rejected command changes nothing"


def test_a_matching_or_absent_expected_version_passes() -> None:
    bus = registered_bus("u-1")
    assert isinstance(bus.send(DeactivateUser(user_id="u-1", expected_version=1, reason="x"))[0], UserDeactivated)
    assert isinstance(bus.send(ReactivateUser(user_id="u-1"))[0], UserReactivated)


def test_deactivation_and_reactivation() -> None:
    bus = registered_bus("u-1")
    assert rejection(bus.send(ReactivateUser(user_id="u-1"))).reason == users.ALREADY_ACTIVE
    assert rejection(bus.send(DeactivateUser(user_id="u-1", reason=" "))).reason == users.NO_REASON
    events = bus.send(DeactivateUser(user_id="u-1", reason="fraud"))
    assert events == (UserDeactivated(user_id="u-1", version=2, reason="fraud", deactivated_at=at(bus.clock).now),)
    assert rejection(bus.send(DeactivateUser(user_id="u-1", reason="again"))).reason == users.ALREADY_INACTIVE
    for command in (
        RecordLogin(user_id="u-1", logged_in_at=T0),
        UpdateUserProfile(user_id="u-1", changes={"a": "b"}),
        ChangeEmail(user_id="u-1", new_email="new@x.io"),
    ):
        assert rejection(bus.send(command)).reason == users.USER_INACTIVE
    assert bus.send(ReactivateUser(user_id="u-1")) == (
        UserReactivated(user_id="u-1", version=3, reactivated_at=at(bus.clock).now),
    )
    user = bus.user("u-1")
    assert user is not None and user.active and user.version == 3


def test_a_login_is_counted_at_the_time_the_command_gives() -> None:
    bus = registered_bus("u-1")
    when = T0 - timedelta(minutes=3)
    assert bus.send(RecordLogin(user_id="u-1", logged_in_at=when)) == (
        UserLoggedIn(user_id="u-1", version=2, logged_in_at=when),
    )
    user = bus.user("u-1")
    assert user is not None and (user.login_count, user.last_login_at) == (1, when)


# --- changing the address -----------------------------------------------------------------------------------


def test_an_e_mail_change_claims_the_new_address_and_releases_the_old_one() -> None:
    bus = registered_bus("u-1")
    events = bus.send(ChangeEmail(user_id="u-1", expected_version=1, new_email="New@X.io"))
    claim, changed, release = events
    assert isinstance(claim, ClaimEmail) and claim.email == "new@x.io" and claim.request_id == "u-1/claim/2"
    answered = at(bus.clock - 1).now  # the clock ticks per delivery: command, claim, answer, release
    assert changed == UserEmailChanged(
        user_id="u-1", version=2, old_email="u-1@example.com", new_email="new@x.io", changed_at=answered
    )
    assert release == ReleaseEmail(
        email="u-1@example.com",
        user_id="u-1",
        request_id="u-1/claim/1",
        reason=users.EMAIL_CHANGED,
        requested_at=answered,
    )
    assert bus.emails["u-1@example.com"].owner is None and bus.emails["new@x.io"].owner == "u-1"
    bus.send(register("u-2", "U-1@example.com"))
    assert bus.user("u-2") is not None, "the old address is free for others"


def test_an_e_mail_change_to_a_taken_address_is_rejected() -> None:
    bus = registered_bus("u-1", "u-2")
    events = bus.send(ChangeEmail(user_id="u-1", expected_version=1, new_email="u-2@example.com"))
    rejected = rejection(events)
    assert (rejected.command, rejected.reason, rejected.expected_version, rejected.actual_version) == (
        "ChangeEmail",
        emails.EMAIL_IN_USE,
        1,
        1,
    )
    user = bus.user("u-1")
    assert user is not None and user.email == "u-1@example.com" and bus.users["u-1"].pending is None


@pytest.mark.parametrize(
    ("new_email", "reason"),
    [("nope", "invalid e-mail address 'nope'"), (" U-1@Example.com", users.EMAIL_UNCHANGED)],
)
def test_an_invalid_or_unchanged_address_is_rejected(new_email: str, reason: str) -> None:
    bus = registered_bus("u-1")
    assert rejection(bus.send(ChangeEmail(user_id="u-1", new_email=new_email))).reason == reason


def test_while_a_change_is_pending_only_another_change_is_refused() -> None:
    bus = registered_bus("u-1")
    pending = decide(bus.users["u-1"], ChangeEmail(user_id="u-1", expected_version=1, new_email="b@x.io"), at(1))
    state = pending.state
    assert state is not None and state.pending is not None
    second = decide(state, ChangeEmail(user_id="u-1", new_email="c@x.io"), at(2))
    assert rejection(second.events).reason == users.EMAIL_CHANGE_PENDING and second.state == state
    updated = decide(state, UpdateUserProfile(user_id="u-1", expected_version=1, changes={"a": "b"}), at(3))
    assert isinstance(updated.events[0], UserProfileUpdated) and updated.state is not None
    answer = EmailClaimed(user_id="u-1", email="b@x.io", request_id=state.pending.request_id, claimed_at=T0)
    done = decide(updated.state, answer, at(4))
    changed = done.events[0]
    assert isinstance(changed, UserEmailChanged) and changed.version == 3, "the change lands at the current version"


def test_a_user_deactivated_while_a_change_is_pending_keeps_the_old_address() -> None:
    bus = registered_bus("u-1")
    state = decide(bus.users["u-1"], ChangeEmail(user_id="u-1", new_email="b@x.io"), at(1)).state
    assert state is not None and state.pending is not None
    state = decide(state, DeactivateUser(user_id="u-1", reason="fraud"), at(2)).state
    answer = EmailClaimed(user_id="u-1", email="b@x.io", request_id="u-1/claim/2", claimed_at=T0)
    done = decide(state, answer, at(3))
    rejected, release = done.events
    assert isinstance(rejected, UserCommandRejected) and rejected.reason == users.DEACTIVATED_WHILE_PENDING
    assert release == ReleaseEmail(
        email="b@x.io", user_id="u-1", request_id="u-1/claim/2", reason=users.CHANGE_ABANDONED, requested_at=at(3).now
    )
    assert done.state is not None and done.state.user is not None and done.state.user.email == "u-1@example.com"


def test_stale_claim_answers_are_ignored() -> None:
    bus = registered_bus("u-1")
    state = bus.users["u-1"]
    for answer in (
        EmailClaimed(user_id="u-1", email="u-1@example.com", request_id="u-1/claim/1", claimed_at=T0),
        EmailClaimRefused(user_id="u-1", email="x@x.io", request_id="u-1/claim/7", reason="r", refused_at=T0),
    ):
        assert decide(state, answer, at(9, "late")) == Decision(state)
    assert decide(None, replace(answer, user_id="u-5"), at(9, "late")) == Decision(None)


# --- a command's outcome names the command -------------------------------------------------------------------


def test_a_direct_command_s_outcome_is_caused_by_the_input_itself() -> None:
    bus = registered_bus("u-1")
    for command in (DeactivateUser(user_id="u-1", reason="asked to"), DeactivateUser(user_id="u-1", reason="again")):
        decision = decide(bus.users["u-1"], command, at(1, "cmd-1"))
        assert decision.events and decision.causes == (), "no other cause named: the runner uses the input's id"
        bus.users["u-1"] = decision.state or bus.users["u-1"]


@pytest.mark.parametrize("granted", [True, False], ids=["claimed", "refused"])
def test_a_registration_that_waited_for_its_address_names_its_command(granted: bool) -> None:
    pending = decide(None, register(), at(1, "cmd-1"))
    state = pending.state
    assert state is not None and state.pending is not None and state.pending.command_id == "cmd-1"
    assert pending.causes == (), "the claim itself is caused by the command, as usual"
    answer: Message = (
        EmailClaimed(user_id="u-1", email="ann@example.com", request_id="u-1/claim/1", claimed_at=T0)
        if granted
        else EmailClaimRefused(user_id="u-1", email="ann@example.com", request_id="u-1/claim/1", reason="r",
                               refused_at=T0)
    )  # fmt: skip
    done = decide(state, answer, at(2, "answer-1"))
    expected = UserRegistered if granted else UserCommandRejected
    assert isinstance(done.events[0], expected) and done.causes == ("cmd-1",)
    assert decide(done.state, answer, at(3, "answer-1")) == done, "a redelivered answer names it again"


def test_an_e_mail_change_s_outcome_names_its_command_not_the_release() -> None:
    bus = registered_bus("u-1")
    changing = decide(bus.users["u-1"], ChangeEmail(user_id="u-1", new_email="b@x.io"), at(1, "cmd-2"))
    assert changing.state is not None and changing.state.pending is not None
    answer = EmailClaimed(user_id="u-1", email="b@x.io", request_id=changing.state.pending.request_id, claimed_at=T0)
    done = decide(changing.state, answer, at(2, "answer-2"))
    changed, release = done.events
    assert isinstance(changed, UserEmailChanged) and isinstance(release, ReleaseEmail)
    assert done.causes == ("cmd-2",), "only the outcome: the release is the answer's doing"
    deactivated = decide(changing.state, DeactivateUser(user_id="u-1", reason="x"), at(3, "cmd-3")).state
    abandoned = decide(deactivated, answer, at(4, "answer-2"))
    assert isinstance(abandoned.events[0], UserCommandRejected) and abandoned.causes == ("cmd-2",)


def test_a_claim_from_before_command_ids_were_kept_names_no_cause() -> None:
    state = decide(None, register(), at(1, "cmd-1")).state
    assert state is not None and state.pending is not None
    stored = state.to_json()
    del stored["pending"]["command_id"]  # a state stored before command ids were kept
    old = UserHistory.from_json(stored)
    assert old.pending is not None and old.pending.command_id == ""
    answer = EmailClaimed(user_id="u-1", email="ann@example.com", request_id="u-1/claim/1", claimed_at=T0)
    assert decide(old, answer, at(2, "answer-1")).causes == ()


# --- redelivery ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        register("u-1", "fresh@x.io"),  # rejected: already registered
        UpdateUserProfile(user_id="u-1", changes={"a": "b"}),
        ChangeEmail(user_id="u-1", new_email="fresh@x.io"),
        RecordLogin(user_id="u-1", logged_in_at=T0),
        DeactivateUser(user_id="u-1", reason="x"),
    ],
    ids=lambda c: c.record_name,
)
def test_a_redelivered_input_changes_nothing_and_re_emits_its_events(command: Message) -> None:
    bus = registered_bus("u-1", snapshot_every=2)
    first = decide(bus.users["u-1"], command, at(5, "c-1"))
    again = decide(first.state, command, at(9, "c-1"))
    assert again == first and again.events
    fresh = decide(first.state, command, at(9, "c-2"))
    assert fresh != first, "the same content under another id is another command"


def test_a_redelivered_claim_answer_re_emits_the_registration() -> None:
    state = decide(None, register(), at(1, "c-1")).state
    answer = EmailClaimed(user_id="u-1", email="ann@example.com", request_id="u-1/claim/1", claimed_at=T0)
    first = decide(state, answer, at(2, "a-1"))
    assert decide(first.state, answer, at(3, "a-1")) == first, "the edge crashed before sending: same events"
    assert decide(first.state, answer, at(3, "a-2")) == Decision(first.state), "a copy under another id is stale"


def test_only_the_latest_inputs_are_remembered() -> None:
    bus = registered_bus("u-1")
    state: UserHistory | None = bus.users["u-1"]
    for n in range(4):
        state = decide(state, RecordLogin(user_id="u-1", logged_in_at=T0), at(n, f"l-{n}", remembered=2)).state
    assert state is not None and [h.message_id for h in state.handled] == ["l-2", "l-3"]
    assert state.user is not None and state.user.login_count == 4


# --- snapshots ----------------------------------------------------------------------------------------------


def test_a_snapshot_at_registration_and_every_n_events_replaces_the_tail() -> None:
    bus = registered_bus("u-1", snapshot_every=3)
    registration = bus.users["u-1"].snapshot
    assert registration is not None and registration.version == 1 and bus.users["u-1"].events == ()
    snapshots: list[UserSnapshot] = []
    tails: list[int] = []
    for n in range(7):
        events = bus.send(UpdateUserProfile(user_id="u-1", changes={"n": str(n)}))
        snapshots.extend(e for e in events if isinstance(e, UserSnapshot))
        tails.append(len(bus.users["u-1"].events))
    assert [s.version for s in snapshots] == [3, 6]
    assert tails == [1, 0, 1, 2, 0, 1, 2], "versions 2..8: the tail empties at every snapshot"
    history = bus.users["u-1"]
    assert history.snapshot == snapshots[-1] and topic_for_record("UserSnapshot").name == "users.snapshots.v1"
    assert snapshots[-1].key == "u-1" and snapshots[-1].taken_at == at(bus.clock - 2).now
    assert history.user == replay(bus.history_of("u-1"))
    assert history.user is not None and history.user.version == 8


@pytest.mark.parametrize(("every", "due"), [(1, [1, 2, 3, 4]), (3, [1, 3, 6, 9]), (5, [1, 5, 10])])
def test_a_snapshot_is_due_at_registration_and_at_every_multiple(every: int, due: list[int]) -> None:
    config = UsersConfig(snapshot_every=every)
    assert [v for v in range(1, due[-1] + 1) if config.snapshot_due(v)] == due


def test_the_snapshot_follows_its_event_in_one_decision() -> None:
    bus = registered_bus("u-1", snapshot_every=2)
    events = bus.send(RecordLogin(user_id="u-1", logged_in_at=T0))
    assert [e.record_name for e in events] == ["UserLoggedIn", "UserSnapshot"]


def test_a_v1_snapshot_from_the_real_codec_still_loads() -> None:
    v1_value = {
        "user_id": "u-1",
        "version": 4,
        "username": "ann",
        "email": "a@x.io",
        "profile": {"tier": "gold"},
        "active": True,
        "taken_at": T0,
    }
    decoded = CODEC.decode(CODEC.encode("UserSnapshot", v1_value, version=1), expected={"UserSnapshot"})
    assert (decoded.writer_version, decoded.reader_version) == (1, 3)
    snapshot = from_record(decoded.name, decoded.value)
    assert snapshot == UserSnapshot(
        user_id="u-1", version=4, username="ann", email="a@x.io", profile={"tier": "gold"}, active=True, taken_at=T0
    )
    assert isinstance(snapshot, UserSnapshot)
    user = load(snapshot, [UserLoggedIn(user_id="u-1", version=5, logged_in_at=T0)])
    assert user == User(
        user_id="u-1",
        version=5,
        username="ann",
        email="a@x.io",
        profile={"tier": "gold"},
        login_count=1,
        last_login_at=T0,
        updated_at=T0,
    )
    latest = user_aggregate.take_snapshot(user, T0)
    round_trip = CODEC.decode(CODEC.encode("UserSnapshot", to_record(latest)))
    assert from_record(round_trip.name, round_trip.value) == latest


def test_the_state_survives_json_with_everything_in_it() -> None:
    bus = registered_bus("u-1", snapshot_every=2)
    bus.send(RecordLogin(user_id="u-1", logged_in_at=T0))
    bus.send(DeactivateUser(user_id="u-1", reason="x"))
    bus.send(ReactivateUser(user_id="u-1"))
    bus.send(RecordLogin(user_id="u-1", logged_in_at=T0))
    state = decide(bus.users["u-1"], ChangeEmail(user_id="u-1", new_email="b@x.io"), at(1, "c-9")).state
    assert state is not None and state.pending and state.snapshot and state.events and state.handled
    assert USERS.load(json.loads(json.dumps(state.to_json()))) == state
    owner = bus.emails["u-1@example.com"]
    assert EMAILS.load(json.loads(json.dumps(owner.to_json()))) == owner


# --- reactions ----------------------------------------------------------------------------------------------


def test_a_registration_starts_onboarding_welcomes_and_asks_for_default_preferences() -> None:
    event = UserRegistered(
        user_id="u-1", version=1, username="ann", email="a@x.io", profile={"pref.language": "nb"}, registered_at=T0
    )
    started, welcome, preferences = user_reactions.react(event, at(5))
    assert started == UserOnboardingStarted(user_id="u-1", started_at=at(5).now)
    assert isinstance(welcome, NotificationSent) and welcome.kind == "welcome"
    assert welcome.notification_id == "u-1:welcome" and welcome.user_id == "u-1" and "ann" in welcome.message
    assert welcome.email == "a@x.io", "the welcome names the address it is for"
    assert preferences == UpdateUserProfile(
        user_id="u-1", expected_version=1, changes={"pref.newsletter": "false", "pref.notifications": "email"}
    )
    assert [topic_for_record(r.record_name).name for r in (started, welcome, preferences)] == [
        "users.events.v1",
        "notifications.events.v1",
        "users.commands.v1",
    ]
    assert user_reactions.react(event, at(5)) == (started, welcome, preferences), "deterministic"
    everything_set = replace(event, profile=dict(UsersConfig().default_preferences))
    assert [r.record_name for r in user_reactions.react(everything_set, at(5))] == [
        "UserOnboardingStarted",
        "NotificationSent",
    ]


def test_the_default_preferences_apply_only_to_an_untouched_user() -> None:
    bus = registered_bus("u-1")
    registered = bus.history_of("u-1")[0]
    preferences = user_reactions.react(registered, at(1))[-1]
    assert isinstance(bus.send(preferences)[0], UserProfileUpdated)
    user = bus.user("u-1")
    assert user is not None and user.profile["pref.language"] == "en"
    late = registered_bus("u-2")
    late.send(UpdateUserProfile(user_id="u-2", changes={"pref.language": "de"}))
    registered = late.history_of("u-2")[0]
    assert "concurrency conflict" in rejection(late.send(user_reactions.react(registered, at(1))[-1])).reason


def test_an_e_mail_change_asks_to_confirm_the_new_address_and_profile_updates_cause_nothing() -> None:
    changed = UserEmailChanged(user_id="u-1", version=4, old_email="a@x.io", new_email="b@x.io", changed_at=T0)
    (notice,) = user_reactions.react(changed, at(1))
    assert isinstance(notice, NotificationSent) and notice.notification_id == "u-1:email_changed:4"
    assert "b@x.io" in notice.message and notice.kind == "email_changed"
    assert notice.email == "b@x.io", "the confirmation goes to the new address"
    assert user_reactions.react(UserProfileUpdated(user_id="u-1", version=2, changes={}, updated_at=T0), at(1)) == ()
    assert user_reactions.react(HISTORY[4], at(1)) == ()


def test_the_reaction_step_reacts_once_per_event() -> None:
    registered, changed = HISTORY[0], HISTORY[2]
    first = user_reactions.decide(None, registered, at(1))
    assert first.events == user_reactions.react(registered, at(1))
    assert user_reactions.decide(first.state, registered, at(7)) == first, "a redelivery re-sends the same records"
    later = user_reactions.decide(first.state, changed, at(2))
    assert later.events == user_reactions.react(changed, at(2))
    assert user_reactions.decide(later.state, registered, at(8)) == Decision(later.state), "an older event: nothing"
    assert user_reactions.decide(later.state, HISTORY[1], at(8)) == Decision(later.state)
    assert later.state is not None
    assert USER_REACTIONS.load(json.loads(json.dumps(later.state.to_json()))) == later.state


# --- wiring -------------------------------------------------------------------------------------------------


def test_the_user_services_consume_what_the_topics_key_like_their_state() -> None:
    assert [s.name for s in USER_SERVICES] == ["users", "user-emails", "user-reactions"]
    assert {topic_for_record(r).name for r in USERS.handles} == {"users.commands.v1"}
    assert {topic_for_record(r).name for r in EMAILS.handles} == {"users.emails.v1"}
    assert {topic_for_record(r).name for r in USER_REACTIONS.handles} == {"users.events.v1"}
    assert topic_for_record("ClaimEmail").key_field == "email"


def test_users_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        UsersConfig(snapshot_every=0)
    with pytest.raises(ValueError):
        UsersConfig(remembered_inputs=0)


def test_events_of_picks_the_aggregate_events_from_the_log() -> None:
    rejected = UserCommandRejected(user_id="u-1", command="X", reason="r", rejected_at=T0)
    started = UserOnboardingStarted(user_id="u-1", started_at=T0)
    log: list[Message] = [HISTORY[0], started, HISTORY[1], rejected, HISTORY[1], HISTORY[2], HISTORY[0]]
    assert user_aggregate.events_of(log) == tuple(HISTORY[:3]), "reactions, rejections and copies are skipped"
    assert user_aggregate.events_of(log, after=1) == tuple(HISTORY[1:3])
    snapshot = user_aggregate.take_snapshot(replay(HISTORY[:1]), T0)  # type: ignore[arg-type]
    assert load(snapshot, user_aggregate.events_of(log, after=snapshot.version)) == replay(HISTORY[:3])


def test_a_read_from_inside_the_log_resumes_only_if_it_shows_the_snapshot_s_own_event() -> None:
    snapshot = user_aggregate.take_snapshot(replay(HISTORY[:3]), T0)  # type: ignore[arg-type]
    started = UserOnboardingStarted(user_id="u-1", started_at=T0)
    replayed = [HISTORY[2], started, HISTORY[3], HISTORY[4], HISTORY[2], HISTORY[3], HISTORY[4], HISTORY[5]]
    tail = user_aggregate.tail_after(snapshot, replayed)
    assert tail == tuple(HISTORY[3:6]), "copies after a crash are taken once"
    assert load(snapshot, tail) == replay(HISTORY[:6])
    assert user_aggregate.tail_after(snapshot, HISTORY[2:3]) == (), "nothing after the snapshot yet"
    assert user_aggregate.tail_after(snapshot, HISTORY[3:]) is None, "began after the snapshot's event: unproven"
    assert user_aggregate.tail_after(snapshot, []) is None


def test_an_older_snapshot_without_updated_at_gets_it_from_the_next_event() -> None:
    user = replay(HISTORY[:4])
    assert user is not None and user.updated_at == T0 + timedelta(hours=1)
    v2 = replace(user_aggregate.take_snapshot(user, T0), updated_at=None)
    assert user_aggregate.from_snapshot(v2) == replace(user, updated_at=None)
    assert load(v2, HISTORY[4:5]) == replay(HISTORY[:5])
