"""The HTTP gateway end to end: `pipeline gateway` processes over real HTTP, a real broker, Redis and workers.

Each gateway is started as a person would (``pipeline gateway --port N``) and spoken to over loopback HTTP.
Users are registered through the user service (``RegisterUser``, or ``POST /api/users``) and stock by
``AddStock``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from common.admin import admin_client, apply_topics
from common.encoding import registry_codec
from common.settings import Settings
from consumers.toolkit import Consumed, EventConsumer
from producers.toolkit import EventPublisher
from schemas.catalog import SchemaCatalog
from schemas.topics import INVENTORY_COMMANDS, ORDER_COMMANDS, USER_COMMANDS
from streams.domain.emails import EMAIL_IN_USE
from streams.payment_provider import OUTAGE
from streams.views import read as views
from tests.gateway_support import page_references, random_secret, token_for
from tests.seeding import register_users, uid
from tests.stack import KafkaNode, RedisNode, RegistryNode, free_port, kafka_node, redis_node, wait_until
from tests.workers import PIPELINE, Pipeline, Process, running_pipeline

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SMALL_BUDGET = 5


# --- HTTP and gateway processes -----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def http(
    method: str, url: str, *, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and not request.has_header("Content-type"):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, response_headers, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, payload = error.code, dict(error.headers), error.read()
    return Answer(status, response_headers, json.loads(payload) if payload else None)


@dataclass
class Gateway:
    url: str
    process: Process
    settings: Settings

    def auth(self, subject: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token_for(self.settings, subject)}"} if subject else {}

    def get(self, path: str, subject: str | None = None, headers: dict[str, str] | None = None) -> Answer:
        return http("GET", self.url + path, headers={**self.auth(subject), **(headers or {})})

    def send(
        self, method: str, path: str, body: Any, subject: str | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        return http(method, self.url + path, body=body, headers={**self.auth(subject), **(headers or {})})


def gateway_environment(settings: Settings, **env: str) -> dict[str, str]:
    return {
        **os.environ,
        "PIPELINE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PIPELINE_REDIS_URL": settings.redis_url,
        "PIPELINE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "PIPELINE_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "PYTHONUNBUFFERED": "1",
        **env,
    }


def start_gateway(settings: Settings, workdir: Path, name: str, **env: str) -> Gateway:
    """``pipeline gateway`` on a free loopback port, once it answers /live."""
    port = free_port()
    environment = gateway_environment(settings, **env)
    process = Process(name, [PIPELINE, "gateway", "--port", str(port)], environment, workdir / f"{name}.log")
    process.start()
    gateway = Gateway(f"http://127.0.0.1:{port}", process, settings)

    def answers() -> bool:
        assert process.alive, f"{name} exited:\n{process.log_tail()}"
        return http("GET", gateway.url + "/live").status == 200

    wait_until(answers, timeout=60, what=f"{name} answering on port {port}")
    return gateway


def stop_gateway(gateway: Gateway) -> None:
    gateway.process.stop()  # SIGTERM: a graceful stop
    assert gateway.process.popen is not None and gateway.process.popen.returncode == 0, gateway.process.log_tail()


@pytest.fixture(scope="module")
def settings(kafka: KafkaNode, redis_server: RedisNode, schema_registry: RegistryNode) -> Settings:
    """The session's broker and Redis, with a JWT secret of this module's own (there is none in the repository)."""
    secret = random_secret()
    return Settings(  # type: ignore[arg-type]
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_server.url,
        schema_registry_url=schema_registry.url,
        jwt_secret=secret,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def topics(settings: Settings) -> None:
    apply_topics(admin_client(settings), settings)


@pytest.fixture(scope="module")
def gateway(settings: Settings, topics: None, workdir: Path) -> Iterator[Gateway]:
    running = start_gateway(settings, workdir, "gateway", PIPELINE_READ_WAIT_MAX_S="10", **tracing(workdir))
    yield running
    stop_gateway(running)


def tracing(workdir: Path) -> dict[str, str]:
    """Every process of the module appends its finished spans to one JSON-lines file."""
    return {"PIPELINE_OTEL_EXPORTER": f"file:{workdir / 'spans.jsonl'}"}


@pytest.fixture(scope="module")
def pipeline(
    settings: Settings, topics: None, workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    workers = tmp_path_factory.mktemp("gateway-workers")
    with running_pipeline(
        settings, workers, worker_http=True, PIPELINE_SAGA_TIMEOUT_S="20", **tracing(workdir)
    ) as running:
        yield running


@pytest.fixture
def store(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def commands(settings: Settings, topic: str, key: str) -> list[tuple[Consumed, dict[str, Any]]]:
    """Every message of ``topic`` with ``key`` so far, decoded."""
    codec = registry_codec(SchemaCatalog.load(), settings)
    with EventConsumer.reader(settings) as consumer:
        found = [m for m in consumer.read_log([topic], idle_timeout=10) if m.key == key]
    return [(m, codec.decode(m.value or b"").value) for m in found]


ORDER = {"payment": {"method": "card", "token": "tok_ok"}}


def decided(gateway: Gateway, subject: str, location: str, pipeline: Pipeline) -> dict[str, Any]:
    """The command status at ``location`` once it is no longer ``accepted`` (bounded polling)."""
    seen: dict[str, Any] = {}

    def check() -> bool:
        pipeline.assert_alive()
        answer = gateway.get(location, subject=subject)
        seen["last"] = answer.body
        assert answer.status == 200, answer.body
        return bool(answer.body["status"] != "accepted")

    wait_until(check, timeout=60, what=lambda: f"{location} decided (last: {seen.get('last')})")
    return dict(seen["last"])


def order_body(sku: str, quantity: int = 2) -> dict[str, Any]:
    return {"lines": [{"sku": sku, "quantity": quantity, "unit_price_cents": 1250}], **ORDER}


# --- tests --------------------------------------------------------------------------------------------------


def test_health_ready_live_and_openapi_need_no_token(gateway: Gateway) -> None:
    health = gateway.get("/health")
    assert health.status == 200, health.body
    assert health.headers["Content-Type"].startswith("application/health+json")
    assert health.body["status"] == "pass" and health.body["serviceId"] == "gateway"
    for name in ("kafka:responseTime", "redis:responseTime"):
        [check] = health.body["checks"][name]
        assert check["status"] == "pass" and check["observedValue"] >= 0 and check["observedUnit"] == "ms"
        assert "output" not in check
    [memory] = health.body["checks"]["memory:utilization"]
    assert memory["status"] == "pass" and 0 < memory["observedValue"] < 512 and memory["observedUnit"] == "MiB"
    ready = gateway.get("/ready")
    assert ready.status == 200 and set(ready.body["checks"]) == {"kafka:responseTime", "redis:responseTime"}
    live = gateway.get("/live")
    assert live.body["status"] == "pass" and live.body["checks"]["uptime"][0]["observedValue"] > 0
    document = gateway.get("/openapi.json").body
    assert document["openapi"] == "3.1.0" and "/api/orders" in document["paths"]


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    """A GET answered whole, whatever its type (``http`` decodes JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_api_docs_page_and_every_file_it_loads_come_from_the_gateway(gateway: Gateway) -> None:
    status, headers, body = fetch(gateway.url + "/docs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    found = page_references(body.decode())
    assert found.inline == [] and len(found.urls) >= 3
    types = set()
    for url in found.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        status, headers, body = fetch(gateway.url + url)
        assert status == 200 and len(body) > 100, url
        assert headers["X-Content-Type-Options"] == "nosniff", url
        types.add(headers["Content-Type"].split(";")[0])
    assert types == {"text/css", "text/javascript", "image/png"}
    assert fetch(gateway.url + "/docs/index.html")[0] == 404


def test_requests_without_a_valid_token_are_401(gateway: Gateway) -> None:
    settings = gateway.settings
    secret = settings.jwt_secret.get_secret_value()
    now = int(time.time())
    claims = {"sub": "u-x", "iss": settings.jwt_issuer, "iat": now, "exp": now + 600}
    header_none = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).decode()
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()

    assert gateway.get("/api/dashboard").body == {"error": "No token provided"}
    assert gateway.get("/api/dashboard").status == 401
    invalid = {
        "garbage": "not-a-token",
        "expired": token_for(settings, "u-x", ttl_s=-60),
        "alg none": f"{header_none}.{payload}.",
        "wrong issuer": jwt.encode({**claims, "iss": "elsewhere"}, secret, algorithm="HS256"),
        "wrong secret": jwt.encode(claims, "x" * 64, algorithm="HS256"),
        "wrong algorithm": jwt.encode(claims, secret + "-padding-to-64-bytes-for-hs512", algorithm="HS512"),
    }
    for case, token in invalid.items():
        answer = gateway.get("/api/dashboard", headers={"Authorization": f"Bearer {token}"})
        assert (answer.status, answer.body) == (401, {"error": "Invalid token"}), case
    # nothing reached the command topic without a token
    assert gateway.send("POST", "/api/orders", order_body("SKU-NONE")).status == 401
    assert gateway.get("/api/dashboard", subject="u-x").status == 200


def test_bad_input_gets_4xx_json(gateway: Gateway) -> None:
    user = uid("u")
    auth = gateway.auth(user)
    malformed = http("POST", gateway.url + "/api/orders", raw=b"{nope", headers=auth)
    assert malformed.status == 400 and malformed.body["error"].startswith("Malformed JSON")
    wrong_type = gateway.send("POST", "/api/orders", {"lines": [{"sku": "S", "quantity": "1", "unit_price_cents": 1}],
                                                      **ORDER}, subject=user)  # fmt: skip
    assert wrong_type.status == 422 and wrong_type.body["details"][0]["field"] == "lines[0].quantity"
    huge = http("POST", gateway.url + "/api/orders", raw=b'{"x": "' + b"a" * 70_000 + b'"}', headers=auth)
    assert huge.status == 413 and huge.body["error"].startswith("Request body too large")
    assert gateway.get("/api/nowhere", subject=user).status == 404
    assert gateway.send("PUT", "/api/orders", {}, subject=user).status == 405
    assert gateway.send("PATCH", f"/api/users/{user}", {"profile": {"a": "b"}}, subject=user).status == 428


def test_a_gateway_without_a_usable_secret_does_not_start(settings: Settings, workdir: Path) -> None:
    """No secret (none in the repository, no installation file) or the once-published default: exit 1 at once."""
    missing = str(workdir / "no-such-secret")
    published = "order-pipeline-dev-only-jwt-secret-do-not-use-in-production"
    for secret, message in (("", "error: no JWT secret"), (published, "once published in this repository")):
        env = gateway_environment(settings, PIPELINE_JWT_SECRET=secret, PIPELINE_JWT_SECRET_FILE=missing)
        done = subprocess.run([PIPELINE, "gateway", "--port", str(free_port())], env=env, cwd=workdir,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_bodies_are_checked_and_answers_carry_their_headers(gateway: Gateway) -> None:
    user = uid("u")
    auth = gateway.auth(user)
    as_text = http("POST", gateway.url + "/api/orders", body=order_body("SKU-T"),
                   headers={**auth, "Content-Type": "text/plain"})  # fmt: skip
    assert as_text.status == 415 and as_text.headers["Accept-Post"] == "application/json"
    deep = http("POST", gateway.url + "/api/users", raw=b"[" * 10_000 + b"]" * 10_000, headers=auth)
    assert (deep.status, deep.body) == (
        400,
        {"error": "JSON nested too deeply: at most 32 levels of objects and arrays"},
    )
    control = gateway.send("POST", "/api/users", {"username": "ada", "email": "ada\x82@example.com"}, subject=user)
    assert control.status == 422 and control.body["details"] == [
        {"field": "email", "message": "contains a control character (U+0082) at position 3"}
    ]
    escaped = b'{"username": "ada", "email": "ada@example.com", "profile": {"city": "\\ud800"}}'
    surrogate = http("POST", gateway.url + "/api/users", raw=escaped, headers=auth)
    assert surrogate.status == 422 and "unpaired surrogate (U+D800)" in surrogate.body["error"]
    for answer in (as_text, deep, control, gateway.get("/api/dashboard", subject=user), gateway.get("/api/dashboard")):
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["Server"] == "order-pipeline-gateway"
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")  # answered by aiohttp's parser, before any of the gateway's code
        refused = sock.recv(4096).decode("latin-1")
    assert " 400 " in refused.splitlines()[0] and "Server: order-pipeline-gateway" in refused
    assert "aiohttp" not in refused and "Python" not in refused


def test_a_placed_order_is_confirmed_and_shows_on_the_dashboard(
    gateway: Gateway,
    pipeline: Pipeline,
    publisher: EventPublisher,
    settings: Settings,
    store: redis.Redis,
    workdir: Path,
) -> None:
    user, sku = uid("u"), uid("sku")
    register_users(publisher, store, [user], alive=pipeline.assert_alive, city="London")
    publisher.publish(INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": 5, "reason": "test"})
    publisher.flush()
    wait_until(lambda: (views.stock(store, sku) or {}).get("available") == 5, timeout=60, what=f"stock of {sku}")
    profile = gateway.get(f"/api/users/{user}?min_version=1", subject=user)
    assert profile.status == 200 and profile.body["stale"] is False and profile.body["username"] == user

    placed = gateway.send("POST", "/api/orders", order_body(sku), subject=user, headers={"traceparent": TRACEPARENT})
    assert placed.status == 202, placed.body
    order_id = placed.body["order_id"]
    assert placed.headers["Location"] == f"/api/commands/{placed.body['command_id']}"
    admitted = decided(gateway, user, placed.headers["Location"], pipeline)
    assert (admitted["status"], admitted["event"], admitted["resource"]) == (
        "applied",
        "OrderPlaced",
        f"/api/orders/{order_id}",
    )

    seen: dict[str, Any] = {}

    def confirmed() -> bool:
        pipeline.assert_alive()
        answer = gateway.get(f"/api/orders/{order_id}?wait_for=terminal", subject=user)
        seen["last"] = answer.body
        return answer.status == 200 and answer.body["status"] == "CONFIRMED"

    wait_until(confirmed, timeout=90, what=lambda: f"order {order_id} CONFIRMED (last: {seen.get('last')})")
    assert seen["last"]["user_id"] == user and seen["last"]["stale"] is False

    def on_dashboard() -> bool:
        board = gateway.get("/api/dashboard", subject=user).body
        seen["board"] = board
        return any(o["order_id"] == order_id and o["status"] == "CONFIRMED" for o in board["orders"]) and any(
            n.get("order_id") == order_id for n in board["notifications"]
        )

    wait_until(on_dashboard, timeout=60, what=lambda: f"order on the dashboard (last: {seen.get('board')})")
    assert seen["board"]["profile"]["user_id"] == user

    # someone else may not read it, nor learn that it exists
    stranger = gateway.get(f"/api/orders/{order_id}", subject=uid("u"))
    assert (stranger.status, stranger.body) == (404, {"error": f"Order {order_id} not found"})

    # the command carried the caller's trace on, with the gateway's own span
    [(message, value)] = [
        (m, v) for m, v in commands(settings, ORDER_COMMANDS.name, user) if v.get("order_id") == order_id
    ]
    assert value["user_id"] == user and value["idempotency_key"] == order_id
    envelope = message.envelope
    assert envelope is not None and envelope.traceparent is not None
    assert envelope.traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert envelope.traceparent != TRACEPARENT and envelope.source == "/order-pipeline/gateway"
    assert envelope.correlation_id == order_id

    # one order is one trace: the caller's span → the gateway → every saga hop → the projection
    spans_file = workdir / "spans.jsonl"

    def trace_spans() -> list[dict[str, Any]]:
        lines = spans_file.read_text().splitlines() if spans_file.exists() else []
        return [span for span in map(json.loads, lines) if span["trace_id"] == "0af7651916cd43dd8448eb211c80319c"]

    def names(spans: list[dict[str, Any]]) -> set[str]:
        return {span["name"] for span in spans}

    wanted = {
        "POST /api/orders", "admit_orders PlaceOrder", "reserve_inventory OrderPlaced", "keep_stock ReserveStock",
        "settle_payments InventoryReserved", "run_order_sagas PaymentSucceeded", "fold_order_views OrderConfirmed",
    }  # fmt: skip

    def missing() -> str:
        return f"spans of the order's trace (missing {sorted(wanted - names(trace_spans()))})"

    wait_until(lambda: wanted <= names(trace_spans()), timeout=60, what=missing)
    spans = trace_spans()
    by_id = {span["span_id"]: span for span in spans}
    [root] = [span for span in spans if span["name"] == "POST /api/orders"]
    assert root["parent_id"] == "b7ad6b7169203331" and root["service"] == "order-pipeline-gateway"
    assert envelope.traceparent.split("-")[2] == root["span_id"], "the command names the gateway's span"

    def chain(span: dict[str, Any]) -> list[str]:
        names_up = [span["name"]]
        while span.get("parent_id") in by_id:
            span = by_id[span["parent_id"]]
            names_up.append(span["name"])
        return names_up

    [confirmed_projection] = [span for span in spans if span["name"] == "fold_order_views OrderConfirmed"]
    hops = chain(confirmed_projection)
    assert hops[-1] == "POST /api/orders" and len(hops) >= 5, hops
    assert {"admit_orders PlaceOrder", "run_order_sagas PaymentSucceeded"} <= set(hops), hops
    assert {span["service"] for span in spans} >= {
        "order-pipeline-gateway", "order-pipeline-orders", "order-pipeline-inventory", "order-pipeline-payments",
        "order-pipeline-views",
    }  # fmt: skip
    [admitted] = [span for span in spans if span["name"] == "admit_orders PlaceOrder"]
    assert admitted["attributes"]["pipeline.event_id"] == envelope.event_id


def test_an_idempotency_key_replays_the_first_answer(gateway: Gateway, settings: Settings, store: redis.Redis) -> None:
    user, key = uid("u"), uid("idem")
    first = gateway.send("POST", "/api/orders", order_body("SKU-IDEM"), subject=user, headers={"Idempotency-Key": key})
    assert first.status == 202
    again = gateway.send("POST", "/api/orders", order_body("SKU-IDEM"), subject=user, headers={"Idempotency-Key": key})
    assert again.status == 202 and again.body == first.body and again.headers["Idempotent-Replayed"] == "true"
    different = gateway.send("POST", "/api/orders", order_body("SKU-IDEM", 3), subject=user,
                             headers={"Idempotency-Key": key})  # fmt: skip
    assert different.status == 422
    assert 0 < store.ttl(f"gateway:idem:{user}:{key}") <= 24 * 3600
    published = commands(settings, ORDER_COMMANDS.name, user)
    assert [v["order_id"] for _, v in published] == [first.body["order_id"]]
    assert published[0][1]["idempotency_key"] == key


def test_registering_and_updating_a_user(
    gateway: Gateway, pipeline: Pipeline, publisher: EventPublisher, settings: Settings
) -> None:
    email = f"{uid('ada')}@example.com"
    accepted = gateway.send("POST", "/api/users", {"username": "ada", "email": email}, subject="signup")
    assert accepted.status == 202 and accepted.body["status"] == "accepted"
    new_id = accepted.body["user_id"]
    registration = {"user_id": new_id, "username": "ada", "email": email, "profile": {}}
    assert [v for _, v in commands(settings, USER_COMMANDS.name, new_id)][:1] == [registration]

    # the users service registers the user (and then applies its default preferences: version 2)
    user = new_id
    current = gateway.get(f"/api/users/{user}?min_version=2", subject=user)
    assert current.status == 200 and current.body["version"] == 2 and current.headers["ETag"] == '"2"'
    conflict = gateway.send("PATCH", f"/api/users/{user}", {"profile": {"city": "Paris"}}, subject=user,
                            headers={"If-Match": '"1"'})  # fmt: skip
    assert (conflict.status, conflict.body) == (409, {"error": "Version conflict", "expected": 1, "actual": 2})
    patched = gateway.send("PATCH", f"/api/users/{user}", {"profile": {"city": "Paris"}}, subject=user,
                           headers={"If-Match": '"2"'})  # fmt: skip
    assert patched.status == 202
    assert patched.body == {"user_id": user, "command_id": patched.body["command_id"], "status": "accepted",
                            "expected_version": 2, "version": 3,
                            "poll": f"/api/users/{user}?min_version=3"}  # fmt: skip
    from_gateway = [v for m, v in commands(settings, USER_COMMANDS.name, user)
                    if m.headers.get("ce_source", "").endswith("/gateway")]  # fmt: skip
    assert from_gateway == [registration, {"user_id": user, "expected_version": 2, "changes": {"city": "Paris"}}], (
        "the 409 published nothing; the 202 published one command"
    )
    updated = gateway.get(f"/api/users/{user}?min_version=3", subject=user)
    assert updated.status == 200 and updated.body["profile"]["city"] == "Paris"


def test_user_commands_and_queries_over_http_each_command_with_a_status_saying_what_became_of_it(
    gateway: Gateway, pipeline: Pipeline
) -> None:
    prefix = uid("web")
    taken = f"{prefix}-taken@example.com"
    other = gateway.send("POST", "/api/users", {"username": f"{prefix}-zed", "email": taken}, subject="signup")
    mine = gateway.send("POST", "/api/users", {"username": f"{prefix}-ada", "email": f"{prefix}@example.com",
                                               "profile": {"city": "Zürich"}}, subject="signup")  # fmt: skip
    for accepted in (other, mine):
        assert accepted.status == 202 and accepted.body["status"] == "accepted", accepted.body
        assert accepted.headers["Location"] == f"/api/commands/{accepted.body['command_id']}"
        # a registration waits for its e-mail claim; its outcome names the command all the same
        registered = decided(gateway, "signup", accepted.headers["Location"], pipeline)
        assert (registered["status"], registered["event"], registered["version"]) == ("applied", "UserRegistered", 1)
    user = mine.body["user_id"]
    assert gateway.get(mine.headers["Location"], subject=user).status == 404, "only its sender reads it"
    assert gateway.get(f"/api/users/{user}?min_version=2", subject=user).body["version"] == 2  # default preferences

    def run(path: str, body: Any = None, **headers: str) -> dict[str, Any]:
        accepted = gateway.send("POST", f"/api/users/{user}/{path}", body, subject=user, headers=headers)
        assert accepted.status == 202, accepted.body
        return decided(gateway, user, accepted.headers["Location"], pipeline)

    login = run("logins")  # no body at all
    assert (login["status"], login["event"], login["version"]) == ("applied", "UserLoggedIn", 3)
    stats = gateway.get(f"/api/users/{user}/stats", subject=user)  # written with the outcome: no guessing
    assert stats.status == 200 and stats.body["login_count"] == 1 and stats.body["orders_placed"] == 0

    in_use = run("email", {"email": taken})
    assert (in_use["status"], in_use["reason"], in_use["event"]) == ("refused", EMAIL_IN_USE, "UserCommandRejected")
    changed = run("email", {"email": f"{prefix}-new@example.com"})
    assert (changed["status"], changed["event"]) == ("applied", "UserEmailChanged")
    assert gateway.get(f"/api/users/{user}", subject=user).body["email"] == f"{prefix}-new@example.com"

    conflict = run("deactivate", {"reason": "testing"}, **{"If-Match": '"1"'})
    assert conflict["status"] == "refused" and (conflict["expected_version"], conflict["actual_version"]) == (1, 4)
    assert conflict["reason"] == "concurrency conflict: expected version 1, actual version 4"
    assert (run("deactivate", {"reason": "moving away"}, **{"If-Match": '"4"'}))["status"] == "applied"
    again = run("deactivate", {"reason": "twice"})
    assert (again["status"], again["reason"]) == ("refused", "user is already deactivated")

    # admission refuses an order of a deactivated user: the order's command status says so, with the reason
    placed = gateway.send("POST", "/api/orders", order_body(uid("sku")), subject=user)
    assert placed.status == 202
    rejected = decided(gateway, user, placed.headers["Location"], pipeline)
    assert (rejected["status"], rejected["event"], rejected["reason"]) == ("refused", "OrderRejected", "user_inactive")
    assert (run("reactivate"))["status"] == "applied"

    def search(**query: str) -> list[dict[str, Any]]:
        answer = gateway.get("/api/users?" + urllib.parse.urlencode(query), subject=user)
        assert answer.status == 200, answer.body
        return list(answer.body["users"])

    found = search(username_prefix=prefix.upper(), profile_key="city", profile_value="ZÜRICH")
    assert [u["user_id"] for u in found] == [user]
    assert set(found[0]) == {"user_id", "username", "registered_at", "active"}, "public fields only"
    assert [u["username"] for u in search(username_prefix=prefix)] == [f"{prefix}-ada", f"{prefix}-zed"]
    assert search(username_prefix=prefix, registered_before="1") == []
    assert gateway.get("/api/users?active=maybe", subject=user).status == 400


def test_replicas_share_one_rate_limit_budget(settings: Settings, topics: None, workdir: Path) -> None:
    budget = {"PIPELINE_RATE_LIMIT_REQUESTS": str(SMALL_BUDGET), "PIPELINE_RATE_LIMIT_WINDOW_S": "60"}
    replicas = [start_gateway(settings, workdir, f"limited-{n}", **budget) for n in range(2)]
    try:
        user = uid("u")
        answers = [replicas[n % 2].get("/api/dashboard", subject=user) for n in range(SMALL_BUDGET + 1)]
        assert [a.status for a in answers] == [200] * SMALL_BUDGET + [429]
        assert answers[-1].body == {"error": "Too many requests"}
        assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
        assert replicas[0].get("/api/dashboard", subject=uid("u")).status == 200  # another client's own budget
    finally:
        for replica in replicas:
            stop_gateway(replica)


def test_clients_from_two_loopback_addresses_have_budgets_of_their_own(
    settings: Settings, topics: None, workdir: Path, store: redis.Redis
) -> None:
    """Requests without a valid token are limited per client address: the TCP peer, or what a trusted proxy says.

    127.0.0.2 is a client that invents X-Forwarded-For addresses (not believed: one budget), 127.0.0.3 another
    client and, being listed in PIPELINE_GATEWAY_TRUSTED_PROXIES, a proxy whose forwarded clients count apart.
    """
    budget = {"PIPELINE_RATE_LIMIT_REQUESTS": "3", "PIPELINE_RATE_LIMIT_WINDOW_S": "60",
              "PIPELINE_GATEWAY_TRUSTED_PROXIES": "127.0.0.3"}  # fmt: skip
    gateway = start_gateway(settings, workdir, "gateway-loopback", **budget)
    forwarded = [f"198.51.100.{n}" for n in (7, 8)]
    for address in ("127.0.0.2", "127.0.0.3", *forwarded):
        store.delete(f"gateway:ratelimit:ip:{address}")

    async def statuses(source: str, headers: list[dict[str, str]]) -> list[int]:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            found = []
            for extra in headers:
                async with session.get(gateway.url + "/api/dashboard", headers=extra) as answer:
                    found.append(answer.status)
            return found

    async def scenario() -> None:
        spoofing = [{"X-Forwarded-For": f"203.0.113.{n}"} for n in range(4)]
        assert await statuses("127.0.0.2", spoofing) == [401, 401, 401, 429]
        assert await statuses("127.0.0.3", [{}]) == [401], "another address, another budget"
        via_proxy = [{"X-Forwarded-For": f"203.0.113.1, {forwarded[0]}"}] * 4 + [{"X-Forwarded-For": forwarded[1]}]
        assert await statuses("127.0.0.3", via_proxy) == [401, 401, 401, 429, 401]

    try:
        asyncio.run(scenario())
        assert set(store.scan_iter("gateway:ratelimit:ip:*")) >= {
            f"gateway:ratelimit:ip:{address}" for address in ("127.0.0.2", "127.0.0.3", *forwarded)
        }
        assert not any(store.scan_iter("gateway:ratelimit:ip:203.0.113.*")), "no invented address got a budget"
    finally:
        stop_gateway(gateway)


def test_a_stopped_broker_is_503_and_nothing_is_half_written(
    settings: Settings, workdir: Path, store: redis.Redis
) -> None:
    """A gateway on a broker of its own, which is stopped under it and started again."""
    shared = settings
    with kafka_node() as node:
        own = shared.model_copy(update={"kafka_bootstrap": node.bootstrap})
        apply_topics(admin_client(own), own)
        gateway = start_gateway(own, workdir, "gateway-own-broker", PIPELINE_GATEWAY_PUBLISH_TIMEOUT_S="2")
        try:
            user, key = uid("u"), uid("idem")
            before = gateway.send("POST", "/api/orders", order_body("SKU-503"), subject=user)
            assert before.status == 202
            node.stop_broker()
            answer = gateway.send("POST", "/api/orders", order_body("SKU-503"), subject=user,
                                  headers={"Idempotency-Key": key})  # fmt: skip
            assert (answer.status, answer.body) == (503, {"error": "Service temporarily unavailable"})
            assert store.exists(f"gateway:idem:{user}:{key}") == 0, "a failed publish caches no answer"
            ready = gateway.get("/ready")
            assert ready.status == 503 and ready.body["status"] == "fail"
            assert ready.body["checks"]["kafka:responseTime"][0]["status"] == "fail"
            assert ready.body["checks"]["redis:responseTime"][0]["status"] == "pass"
            assert gateway.get("/api/dashboard", subject=user).status == 200, "reads need only Redis"
        finally:
            stop_gateway(gateway)
        node.start_broker()
        published: list[str] = []

        def read_back() -> bool:  # the partitions' leaders are elected again a moment after the broker is up
            published[:] = [v["order_id"] for _, v in commands(own, ORDER_COMMANDS.name, user)]
            return True

        wait_until(read_back, timeout=60, what="the order commands readable again")
        assert published == [before.body["order_id"]], "the refused order was not written, even later"


def passing_health(pipeline: Pipeline, service: str, base: str) -> Answer:
    """The worker's /health once it passes (the view service's views are whole a moment after it is ready)."""
    seen: list[Answer] = []

    def passes() -> bool:
        pipeline.assert_alive()
        seen.append(http("GET", base + "/health"))
        return seen[-1].status == 200 and seen[-1].body["status"] == "pass"

    wait_until(passes, timeout=60, what=lambda: f"{service} passing on {base}: {seen[-1].body if seen else None}")
    return seen[-1]


def test_every_worker_serves_health_readiness_liveness_and_metrics(pipeline: Pipeline) -> None:
    for service, port in pipeline.http_ports.items():
        base = f"http://127.0.0.1:{port}"
        health = passing_health(pipeline, service, base)
        body = health.body
        assert health.headers["Content-Type"].startswith("application/health+json")
        assert body["serviceId"] == service
        assert {"uptime", "progress:stalledFor", "kafka:responseTime", "memory:utilization", "tables:recovered",
                "partitions:assigned", "kafka:consumerLag"} <= set(body["checks"])  # fmt: skip
        assert all(c["status"] == "pass" for listed in body["checks"].values() for c in listed)
        assert body["checks"]["partitions:assigned"][0]["observedValue"] > 0
        if service == "payments":
            assert body["checks"]["payment-provider:responseTime"][0]["observedUnit"] == "ms"
            assert body["checks"]["payment-provider:circuitBreaker"][0]["observedValue"] == "closed"
        if service == "views":
            assert body["checks"]["views:mirrored"][0]["observedValue"] > 0
            assert "redis:responseTime" in http("GET", base + "/ready").body["checks"]
        else:
            assert "redis:responseTime" not in body["checks"], f"{service} never uses the query side's Redis"
        ready = http("GET", base + "/ready")
        assert ready.status == 200 and ready.body["status"] == "pass"
        live = http("GET", base + "/live")
        assert live.status == 200 and live.body["status"] == "pass"
        assert set(live.body["checks"]) == {"uptime", "progress:stalledFor"}
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            exposition = response.read().decode()
        assert "pipeline_step_seconds_bucket" in exposition
        assert "pipeline_consumer_lag{" in exposition


def test_the_payments_worker_warns_while_its_provider_is_down_and_stays_ready(
    pipeline: Pipeline, provider_ledger: redis.Redis
) -> None:
    base = f"http://127.0.0.1:{pipeline.http_ports['payments']}"
    provider_ledger.set(OUTAGE, "1")
    try:
        health = http("GET", base + "/health")
        assert health.status == 200 and health.body["status"] == "warn", health.body
        [provider] = health.body["checks"]["payment-provider:responseTime"]
        assert provider["status"] == "warn" and provider["output"].endswith("payment provider unavailable (503)")
        assert health.body["output"].startswith("payment-provider:responseTime warn")
        assert http("GET", base + "/ready").status == 200, "charges it cannot take are parked: still ready"
    finally:
        provider_ledger.delete(OUTAGE)
    wait_until(lambda: http("GET", base + "/health").body["status"] == "pass", timeout=30, what="provider back")


def test_readiness_fails_while_redis_is_down_and_recovers(settings: Settings, topics: None, workdir: Path) -> None:
    with redis_node() as own_redis:
        gateway = start_gateway(
            settings.model_copy(update={"redis_url": own_redis.url}), workdir, "gateway-own-redis",
            PIPELINE_REDIS_URL=own_redis.url,
        )  # fmt: skip
        try:
            assert gateway.get("/ready").status == 200
            container = own_redis.container.get_wrapped_container()
            container.stop(timeout=5)
            wait_until(lambda: gateway.get("/ready").status == 503, timeout=30, what="not ready without Redis")
            body = gateway.get("/ready").body
            [check] = body["checks"]["redis:responseTime"]
            assert body["status"] == "fail" and check["status"] == "fail" and check["output"]
            assert gateway.get("/health").status == 503, "/health fails whenever /ready does"
            assert gateway.get("/live").status == 200, "alive all the same"
            container.start()
            wait_until(lambda: gateway.get("/ready").status == 200, timeout=60, what="ready again with Redis back")
        finally:
            stop_gateway(gateway)


@pytest.fixture(scope="module")
def unlimited_gateway(settings: Settings, topics: None, workdir: Path) -> Iterator[Gateway]:
    """A gateway whose rate limit a fuzzer does not reach."""
    running = start_gateway(settings, workdir, "gateway-fuzzed", PIPELINE_RATE_LIMIT_REQUESTS="1000000")
    yield running
    stop_gateway(running)


def test_fuzzing_every_operation_from_the_openapi_document_finds_no_server_error(unlimited_gateway: Gateway) -> None:
    """Schemathesis generates requests (valid and invalid) from the gateway's own document: never a 5xx."""
    gateway = unlimited_gateway
    document = gateway.get("/openapi.json").body
    schema = schemathesis.openapi.from_dict(document)
    auth = gateway.auth(uid("fuzz"))
    server_errors: list[str] = []
    statuses: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /api/orders", "PATCH /api/users/{user_id}", "GET /api/dashboard", "GET /api/users",
        "POST /api/users/{user_id}/email", "POST /api/users/{user_id}/deactivate",
        "POST /api/users/{user_id}/reactivate", "POST /api/users/{user_id}/logins", "GET /api/users/{user_id}/stats",
        "GET /api/commands/{command_id}",
    }  # fmt: skip

    for operation in operations:

        @hypothesis_settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def no_server_error(case: Any) -> None:
            response = case.call(base_url=gateway.url, headers={**(case.headers or {}), **auth}, timeout=30)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}")

        no_server_error()
    assert server_errors == []
    assert len(statuses) >= 5 * len(operations), "the fuzzer really called every operation"
    assert {202, 422} <= set(statuses), f"accepted and refused requests both seen: {sorted(set(statuses))}"
