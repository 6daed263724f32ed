"""A worker's health checks (:mod:`common.health` has the rules, :mod:`streams.endpoint` serves them): its
progress, its readiness, and what its service adds (the payment provider, the view service's Redis and views,
the circuit breakers).

* Liveness: ``progress:stalledFor``, how long the worker has made no progress by the watchdog's rules (a source
  partition's waiting messages standing still, or one step running): warn from half of
  ``PIPELINE_STALL_TIMEOUT_S``, fail from all of it, when the watchdog stops the process.
* Readiness (critical): ``tables:recovered``, ``partitions:assigned`` and ``kafka:consumerLag`` (under
  ``PIPELINE_READY_MAX_LAG`` on every source topic).
* Not critical, so at worst a warning: ``<breaker>:circuitBreaker`` (open or half-open warns: the calls it refuses
  wait, parked or retried, and the worker keeps taking traffic), ``payment-provider:responseTime`` (the provider
  asked directly, beside its breaker) and ``views:mirrored`` (whether Redis holds every view partition whole).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common.health import FAIL, PASS, WARN, Check, Observation
from common.settings import Settings
from common.telemetry import BREAKER_STATE
from streams.resilience import BreakerState, CircuitBreaker
from streams.views.read import mirrored_async

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from streams.payment_provider import SimulatedPaymentProvider
    from streams.watchdog import Watchdog

BREAKER_LEVEL = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
"""The ``pipeline_breaker_state`` gauge's value of each state."""


def show_breaker(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, also set on its gauge."""
    state = breaker.state
    BREAKER_STATE.labels(breaker.name).set(BREAKER_LEVEL[state])
    return state


def breaker_check(breaker: CircuitBreaker) -> Check:
    """The breaker's state: closed passes; open or half-open warns, never fails, because what it refuses is parked
    or retried and the worker still takes traffic (the dependency's own check says whether it answers)."""

    async def probe() -> Observation:
        state = show_breaker(breaker)
        if state is BreakerState.CLOSED:
            return Observation(PASS, state.value)
        if state is BreakerState.HALF_OPEN:
            return Observation(WARN, state.value, output="half-open: one call goes through to try the dependency")
        failures = breaker.snapshot().consecutive_failures
        output = (
            f"open after {failures} failed calls: calls are refused and wait (parked or retried) until it lets "
            "one through; warn, not fail, as the worker still takes traffic"
        )
        return Observation(WARN, state.value, output=output)

    return Check(f"{breaker.name}:circuitBreaker", probe, critical=False, component_type="component")


def provider_check(provider: SimulatedPaymentProvider, timeout_s: float) -> Check:
    """The payment provider answers its cheap probe within ``timeout_s``; observed: the round trip. Not critical:
    charges it cannot take are parked and asked again, so a provider away is a warning."""

    async def probe() -> None:
        await provider.probe(timeout_s)

    return Check("payment-provider:responseTime", probe, critical=False, timeout_s=timeout_s + 0.5,
                 component_type="component")  # fmt: skip


def views_check(redis: aioredis.Redis) -> Check:
    """Redis holds every view table partition whole (``views-meta:mirrored``); fewer warns: they are being
    re-mirrored or rebuilt, and reads say ``stale`` meanwhile. Observed: the partitions held."""

    async def probe() -> Observation:
        held, wanted = await mirrored_async(redis)
        if held >= wanted:
            return Observation(PASS, held, "partitions")
        output = (
            f"{wanted - held} of {wanted} view table partitions not whole in Redis (re-mirrored after a flush, "
            "or rebuilt); reads answer stale meanwhile"
        )
        return Observation(WARN, held, "partitions", output)

    return Check("views:mirrored", probe, critical=False, component_type="component")


def stall_check(watchdog: Watchdog, stall_timeout_s: float) -> Check:
    """Liveness: how long the worker has made no progress (messages waiting and standing still, or one step
    running); fails at the watchdog's limit."""

    async def probe() -> Observation:
        stalled_for = round(watchdog.stuck_for(), 3)
        if stalled_for >= stall_timeout_s:
            output = f"no progress for {stalled_for:g}s (limit {stall_timeout_s:g}s): the watchdog stops the worker"
            return Observation(FAIL, stalled_for, "s", output)
        if stalled_for >= stall_timeout_s / 2:
            output = f"no progress for {stalled_for:g}s (stopped at {stall_timeout_s:g}s)"
            return Observation(WARN, stalled_for, "s", output)
        return Observation(PASS, stalled_for, "s")

    return Check("progress:stalledFor", probe, component_type="component")


def readiness_checks(
    recovered: Callable[[], bool], assigned: Callable[[], int], watchdog: Watchdog, settings: Settings
) -> list[Check]:
    """Ready to take traffic: tables recovered, partitions held, and lag under ``ready_max_lag`` on every source."""

    async def tables() -> Observation:
        if recovered():
            return Observation(PASS, True)
        return Observation(FAIL, False, output="table recovery not finished")

    async def partitions() -> Observation:
        if not recovered():
            return Observation(FAIL, output="counted once the tables are recovered")
        held = assigned()
        if not held:
            return Observation(FAIL, 0, "partitions", "holds no partitions")
        return Observation(PASS, held, "partitions")

    async def lag() -> Observation:
        behind: dict[str, Any] | None = watchdog.lag
        if behind is None:
            return Observation(FAIL, output="not measured yet (the watchdog has not looked, or the broker is away)")
        if over := {topic: n for topic, n in behind.items() if n > settings.ready_max_lag}:
            return Observation(FAIL, behind, "messages", f"over {settings.ready_max_lag} on {over}")
        return Observation(PASS, behind, "messages")

    return [
        Check("tables:recovered", tables, component_type="component"),
        Check("partitions:assigned", partitions, component_type="component"),
        Check("kafka:consumerLag", lag, component_type="component"),
    ]
