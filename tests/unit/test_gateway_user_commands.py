"""The user command routes (e-mail, deactivate, reactivate, logins), search and statistics, and command status,
over real HTTP on loopback with the in-memory stand-ins (``tests/gateway_support.py``).

The views the reads see are written by the real folds (:func:`streams.views.tables.fold`) into the stand-in Redis;
``tests/integration/test_gateway.py`` runs the same routes against the real stack.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.receipts import KEY_PREFIX
from streams.views.events import Event, Op
from streams.views.keys import MIRRORED_KEY
from streams.views.tables import MIRRORED_FIELDS, fold
from tests.gateway_support import Client, DictRedis, Env

pytestmark = pytest.mark.unit

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class Views(Env):
    """The stand-ins, with the view tables folded by the real folds and mirrored into the stand-in Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], Any] = {}
        self.redis.hashes[MIRRORED_KEY] = dict.fromkeys(MIRRORED_FIELDS, "1")  # the views are whole

    def feed(self, event: Event) -> None:
        for change in fold(event, lambda table, key: self.entries.get((table, key))):
            self.entries[(change.table, change.key)] = change.after
            apply(self.redis, change.ops)


@pytest.fixture
def env() -> Views:
    return Views()


def apply(redis: DictRedis, ops: tuple[Op, ...]) -> None:
    """What the view service's MULTI/EXEC does with the ops the reads here look at."""
    for op in ops:
        if op.command == "SET":
            redis.strings[op.key] = str(op.args[0])
        elif op.command == "DEL":
            redis.strings.pop(op.key, None)
            redis.lists.pop(op.key, None)
        elif op.command == "RPUSH":
            redis.lists.setdefault(op.key, []).extend(str(v) for v in op.args)
        elif op.command == "HSET":
            fields = redis.hashes.setdefault(op.key, {})
            fields.update({str(k): str(v) for k, v in zip(op.args[::2], op.args[1::2], strict=True)})
        elif op.command == "ZADD":
            zset = redis.zsets.setdefault(op.key, {})
            for score, member in zip(op.args[::2], op.args[1::2], strict=True):
                zset[str(member)] = float(score)
        elif op.command == "ZREM":
            for member in op.args:
                redis.zsets.get(op.key, {}).pop(str(member), None)


def project_user(env: Views, user_id: str, username: str, at: int, **profile: str) -> None:
    registered = Event(
        record="UserRegistered",
        value={"user_id": user_id, "version": 1, "username": username, "email": f"{user_id}@x.io", "profile": profile},
        event_id=f"reg-{user_id}",
        at=at,
    )
    env.feed(registered)


def project_outcome(env: Views, record: str, command_id: str, **value: Any) -> None:
    event = Event(record=record, value={"user_id": "u-1", **value}, event_id=f"e-{command_id}", at=T0 + 60_000,
                  causation_id=command_id)  # fmt: skip
    env.feed(event)


def headers(env: Views, subject: str = "u-1", **extra: str) -> dict[str, str]:
    return {**env.auth(subject), **extra}


# --- the commands -------------------------------------------------------------------------------------------

COMMANDS = [
    ("email", {"email": "new@example.com"}, "ChangeEmail", {"expected_version": None, "new_email": "new@example.com"}),
    ("deactivate", {"reason": "moving away"}, "DeactivateUser", {"expected_version": None, "reason": "moving away"}),
    ("reactivate", {}, "ReactivateUser", {"expected_version": None}),
    ("logins", {}, "RecordLogin", {}),
]


@pytest.mark.parametrize(("path", "body", "record", "value"), COMMANDS, ids=[c[2] for c in COMMANDS])
def test_each_command_route_publishes_its_command_with_a_receipt(
    env: Views, path: str, body: dict[str, Any], record: str, value: dict[str, Any]
) -> None:
    async def scenario(client: Client) -> None:
        response = await client.post(f"/api/users/u-1/{path}", json=body, headers=headers(env))
        assert response.status == 202, await response.text()
        answer = await response.json()
        command_id = answer["command_id"]
        assert answer == {"user_id": "u-1", "command_id": command_id, "status": "accepted"}
        assert response.headers["Location"] == f"/api/commands/{command_id}"
        [sent] = env.publisher.sent
        assert (sent.topic, sent.record, sent.key) == ("users.commands.v1", record, "u-1")
        assert sent.envelope.event_id == command_id and sent.envelope.correlation_id == "u-1"
        published = {k: v for k, v in sent.value.items() if k != "logged_in_at"}
        assert published == {"user_id": "u-1", **value}
        receipt = json.loads(env.redis.strings[f"{KEY_PREFIX}{command_id}"])
        assert (receipt["command"], receipt["subject"], receipt["user_id"]) == (record, "u-1", "u-1")

        theirs = await client.post(f"/api/users/u-1/{path}", json=body, headers=headers(env, "u-2"))
        assert theirs.status == 403 and await theirs.json() == {"error": "You may only access your own user"}
        assert len(env.publisher.sent) == 1

    env.run(scenario)


