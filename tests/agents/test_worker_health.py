"""Every worker's health, as its bootstrap wires it: which checks ``/live``, ``/ready`` and ``/health`` run.

Built by ``create_app`` (nothing connects); the broker check is replaced so no client is made.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import streams.endpoint
from common.health import Check
from schemas.topics import SERVICES
from streams.bootstrap import create_app
from streams.endpoint import worker_health
from streams.watchdog import Watchdog
from tests.agents.conftest import agent_settings

pytestmark = pytest.mark.agents

EVERY_WORKER = {"progress:stalledFor", "uptime", "kafka:responseTime", "tables:recovered", "partitions:assigned",
                "kafka:consumerLag", "memory:utilization"}  # fmt: skip


async def answered() -> None:
    return None


def checks_of(service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Check]]:
    monkeypatch.setattr(streams.endpoint, "broker_check", lambda settings: Check("kafka:responseTime", answered))
    settings = agent_settings(tmp_path)
    built = create_app(service, settings)
    watchdog = Watchdog(settings, service, [], busy_for=lambda: 0.0, ready=lambda: False)
    health = worker_health(built, settings, watchdog)
    return {kind: health.chosen(kind) for kind in ("live", "ready", "health")}


@pytest.mark.parametrize("service", SERVICES)
def test_every_worker_has_the_same_core_checks(service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = checks_of(service, tmp_path, monkeypatch)
    assert {c.name for c in chosen["live"]} == {"uptime", "progress:stalledFor"}
    assert EVERY_WORKER <= {c.name for c in chosen["health"]}
    assert {c.name for c in chosen["ready"]} >= {"kafka:responseTime", "tables:recovered", "partitions:assigned",
                                                  "kafka:consumerLag"}  # fmt: skip
    assert "memory:utilization" not in {c.name for c in chosen["ready"]}, "memory only warns"


def test_the_view_service_needs_redis_and_reports_whether_its_views_are_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = checks_of("views", tmp_path, monkeypatch)
    assert "redis:responseTime" in {c.name for c in chosen["ready"]}, "Redis is where its work goes"
    assert "views:mirrored" in {c.name for c in chosen["health"]} - {c.name for c in chosen["ready"]}


def test_the_payments_worker_probes_its_provider_beside_the_breaker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = checks_of("payments", tmp_path, monkeypatch)
    extra = {c.name for c in chosen["health"]} - EVERY_WORKER
    assert extra == {"payment-provider:responseTime", "payment-provider:circuitBreaker"}
    assert not any(c.critical for c in chosen["health"] if c.name in extra), "the provider away only warns"


@pytest.mark.parametrize("service", ["orders", "inventory", "notifications", "users"])
def test_workers_that_never_use_redis_do_not_wait_for_it(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert {c.name for c in checks_of(service, tmp_path, monkeypatch)["health"]} == EVERY_WORKER


async def test_a_worker_that_just_started_is_live_and_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams.endpoint, "broker_check", lambda settings: Check("kafka:responseTime", answered))
    settings = agent_settings(tmp_path)
    built = create_app("orders", settings)
    health = worker_health(built, settings, Watchdog(settings, "orders", [], busy_for=lambda: 0.0, ready=lambda: False))
    live_status, live = await health.answer("live")
    ready_status, ready = await health.answer("ready")
    assert (live_status, json.loads(live)["status"]) == (200, "pass")
    document = json.loads(ready)
    assert (ready_status, document["status"]) == (503, "fail")
    assert document["checks"]["tables:recovered"][0]["output"] == "table recovery not finished"
    assert document["serviceId"] == "orders"
