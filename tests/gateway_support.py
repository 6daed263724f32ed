"""Helpers for the gateway's tests: secrets and tokens, a server on a loopback port, a bounded wait, what a page
references, and (unit tests only) stand-ins.

:class:`MemoryPublisher` and :class:`DictRedis` replace the broker and Redis **in unit tests only**; the
integration tests run the same app against the real ones.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tenacity import AsyncRetrying, stop_after_delay, wait_fixed

from common.envelope import Envelope
from common.health import Check
from common.settings import Settings
from gateway.app import create_app
from gateway.auth import issue_token
from producers.toolkit import DeliveryFailed, RecordNotAllowed
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.topics import TopicSpec


def random_secret() -> str:
    """A fresh HS256 secret: every test run signs and verifies with its own, never one in the repository."""
    return secrets.token_urlsafe(48)


def gateway_settings(**overrides: Any) -> Settings:
    """Settings with a secret of their own (what the environment or a secret file says is never used)."""
    return Settings(**{"jwt_secret": random_secret(), **overrides})


def token_for(settings: Settings, subject: str, *, ttl_s: int = 600, **extra: Any) -> str:
    return issue_token(
        subject,
        settings.jwt_secret.get_secret_value(),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_s=ttl_s,
        extra=extra or None,
    )


def bearer(settings: Settings, subject: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(settings, subject)}"}


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The app on 127.0.0.1 (a random port) with a client for it."""
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Return once ``condition()`` holds, looking every 10 ms; fail after ``within_s``."""
    async for attempt in AsyncRetrying(stop=stop_after_delay(within_s), wait=wait_fixed(0.01), reraise=True):
        with attempt:
            assert condition(), f"condition not reached within {within_s}s"


# --- unit-test stand-ins ------------------------------------------------------------------------------------


@dataclass
class Sent:
    topic: str
    record: str
    key: str
    value: dict[str, Any]
    envelope: Envelope
    payload: bytes


@dataclass
class MemoryPublisher:
    """Encodes with the real codec (so schema errors are real), then keeps the message instead of sending it."""

    catalog: SchemaCatalog = field(default_factory=SchemaCatalog.load)
    sent: list[Sent] = field(default_factory=list)
    broken: bool = False
    """When set, every send fails as an unreachable broker would."""
    closed: bool = False

    async def send(
        self,
        topic: TopicSpec,
        record: str,
        key: str,
        value: Mapping[str, Any],
        *,
        correlation_id: str,
        traceparent: str,
        event_id: str | None = None,
    ) -> Envelope:
        schema = self.catalog.latest(record)
        if schema.name not in topic.records:
            raise RecordNotAllowed(f"{topic.name} does not carry {schema.name}")
        payload = AvroCodec(self.catalog).encode(schema.full_name, value, version=schema.version)
        if self.broken:
            raise DeliveryFailed(f"{topic.name} key={key!r}: broker unreachable (stand-in)")
        envelope = Envelope(
            event_type=schema.full_name,
            schema_version=schema.version,
            source="/order-pipeline/gateway",
            correlation_id=correlation_id,
            traceparent=traceparent,
            **({"event_id": event_id} if event_id is not None else {}),
        )
        self.sent.append(Sent(topic.name, record, key, dict(value), envelope, payload))
        return envelope

    async def close(self) -> None:
        self.closed = True


class DictRedis:
    """The few Redis commands the gateway uses, on dicts (``decode_responses=True`` semantics)."""

    def __init__(self) -> None:
        self.strings: dict[str, str] = {}
        self.expiry: dict[str, float] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.hashes: dict[str, dict[str, str]] = {}
        self.lists: dict[str, list[str]] = {}
        self.down = False
        self.calls: list[str] = []
        self._readers: dict[str, list[asyncio.Event]] = {}

    def next_read(self, key: str) -> asyncio.Event:
        """An event set when ``key`` is next read: a test knows a request it started is now waiting on it."""
        event = asyncio.Event()
        self._readers.setdefault(key, []).append(event)
        return event

    def _check(self, command: str) -> None:
        self.calls.append(command)
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused. (stand-in)")

    def _live(self, key: str) -> bool:
        deadline = self.expiry.get(key)
        if deadline is not None and time.monotonic() >= deadline:
            self.strings.pop(key, None)
            self.expiry.pop(key, None)
        return key in self.strings

    async def ping(self) -> bool:
        self._check("PING")
        return True

    async def get(self, key: str) -> str | None:
        self._check("GET")
        value = self.strings[key] if self._live(key) else None
        for event in self._readers.pop(key, []):
            event.set()
        return value

    async def set(self, key: str, value: str, *, nx: bool = False, ex: int | None = None) -> bool | None:
        self._check("SET")
        if nx and self._live(key):
            return None
        self.strings[key] = value
        if ex is not None:
            self.expiry[key] = time.monotonic() + ex
        else:
            self.expiry.pop(key, None)
        return True

    async def hlen(self, key: str) -> int:
        self._check("HLEN")
        return len(self.hashes.get(key, {}))

    async def exists(self, *keys: str) -> int:
        self._check("EXISTS")
        return sum(k in self.strings for k in keys)

    async def delete(self, *keys: str) -> int:
        self._check("DEL")
        return sum(self.strings.pop(k, None) is not None for k in keys)

    async def zrevrange(self, key: str, start: int, end: int) -> list[str]:
        self._check("ZREVRANGE")
        members = sorted(self.zsets.get(key, {}).items(), key=lambda kv: (-kv[1], kv[0]))
        return [m for m, _ in members][start : None if end == -1 else end + 1]

    async def mget(self, keys: list[str]) -> list[str | None]:
        self._check("MGET")
        return [self.strings[k] if self._live(k) else None for k in keys]

    async def zcard(self, key: str) -> int:
        self._check("ZCARD")
        return len(self.zsets.get(key, {}))

    async def zrangebylex(self, key: str, low: str | bytes, high: str | bytes) -> list[str]:
        """Members between two bounds, ``-``/``+`` or ``[`` inclusive (what the user search asks), bytewise."""
        self._check("ZRANGEBYLEX")

        def bound(raw: str | bytes, open_end: bytes) -> bytes:
            data = raw.encode() if isinstance(raw, str) else raw
            return open_end if data in (b"-", b"+") else data.removeprefix(b"[")

        lowest, highest = bound(low, b""), bound(high, b"\xff" * 8)
        return sorted(m for m in self.zsets.get(key, {}) if lowest <= m.encode() <= highest)

    async def zrangebyscore(self, key: str, low: str, high: str) -> list[str]:
        """Members scored between two bounds, ``(`` exclusive, ``-inf``/``+inf`` open."""
        self._check("ZRANGEBYSCORE")

        def within(score: float) -> bool:
            above = low == "-inf" or (score > float(low[1:]) if low.startswith("(") else score >= float(low))
            below = high == "+inf" or (score < float(high[1:]) if high.startswith("(") else score <= float(high))
            return above and below

        members = sorted(self.zsets.get(key, {}).items(), key=lambda kv: (kv[1], kv[0]))
        return [m for m, score in members if within(score)]

    async def hmget(self, key: str, fields: list[str]) -> list[str | None]:
        self._check("HMGET")
        return [self.hashes.get(key, {}).get(f) for f in fields]

    async def lrange(self, key: str, start: int, end: int) -> list[str]:
        self._check("LRANGE")
        return self.lists.get(key, [])[start : None if end == -1 else end + 1]

    def keys_matching(self, pattern: str) -> list[str]:
        return [k for k in self.strings if fnmatch.fnmatch(k, pattern) and self._live(k)]

    def register_script(self, script: str) -> Any:
        """Only the rate limiter registers a script: a sliding window kept in Python, with the Lua's reply."""
        windows: dict[str, list[float]] = {}

        async def call(keys: list[str], args: list[Any]) -> list[int]:
            self._check("EVALSHA")
            limit, window_ms = int(args[0]), int(args[1])
            now = time.monotonic() * 1000
            hits = [t for t in windows.get(keys[0], []) if t > now - window_ms]
            if len(hits) < limit:
                hits.append(now)
                windows[keys[0]] = hits
                return [1, len(hits), 0]
            windows[keys[0]] = hits
            return [0, len(hits), max(1, int(hits[0] + window_ms - now))]

        return call


async def ok() -> None:
    return None


Client = TestClient[web.Request, web.Application]


class Env:
    """One gateway app (:func:`gateway.app.create_app`) with its stand-ins and a secret of its own (unit tests)."""

    def __init__(self, **overrides: Any) -> None:
        self.settings = gateway_settings(**{"read_wait_max_s": 0.3, **overrides})
        self.publisher = MemoryPublisher()
        self.redis = DictRedis()
        self.checks = [Check("kafka:responseTime", ok), Check("redis:responseTime", ok)]

    def run(self, scenario: Callable[[Client], Awaitable[None]]) -> None:
        async def main() -> None:
            app = create_app(self.settings, self.publisher, self.redis, checks=self.checks)  # type: ignore[arg-type]
            async with serving(app) as client:
                await asyncio.wait_for(scenario(client), 30)

        asyncio.run(main())

    def auth(self, subject: str = "u-1") -> dict[str, str]:
        return bearer(self.settings, subject)

    def put_user(self, user_id: str, version: int, **fields: Any) -> None:
        view = {
            "user_id": user_id,
            "username": user_id,
            "email": f"{user_id}@example.com",
            "profile": {},
            "active": True,
            "version": version,
            **fields,
        }
        self.redis.strings[f"view:user:{user_id}"] = json.dumps(view)

    def put_order(self, order_id: str, user_id: str | None, status: str = "PLACED") -> None:
        view = {"order_id": order_id, "user_id": user_id, "status": status, "timeline": []}
        self.redis.strings[f"view:order:{order_id}"] = json.dumps(view)


@dataclass
class PageReferences:
    """What an HTML page loads (``src`` and ``href`` values), and whether it carries any inline script or style."""

    urls: list[str] = field(default_factory=list)
    inline: list[str] = field(default_factory=list)


def page_references(html: str) -> PageReferences:
    """The URLs ``html`` references and its inline code (script bodies, ``<style>``, ``style=`` and ``on*=``)."""
    found = PageReferences()

    class Collect(HTMLParser):
        tag = ""

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tag = tag
            for name, value in attrs:
                if name in ("src", "href") and value is not None:
                    found.urls.append(value)
                if name == "style" or name.startswith("on"):
                    found.inline.append(f"<{tag} {name}=...>")
            if tag == "style":
                found.inline.append("<style>")

        def handle_data(self, data: str) -> None:
            if self.tag == "script" and data.strip():
                found.inline.append(f"<script>{data.strip()[:40]}")

        def handle_endtag(self, tag: str) -> None:
            self.tag = ""

    Collect().feed(html)
    return found