def test_a_login_is_recorded_at_the_gateway_s_time_and_needs_no_body(env: Views) -> None:
    async def scenario(client: Client) -> None:
        bare = await client.post("/api/users/u-1/logins", headers=headers(env))
        assert bare.status == 202
        empty_json = await client.post("/api/users/u-1/reactivate", data=b"", headers=headers(env))
        assert empty_json.status == 202
        logged_in_at = env.publisher.sent[0].value["logged_in_at"]
        assert isinstance(logged_in_at, int) and logged_in_at > T0

    env.run(scenario)


def test_if_match_becomes_the_expected_version_the_service_checks(env: Views) -> None:
    async def scenario(client: Client) -> None:
        for value in ('"3"', "3", 'W/"3"'):
            answer = await client.post("/api/users/u-1/deactivate", json={"reason": "r"},
                                       headers=headers(env, **{"If-Match": value}))  # fmt: skip
            assert answer.status == 202
        assert {s.value["expected_version"] for s in env.publisher.sent} == {3}
        garbled = await client.post("/api/users/u-1/email", json={"email": "a@b.io"},
                                    headers=headers(env, **{"If-Match": "soon"}))  # fmt: skip
        assert garbled.status == 400 and "If-Match" in (await garbled.json())["error"]
        assert len(env.publisher.sent) == 3, "no view read, no 409 here: the service decides, the status tells"

    env.run(scenario)


@pytest.mark.parametrize(
    ("path", "raw", "content_type", "status", "says"),
    [
        ("email", b"{nope", "application/json", 400, "Malformed JSON"),
        ("email", b'{"email": "a@b.io"}', "text/plain", 415, "Request body must be JSON"),
        ("email", b'{"email": "nope"}', "application/json", 422, "Invalid request body: email"),
        ("email", b'{"email": "a\\u0007@b.io"}', "application/json", 422, "control character (U+0007)"),
        ("deactivate", b'{"reason": ""}', "application/json", 422, "Invalid request body: reason"),
        ("deactivate", b'{"reason": "bye\\u0085"}', "application/json", 422, "control character (U+0085)"),
        ("deactivate", b"{}", "application/json", 422, "reason"),
        ("reactivate", b'{"force": true}', "application/json", 422, "force"),
        ("logins", b"[]", "application/json", 400, "must be a JSON object"),
        ("logins", b"{}", "text/plain", 415, "Request body must be JSON"),
    ],
)
def test_bad_bodies_get_clear_4xx_answers_and_publish_nothing(
    env: Views, path: str, raw: bytes, content_type: str, status: int, says: str
) -> None:
    async def scenario(client: Client) -> None:
        response = await client.post(f"/api/users/u-1/{path}", data=raw,
                                     headers=headers(env, **{"Content-Type": content_type}))  # fmt: skip
        body = await response.json()
        assert response.status == status and says in json.dumps(body), body
        assert env.publisher.sent == [] and env.redis.keys_matching(f"{KEY_PREFIX}*") == []

    env.run(scenario)


def test_an_idempotency_key_covers_the_if_match_too(env: Views) -> None:
    async def scenario(client: Client) -> None:
        keyed = headers(env, **{"Idempotency-Key": "bye-1", "If-Match": '"2"'})
        first = await client.post("/api/users/u-1/deactivate", json={"reason": "r"}, headers=keyed)
        again = await client.post("/api/users/u-1/deactivate", json={"reason": "r"}, headers=keyed)
        assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert await again.json() == await first.json() and again.headers["Location"] == first.headers["Location"]
        other = await client.post("/api/users/u-1/deactivate", json={"reason": "r"},
                                  headers={**keyed, "If-Match": '"3"'})  # fmt: skip
        assert other.status == 422, "another expected version under the same key is another request"
        assert len(env.publisher.sent) == 1

    env.run(scenario)


