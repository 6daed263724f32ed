"""``Idempotency-Key`` for POSTs: the same key from the same subject within 24 h gets the first answer again.

Redis key ``gateway:idem:<subject>:<key>`` holds a JSON record. The first request claims the key with
``SET NX`` as *pending* (a short TTL, so a gateway that dies mid-request does not block the key for a day),
publishes, then stores its 2xx answer with the 24 h TTL. A failed publish deletes the claim, so a retry
publishes afresh; nothing is cached for it. A later request with the key:

* same request (method, path and the validated body, compared by a SHA-256 fingerprint) and a stored answer
  → that answer again, with ``Idempotent-Replayed: true``;
* a different body (or another route) → 422;
* the first request still in flight → 409, try again shortly.

Redis unreachable → the caller answers 503: without the store, a retry could place a second order.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import redis.asyncio as aioredis

KEY_PREFIX = "gateway:idem:"
TTL_S = 24 * 60 * 60
_KEY_SYNTAX = re.compile(r"^[\x21-\x7e]{1,255}$")


class InvalidIdempotencyKey(ValueError):
    """The header is empty, too long, or not printable ASCII."""


def check_key(key: str) -> str:
    if not _KEY_SYNTAX.match(key):
        raise InvalidIdempotencyKey("Idempotency-Key must be 1-255 printable ASCII characters without spaces")
    return key


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class Claim:
    """What :meth:`IdempotencyStore.claim` found."""

    outcome: Literal["claimed", "replay", "mismatch", "in_progress"]
    response: StoredResponse | None = None


class IdempotencyStore:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int = TTL_S, pending_ttl_s: int = 60) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._pending_ttl_s = pending_ttl_s

    @staticmethod
    def redis_key(subject: str, key: str) -> str:
        return f"{KEY_PREFIX}{subject}:{key}"

    async def claim(self, subject: str, key: str, print_: str) -> Claim:
        redis_key = self.redis_key(subject, key)
        pending = json.dumps({"state": "pending", "fingerprint": print_})
        if await self._redis.set(redis_key, pending, nx=True, ex=self._pending_ttl_s):
            return Claim("claimed")
        raw = await self._redis.get(redis_key)
        if raw is None:  # the holder gave up between our SET and GET: try once more
            if await self._redis.set(redis_key, pending, nx=True, ex=self._pending_ttl_s):
                return Claim("claimed")
            raw = await self._redis.get(redis_key)
            if raw is None:
                return Claim("in_progress")
        record = json.loads(raw)
        if record.get("fingerprint") != print_:
            return Claim("mismatch")
        if record.get("state") != "done":
            return Claim("in_progress")
        return Claim("replay", StoredResponse(int(record["status"]), record["body"], record.get("headers") or {}))

    async def complete(self, subject: str, key: str, print_: str, response: StoredResponse) -> None:
        record = {
            "state": "done",
            "fingerprint": print_,
            "status": response.status,
            "body": response.body,
            "headers": response.headers,
        }
        await self._redis.set(self.redis_key(subject, key), json.dumps(record), ex=self._ttl_s)

    async def release(self, subject: str, key: str) -> None:
        await self._redis.delete(self.redis_key(subject, key))
