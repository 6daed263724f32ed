"""The circuit breaker's state machine and the bounded, jittered retry, on a fake clock (no waiting)."""

from __future__ import annotations

import asyncio
import random

import pytest

from streams.resilience import BreakerState, CircuitBreaker, CircuitOpen, RetryPolicy, retry

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Down(Exception):
    pass


def breaker(clock: Clock, threshold: int = 3, reset: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker("provider", failure_threshold=threshold, reset_timeout_s=reset, clock=clock)


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    b = breaker(Clock())
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED, "failures must be consecutive"
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allow() and b.times_opened == 1


def test_after_the_reset_time_one_probe_goes_through() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.now += 4.9
    assert not b.would_allow()
    clock.now += 0.2
    assert b.state is BreakerState.HALF_OPEN and b.would_allow()
    assert b.allow(), "the probe"
    assert not b.allow() and not b.would_allow(), "one probe at a time"
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow()


def test_a_failed_probe_opens_it_again_for_a_full_reset_time() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    clock.now += 5
    assert b.allow()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.now += 4
    assert b.state is BreakerState.OPEN
    clock.now += 1
    assert b.state is BreakerState.HALF_OPEN
    assert b.times_opened == 1, "re-opening from half-open is the same outage"


def test_call_counts_only_dependency_failures() -> None:
    b = breaker(Clock(), threshold=1)

    async def bug() -> None:
        raise KeyError("a bug, not the provider")

    async def down() -> None:
        raise Down()

    with pytest.raises(KeyError):
        asyncio.run(b.call(bug, is_failure=lambda e: isinstance(e, Down)))
    assert b.state is BreakerState.CLOSED
    with pytest.raises(Down):
        asyncio.run(b.call(down, is_failure=lambda e: isinstance(e, Down)))
    with pytest.raises(CircuitOpen):
        asyncio.run(b.call(down, is_failure=lambda e: isinstance(e, Down)))


def test_retry_is_bounded_jittered_and_stops_at_once_for_other_errors() -> None:
    waits: list[float] = []
    calls = {"n": 0}

    async def sleep(s: float) -> None:
        waits.append(s)

    async def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise Down()
        return "ok"

    policy = RetryPolicy(attempts=3, base_s=0.1, cap_s=1.0)
    result = asyncio.run(
        retry(flaky, policy, transient=lambda e: isinstance(e, Down), rng=random.Random(1), sleep=sleep)
    )
    assert result == "ok" and calls["n"] == 3
    assert len(waits) == 2 and 0 <= waits[0] <= 0.1 and 0 <= waits[1] <= 0.2

    async def always_down() -> str:
        raise Down()

    waits.clear()
    with pytest.raises(Down):
        asyncio.run(retry(always_down, policy, transient=lambda e: isinstance(e, Down), sleep=sleep))
    assert len(waits) == 2, "three tries in all"

    async def broken() -> str:
        raise ValueError("not transient")

    waits.clear()
    with pytest.raises(ValueError):
        asyncio.run(retry(broken, policy, transient=lambda e: isinstance(e, Down), sleep=sleep))
    assert waits == []


def test_a_cancellation_is_never_retried() -> None:
    """Tenacity sees every ``BaseException``; a cancelled task must stop at once, whatever ``transient`` says."""
    waits: list[float] = []
    calls = {"n": 0}

    async def sleep(s: float) -> None:
        waits.append(s)

    async def cancelled_on_the_second_try() -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Down()
        raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(retry(cancelled_on_the_second_try, RetryPolicy(attempts=5), transient=lambda e: True, sleep=sleep))
    assert calls["n"] == 2 and len(waits) == 1


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, base_s=0.1, cap_s=0.5)
    top = random.Random(0)
    top.uniform = lambda a, b: b  # type: ignore[method-assign]
    assert [policy.delay(n, top) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_a_first_try_that_succeeds_draws_no_random_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every handled message runs through ``retry``; seeding a generator reads the OS's entropy, so it is made
    only once a try failed and a backoff must be drawn."""

    def no_generator() -> random.Random:
        raise AssertionError("a Random was made for a call that did not fail")

    monkeypatch.setattr(random, "Random", no_generator)

    async def fine() -> int:
        return 7

    assert asyncio.run(retry(fine, RetryPolicy(attempts=3, base_s=0.01), transient=lambda e: True)) == 7