def test_a_failed_publish_leaves_no_receipt_and_redis_down_publishes_nothing(env: Views) -> None:
    async def scenario(client: Client) -> None:
        env.publisher.broken = True
        failed = await client.post("/api/users/u-1/logins", headers=headers(env))
        assert failed.status == 503 and env.redis.keys_matching(f"{KEY_PREFIX}*") == []
        env.publisher.broken = False
        env.redis.down = True
        refused = await client.post("/api/users/u-1/logins", headers=headers(env))
        assert refused.status == 503 and env.publisher.sent == []

    env.run(scenario)


# --- command status -----------------------------------------------------------------------------------------


def test_a_command_s_status_goes_from_accepted_to_applied(env: Views) -> None:
    async def scenario(client: Client) -> None:
        accepted = await client.post("/api/users/u-1/logins", headers=headers(env))
        location = accepted.headers["Location"]
        command_id = (await accepted.json())["command_id"]
        status = await (await client.get(location, headers=headers(env))).json()
        assert status == {
            "command_id": command_id,
            "command": "RecordLogin",
            "status": "accepted",
            "accepted_at": status["accepted_at"],
            "resource": "/api/users/u-1",
            "user_id": "u-1",
            "order_id": None,
            "event": None,
            "event_id": None,
            "decided_at": None,
            "version": None,
            "reason": None,
            "expected_version": None,
            "actual_version": None,
            "stale": False,
        }
        project_user(env, "u-1", "ada", T0)
        project_outcome(env, "UserLoggedIn", command_id, version=2, logged_in_at=T0 + 60_000)
        applied = await (await client.get(location, headers=headers(env))).json()
        assert (applied["status"], applied["event"], applied["version"], applied["decided_at"]) == (
            "applied",
            "UserLoggedIn",
            2,
            T0 + 60_000,
        )
        del env.redis.hashes[MIRRORED_KEY][MIRRORED_FIELDS[0]]  # Redis lost a partition's views: re-mirroring
        assert (await (await client.get(location, headers=headers(env))).json())["stale"] is True

    env.run(scenario)


def test_a_refused_command_s_status_gives_the_reason_and_a_conflict_s_versions(env: Views) -> None:
    async def scenario(client: Client) -> None:
        accepted = await client.post("/api/users/u-1/deactivate", json={"reason": "r"},
                                     headers=headers(env, **{"If-Match": '"1"'}))  # fmt: skip
        command_id = (await accepted.json())["command_id"]
        project_outcome(env, "UserCommandRejected", command_id, command="DeactivateUser",
                        reason="concurrency conflict: expected version 1, actual version 2", expected_version=1,
                        actual_version=2, rejected_at=T0)  # fmt: skip
        refused = await (await client.get(f"/api/commands/{command_id}", headers=headers(env))).json()
        assert (refused["status"], refused["reason"], refused["expected_version"], refused["actual_version"]) == (
            "refused",
            "concurrency conflict: expected version 1, actual version 2",
            1,
            2,
        )
        assert refused["event"] == "UserCommandRejected"

    env.run(scenario)


def test_only_the_sender_may_read_a_command_s_status(env: Views) -> None:
    async def scenario(client: Client) -> None:
        accepted = await client.post("/api/users/u-1/logins", headers=headers(env))
        location = accepted.headers["Location"]
        command_id = location.rsplit("/", 1)[1]
        for subject, path in (("u-2", location), ("u-1", "/api/commands/no-such-command")):
            answer = await client.get(path, headers=headers(env, subject))
            assert answer.status == 404
            assert await answer.json() == {"error": f"Command {path.rsplit('/', 1)[1]} not found"}
        assert (await client.get(location)).status == 401
        assert command_id

    env.run(scenario)


