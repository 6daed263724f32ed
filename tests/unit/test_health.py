"""The one health vocabulary of every process (common.health): check objects, the document, the status rules."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from common.health import (
    CONTENT_TYPE,
    FAIL,
    PASS,
    WARN,
    Check,
    Health,
    Observation,
    health_document,
    http_status,
    memory_check,
    run_check,
    uptime_check,
    worst,
)

pytestmark = pytest.mark.unit

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def answers() -> None:
    return None


async def refuses() -> None:
    raise ConnectionError("refused")


async def hangs() -> None:
    await asyncio.Event().wait()


def seen(observation: Observation) -> Any:
    async def probe() -> Observation:
        return observation

    return probe


def run(check: Check) -> dict[str, Any]:
    return asyncio.run(run_check(check))


def test_the_worst_status_wins_and_only_fail_is_503() -> None:
    assert worst([]) == PASS
    assert worst([PASS, WARN, PASS]) == WARN
    assert worst([WARN, FAIL, PASS]) == FAIL
    assert [http_status(s) for s in (PASS, WARN, FAIL)] == [200, 200, 503]
    assert CONTENT_TYPE == "application/health+json"


def test_a_probe_that_answers_passes_and_its_round_trip_is_the_observed_value() -> None:
    entry = run(Check("redis:responseTime", answers, component_type="datastore"))
    assert list(entry) == ["componentType", "observedValue", "observedUnit", "status", "time"]
    assert entry["componentType"] == "datastore" and entry["status"] == "pass" and entry["observedUnit"] == "ms"
    assert isinstance(entry["observedValue"], float) and entry["observedValue"] >= 0
    assert ISO_UTC.match(entry["time"]), entry["time"]


def test_a_probe_that_raises_or_hangs_fails_with_why() -> None:
    refused = run(Check("kafka:responseTime", refuses))
    assert refused["status"] == "fail" and refused["output"] == "ConnectionError: refused"
    assert "observedValue" not in refused and "componentType" not in refused
    silent = run(Check("kafka:responseTime", hangs, timeout_s=0.05))
    assert silent["status"] == "fail" and silent["output"] == "no answer within 0.05s"


def test_a_check_that_is_not_critical_warns_where_a_critical_one_fails() -> None:
    assert run(Check("extra", refuses, critical=False))["status"] == "warn"
    assert run(Check("extra", hangs, critical=False, timeout_s=0.05))["status"] == "warn"
    assert run(Check("extra", seen(Observation(FAIL, 3, "x", "too many")), critical=False))["status"] == "warn"
    assert run(Check("extra", seen(Observation(WARN, output="so so"))))["status"] == "warn", "a warning stays one"


def test_an_observation_is_reported_as_seen_and_output_only_when_not_passing() -> None:
    lag = {"orders.events.v1": 12}
    failing = run(
        Check("kafka:consumerLag", seen(Observation(FAIL, lag, "messages", "over 10")), component_type="component")
    )
    assert failing == {
        "componentType": "component",
        "observedValue": lag,
        "observedUnit": "messages",
        "status": "fail",
        "time": failing["time"],
        "output": "over 10",
    }
    warning = run(Check("x:y", seen(Observation(WARN, "open", output="refused calls wait"))))
    assert warning == {
        "observedValue": "open",
        "status": "warn",
        "time": warning["time"],
        "output": "refused calls wait",
    }
    passing = run(Check("x:y", seen(Observation(PASS, False, output="nothing to say"))))
    assert passing == {"observedValue": False, "status": "pass", "time": passing["time"]}, "false is a value"


def test_the_document_is_the_draft_shape_with_the_worst_status_and_an_output_naming_what_did_not_pass() -> None:
    now = "2026-01-01T00:00:00.000Z"
    document = health_document(
        "payments",
        "order-pipeline payments worker",
        [
            ("uptime", {"observedValue": 3.0, "observedUnit": "s", "status": "pass", "time": now}),
            ("payment-provider:circuitBreaker", {"observedValue": "open", "status": "warn", "time": now,
                                                 "output": "open after 5 failed calls"}),
            ("memory:utilization", {"status": "warn", "time": now}),
        ],
    )  # fmt: skip
    assert list(document) == ["status", "serviceId", "description", "output", "checks"]
    assert document["status"] == "warn" and document["serviceId"] == "payments"
    assert (
        document["output"] == "payment-provider:circuitBreaker warn: open after 5 failed calls; memory:utilization warn"
    )
    assert all(isinstance(v, list) and len(v) == 1 for v in document["checks"].values())
    assert "output" not in health_document("gateway", "g", [("uptime", {"status": "pass", "time": now})])


def test_one_name_twice_is_one_key_with_two_instances() -> None:
    now = "2026-01-01T00:00:00.000Z"
    document = health_document("s", "d", [("redis:responseTime", {"status": "pass", "time": now}),
                                          ("redis:responseTime", {"status": "fail", "time": now})])  # fmt: skip
    assert document["status"] == "fail" and len(document["checks"]["redis:responseTime"]) == 2


def test_live_ready_and_health_run_their_own_checks_and_answer_in_one_shape() -> None:
    health = Health(
        "orders",
        "order-pipeline orders worker",
        live=[uptime_check(0.0), Check("progress:stalledFor", seen(Observation(PASS, 0.0, "s")))],
        checks=[
            Check("kafka:responseTime", answers),
            Check("tables:recovered", seen(Observation(FAIL, False, output="table recovery not finished"))),
            Check("memory:utilization", refuses, critical=False),
        ],
    )

    async def answers_of() -> dict[str, tuple[int, dict[str, Any]]]:
        out = {}
        for kind in ("live", "ready", "health"):
            status, body = await health.answer(kind)
            out[kind] = (status, json.loads(body))
        return out

    got = asyncio.run(answers_of())
    assert got["live"][0] == 200 and set(got["live"][1]["checks"]) == {"uptime", "progress:stalledFor"}
    assert got["live"][1]["checks"]["uptime"][0]["componentType"] == "system"
    assert got["ready"][0] == 503 and set(got["ready"][1]["checks"]) == {"kafka:responseTime", "tables:recovered"}
    assert got["ready"][1]["output"] == "tables:recovered fail: table recovery not finished"
    status, document = got["health"]
    assert status == 503 and document["status"] == "fail", "/health fails whenever /ready or /live does"
    assert set(document["checks"]) == {"uptime", "progress:stalledFor", "kafka:responseTime", "tables:recovered",
                                       "memory:utilization"}  # fmt: skip
    assert document["checks"]["memory:utilization"][0]["status"] == "warn"
    for _, body in got.values():
        assert {"status", "serviceId", "description", "checks"} <= set(body) and body["serviceId"] == "orders"


def test_memory_passes_under_its_limit_and_warns_over_it_naming_the_setting() -> None:
    under = run(memory_check(1e9, "PIPELINE_WORKER_MEMORY_LIMIT_MB"))
    assert under["status"] == "pass" and under["observedUnit"] == "MiB" and under["observedValue"] > 0
    assert under["componentType"] == "system" and "output" not in under
    over = run(memory_check(1, "PIPELINE_WORKER_MEMORY_LIMIT_MB"))
    assert over["status"] == "warn"
    assert (
        over["output"]
        == f"resident {over['observedValue']:.0f} MiB over the 1 MiB limit (PIPELINE_WORKER_MEMORY_LIMIT_MB)"
    )
    assert run(memory_check(1, "X", critical=True))["status"] == "fail"
