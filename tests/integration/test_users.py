"""The user service end to end: commands on ``users.commands.v1`` through the real users worker (event-sourced
aggregate, e-mail claims, reactions), the view service's user views in Redis, and the order saga reading them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from common.admin import admin_client, apply_topics
from common.encoding import registry_codec
from common.settings import Settings
from consumers.toolkit import EventConsumer
from producers.toolkit import EventPublisher
from schemas.catalog import SchemaCatalog
from schemas.topics import ORDER_COMMANDS, USER_COMMANDS, USER_EVENTS, USER_SNAPSHOTS
from streams.domain import user_aggregate
from streams.domain.messages import UserSnapshot, from_record
from streams.views import read as views
from tests.seeding import uid
from tests.stack import wait_until
from tests.workers import Pipeline, run_cli, running_pipeline

SNAPSHOT_EVERY = 3


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(
        settings, tmp_path_factory.mktemp("users"), PIPELINE_USER_SNAPSHOT_EVERY=str(SNAPSHOT_EVERY)
    ) as running:
        yield running


def command(publisher: EventPublisher, record: str, user_id: str, **value: Any) -> None:
    publisher.publish(USER_COMMANDS, record, user_id, {"user_id": user_id, **value})
    publisher.flush()


def register(publisher: EventPublisher, user_id: str, email: str = "", **profile: str) -> None:
    command(publisher, "RegisterUser", user_id, username=user_id, email=email or f"{user_id}@example.com",
            profile=profile)  # fmt: skip


def wait_user(pipeline: Pipeline, store: redis.Redis, user_id: str, until: Any, what: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        pipeline.assert_alive()
        view = views.get_user(store, user_id)
        seen["view"] = view
        return view is not None and bool(until(view))

    wait_until(check, timeout=60, what=f"{user_id}: {what}", interval=0.2)
    return seen["view"]


def wait_rejection(pipeline: Pipeline, store: redis.Redis, user_id: str, command_name: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def check() -> bool:
        pipeline.assert_alive()
        for entry in views.user_rejections(store, user_id):
            if entry["command"] == command_name:
                found.update(entry)
                return True
        return False

    wait_until(check, timeout=60, what=f"{user_id}: {command_name} refused", interval=0.2)
    return found


def test_registration_is_projected_with_onboarding_and_default_preferences(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis
) -> None:
    user_id = uid("ada")
    register(publisher, user_id, email=f"{user_id}@Example.COM", lang="fr")
    view = wait_user(pipeline, store, user_id, lambda v: v["version"] >= 2, "registered, defaults applied")
    assert view["email"] == f"{user_id}@example.com", "addresses are normalised"
    assert view["active"] is True
    assert view["profile"]["lang"] == "fr" and view["profile"]["pref.language"] == "en"
    wait_until(lambda: views.get_user(store, user_id)["onboarding_started_at"] is not None, timeout=30,  # type: ignore[index]
               what="onboarding stamped")  # fmt: skip
    wait_until(lambda: any(n["kind"] == "welcome" for n in views.notifications(store, user_id)), timeout=30,
               what="welcome notice in the user's list")  # fmt: skip
    assert views.find_user_by_email(store, f"{user_id}@example.com")["user_id"] == user_id  # type: ignore[index]


def test_profile_update_with_right_and_wrong_expected_version(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis
) -> None:
    user_id = uid("bob")
    register(publisher, user_id, city="Oslo")
    view = wait_user(pipeline, store, user_id, lambda v: v["version"] >= 2, "registered")
    version = view["version"]

    command(publisher, "UpdateUserProfile", user_id, expected_version=version, changes={"city": "Rome"})
    view = wait_user(pipeline, store, user_id, lambda v: v["version"] == version + 1, "profile updated")
    assert view["profile"]["city"] == "Rome" and view["profile"]["pref.language"] == "en", "merged, not replaced"

    command(publisher, "UpdateUserProfile", user_id, expected_version=version, changes={"city": "Paris"})
    rejected = wait_rejection(pipeline, store, user_id, "UpdateUserProfile")
    assert "concurrency conflict" in rejected["reason"]
    assert (rejected["expected_version"], rejected["actual_version"]) == (version, version + 1)
    assert views.get_user(store, user_id)["profile"]["city"] == "Rome", "a refused command changes nothing"  # type: ignore[index]


def test_two_users_racing_for_one_address_one_wins(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis
) -> None:
    email = f"{uid('shared')}@example.com"
    first, second = uid("first"), uid("second")
    register(publisher, first, email=email)
    register(publisher, second, email=email)

    def decided() -> bool:
        pipeline.assert_alive()
        registered = [u for u in (first, second) if views.get_user(store, u) is not None]
        refused = [u for u in (first, second) if views.user_rejections(store, u)]
        return len(registered) + len(refused) == 2

    wait_until(decided, timeout=60, what="both registrations decided")
    winners = [u for u in (first, second) if views.get_user(store, u) is not None]
    assert len(winners) == 1, winners
    loser = second if winners == [first] else first
    assert views.user_rejections(store, loser)[0]["reason"] == "e-mail already in use"
    assert views.find_user_by_email(store, email)["user_id"] == winners[0]  # type: ignore[index]


def test_a_deactivated_user_s_orders_are_rejected(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis
) -> None:
    user_id = uid("carol")
    register(publisher, user_id)
    wait_user(pipeline, store, user_id, lambda v: v["version"] >= 2, "registered")
    command(publisher, "DeactivateUser", user_id, expected_version=None, reason="asked to leave")
    seen = wait_user(pipeline, store, user_id, lambda v: v["active"] is False, "deactivated")

    # the order names the version its sender saw, so admission decides it only once it has seen that version
    # too (user events and orders travel on different topics)
    order_id = uid("o")
    publisher.publish(ORDER_COMMANDS, "PlaceOrder", user_id,
                      {"order_id": order_id, "user_id": user_id,
                       "lines": [{"sku": "sku-x", "quantity": 1, "unit_price_cents": 100}],
                       "payment": {"method": "card", "token": "tok_ok"}, "idempotency_key": order_id,
                       "requested_at": int(time.time() * 1000), "user_version": seen["version"]})  # fmt: skip
    publisher.flush()
    wait_until(lambda: (views.get_order(store, order_id) or {}).get("status") == "REJECTED", timeout=60,
               what="order rejected")  # fmt: skip
    assert views.get_order(store, order_id)["cancel_reason"] == "user_inactive"  # type: ignore[index]


def test_search_and_stats(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, cli_env: dict[str, str]
) -> None:
    prefix = uid("srch")
    active, inactive, wide = f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"
    register(publisher, active, city="Zürich")
    register(publisher, inactive, city="zürich")
    # a username that goes on past U+00FF after the prefix (Redis compares bytes: C3 BF would stop short of it)
    command(publisher, "RegisterUser", wide, username=f"{prefix}-中文", email=f"{wide}@example.com",
            profile={"city": "Zürich-Nord"})  # fmt: skip
    wait_user(pipeline, store, inactive, lambda v: v["version"] >= 2, "registered")
    wait_user(pipeline, store, wide, lambda v: v["version"] >= 2, "registered")
    command(publisher, "DeactivateUser", inactive, reason="test")
    for _ in range(2):
        command(publisher, "RecordLogin", active, logged_in_at=int(time.time() * 1000))
    wait_user(pipeline, store, inactive, lambda v: v["active"] is False, "deactivated")
    wait_user(pipeline, store, active, lambda v: v["login_count"] == 2, "two logins")

    everyone = [active, inactive, wide]
    assert [u["user_id"] for u in views.search_users(store, username_prefix=prefix.upper())] == everyone
    assert [u["user_id"] for u in views.search_users(store, username_prefix=f"{prefix}-中")] == [wide]
    assert [u["user_id"] for u in views.search_users(store, username_prefix=prefix, active=True)] == [active, wide]
    in_zurich = views.search_users(store, username_prefix=prefix, profile=("city", "ZÜRICH"))
    assert [u["user_id"] for u in in_zurich] == [active, inactive], "the whole value, in any case"
    command(publisher, "UpdateUserProfile", active, changes={"city": "Basel"})
    wait_user(pipeline, store, active, lambda v: v["profile"]["city"] == "Basel", "moved")
    moved = views.search_users(store, username_prefix=prefix, profile=("city", "zürich"))
    assert [u["user_id"] for u in moved] == [inactive], "the index follows the profile"
    registered_at = views.get_user(store, inactive)["registered_at"]  # type: ignore[index]
    after = views.search_users(store, username_prefix=prefix, registered_after=registered_at - 1)
    assert inactive in [u["user_id"] for u in after]
    before = views.search_users(store, username_prefix=prefix, registered_before=registered_at)
    assert inactive not in [u["user_id"] for u in before]
    stats = views.user_stats(store, active)
    assert stats is not None and stats["login_count"] == 2 and stats["orders_placed"] == 0

    shown = run_cli(cli_env, "user", active)
    assert shown.returncode == 0, shown.stderr
    assert f"user {active}" in shown.stdout and "logins      2" in shown.stdout and "active" in shown.stdout
    missing = run_cli(cli_env, "user", f"{prefix}-nobody")
    assert missing.returncode != 0 and "no user" in missing.stderr


def test_snapshots_resume_to_the_same_user_as_the_full_history(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, settings: Settings
) -> None:
    user_id = uid("dave")
    register(publisher, user_id)
    wait_user(pipeline, store, user_id, lambda v: v["version"] >= 2, "registered")
    for n in range(5):
        command(publisher, "UpdateUserProfile", user_id, changes={"n": str(n)})
    command(publisher, "ChangeEmail", user_id, new_email=f"{user_id}@new.example.com")
    view = wait_user(pipeline, store, user_id, lambda v: v["email"].endswith("@new.example.com"), "e-mail changed")
    assert view["version"] >= 2 * SNAPSHOT_EVERY

    codec = registry_codec(SchemaCatalog.load(), settings)
    with EventConsumer.reader(settings) as consumer:
        log = [m for m in consumer.read_log([USER_EVENTS.name, USER_SNAPSHOTS.name]) if m.key == user_id]
    decoded = [(m.topic, codec.decode(m.value or b"")) for m in log]
    history = user_aggregate.events_of(from_record(d.name, d.value) for t, d in decoded if t == USER_EVENTS.name)
    snapshots = [from_record(d.name, d.value) for t, d in decoded if t == USER_SNAPSHOTS.name]
    assert snapshots, "a snapshot every few events"
    newest = snapshots[-1]
    assert isinstance(newest, UserSnapshot) and newest.version % SNAPSHOT_EVERY == 0
    resumed = user_aggregate.load(newest, [e for e in history if e.version > newest.version])
    assert resumed == user_aggregate.replay(history)
    assert resumed is not None and resumed.version == view["version"] and resumed.email == view["email"]
