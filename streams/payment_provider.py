"""A simulated payment provider: the external system the payment service charges through.

It behaves like a real one in the ways that matter to the saga: calls take time, some charges are declined,
refunds can fail, and every call is idempotent by key, so a retried charge never charges twice. Like a real
provider's status endpoint, :meth:`SimulatedPaymentProvider.probe` answers cheaply, moving no money, so a health
check can ask it whether it is there without waiting for a charge to fail. Its ledger
lives in Redis under ``provider:*``, in a database of its own (``Settings.provider_store``, not the query
side's, which may be flushed and rebuilt), which lets tests and the closing summary count what was really
charged and refunded.

Outcomes are deterministic: a seed and the order id decide them, unless the card token forces them. A token
is read as words: ``decline`` (always declined), ``slow`` (the charge takes ``slow_s`` seconds),
``refund_fails`` (every refund fails), ``ok`` (never declined); so ``tok_slow_refund_fails`` is a slow charge
whose refunds fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

PROBE_TIMEOUT_S = 1.0
"""How long :meth:`SimulatedPaymentProvider.probe` waits for its answer."""

LEDGER = "provider:charges"
REFUNDS = "provider:refunds"
OUTAGE = "provider:outage"
"""While this key exists the provider is down: every call fails with :class:`ProviderUnavailable` and moves no
money (``pipeline provider outage on|off``; tests set it to drive the circuit breaker)."""


class ProviderUnavailable(Exception):
    """The provider did not take the call (down, overloaded): nothing was charged or refunded; try later."""


@dataclass(frozen=True)
class ProviderBehaviour:
    latency_s: float = 0.005
    failure_rate: float = 0.0
    refund_failure_rate: float = 0.0
    seed: int = 7
    slow_s: float = 5.0


@dataclass(frozen=True)
class ChargeResult:
    ok: bool
    payment_id: str
    reason: str = ""


@dataclass(frozen=True)
class RefundResult:
    ok: bool
    reason: str = ""


def token_flags(token: str) -> set[str]:
    """The behaviours a test card token asks for: ``tok_slow_refund_fails`` → {slow, refund_fails}."""
    words = token.removeprefix("tok_")
    return {flag for flag in ("refund_fails", "decline", "slow", "ok") if flag in words}


def _draw(seed: int, *parts: str) -> float:
    """A number in [0, 1) fixed by the seed and the parts: the same call always gets the same outcome."""
    digest = hashlib.sha256(":".join((str(seed), *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class SimulatedPaymentProvider:
    """Charges and refunds with latency, declines and failures, idempotent by key."""

    def __init__(self, client: aioredis.Redis, behaviour: ProviderBehaviour) -> None:
        self._redis = client
        self._behaviour = behaviour

    async def charge(self, *, idempotency_key: str, amount_cents: int, currency: str, token: str) -> ChargeResult:
        """Charge once per idempotency key; a repeated call answers what the first one did."""
        b = self._behaviour
        flags = token_flags(token)
        await asyncio.sleep(b.slow_s if "slow" in flags else b.latency_s)
        await self._check_up()
        existing = await self._redis.hget(LEDGER, idempotency_key)
        if existing is not None:
            return _charge_from(json.loads(existing))
        # a token that names a behaviour is never declined by chance
        declined = "decline" in flags or (not flags and _draw(b.seed, "charge", idempotency_key) < b.failure_rate)
        entry: dict[str, Any] = {
            "payment_id": f"pay_{hashlib.sha1(idempotency_key.encode()).hexdigest()[:16]}",
            "amount_cents": amount_cents,
            "currency": currency,
            "token": token,
            "status": "declined" if declined else "charged",
        }
        # HSETNX: two racing calls with one key still record one outcome, and both read it back
        await self._redis.hsetnx(LEDGER, idempotency_key, json.dumps(entry))
        stored = await self._redis.hget(LEDGER, idempotency_key)
        return _charge_from(json.loads(stored if stored is not None else json.dumps(entry)))

    async def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        """One round trip to the provider (no latency simulated, no money moved): it answers and is up.

        Raises :class:`ProviderUnavailable` when it does not answer within ``timeout_s``, cannot be reached, or
        is down."""
        try:
            down = await asyncio.wait_for(self._redis.exists(OUTAGE), timeout_s)
        except TimeoutError as exc:
            raise ProviderUnavailable(f"no answer within {timeout_s:g}s") from exc
        except (RedisError, OSError) as exc:
            raise ProviderUnavailable(f"unreachable: {exc}") from exc
        if down:
            raise ProviderUnavailable("payment provider unavailable (503)")

    async def _check_up(self) -> None:
        if await self._redis.exists(OUTAGE):
            raise ProviderUnavailable("payment provider unavailable (503)")

    async def refund(self, *, idempotency_key: str, payment_id: str, attempt: int) -> RefundResult:
        """Refund a charge once; refunding an already refunded charge succeeds again without money moving."""
        b = self._behaviour
        await asyncio.sleep(b.latency_s)
        await self._check_up()
        raw = await self._redis.hget(LEDGER, idempotency_key)
        if raw is None or json.loads(raw)["payment_id"] != payment_id:
            return RefundResult(False, f"no charge {payment_id} for {idempotency_key}")
        entry = json.loads(raw)
        if entry["status"] == "refunded":
            return RefundResult(True)
        if (
            "refund_fails" in token_flags(entry.get("token", ""))
            or _draw(b.seed, "refund", idempotency_key, str(attempt)) < b.refund_failure_rate
        ):
            return RefundResult(False, "provider refused the refund")
        entry["status"] = "refunded"
        await self._redis.hset(LEDGER, idempotency_key, json.dumps(entry))
        await self._redis.hincrby(REFUNDS, idempotency_key, 1)
        return RefundResult(True)


async def set_outage(client: aioredis.Redis, down: bool) -> None:
    """Take the simulated provider down (every call fails) or bring it back."""
    if down:
        await client.set(OUTAGE, "1")
    else:
        await client.delete(OUTAGE)


def _charge_from(entry: dict[str, Any]) -> ChargeResult:
    if entry["status"] == "declined":
        return ChargeResult(False, entry["payment_id"], "card declined")
    return ChargeResult(True, entry["payment_id"])


async def ledger(client: aioredis.Redis) -> dict[str, dict[str, Any]]:
    """The provider's whole ledger: idempotency key → charge entry (for checks and summaries)."""
    raw = await client.hgetall(LEDGER)
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}
