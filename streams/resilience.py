"""Calling an unreliable dependency: bounded retries with backoff and jitter, and a circuit breaker.

Both are plain objects with the clock and the randomness injected, so their behaviour is tested without
waiting. The payment service wraps the provider in them (see ``streams.services``): transient errors are
retried a few times within one step; when the provider keeps failing the breaker opens, steps stop calling it
and park the charge as "payment pending" (``PaymentPending``), and a timer re-drives the parked charges once
the breaker lets a probe through.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

log = logging.getLogger(__name__)

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    """Calls go through; consecutive failures are counted."""
    OPEN = "open"
    """Calls are refused without trying, until ``reset_timeout_s`` has passed since it opened."""
    HALF_OPEN = "half_open"
    """One probe call goes through: its success closes the breaker, its failure opens it again."""


class CircuitOpen(Exception):
    """The breaker refused the call: the dependency is considered down."""


@dataclass(frozen=True)
class BreakerSnapshot:
    """What health checks and metrics show."""

    name: str
    state: BreakerState
    consecutive_failures: int
    opened_at: float | None
    times_opened: int


class CircuitBreaker:
    """Closed → (``failure_threshold`` consecutive failures) → open → (``reset_timeout_s``) → half-open → one
    probe: success closes, failure re-opens."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_timeout_s > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._opened_at is not None:
            if self._clock() - self._opened_at >= self.reset_timeout_s:
                self._move(BreakerState.HALF_OPEN)
        return self._state

    def would_allow(self) -> bool:
        """Whether a call made now would be let through (without taking the half-open probe)."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._probe_in_flight)

    def allow(self) -> bool:
        """Take permission for one call; in half-open only one probe at a time is let through."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        probe_failed = self._state is BreakerState.HALF_OPEN
        self._probe_in_flight = False
        if probe_failed or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            if self._state is BreakerState.CLOSED:
                self.times_opened += 1  # an outage; a failed probe only prolongs it
            if self._state is not BreakerState.OPEN:
                self._move(BreakerState.OPEN)

    async def call(self, operation: Callable[[], Awaitable[T]], *, is_failure: Callable[[Exception], bool]) -> T:
        """Run ``operation`` if allowed (else raise :class:`CircuitOpen`); exceptions ``is_failure`` accepts
        count against the dependency, others (a bug, a cancellation) pass through uncounted."""
        if not self.allow():
            raise CircuitOpen(f"{self.name}: circuit open")
        try:
            result = await operation()
        except Exception as exc:
            if is_failure(exc):
                self.record_failure()
            else:
                self._probe_in_flight = False
            raise
        self.record_success()
        return result

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(self.name, self.state, self._failures, self._opened_at, self.times_opened)

    def _move(self, state: BreakerState) -> None:
        log.warning("circuit breaker %s: %s -> %s", self.name, self._state, state)
        self._state = state


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: ``attempts`` tries in all, waiting ``base_s``·2^(n-1) capped at ``cap_s``, with full
    jitter (a uniform draw in [0, that]) so callers that failed together do not retry together."""

    attempts: int = 3
    base_s: float = 0.05
    cap_s: float = 1.0

    def delay(self, failed_attempt: int, rng: random.Random) -> float:
        """Wait after try number ``failed_attempt`` (1-based) failed: tenacity's ``wait_random_exponential``,
        drawn from ``rng`` rather than the module's generator so a test can seed it."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2 ** (failed_attempt - 1)))


async def retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    transient: Callable[[Exception], bool],
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``operation``; retry transient errors per ``policy``; re-raise the last error when tries run out
    (and at once for an error that is not transient).

    Every handled message runs through here, so the first try is made before anything else is built: tenacity's
    controller (tens of microseconds) and the random generator (seeding reads the OS's entropy) cost only the
    calls that failed once. Tenacity then runs the whole policy, its first attempt being the failure above."""
    try:
        return await operation()
    except Exception as exc:
        if not transient(exc) or policy.attempts <= 1:
            raise
        first_failure: Exception | None = exc
    draw = rng or random.Random()
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=lambda state: policy.delay(state.attempt_number, draw),
        retry=retry_if_exception(lambda e: isinstance(e, Exception) and transient(e)),  # never a cancellation
        sleep=sleep,
        reraise=True,
    ):
        with attempt:
            if first_failure is not None:
                failure, first_failure = first_failure, None
                raise failure
            return await operation()
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover
