"""The user service under random commands and chaotic delivery: its invariants hold after every step.

A small in-memory bus, like the order saga's simulation, keeps one FIFO queue per (consuming service, topic,
key) and interleaves them as hypothesis chooses. The three user steps (users, user-emails, user-reactions)
run on it with their states stored as JSON between steps. A few users register (racing for a small pool of
addresses), then random commands follow, valid and invalid, in order per user, some twice under a new id (a
client retry). The edge "crashes" at random after writing a state but before sending: that input is
delivered again, before any other input of that step and key (an edge that let an input of its other topic
overtake it could send a user's version 2 before version 1); and a queue sometimes rewinds by a few inputs
whose outputs already went out.

Checked on every step: a command is answered by exactly one outcome, a rejected command changes nothing but
the memory of inputs, the state moves exactly by the events emitted, every user's versions are consecutive
(a re-emitted event is the very same one), and no two users hold one address. At quiescence: no claim is
left in flight, the snapshot plus its tail equals replaying the whole history, the snapshots came at registration
and every N events, and the e-mail step's owners are exactly the users' addresses.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from random import Random
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.topics import topic_for_record
from streams.domain import user_aggregate, users
from streams.domain.core import Decision, StepContext, UsersConfig
from streams.domain.messages import (
    ChangeEmail,
    ClaimEmail,
    DeactivateUser,
    EmailClaimed,
    EmailClaimRefused,
    Message,
    ReactivateUser,
    RecordLogin,
    RegisterUser,
    ReleaseEmail,
    UpdateUserProfile,
    UserCommandRejected,
    UserSnapshot,
)
from streams.domain.saga import EMAILS, USER_SERVICES, USERS, Service
from streams.domain.user_aggregate import UserEvent, from_snapshot, replay
from streams.domain.users import UserHistory

pytestmark = pytest.mark.unit

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
USER_IDS = ("u-1", "u-2", "u-3")
ADDRESSES = ("a@x.io", " A@X.io", "b@x.io", "c@x.io", "not-an-address")
MAX_STEPS = 5_000
REWIND = 3
"""A redelivery rewinds a queue by up to this many inputs."""
EVENT_TYPES = frozenset(t.__name__ for t in get_args(UserEvent))

# --- commands ---------------------------------------------------------------------------------------------------

VALID_ADDRESSES = ADDRESSES[:4]
versions = st.one_of(st.none(), st.none(), st.integers(1, 5))
changes = st.dictionaries(
    st.sampled_from(("tier", "city", "pref.language", "")), st.sampled_from(("x", "y")), max_size=2
)
registrations = st.lists(
    st.builds(
        RegisterUser,
        user_id=st.sampled_from(USER_IDS),
        username=st.just("ann"),
        email=st.sampled_from(VALID_ADDRESSES),
    ),
    min_size=1,
    max_size=4,
)


def commands(*ids: str) -> st.SearchStrategy[Message]:
    """Any user command for one of ``ids``, valid or not."""
    user_ids = st.sampled_from(ids)
    return st.one_of(
        st.builds(
            RegisterUser,
            user_id=user_ids,
            username=st.sampled_from(("ann", "bob", " ")),
            email=st.sampled_from(ADDRESSES),
            profile=changes,
        ),
        st.builds(UpdateUserProfile, user_id=user_ids, expected_version=versions, changes=changes),
        st.builds(UpdateUserProfile, user_id=user_ids, changes=st.just({"tier": "gold"})),
        st.builds(ChangeEmail, user_id=user_ids, expected_version=versions, new_email=st.sampled_from(ADDRESSES)),
        st.builds(ChangeEmail, user_id=user_ids, new_email=st.sampled_from(VALID_ADDRESSES)),
        st.builds(DeactivateUser, user_id=user_ids, expected_version=versions, reason=st.sampled_from(("fraud", ""))),
        st.builds(ReactivateUser, user_id=user_ids, expected_version=versions),
        st.builds(RecordLogin, user_id=user_ids, logged_in_at=st.sampled_from((T0, T0 + timedelta(hours=1)))),
        st.builds(RecordLogin, user_id=user_ids, logged_in_at=st.just(T0)),
    )


@dataclass(frozen=True)
class Chaos:
    seed: int
    crash_rate: float
    redeliver_rate: float
    retry_rate: float


chaos = st.builds(
    Chaos,
    seed=st.integers(0, 2**32),
    crash_rate=st.sampled_from((0.0, 0.1, 0.3)),
    redeliver_rate=st.sampled_from((0.0, 0.1, 0.3)),
    retry_rate=st.sampled_from((0.0, 0.2)),
)


# --- the world --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    message: Message
    message_id: str


def _strip(state: UserHistory | None, key: str) -> UserHistory:
    """A user's state without its memory of inputs (what a rejected command may change)."""
    return replace(state or UserHistory(user_id=key), handled=())


