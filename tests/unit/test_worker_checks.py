"""A worker's checks (streams.checks) and the payment provider's probe, each status mapping on stand-ins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from common.health import Check, run_check
from common.settings import Settings
from streams.checks import breaker_check, provider_check, readiness_checks, stall_check, views_check
from streams.payment_provider import OUTAGE, ProviderBehaviour, ProviderUnavailable, SimulatedPaymentProvider
from streams.resilience import CircuitBreaker
from streams.views.keys import MIRRORED_KEY
from streams.views.tables import MIRRORED_FIELDS
from streams.watchdog import Watchdog

pytestmark = pytest.mark.unit


def run(check: Check) -> dict[str, Any]:
    return asyncio.run(run_check(check))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ProviderRedis:
    """The one command the probe sends (EXISTS), answering as told."""

    def __init__(self, *, down: bool = False, error: Exception | None = None, hang: bool = False) -> None:
        self.keys = {OUTAGE} if down else set()
        self.error = error
        self.hang = hang
        self.asked: list[str] = []

    async def exists(self, key: str) -> int:
        self.asked.append(key)
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return int(key in self.keys)


class MarksRedis:
    def __init__(self, marks: int) -> None:
        self.marks = marks

    async def hlen(self, key: str) -> int:
        assert key == MIRRORED_KEY
        return self.marks


def stub_watchdog(*, stalled_for: float = 0.0, busy_for: float = 0.0, lag: dict[str, int] | None = None) -> Watchdog:
    """A real watchdog that never looks at a broker: its stall clock and lag set by hand."""
    watchdog = Watchdog(Settings(), "g", [], busy_for=lambda: busy_for, ready=lambda: True)
    watchdog._detector = StubDetector(stalled_for)  # type: ignore[assignment]
    watchdog.lag = lag
    return watchdog


class StubDetector:
    def __init__(self, still_for: float) -> None:
        self._still_for = still_for

    def still_for(self, now: float) -> float:
        return self._still_for


def provider(client: ProviderRedis) -> SimulatedPaymentProvider:
    return SimulatedPaymentProvider(client, ProviderBehaviour(latency_s=5.0))  # type: ignore[arg-type]


# --- circuit breakers ---------------------------------------------------------------------------------------


def test_a_closed_breaker_passes_an_open_or_half_open_one_warns_and_never_fails() -> None:
    clock = Clock()
    breaker = CircuitBreaker("payment-provider", failure_threshold=2, reset_timeout_s=10, clock=clock)
    check = breaker_check(breaker)
    assert check.name == "payment-provider:circuitBreaker" and not check.critical
    closed = run(check)
    assert (closed["status"], closed["observedValue"], "output" in closed) == ("pass", "closed", False)

    breaker.record_failure()
    breaker.record_failure()
    opened = run(check)
    assert (opened["status"], opened["observedValue"]) == ("warn", "open")
    assert opened["output"].startswith("open after 2 failed calls") and "warn, not fail" in opened["output"]

    clock.now = 10
    half = run(check)
    assert (half["status"], half["observedValue"]) == ("warn", "half_open")
    breaker.record_success()
    assert run(check)["status"] == "pass"


# --- the payment provider -----------------------------------------------------------------------------------


def test_the_provider_probe_is_one_cheap_round_trip_without_the_simulated_latency() -> None:
    client = ProviderRedis()

    async def probe() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await provider(client).probe(timeout_s=1)
        return loop.time() - started

    assert asyncio.run(probe()) < 1, "a charge would take 5 s here; the probe does not wait for it"
    assert client.asked == [OUTAGE]


@pytest.mark.parametrize(
    ("client", "said"),
    [
        (ProviderRedis(down=True), "payment provider unavailable (503)"),
        (ProviderRedis(error=redis.ConnectionError("Connection refused")), "unreachable: Connection refused"),
        (ProviderRedis(hang=True), "no answer within 0.05s"),
    ],
)
def test_the_provider_probe_raises_provider_unavailable_saying_why(client: ProviderRedis, said: str) -> None:
    with pytest.raises(ProviderUnavailable, match=said.replace("(", r"\(").replace(")", r"\)")):
        asyncio.run(provider(client).probe(timeout_s=0.05))


def test_the_provider_check_passes_with_its_round_trip_and_warns_when_it_does_not_answer() -> None:
    up = run(provider_check(provider(ProviderRedis()), timeout_s=1))
    assert up["status"] == "pass" and up["observedUnit"] == "ms" and up["componentType"] == "component"
    down = run(provider_check(provider(ProviderRedis(down=True)), timeout_s=1))
    assert down["status"] == "warn", "not critical: charges it cannot take are parked"
    assert down["output"] == "ProviderUnavailable: payment provider unavailable (503)"
    silent = run(provider_check(provider(ProviderRedis(hang=True)), timeout_s=0.05))
    assert silent["status"] == "warn" and silent["output"] == "ProviderUnavailable: no answer within 0.05s"


# --- the view service ---------------------------------------------------------------------------------------


def test_views_pass_when_redis_holds_every_partition_and_warn_when_some_are_missing() -> None:
    whole = run(views_check(MarksRedis(len(MIRRORED_FIELDS))))  # type: ignore[arg-type]
    assert (whole["status"], whole["observedValue"], whole["observedUnit"]) == (
        "pass",
        len(MIRRORED_FIELDS),
        "partitions",
    )
    partial = run(views_check(MarksRedis(len(MIRRORED_FIELDS) - 3)))  # type: ignore[arg-type]
    assert partial["status"] == "warn"
    assert partial["output"].startswith(f"3 of {len(MIRRORED_FIELDS)} view table partitions not whole in Redis")


# --- liveness and readiness ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("stalled_for", "status"), [(0.0, "pass"), (14.9, "pass"), (15.0, "warn"), (30.0, "fail")])
def test_stalling_warns_from_half_the_timeout_and_fails_at_it(stalled_for: float, status: str) -> None:
    entry = run(stall_check(stub_watchdog(stalled_for=stalled_for), stall_timeout_s=30))
    assert entry["status"] == status and entry["observedValue"] == stalled_for and entry["observedUnit"] == "s"
    assert ("output" in entry) == (status != "pass")


def test_a_step_running_as_long_as_the_watchdog_allows_is_a_stall_too() -> None:
    entry = run(stall_check(stub_watchdog(stalled_for=2.0, busy_for=31.0), stall_timeout_s=30))
    assert (entry["status"], entry["observedValue"]) == ("fail", 31.0)
    assert entry["output"] == "no progress for 31s (limit 30s): the watchdog stops the worker"


def readiness(recovered: bool, held: int, lag: dict[str, int] | None) -> dict[str, dict[str, Any]]:
    def assigned() -> int:
        assert recovered, "partitions are counted only once the tables are recovered"
        return held

    checks = readiness_checks(lambda: recovered, assigned, stub_watchdog(lag=lag), Settings(ready_max_lag=100))
    assert all(check.critical for check in checks)
    return {check.name: run(check) for check in checks}


def test_a_worker_is_ready_with_tables_recovered_partitions_held_and_lag_under_the_limit() -> None:
    ready = readiness(True, 4, {"orders.events.v1": 100})
    assert {name: e["status"] for name, e in ready.items()} == {
        "tables:recovered": "pass",
        "partitions:assigned": "pass",
        "kafka:consumerLag": "pass",
    }
    assert ready["partitions:assigned"]["observedValue"] == 4
    assert ready["kafka:consumerLag"]["observedValue"] == {"orders.events.v1": 100}


def test_each_reason_not_to_be_ready_fails_its_own_check() -> None:
    recovering = readiness(False, 0, None)
    assert recovering["tables:recovered"]["output"] == "table recovery not finished"
    assert recovering["partitions:assigned"]["status"] == "fail"
    assert recovering["kafka:consumerLag"]["output"].startswith("not measured yet")
    idle = readiness(True, 0, {"orders.events.v1": 0})
    assert idle["partitions:assigned"]["output"] == "holds no partitions"
    behind = readiness(True, 2, {"orders.events.v1": 101, "users.events.v1": 3})
    assert behind["kafka:consumerLag"]["status"] == "fail"
    assert behind["kafka:consumerLag"]["output"] == "over 100 on {'orders.events.v1': 101}"
