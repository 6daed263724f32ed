"""Per-client rate limit shared by every gateway replica through Redis: a sliding-window log.

Each client (``sub:<token subject>``, or ``ip:<address>`` for requests without a valid token) has a sorted set
``gateway:ratelimit:<client>`` holding one member per admitted request, scored by its time in milliseconds.
One Lua script, atomic on the Redis server, drops members older than the window, counts the rest, and admits
the request (adding its member) only while the count is under the limit. Time is Redis's own ``TIME``, so
replicas with skewed clocks still share one exact budget.

Why a sliding log and not a fixed window: a fixed window lets a client spend its budget twice around a window
boundary (100 requests at 14:59 and 100 more at 15:00); the log holds exactly "at most N in any W seconds".
It costs one small set member per admitted request (at most N per client) and the set expires with the window.
Refused requests are not recorded, so a client hammering past its budget does not extend its own ban;
``Retry-After`` is when the oldest admitted request leaves the window.

**Redis unreachable: the limiter fails open** (the request is admitted, ``degraded`` is set, and a warning is
logged at most once per ``WARN_EVERY_S``). The limit protects capacity against runaway clients, not data: every
request is still authenticated, and commands still go only to Kafka, which is what must stay available when the
query side's Redis is down. Failing closed would turn a Redis outage into a full outage of the command side.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("gateway.ratelimit")

KEY_PREFIX = "gateway:ratelimit:"
WARN_EVERY_S = 30.0
REDIS_TIMEOUT_S = 1.0

SLIDING_WINDOW = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local member = ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
  return {1, count + 1, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local retry = window
if oldest[2] then retry = tonumber(oldest[2]) + window - now end
if retry < 1 then retry = 1 end
return {0, count, retry}
"""
"""KEYS[1] the client's set; ARGV limit, window (ms), a unique member. Returns {admitted, count, retry_ms}."""


@dataclass(frozen=True)
class Decision:
    """The limiter's answer for one request."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int = 0
    degraded: bool = False
    """True when the limiter could not ask Redis and admitted the request anyway (fail open)."""


class RateLimiter(Protocol):
    async def hit(self, client: str) -> Decision: ...


class RedisRateLimiter:
    """The sliding-window log above; ``client`` is ``sub:<subject>`` or ``ip:<address>``."""

    def __init__(self, redis: aioredis.Redis, *, limit: int, window_s: float) -> None:
        self._redis = redis
        self.limit = limit
        self.window_ms = max(1, int(window_s * 1000))
        self._script = redis.register_script(SLIDING_WINDOW)
        self._last_warning = float("-inf")

    async def hit(self, client: str) -> Decision:
        try:
            reply = await asyncio.wait_for(
                self._script(keys=[KEY_PREFIX + client], args=[self.limit, self.window_ms, uuid.uuid4().hex]),
                REDIS_TIMEOUT_S,
            )
            admitted, count, retry_ms = (int(x) for x in reply)
        except Exception as exc:  # noqa: BLE001 - any failure to ask Redis fails open, by design (see module doc)
            self._warn(exc)
            return Decision(True, self.limit, self.limit, degraded=True)
        if admitted:
            return Decision(True, self.limit, max(0, self.limit - count))
        return Decision(False, self.limit, 0, retry_after_s=max(1, -(-retry_ms // 1000)))

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "rate limiter cannot reach Redis (%s: %s); admitting requests unlimited (fail open)",
                type(exc).__name__,
                exc,
            )