def test_a_place_order_s_status_follows_its_order_view(env: Views) -> None:
    line = {"sku": "SKU-1", "quantity": 1, "unit_price_cents": 5}
    order = {"lines": [line], "payment": {"method": "card", "token": "tok_ok"}}

    async def scenario(client: Client) -> None:
        accepted = await client.post("/api/orders", json=order, headers=headers(env))
        answer = await accepted.json()
        location, order_id = accepted.headers["Location"], answer["order_id"]
        first = await (await client.get(location, headers=headers(env))).json()
        assert (first["status"], first["command"], first["order_id"]) == ("accepted", "PlaceOrder", order_id)
        assert first["resource"] == f"/api/orders/{order_id}"
        rejected = Event(record="OrderRejected", value={"order_id": order_id, "user_id": "u-1",
                         "reason": "user is deactivated", "rejected_at": T0}, event_id="rej-1", at=T0)  # fmt: skip
        env.feed(rejected)
        refused = await (await client.get(location, headers=headers(env))).json()
        assert (refused["status"], refused["reason"], refused["event"]) == (
            "refused",
            "user is deactivated",
            "OrderRejected",
        )

    env.run(scenario)


# --- search and statistics ----------------------------------------------------------------------------------


def seed_users(env: Views) -> None:
    project_user(env, "u-1", "Ada", T0, city="London")
    project_user(env, "u-2", "adam", T0 + 10, city="london", lang="en")
    project_user(env, "u-3", "ada中文", T0 + 20, city="Paris")
    project_user(env, "u-4", "bob", T0 + 30, city="London")
    view = json.loads(env.redis.strings["view:user:u-2"])
    env.redis.strings["view:user:u-2"] = json.dumps({**view, "active": False})


async def found(client: Client, env: Views, query: str) -> list[str]:
    response = await client.get(f"/api/users?{query}", headers=headers(env))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["count"] == len(body["users"]) and body["stale"] is False
    return [user["user_id"] for user in body["users"]]


def test_search_by_username_prefix_registration_time_and_profile(env: Views) -> None:
    seed_users(env)

    async def scenario(client: Client) -> None:
        assert await found(client, env, "username_prefix=ADA") == ["u-1", "u-2", "u-3"], "ada中文 included"
        assert await found(client, env, "username_prefix=ada&active=true") == ["u-1", "u-3"]
        assert await found(client, env, "active=false") == ["u-2"]
        assert await found(client, env, f"registered_after={T0}&registered_before={T0 + 30}") == ["u-2", "u-3"]
        assert await found(client, env, "profile_key=city&profile_value=LONDON") == ["u-1", "u-2", "u-4"]
        assert await found(client, env, "profile_key=city&profile_value=Lon") == [], "the whole value, not a prefix"
        assert await found(client, env, "profile_key=city&profile_value=london&username_prefix=a") == ["u-1", "u-2"]
        assert await found(client, env, "limit=2") == ["u-1", "u-2"]
        body = await (await client.get("/api/users?username_prefix=bob", headers=headers(env))).json()
        assert body["users"] == [{"user_id": "u-4", "username": "bob", "registered_at": T0 + 30, "active": True}]

    env.run(scenario)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("limit=0", "limit must be between 1 and 100"),
        ("limit=101", "limit must be between 1 and 100"),
        ("limit=ten", "limit must be a non-negative integer"),
        ("registered_after=-5", "registered_after must be a non-negative integer"),
        ("active=yes", "active must be true or false"),
        ("profile_key=city", "profile_key and profile_value go together"),
        ("username_prefix=a%07b", "username_prefix contains a control character (U+0007)"),
        ("username_prefix=" + "a" * 65, "username_prefix must be at most 64 characters"),
    ],
)
def test_bad_search_parameters_are_400(env: Views, query: str, says: str) -> None:
    async def scenario(client: Client) -> None:
        response = await client.get(f"/api/users?{query}", headers=headers(env))
        assert response.status == 400 and says in (await response.json())["error"]

    env.run(scenario)


def test_statistics_are_one_s_own(env: Views) -> None:
    project_user(env, "u-1", "ada", T0)
    project_outcome(env, "UserLoggedIn", "c-1", version=2, logged_in_at=T0 + 5)
    env.redis.zsets["view:user-orders:u-1"] = {"o-1": 1.0, "o-2": 2.0}

    async def scenario(client: Client) -> None:
        stats = await client.get("/api/users/u-1/stats", headers=headers(env))
        assert stats.status == 200
        assert await stats.json() == {"user_id": "u-1", "login_count": 1, "last_login_at": T0 + 60_000,
                                      "orders_placed": 2}  # fmt: skip
        assert (await client.get("/api/users/u-1/stats", headers=headers(env, "u-2"))).status == 403
        unknown = await client.get("/api/users/u-9/stats", headers=headers(env, "u-9"))
        assert unknown.status == 404 and await unknown.json() == {"error": "User u-9 not found"}

    env.run(scenario)