class World:
    """The user steps on an in-memory bus, with the invariants checked as it goes."""

    def __init__(self, config: UsersConfig, chaos: Chaos) -> None:
        self.config = config
        self.chaos = chaos
        self.rng = Random(chaos.seed)
        self.services: dict[str, Service[Any]] = {s.name: s for s in USER_SERVICES}
        self.queues: dict[tuple[str, str, str], deque[Delivery]] = defaultdict(deque)
        self.tables: dict[str, dict[str, Any]] = {s.name: {} for s in USER_SERVICES}
        """Service → key → its state, as loaded back from the JSON the edge would store."""
        self.histories: dict[str, list[UserEvent]] = defaultdict(list)
        self.snapshots: dict[str, list[UserSnapshot]] = defaultdict(list)
        self.clock = 0
        self.sent = 0
        self.published: Counter[str] = Counter()
        self.delivered: dict[tuple[str, str, str], deque[Delivery]] = defaultdict(lambda: deque(maxlen=REWIND))
        """The last inputs each queue delivered, for a rewind."""
        self.crashed: dict[tuple[str, str], tuple[str, str, str]] = {}
        """(service, key) → the queue whose head crashed; it goes first, before other topics' inputs."""

    def publish(self, message: Message, message_id: str) -> None:
        """Send ``message`` to every service that handles it; record the user's history as it is sent."""
        self.published[message.record_name] += 1
        if message.record_name in EVENT_TYPES:
            self._record_event(message)  # type: ignore[arg-type]
        if isinstance(message, UserSnapshot):
            if message not in self.snapshots[message.user_id]:
                self.snapshots[message.user_id].append(message)
        topic = topic_for_record(message.record_name).name
        for service in USER_SERVICES:
            if message.record_name in service.handles:
                self.queues[(service.name, topic, message.key)].append(Delivery(message, message_id))

    def send_command(self, command: Message) -> None:
        self.sent += 1
        self.publish(command, f"cmd-{self.sent}")
        if self.rng.random() < self.chaos.retry_rate:
            self.sent += 1
            self.publish(command, f"cmd-{self.sent}")  # the client retried: the same command, a new id

    def run(self) -> None:
        for _ in range(MAX_STEPS):
            ready = sorted(k for k, q in self.queues.items() if q and self.crashed.get((k[0], k[2]), k) == k)
            if not ready:
                return
            self.step(self.rng.choice(ready))
        raise AssertionError("no quiescence")

    def load(self, service: Service[Any], key: str) -> Any:
        return self.tables[service.name].get(key)

    def step(self, queue: tuple[str, str, str]) -> None:
        delivery = self.queues[queue][0]
        service = self.services[queue[0]]
        key = delivery.message.key
        state = self.load(service, key)
        self.clock += 1
        ctx = StepContext(
            now=T0 + timedelta(milliseconds=self.clock), message_id=delivery.message_id, users=self.config
        )
        decision = service.decide(state, delivery.message, ctx)
        if service is USERS:
            self.check_user_step(state, delivery, decision)
        if decision.state is not None:
            stored = service.load(json.loads(json.dumps(decision.state.to_json())))
            assert stored == decision.state, "the state survives its JSON"
            self.tables[service.name][key] = stored
        if service is USERS:
            self.check_one_owner_per_address()
        if self.rng.random() < self.chaos.crash_rate:
            self.crashed[(service.name, key)] = queue
            return  # crashed after writing the state, before sending: the input comes again
        self.crashed.pop((service.name, key), None)
        self.queues[queue].popleft()
        self.delivered[queue].append(delivery)
        for index, event in enumerate(decision.events):
            self.publish(event, f"{delivery.message_id}/{index}")  # the edge derives ids from the cause
        if self.rng.random() < self.chaos.redeliver_rate:  # the consumer rewinds: the last few inputs come again
            done = self.delivered[queue]
            for _ in range(self.rng.randint(1, len(done))):
                self.queues[queue].appendleft(done.pop())

    # --- invariants on every step -------------------------------------------------------------------------------

    def _record_event(self, event: UserEvent) -> None:
        """Versions are consecutive per user; an event sent again is the very same event."""
        history = self.histories[event.user_id]
        if event.version <= len(history):
            assert history[event.version - 1] == event, f"two different events at version {event.version}"
        else:
            assert event.version == len(history) + 1, f"version gap: {len(history)} then {event.version}"
            history.append(event)

    def check_user_step(self, state: UserHistory | None, delivery: Delivery, decision: Decision[Any]) -> None:
        key = delivery.message.key
        new: UserHistory | None = decision.state
        if state is not None and any(h.message_id == delivery.message_id for h in state.handled):
            assert decision.state == state, "a redelivered input changes nothing"
            return
        events = decision.events
        emitted: list[UserEvent] = [e for e in events if e.record_name in EVENT_TYPES]  # type: ignore[misc]
        before = state.user if state is not None else None
        after = new.user if new is not None else None
        folded = before
        for event in emitted:
            folded = user_aggregate.apply(folded, event)
        assert after == folded, "the state moves exactly by the events it emits"
        for snapshot in (e for e in events if isinstance(e, UserSnapshot)):
            assert snapshot.version in snapshot_versions(snapshot.version, self.config.snapshot_every)
            assert from_snapshot(snapshot) == after
        names = [e.record_name for e in events]
        if delivery.message.record_name in users.COMMANDS:
            assert len(names) in (1, 2), names
            assert names[0] in EVENT_TYPES | {"UserCommandRejected", "ClaimEmail"}, names
            assert names[1:] in ([], ["UserSnapshot"]), names
            if names == ["UserCommandRejected"]:
                assert _strip(new, key) == _strip(state, key), "a rejected command changes nothing"
        elif not events:
            assert new == state, "a stale claim answer is ignored"
        else:
            assert state is not None and state.pending is not None and new is not None and new.pending is None
            if isinstance(events[0], UserCommandRejected):
                assert after == before, "a refused claim changes no aggregate"
        assert all(isinstance(e, Message) for e in events)

    def check_one_owner_per_address(self) -> None:
        holders: dict[str, str] = {}
        for user_id in self.tables[USERS.name]:
            user = self.load(USERS, user_id).user
            if user is not None:
                assert user.email not in holders, f"{user.email} held by {holders.get(user.email)} and {user_id}"
                holders[user.email] = user_id

    # --- invariants at quiescence -------------------------------------------------------------------------------

    def check_quiescent(self) -> None:
        every = self.config.snapshot_every
        owners = {
            address: owner.owner
            for address in self.tables[EMAILS.name]
            if (owner := self.load(EMAILS, address)).owner is not None
        }
        addresses: dict[str, str] = {}
        for user_id in self.tables[USERS.name]:
            state: UserHistory = self.load(USERS, user_id)
            history = self.histories[user_id]
            assert state.pending is None, "no claim is left in flight"
            assert user_aggregate.load(state.snapshot, state.events) == replay(history), (
                "snapshot + tail == full replay"
            )
            expected = snapshot_versions(len(history), every)
            assert len(state.events) == len(history) - (expected[-1] if expected else 0)
            assert [s.version for s in self.snapshots[user_id]] == expected
            if state.snapshot is not None:
                assert state.snapshot == self.snapshots[user_id][-1]
            if state.user is not None:
                addresses[state.user.email] = user_id
        assert owners == addresses, "the e-mail step's owners are exactly the users' addresses"
        assert not self.histories.keys() - self.tables[USERS.name].keys()


