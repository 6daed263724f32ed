"""The tests' bounded wait (``wait_until``): it returns once the condition holds, retries what is "not yet",
lets a broken invariant through at once, and names what it waited for when time runs out."""

from __future__ import annotations

import time

import pytest

from bench.stack import wait_until

pytestmark = pytest.mark.unit


def test_returns_as_soon_as_the_condition_holds() -> None:
    answers = iter([False, False, True])
    calls = {"n": 0}

    def check() -> bool:
        calls["n"] += 1
        return next(answers)

    wait_until(check, timeout=5, what="the third answer", interval=0.001)
    assert calls["n"] == 3


def test_an_exception_is_not_yet_and_the_last_one_is_reported() -> None:
    def unreachable() -> bool:
        raise ConnectionError("broker down")

    with pytest.raises(TimeoutError) as info:
        wait_until(unreachable, timeout=0.05, what=lambda: "Kafka at here", interval=0.01)
    assert str(info.value) == "Kafka at here not reached within 0s (last error: ConnectionError('broker down'))"


def test_a_condition_that_never_holds_reports_no_error() -> None:
    with pytest.raises(TimeoutError, match=r"^consumer group ready not reached within 0s \(last error: None\)$"):
        wait_until(lambda: False, timeout=0.05, what="consumer group ready", interval=0.01)


def test_an_assertion_error_passes_straight_through() -> None:
    calls = {"n": 0}

    def dead_process() -> bool:
        calls["n"] += 1
        raise AssertionError("worker exited with 1")

    started = time.monotonic()
    with pytest.raises(AssertionError, match="worker exited with 1"):
        wait_until(dead_process, timeout=30, what="never", interval=0.01)
    assert calls["n"] == 1 and time.monotonic() - started < 5
