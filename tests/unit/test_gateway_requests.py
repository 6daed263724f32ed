"""What the gateway accepts as a request body, and the headers every answer carries (gateway/parsing.py,
gateway/models.py, gateway/middleware.py), over real HTTP on loopback with the unit-test stand-ins."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from gateway.app import hide_server_version
from gateway.parsing import MAX_JSON_DEPTH, json_depth_exceeds
from tests.gateway_support import Client, Env

pytestmark = pytest.mark.unit

ORDER: dict[str, Any] = {
    "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}],
    "payment": {"method": "card", "token": "tok_ok"},
}
USER: dict[str, Any] = {"username": "ada", "email": "ada@example.com", "profile": {"city": "London"}}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def env() -> Env:
    env = Env()
    env.put_user("u-1", 1)
    return env


# --- content type ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "text/json",
        "application/jsonp",
        "application/json; charset=latin-1",
    ],
)
def test_a_body_not_declared_json_is_415_and_publishes_nothing(env: Env, content_type: str | None) -> None:
    async def scenario(client: Client) -> None:
        headers = {**env.auth(), **({"Content-Type": content_type} if content_type else {})}
        for method, path in (("POST", "/api/orders"), ("POST", "/api/users")):
            data = json.dumps(ORDER if path == "/api/orders" else USER).encode()
            answer = await client.request(method, path, data=data, headers=headers)
            body = await answer.json()
            assert answer.status == 415, body
            assert body["error"].startswith("Request body must be JSON (Content-Type: application/json, UTF-8)")
            assert answer.headers["Accept-Post"] == "application/json"
        patch = await client.patch(
            "/api/users/u-1", data=b'{"profile": {"a": "b"}}', headers={**headers, "If-Match": '"1"'}
        )
        assert patch.status == 415 and patch.headers["Accept-Patch"] == "application/json"
        assert env.publisher.sent == []

    env.run(scenario)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON; charset=UTF-8",
        "application/vnd.x+json",
    ],
)
def test_json_and_plus_json_types_are_accepted(env: Env, content_type: str) -> None:
    async def scenario(client: Client) -> None:
        headers = {**env.auth(), "Content-Type": content_type}
        assert (await client.post("/api/orders", data=json.dumps(ORDER), headers=headers)).status == 202
        assert (await client.post("/api/users", data=json.dumps(USER), headers=headers)).status == 202
        assert len(env.publisher.sent) == 2

    env.run(scenario)


# --- nesting depth -----------------------------------------------------------------------------------------


def test_the_depth_count_skips_strings_and_escapes() -> None:
    assert json_depth_exceeds("[" * 33 + "]" * 33, 32)
    assert not json_depth_exceeds("[" * 32 + "]" * 32, 32)
    assert not json_depth_exceeds('{"a": "[[[[{{{{ \\" [[[["}', 1)
    assert json_depth_exceeds('{"a": "\\\\", "b": [[]]}', 2)  # an escaped backslash ends where the string does


@pytest.mark.parametrize("shape", ["arrays", "objects"])
def test_json_nested_deeper_than_the_cap_is_400_on_every_body(env: Env, shape: str) -> None:
    def nested(depth: int) -> str:
        return "[" * depth + "]" * depth if shape == "arrays" else '{"a":' * depth + "1" + "}" * depth

    async def scenario(client: Client) -> None:
        headers = {**env.auth(), **JSON}
        for depth in (MAX_JSON_DEPTH + 1, 10_000):  # 10,000 levels: within the body limit, beyond the recursion limit
            for method, path, extra in (
                ("POST", "/api/orders", {}),
                ("POST", "/api/users", {}),
                ("PATCH", "/api/users/u-1", {"If-Match": '"1"'}),
            ):
                answer = await client.request(method, path, data=nested(depth), headers={**headers, **extra})
                body = await answer.json()
                assert answer.status == 400, (method, path, depth, body)
                assert body == {"error": "JSON nested too deeply: at most 32 levels of objects and arrays"}
        # at the cap it is parsed, and the model refuses it as any other wrong shape
        at_cap = await client.post("/api/orders", data='{"lines":' + nested(MAX_JSON_DEPTH - 1) + "}", headers=headers)
        assert at_cap.status == 422
        assert env.publisher.sent == []

    env.run(scenario)


def test_brackets_inside_strings_do_not_count_as_nesting(env: Env) -> None:
    async def scenario(client: Client) -> None:
        user = {**USER, "profile": {"motto": "[" * 500 + '{"' * 200}}
        answer = await client.post("/api/users", data=json.dumps(user), headers={**env.auth(), **JSON})
        assert answer.status == 202
        assert env.publisher.sent[0].value["profile"]["motto"].startswith("[[[")

    env.run(scenario)


# --- clean text in every string field ------------------------------------------------------------------------

ORDER_FIELDS = {
    "lines[0].sku": lambda o, bad: o["lines"][0].update(sku=f"SKU{bad}"),
    "payment.method": lambda o, bad: o["payment"].update(method=f"card{bad}"),
    "payment.token": lambda o, bad: o["payment"].update(token=f"tok{bad}"),
}
USER_FIELDS = {
    "username": lambda u, bad: u.update(username=f"ada{bad}"),
    "email": lambda u, bad: u.update(email=f"ada{bad}@example.com"),
    "profile.city": lambda u, bad: u["profile"].update(city=f"London{bad}"),
    "profile.ci{bad}ty[key]": lambda u, bad: u.update(profile={f"ci{bad}ty": "London"}),
}
BAD = ["\x00", "\t", "\x1b", "\x7f", "\x82", "\x9f", "\ud800", "\udc00"]


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied


@pytest.mark.parametrize("bad", BAD, ids=[f"U+{ord(c):04X}" for c in BAD])
def test_control_characters_and_unpaired_surrogates_are_422_in_every_string_field(env: Env, bad: str) -> None:
    async def post(client: Client, path: str, value: dict[str, Any], *, ascii_only: bool) -> dict[str, Any]:
        data = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass" if ascii_only else "strict")
        answer = await client.post(path, data=data, headers={**env.auth(), **JSON})
        body: dict[str, Any] = await answer.json()
        assert answer.status == 422, body
        return body

    async def scenario(client: Client) -> None:
        code = f"U+{ord(bad):04X}"
        kind = "an unpaired surrogate" if "\ud800" <= bad <= "\udfff" else "a control character"
        # as a JSON escape (\u0082, \ud800), and, where UTF-8 can carry it, as the raw character
        encodings = (True,) if kind == "an unpaired surrogate" or bad < " " else (True, False)
        for ascii_only in encodings:
            for path, model, fields in (("/api/orders", ORDER, ORDER_FIELDS), ("/api/users", USER, USER_FIELDS)):
                for field, spoil in fields.items():
                    value = _copy(model)
                    spoil(value, bad)
                    body = await post(client, path, value, ascii_only=ascii_only)
                    [detail] = body["details"]
                    if "[key]" not in field:
                        assert detail["field"] == field
                    assert f"contains {kind} ({code})" in detail["message"], detail
        patch = await client.patch("/api/users/u-1", data=json.dumps({"profile": {"city": f"x{bad}"}}),
                                   headers={**env.auth(), **JSON, "If-Match": '"1"'})  # fmt: skip
        assert patch.status == 422
        assert env.publisher.sent == []

    env.run(scenario)


def test_text_in_any_script_and_escaped_surrogate_pairs_are_accepted(env: Env) -> None:
    async def scenario(client: Client) -> None:
        user = {**USER, "profile": {"name": "Zoë Ærø", "city": "東京", "mood": "🙂"}}
        answer = await client.post("/api/users", data=json.dumps(user), headers={**env.auth(), **JSON})  # \ud83d\ude42
        assert answer.status == 202
        assert env.publisher.sent[0].value["profile"] == user["profile"]

    env.run(scenario)


# --- headers -----------------------------------------------------------------------------------------------


def test_every_answer_has_nosniff_and_api_answers_are_not_stored(env: Env) -> None:
    env.settings = env.settings.model_copy(update={"rate_limit_requests": 3})

    async def scenario(client: Client) -> None:
        answers = [
            await client.get("/api/dashboard", headers=env.auth()),  # 200
            await client.post("/api/orders", json=ORDER, headers=env.auth()),  # 202
            await client.get("/api/orders/o-x", headers=env.auth()),  # 404
            await client.get("/api/dashboard"),  # 401
            await client.get("/api/dashboard"),
            await client.get("/api/dashboard"),
            await client.get("/api/dashboard"),  # 429
            await client.post("/api/orders", data="x", headers={**env.auth("u-2"), "Content-Type": "text/plain"}),
            await client.get("/api/nowhere", headers=env.auth("u-2")),  # 404, unmatched
        ]
        assert [a.status for a in answers] == [200, 202, 404, 401, 401, 401, 429, 415, 404]
        for answer in answers:
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["Cache-Control"] == "no-store"
            assert answer.headers["Server"] == "order-pipeline-gateway"
        for path in ("/live", "/health", "/openapi.json", "/metrics", "/nope"):
            answer = await client.get(path)
            assert answer.headers["X-Content-Type-Options"] == "nosniff", path
            assert answer.headers["Server"] == "order-pipeline-gateway", path

    env.run(scenario)


def test_answers_of_the_http_parser_name_no_versions_either(env: Env) -> None:
    """A malformed request is answered by aiohttp before any app code; :func:`hide_server_version` covers it."""
    hide_server_version()

    def send_raw(port: int, data: bytes) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(data)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
        return received.decode("latin-1")

    async def scenario(client: Client) -> None:
        port = client.server.port
        assert port is not None
        for data in (b"GARBAGE\r\n\r\n", b"GET /live HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
            answer = await asyncio.to_thread(send_raw, port, data)
            assert answer.startswith("HTTP/1.") and " 400 " in answer.splitlines()[0], answer
            headers = answer.split("\r\n\r\n")[0].lower()
            assert "server: order-pipeline-gateway" in headers
            assert "aiohttp" not in headers and "python" not in headers

    env.run(scenario)