def snapshot_versions(up_to: int, every: int) -> list[int]:
    """The versions a snapshot follows, up to ``up_to``: the registration's, and every multiple of ``every``."""
    return [v for v in range(1, up_to + 1) if v == 1 or v % every == 0]


# --- the properties ---------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=registrations,
    sent=st.lists(commands(*USER_IDS), min_size=4, max_size=40),
    chaos=chaos,
    snapshot_every=st.integers(1, 4),
    settle=st.booleans(),
)
def test_user_invariants_hold_under_random_commands_and_chaotic_delivery(
    first: list[Message], sent: list[Message], chaos: Chaos, snapshot_every: int, settle: bool
) -> None:
    """``settle``: the registrations finish before the other commands come (else they race them too)."""
    world = World(UsersConfig(snapshot_every=snapshot_every), chaos)
    for command in first:
        world.send_command(command)
    if settle:
        world.run()
    for command in sent:
        world.send_command(command)
    world.run()
    world.check_quiescent()


def test_the_world_exercises_every_path() -> None:
    """A fixed busy scenario: registrations race, addresses change hands, snapshots are taken, retries happen."""
    world = World(UsersConfig(snapshot_every=2), Chaos(seed=7, crash_rate=0.2, redeliver_rate=0.2, retry_rate=0.2))
    phases: list[list[Message]] = [
        [
            RegisterUser(user_id="u-1", username="ann", email="a@x.io"),
            RegisterUser(user_id="u-3", username="cid", email="c@x.io"),
        ],
        [
            RegisterUser(user_id="u-2", username="bob", email=" A@X.io"),  # taken: refused
            RecordLogin(user_id="u-3", logged_in_at=T0),
            DeactivateUser(user_id="u-3", reason="fraud"),
        ],
        [ChangeEmail(user_id="u-1", new_email="b@x.io")],  # frees a@x.io
        [
            RegisterUser(user_id="u-2", username="bob", email="a@x.io"),
            ReactivateUser(user_id="u-3", expected_version=0),  # a conflict
            ChangeEmail(user_id="u-3", new_email="a@x.io"),  # inactive: refused
        ],
    ]
    for phase in phases:
        for command in phase:
            world.send_command(command)
        world.run()
    world.check_quiescent()
    records = {e.record_name for history in world.histories.values() for e in history}
    assert {"UserRegistered", "UserEmailChanged", "UserLoggedIn", "UserDeactivated", "UserProfileUpdated"} <= records
    assert world.snapshots, "snapshots were taken"
    assert {"ClaimEmail", "EmailClaimed", "EmailClaimRefused", "ReleaseEmail", "UserCommandRejected"} <= set(
        world.published
    )
    assert {"UserOnboardingStarted", "NotificationSent"} <= set(world.published), "reactions ran"


