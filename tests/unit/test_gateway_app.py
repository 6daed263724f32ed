"""The gateway app over real HTTP on loopback, with in-memory stand-ins for the broker and Redis.

The stand-ins (``tests/gateway_support.py``) keep these tests fast and deterministic; the same paths run
against a real broker and Redis in ``tests/integration/test_gateway.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from common.envelope import Envelope
from common.health import Check, run_check
from gateway.ratelimit import RedisRateLimiter
from schemas.errors import InvalidRecord
from schemas.topics import TopicSpec
from streams.views.keys import MIRRORED_KEY
from streams.views.tables import MIRRORED_FIELDS
from tests.gateway_support import Client, DictRedis, Env, MemoryPublisher, gateway_settings, ok, token_for, until

pytestmark = pytest.mark.unit

ORDER: dict[str, Any] = {
    "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}],
    "payment": {"method": "card", "token": "tok_ok"},
}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def broken() -> None:
    raise ConnectionError("refused")


@pytest.fixture
def env() -> Env:
    return Env()


# --- public endpoints, routing ---------------------------------------------------------------------------


def test_public_endpoints_need_no_token(env: Env) -> None:
    env.checks = [
        Check("kafka:responseTime", ok),
        Check("redis:responseTime", ok),
        Check("extra", broken, critical=False),
    ]

    async def scenario(client: Client) -> None:
        live = await client.get("/live")
        assert live.status == 200 and live.content_type == "application/health+json"
        body = await live.json(content_type=None)
        assert body["status"] == "pass" and body["serviceId"] == "gateway"
        assert body["checks"]["uptime"][0]["observedValue"] >= 0
        assert body["checks"]["uptime"][0]["observedUnit"] == "s"
        assert (await client.get("/openapi.json")).status == 200

        health = await client.get("/health")
        body = await health.json(content_type=None)
        assert health.status == 200 and body["status"] == "warn", "a check that is not critical only warns"
        assert set(body["checks"]) == {"uptime", "kafka:responseTime", "redis:responseTime", "extra"}
        kafka = body["checks"]["kafka:responseTime"][0]
        assert kafka["status"] == "pass" and kafka["observedUnit"] == "ms" and "output" not in kafka
        extra = body["checks"]["extra"]
        assert extra == [{"status": "warn", "time": extra[0]["time"], "output": "ConnectionError: refused"}]
        assert body["output"] == "extra warn: ConnectionError: refused"
        ready = await client.get("/ready")
        assert ready.status == 200
        assert set((await ready.json(content_type=None))["checks"]) == {"kafka:responseTime", "redis:responseTime"}

    env.run(scenario)


def test_ready_and_health_are_503_when_a_critical_check_fails_or_hangs(env: Env) -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()  # never answers

    env.checks = [Check("kafka:responseTime", broken), Check("redis:responseTime", hangs, timeout_s=0.2)]

    async def scenario(client: Client) -> None:
        started = time.monotonic()
        for path in ("/ready", "/health"):
            answer = await client.get(path)
            body = await answer.json(content_type=None)
            assert answer.status == 503 and body["status"] == "fail"
            assert body["checks"]["redis:responseTime"][0]["output"] == "no answer within 0.2s"
            assert body["checks"]["kafka:responseTime"][0]["status"] == "fail"
        assert time.monotonic() - started < 5
        assert (await client.get("/live")).status == 200, "alive all the same"

    env.run(scenario)


def test_the_default_checks_include_memory_against_the_gateways_own_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.app

    monkeypatch.setattr(gateway.app, "broker_check", lambda settings: Check("kafka:responseTime", ok))
    settings = gateway_settings(gateway_memory_limit_mb=1)
    checks = gateway.app.default_checks(settings, DictRedis())  # type: ignore[arg-type]
    assert [(c.name, c.critical) for c in checks] == [
        ("kafka:responseTime", True),
        ("redis:responseTime", True),
        ("memory:utilization", False),
    ]
    memory = asyncio.run(run_check(checks[2]))
    assert memory["status"] == "warn" and memory["observedUnit"] == "MiB" and memory["observedValue"] > 1
    assert memory["output"].endswith("over the 1 MiB limit (PIPELINE_GATEWAY_MEMORY_LIMIT_MB)")


def test_unknown_routes_and_wrong_methods_answer_json(env: Env) -> None:
    async def scenario(client: Client) -> None:
        missing = await client.get("/api/nothing-here", headers=env.auth())
        assert missing.status == 404 and await missing.json() == {"error": "Not found"}
        assert (await client.get("/nope")).status == 404
        wrong = await client.delete("/api/orders", headers=env.auth())
        assert wrong.status == 405 and await wrong.json() == {"error": "Method not allowed"}
        assert "POST" in wrong.headers["Allow"]

    env.run(scenario)


# --- authentication --------------------------------------------------------------------------------------


def test_tokens_are_required_and_checked(env: Env) -> None:
    expired = token_for(env.settings, "u-1", ttl_s=-3600)

    async def scenario(client: Client) -> None:
        none = await client.get("/api/dashboard")
        assert none.status == 401 and await none.json() == {"error": "No token provided"}
        assert none.headers["WWW-Authenticate"] == 'Bearer realm="order-pipeline"'
        for header in ("Bearer garbage", f"Bearer {expired}", "Bearer a.b.c"):
            bad = await client.get("/api/dashboard", headers={"Authorization": header})
            assert bad.status == 401 and await bad.json() == {"error": "Invalid token"}
            assert 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
        posted = await client.post("/api/orders", json=ORDER)
        assert posted.status == 401
        assert env.publisher.sent == []
        assert (await client.get("/api/dashboard", headers=env.auth())).status == 200

    env.run(scenario)


# --- bad input -------------------------------------------------------------------------------------------


def test_bad_bodies_get_clear_4xx_answers_and_publish_nothing() -> None:
    env = Env(max_body_bytes=1024)

    async def scenario(client: Client) -> None:
        headers = {**env.auth(), "Content-Type": "application/json"}

        async def post(data: bytes | str) -> tuple[int, dict[str, Any]]:
            response = await client.post("/api/orders", data=data, headers=headers)
            return response.status, await response.json()

        assert await post("") == (400, {"error": "Request body is required: a JSON object"})
        status, body = await post("{not json")
        assert status == 400 and body["error"].startswith("Malformed JSON")
        status, body = await post('{"lines": NaN}')
        assert status == 400 and "NaN" in body["error"]
        assert await post("[1, 2]") == (400, {"error": "Request body must be a JSON object, not list"})
        status, body = await post(b"\xff\xfe{")
        assert status == 400

        status, body = await post(
            json.dumps({**ORDER, "lines": [{"sku": "S", "quantity": "2", "unit_price_cents": 1}]})
        )
        assert status == 422
        assert body["error"] == "Invalid request body: lines[0].quantity: Input should be a valid integer"
        assert body["details"] == [{"field": "lines[0].quantity", "message": "Input should be a valid integer"}]
        status, body = await post(json.dumps({"payment": ORDER["payment"]}))
        assert status == 422 and body["details"][0]["field"] == "lines"

        status, body = await post(json.dumps({**ORDER, "note": "x" * 2000}))
        assert status == 413 and body == {"error": "Request body too large (at most 1024 bytes)"}

        chunked = await client.post(
            "/api/orders", data=_chunks(json.dumps({**ORDER, "note": "x" * 4000}).encode()), headers=headers
        )
        assert chunked.status == 413 and (await chunked.json())["error"].startswith("Request body too large")
        assert env.publisher.sent == []

    env.run(scenario)


async def _chunks(data: bytes) -> Any:
    for i in range(0, len(data), 512):
        yield data[i : i + 512]


def test_an_encoding_error_is_422() -> None:
    class Refusing(MemoryPublisher):
        async def send(self, topic: TopicSpec, record: str, key: str, value: Mapping[str, Any], **kw: Any) -> Envelope:
            raise InvalidRecord("PlaceOrder v1: field 'lines[0].quantity' expected int, got 'x'")

    env = Env()
    env.publisher = Refusing()

    async def scenario(client: Client) -> None:
        response = await client.post("/api/orders", json=ORDER, headers=env.auth())
        assert response.status == 422
        assert (await response.json())["error"].startswith("Invalid command: PlaceOrder v1: field")

    env.run(scenario)


# --- commands ----------------------------------------------------------------------------------------------


def test_placing_an_order_publishes_place_order_keyed_by_the_subject(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")

    async def scenario(client: Client) -> None:
        response = await client.post("/api/orders", json=ORDER, headers={**env.auth("u-7"), "traceparent": TRACEPARENT})
        assert response.status == 202
        body = await response.json()
        order_id, command_id = body["order_id"], body["command_id"]
        assert uuid.UUID(order_id) and uuid.UUID(command_id) and body["status"] == "accepted"
        assert response.headers["Location"] == f"/api/commands/{command_id}"
        assert response.headers["RateLimit-Limit"] == "100"
        assert response.headers["RateLimit-Remaining"] == "99"

        [sent] = env.publisher.sent
        assert (sent.topic, sent.record, sent.key) == ("orders.commands.v1", "PlaceOrder", "u-7")
        assert sent.value["user_id"] == "u-7" and sent.value["order_id"] == order_id
        assert sent.value["idempotency_key"] == order_id
        assert sent.value["lines"] == ORDER["lines"] and sent.value["payment"] == ORDER["payment"]
        assert abs(sent.value["requested_at"] - time.time() * 1000) < 60_000
        assert sent.envelope.correlation_id == order_id and sent.envelope.event_id == command_id
        # the trace goes on: same trace id, the gateway's own span, in the command's headers and the response
        assert sent.envelope.traceparent is not None
        assert sent.envelope.traceparent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        assert sent.envelope.traceparent == response.headers["traceparent"]
        assert ("traceparent", sent.envelope.traceparent.encode()) in sent.envelope.to_headers()

    env.run(scenario)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    [line] = lines
    assert line["method"] == "POST" and line["path"] == "/api/orders" and line["status"] == 202
    assert line["subject"] == "u-7" and line["client"] == "127.0.0.1"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


def test_every_request_gets_a_trace_and_an_access_line(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")

    async def scenario(client: Client) -> None:
        for path in ("/live", "/api/dashboard", "/nope"):
            response = await client.get(path)
            assert len(response.headers["traceparent"]) == 55

    env.run(scenario)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [(line["path"], line["status"], line["subject"]) for line in lines] == [
        ("/live", 200, None),
        ("/api/dashboard", 401, None),
        ("/nope", 404, None),
    ]
    assert len({line["trace_id"] for line in lines}) == 3


def test_registering_a_user_publishes_register_user(env: Env) -> None:
    async def scenario(client: Client) -> None:
        body = {"username": "ada", "email": "ada@example.com", "profile": {"city": "London"}}
        response = await client.post("/api/users", json=body, headers=env.auth())
        assert response.status == 202
        answer = await response.json()
        user_id, command_id = answer["user_id"], answer["command_id"]
        assert answer == {"user_id": user_id, "command_id": command_id, "status": "accepted"}
        assert response.headers["Location"] == f"/api/commands/{command_id}"
        [sent] = env.publisher.sent
        assert sent.envelope.event_id == command_id
        assert (sent.topic, sent.record, sent.key) == ("users.commands.v1", "RegisterUser", user_id)
        assert sent.value == {"user_id": user_id, **body}
        bad = await client.post("/api/users", json={"username": "ada", "email": "nope"}, headers=env.auth())
        assert bad.status == 422 and (await bad.json())["details"][0]["field"] == "email"

    env.run(scenario)


def test_an_unreachable_broker_is_503_and_nothing_is_cached(env: Env) -> None:
    env.publisher.broken = True

    async def scenario(client: Client) -> None:
        headers = {**env.auth(), "Idempotency-Key": "k-503"}
        response = await client.post("/api/orders", json=ORDER, headers=headers)
        assert response.status == 503
        assert await response.json() == {"error": "Service temporarily unavailable"}
        assert env.redis.keys_matching("gateway:idem:*") == []
        env.publisher.broken = False
        retry = await client.post("/api/orders", json=ORDER, headers=headers)
        assert retry.status == 202 and "Idempotent-Replayed" not in retry.headers
        assert len(env.publisher.sent) == 1

    env.run(scenario)


# --- idempotency -------------------------------------------------------------------------------------------


def test_an_idempotency_key_replays_the_first_answer(env: Env) -> None:
    async def scenario(client: Client) -> None:
        headers = {**env.auth("u-1"), "Idempotency-Key": "order-2026-01-01-a"}
        first = await client.post("/api/orders", json=ORDER, headers=headers)
        assert first.status == 202
        reordered = {"payment": ORDER["payment"], "lines": ORDER["lines"]}  # same request, other key order
        again = await client.post("/api/orders", json=reordered, headers=headers)
        assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert await again.json() == await first.json()
        assert again.headers["Location"] == first.headers["Location"]
        assert len(env.publisher.sent) == 1
        assert env.publisher.sent[0].value["idempotency_key"] == "order-2026-01-01-a"
        assert env.redis.keys_matching("gateway:idem:u-1:order-2026-01-01-a")

        other = {**ORDER, "payment": {"method": "card", "token": "tok_decline"}}
        mismatch = await client.post("/api/orders", json=other, headers=headers)
        assert mismatch.status == 422
        assert await mismatch.json() == {"error": "Idempotency-Key was already used with a different request"}

        # the same key from another subject is another request
        theirs = await client.post(
            "/api/orders", json=ORDER, headers={**env.auth("u-2"), "Idempotency-Key": headers["Idempotency-Key"]}
        )
        assert theirs.status == 202 and (await theirs.json()) != (await first.json())
        assert len(env.publisher.sent) == 2

        for bad_key in ("", "has space", "x" * 256):
            bad = await client.post("/api/orders", json=ORDER, headers={**env.auth(), "Idempotency-Key": bad_key})
            assert bad.status == 400, bad_key
        assert len(env.publisher.sent) == 2

    env.run(scenario)


def test_a_key_still_in_flight_is_409(env: Env) -> None:
    gate = asyncio.Event()

    class Slow(MemoryPublisher):
        async def send(self, *args: Any, **kwargs: Any) -> Envelope:
            await gate.wait()
            return await super().send(*args, **kwargs)

    env.publisher = Slow()

    async def scenario(client: Client) -> None:
        headers = {**env.auth(), "Idempotency-Key": "k-slow"}
        first = asyncio.create_task(client.post("/api/orders", json=ORDER, headers=headers))
        await until(lambda: bool(env.redis.keys_matching("gateway:idem:*")))
        second = await client.post("/api/orders", json=ORDER, headers=headers)
        assert second.status == 409
        gate.set()
        assert (await first).status == 202
        assert len(env.publisher.sent) == 1

    env.run(scenario)


def test_redis_down_fails_the_limiter_open_but_writes_closed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    env.redis.down = True
    caplog.set_level(logging.WARNING)

    async def scenario(client: Client) -> None:
        plain = await client.post("/api/orders", json=ORDER, headers=env.auth())
        # the rate limit could not be asked (fail open), but the command's receipt cannot be written: a 202
        # would name a status nobody can read, so nothing is published
        assert plain.status == 503 and await plain.json() == {"error": "Service temporarily unavailable"}
        keyed = await client.post("/api/orders", json=ORDER, headers={**env.auth(), "Idempotency-Key": "k"})
        assert keyed.status == 503  # no store to dedupe a retry either
        assert env.publisher.sent == []
        read = await client.get("/api/dashboard", headers=env.auth())
        assert read.status == 503 and await read.json() == {"error": "Service temporarily unavailable"}

    env.run(scenario)
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.ratelimit"]
    assert len(warnings) == 1 and "fail open" in warnings[0]


# --- rate limit --------------------------------------------------------------------------------------------


def test_the_rate_limit_answers_429_with_retry_after_per_client() -> None:
    env = Env(rate_limit_requests=3, rate_limit_window_s=60)

    async def scenario(client: Client) -> None:
        for n in range(3):
            response = await client.get("/api/dashboard", headers=env.auth("u-1"))
            assert response.status == 200 and response.headers["RateLimit-Remaining"] == str(2 - n)
        over = await client.get("/api/dashboard", headers=env.auth("u-1"))
        assert over.status == 429 and await over.json() == {"error": "Too many requests"}
        assert 1 <= int(over.headers["Retry-After"]) <= 60
        assert (await client.get("/api/dashboard", headers=env.auth("u-2"))).status == 200
        # requests without a valid token count against the client address
        statuses = [(await client.get("/api/dashboard")).status for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        assert (await client.get("/live")).status == 200  # probes are never limited

    env.run(scenario)


def test_the_limiter_fails_open_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    redis = DictRedis()
    redis.down = True
    limiter = RedisRateLimiter(redis, limit=1, window_s=60)  # type: ignore[arg-type]

    async def hits() -> list[bool]:
        return [(await limiter.hit("sub:u-1")).degraded for _ in range(3)]

    with caplog.at_level(logging.WARNING, logger="gateway.ratelimit"):
        assert asyncio.run(hits()) == [True, True, True]
    assert len(caplog.records) == 1


# --- reads -------------------------------------------------------------------------------------------------


def test_reading_a_user(env: Env) -> None:
    env.put_user("u-1", 3, profile={"city": "London"})

    async def scenario(client: Client) -> None:
        response = await client.get("/api/users/u-1", headers=env.auth("u-1"))
        assert response.status == 200 and response.headers["ETag"] == '"3"'
        body = await response.json()
        assert body["version"] == 3 and body["profile"] == {"city": "London"} and body["stale"] is False
        other = await client.get("/api/users/u-1", headers=env.auth("u-2"))
        assert other.status == 403
        unknown = await client.get("/api/users/u-9", headers=env.auth("u-9"))
        assert unknown.status == 404 and await unknown.json() == {"error": "User u-9 not found"}
        bad = await client.get("/api/users/u-1?min_version=abc", headers=env.auth("u-1"))
        assert bad.status == 400

    env.run(scenario)


def test_min_version_waits_for_the_write_or_answers_stale(env: Env) -> None:
    env.put_user("u-1", 1)

    async def scenario(client: Client) -> None:
        waiting = env.redis.next_read("view:user:u-1")

        async def views_catch_up() -> None:
            await asyncio.wait_for(waiting.wait(), 5)  # the gateway has read version 1 and waits for 2
            env.put_user("u-1", 2)

        catch_up = asyncio.create_task(views_catch_up())
        response = await client.get("/api/users/u-1?min_version=2", headers=env.auth("u-1"))
        await catch_up
        body = await response.json()
        assert body["version"] == 2 and body["stale"] is False

        started = time.monotonic()
        response = await client.get("/api/users/u-1?min_version=5", headers=env.auth("u-1"))
        assert time.monotonic() - started >= env.settings.read_wait_max_s
        body = await response.json()
        assert response.status == 200 and body["version"] == 2 and body["stale"] is True

    env.run(scenario)


def test_patching_a_profile_checks_the_version_first(env: Env) -> None:
    env.put_user("u-1", 4)
    change = {"profile": {"city": "Paris"}}

    async def scenario(client: Client) -> None:
        missing = await client.patch("/api/users/u-1", json=change, headers=env.auth("u-1"))
        assert missing.status == 428 and "If-Match" in (await missing.json())["error"]
        garbled = await client.patch("/api/users/u-1", json=change, headers={**env.auth("u-1"), "If-Match": "soon"})
        assert garbled.status == 400 and "If-Match" in (await garbled.json())["error"]
        conflict = await client.patch("/api/users/u-1", json=change, headers={**env.auth("u-1"), "If-Match": "3"})
        assert conflict.status == 409
        assert await conflict.json() == {"error": "Version conflict", "expected": 3, "actual": 4}
        assert env.publisher.sent == []
        theirs = await client.patch("/api/users/u-1", json=change, headers={**env.auth("u-2"), "If-Match": "4"})
        assert theirs.status == 403
        unknown = await client.patch("/api/users/u-8", json=change, headers={**env.auth("u-8"), "If-Match": "1"})
        assert unknown.status == 404
        empty = await client.patch("/api/users/u-1", json={"profile": {}}, headers={**env.auth("u-1"), "If-Match": "4"})
        assert empty.status == 422

        accepted = await client.patch("/api/users/u-1", json=change, headers={**env.auth("u-1"), "If-Match": '"4"'})
        assert accepted.status == 202
        answer = await accepted.json()
        assert answer == {
            "user_id": "u-1",
            "command_id": answer["command_id"],
            "status": "accepted",
            "expected_version": 4,
            "version": 5,
            "poll": "/api/users/u-1?min_version=5",
        }
        assert accepted.headers["Location"] == f"/api/commands/{answer['command_id']}"
        [sent] = env.publisher.sent
        assert (sent.topic, sent.record, sent.key) == ("users.commands.v1", "UpdateUserProfile", "u-1")
        assert sent.value == {"user_id": "u-1", "expected_version": 4, "changes": {"city": "Paris"}}

    env.run(scenario)


def test_reading_an_order(env: Env) -> None:
    env.put_order("o-1", "u-1", "PLACED")
    env.put_order("o-2", "u-2", "CONFIRMED")
    env.put_order("o-3", None, "STOCK_RESERVED")  # OrderPlaced not projected yet: owner unknown

    async def scenario(client: Client) -> None:
        mine = await client.get("/api/orders/o-1", headers=env.auth("u-1"))
        assert mine.status == 200 and (await mine.json())["status"] == "PLACED"
        # another customer's order answers exactly as an unknown one: no oracle of which order ids exist
        for order_id in ("o-2", "o-3", "o-404"):
            answer = await client.get(f"/api/orders/{order_id}", headers=env.auth("u-1"))
            assert answer.status == 404 and await answer.json() == {"error": f"Order {order_id} not found"}
            # … and takes as long: waiting for a terminal status waits out the bound for both
            started = time.monotonic()
            waited_out = await client.get(f"/api/orders/{order_id}?wait_for=terminal", headers=env.auth("u-1"))
            assert waited_out.status == 404 and time.monotonic() - started >= env.settings.read_wait_max_s
        bad = await client.get("/api/orders/o-1?wait_for=SHIPPED", headers=env.auth("u-1"))
        assert bad.status == 400 and "wait_for" in (await bad.json())["error"]

        waiting = env.redis.next_read("view:order:o-1")

        async def saga_finishes() -> None:
            await asyncio.wait_for(waiting.wait(), 5)  # the gateway has read PLACED and waits for a terminal status
            env.put_order("o-1", "u-1", "CONFIRMED")

        finish = asyncio.create_task(saga_finishes())
        waited = await client.get("/api/orders/o-1?wait_for=terminal", headers=env.auth("u-1"))
        await finish
        body = await waited.json()
        assert body["status"] == "CONFIRMED" and body["stale"] is False
        # a terminal order will not reach another status: answered at once, not stale
        started = time.monotonic()
        other = await client.get("/api/orders/o-1?wait_for=CANCELLED", headers=env.auth("u-1"))
        assert time.monotonic() - started < env.settings.read_wait_max_s
        assert (await other.json())["stale"] is False
        env.put_order("o-4", "u-1", "PLACED")
        stale = await client.get("/api/orders/o-4?wait_for=confirmed", headers=env.auth("u-1"))
        assert (await stale.json()) == {"order_id": "o-4", "user_id": "u-1", "status": "PLACED", "timeline": [],
                                       "stale": True}  # fmt: skip

    env.run(scenario)


def test_the_dashboard_reads_its_three_views_concurrently(env: Env) -> None:
    env.put_user("u-1", 2)
    env.redis.zsets["view:user-orders:u-1"] = {"o-1": 1.0, "o-2": 2.0}
    env.redis.hashes["view:user-order-summaries:u-1"] = {
        "o-1": json.dumps({"order_id": "o-1", "status": "CONFIRMED"}),
        "o-2": json.dumps({"order_id": "o-2", "status": "PLACED"}),
    }
    env.redis.lists["view:notifications:u-1"] = [json.dumps({"notification_id": "n-1", "order_id": "o-1"})]
    env.redis.hashes[MIRRORED_KEY] = dict.fromkeys(MIRRORED_FIELDS, "1")  # the view service mirrored every table
    in_flight = {"now": 0, "max": 0}
    all_three = asyncio.Event()
    for name in ("get", "zrevrange", "lrange"):
        method = getattr(env.redis, name)

        async def tracked(*args: Any, _method: Any = method) -> Any:
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
            if in_flight["now"] >= 3:
                all_three.set()
            try:
                await asyncio.wait_for(all_three.wait(), 5)  # held until the other reads are in flight too
                return await _method(*args)
            finally:
                in_flight["now"] -= 1

        setattr(env.redis, name, tracked)

    async def scenario(client: Client) -> None:
        response = await client.get("/api/dashboard", headers=env.auth("u-1"))
        assert response.status == 200
        body = await response.json()
        assert body["user_id"] == "u-1" and body["profile"]["version"] == 2
        assert [o["order_id"] for o in body["orders"]] == ["o-2", "o-1"]
        assert body["notifications"] == [{"notification_id": "n-1", "order_id": "o-1"}]
        assert body["stale"] is False
        del env.redis.hashes[MIRRORED_KEY][MIRRORED_FIELDS[0]]  # Redis lost a partition's views: being re-mirrored
        rebuilding = await (await client.get("/api/dashboard", headers=env.auth("u-1"))).json()
        assert rebuilding["stale"] is True

    env.run(scenario)
    assert in_flight["max"] >= 3  # the profile, orders and notices reads were in flight together

    empty = Env()
    empty.redis.hashes[MIRRORED_KEY] = dict.fromkeys(MIRRORED_FIELDS, "1")

    async def nobody(client: Client) -> None:
        body = await (await client.get("/api/dashboard", headers=empty.auth("u-new"))).json()
        assert body == {"user_id": "u-new", "profile": None, "orders": [], "notifications": [], "stale": False}

    empty.run(nobody)