@settings(max_examples=80, deadline=None)
@given(sent=st.lists(commands("u-1"), max_size=25), snapshot_every=st.integers(1, 6))
def test_for_one_user_snapshot_plus_tail_equals_replay_after_every_step(
    sent: list[Message], snapshot_every: int
) -> None:
    """Claims answered at once, one user: after every command the stored state loads to the full replay."""
    config = UsersConfig(snapshot_every=snapshot_every)
    state: UserHistory | None = None
    owners: dict[str, str] = {}
    history: list[UserEvent] = []
    for n, command in enumerate(sent):
        inbox: deque[Message] = deque([command])
        while inbox:
            message = inbox.popleft()
            ctx = StepContext(now=T0 + timedelta(seconds=n), message_id=f"{n}:{message.record_name}", users=config)
            if isinstance(message, ClaimEmail):
                owner = owners.setdefault(message.email, message.user_id)
                inbox.append(
                    EmailClaimed(user_id="u-1", email=message.email, request_id=message.request_id, claimed_at=T0)
                    if owner == message.user_id
                    else EmailClaimRefused(
                        user_id="u-1", email=message.email, request_id=message.request_id, reason="x", refused_at=T0
                    )
                )
                continue
            if isinstance(message, ReleaseEmail):
                owners.pop(message.email, None)
                continue
            decision = users.decide(state, message, ctx)
            state = decision.state
            history.extend(e for e in decision.events if e.record_name in EVENT_TYPES)  # type: ignore[misc]
            inbox.extend(decision.events)
            if state is not None:
                assert user_aggregate.load(state.snapshot, state.events) == replay(history)
                assert len(state.events) < snapshot_every
    assert [e.version for e in history] == list(range(1, len(history) + 1))
