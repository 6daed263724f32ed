"""The CLI when the broker or Redis cannot be reached: every command that needs one answers within seconds with one
line naming what it could not reach and where, exits non-zero, and prints neither librdkafka's retries nor a
traceback; a malformed call is refused for what it is; the commands that need nothing still work.

"Down" needs no container: a port of 127.0.0.1 nobody listens on refuses at once, and a socket that listens but
never answers stands for a dependency that hangs. Only the last test starts the real broker and Redis, to show
that the probe lets a reachable stack through.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.stack import free_port, wait_until
from tests.workers import PIPELINE, ROOT, run_cli

DEADLINE_S = 10.0
CONFIRMED = json.dumps({"order_id": "o-1", "payment_id": "p-1", "confirmed_at": 1767225600000})
PUBLISH = ["publish", "orders.events.v1", "OrderConfirmed"]

KAFKA, REDIS, PROVIDER = "kafka", "redis", "provider"
NAMES = {KAFKA: "Kafka", REDIS: "Redis", PROVIDER: "Redis"}


@dataclass(frozen=True)
class Stack:
    """Where the CLI is pointed: the address of each dependency as an error line names it."""

    kafka_port: int
    redis_port: int

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        env.update(
            PIPELINE_KAFKA_BOOTSTRAP=self.address(KAFKA),
            PIPELINE_REDIS_URL=self.address(REDIS),
            PIPELINE_JWT_SECRET=secrets.token_hex(32),
            PYTHONPATH=str(ROOT),  # the CLI of this checkout, whichever checkout the virtualenv was installed from
        )
        return env

    def address(self, dependency: str) -> str:
        return {
            KAFKA: f"127.0.0.1:{self.kafka_port}",
            REDIS: f"redis://127.0.0.1:{self.redis_port}/0",
            PROVIDER: f"redis://127.0.0.1:{self.redis_port}/1",  # the simulated provider's database
        }[dependency]


@pytest.fixture(scope="module")
def closed() -> Stack:
    """Two ports of 127.0.0.1 nobody listens on: a connection is refused at once."""
    kafka_port = free_port()
    redis_port = free_port()
    while redis_port == kafka_port:
        redis_port = free_port()
    return Stack(kafka_port, redis_port)


@pytest.fixture(scope="module")
def silent() -> Iterator[Stack]:
    """A port that accepts connections (the kernel completes them) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = int(listener.getsockname()[1])
        yield Stack(port, port)


def timed(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = run_cli(env, *args, timeout=60)
    return result, time.monotonic() - started


def assert_one_line(result: subprocess.CompletedProcess[str], elapsed: float) -> str:
    """Non-zero, within the deadline, nothing on stdout, one ``error:`` line on stderr; returns that line."""
    everything = result.stdout + result.stderr
    shown = f"{len(everything.splitlines())} lines after {elapsed:.1f}s, ending: {everything[-1500:]}"
    assert "Traceback" not in everything, shown
    assert "librdkafka" not in everything, shown
    assert result.returncode != 0, shown
    assert elapsed < DEADLINE_S, shown
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


NEEDS_BROKER_OR_REDIS = [
    pytest.param(["topics", "apply"], {KAFKA}, id="topics-apply"),
    pytest.param([*PUBLISH, "-k", "o-1", "-d", CONFIRMED], {KAFKA}, id="publish"),
    pytest.param(["tail", "orders.events.v1", "--max", "1"], {KAFKA}, id="tail"),
    pytest.param(["worker", "orders"], {KAFKA}, id="worker"),
    pytest.param(["worker", "views"], {KAFKA, REDIS}, id="worker-views"),
    pytest.param(["views", "rebuild"], {KAFKA, REDIS}, id="views-rebuild"),
    pytest.param(["order", "o-1"], {REDIS}, id="order"),
    pytest.param(["trace", "o-1"], {REDIS}, id="trace"),
    pytest.param(["stock", "sku-1"], {REDIS}, id="stock"),
    pytest.param(["user", "u-1"], {REDIS}, id="user"),
    pytest.param(["dlq", "list"], {KAFKA}, id="dlq-list"),
    pytest.param(["dlq", "replay", "--all"], {KAFKA}, id="dlq-replay"),
    pytest.param(["dlq", "discard", "orders.events.v1", "--at", "0:0"], {KAFKA}, id="dlq-discard"),
    pytest.param(["provider", "outage", "on"], {PROVIDER}, id="provider-outage"),
    pytest.param(["demo", "--orders", "1"], {KAFKA, REDIS}, id="demo"),  # the provider's Redis: the same server
    pytest.param(["wait-ready", "--timeout", "1"], {KAFKA, REDIS}, id="wait-ready"),
    pytest.param(["wait-workers", "--timeout", "1"], {KAFKA}, id="wait-workers"),
]


@pytest.mark.parametrize(("args", "needs"), NEEDS_BROKER_OR_REDIS)
def test_a_command_names_what_it_cannot_reach_in_one_line(closed: Stack, args: list[str], needs: set[str]) -> None:
    line = assert_one_line(*timed(closed.env, *args))
    for dependency in needs:
        assert f"cannot reach {NAMES[dependency]} at {closed.address(dependency)} (connection refused)" in line, line
    for dependency in {KAFKA, REDIS, PROVIDER} - needs:
        assert closed.address(dependency) + " " not in line, f"{args} does not need {dependency}: {line}"
    assert line.count("cannot reach") == len(needs), line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(["tail", "orders.events.v1"], "Kafka at {kafka} (accepts connections but answers no", id="tail"),
        pytest.param(
            [*PUBLISH, "-k", "o-1", "-d", CONFIRMED],
            "Kafka at {kafka} (accepts connections but answers no",
            id="publish",
        ),
        pytest.param(["order", "o-1"], "Redis at {redis} (no answer within", id="order"),
        pytest.param(["worker", "views"], "Redis at {redis} (no answer within", id="worker-views"),
    ],
)
def test_a_dependency_that_never_answers_costs_seconds_not_minutes(silent: Stack, args: list[str], says: str) -> None:
    line = assert_one_line(*timed(silent.env, *args))
    assert says.format(kafka=silent.address(KAFKA), redis=silent.address(REDIS)) in line, line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param([*PUBLISH, "-k", "o-1", "-d", "{oops"], "not valid JSON"),
        pytest.param([*PUBLISH, "-k", "o-2", "-d", CONFIRMED], "keyed by order_id"),
        pytest.param([*PUBLISH, "-k", "o-1", "-d", "{}"], "order_id"),
        pytest.param([*PUBLISH, "-d", CONFIRMED], "Missing option '--key'"),
        pytest.param(["tail", "nope.v1"], "unknown topic 'nope.v1'"),
        pytest.param(["dlq", "replay"], "choose what to replay"),
        pytest.param(["dlq", "discard", "orders.events.v1", "--at", "x"], "--at takes PARTITION:OFFSET"),
        pytest.param(["worker", "nobody"], "'nobody' is not one of"),
    ],
)
def test_a_malformed_call_is_refused_for_what_it_is(closed: Stack, args: list[str], says: str) -> None:
    result, elapsed = timed(closed.env, *args)
    assert result.returncode != 0
    assert elapsed < DEADLINE_S
    assert says in result.stderr, result.stderr
    assert "cannot reach" not in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [["topics", "list"], ["schemas", "list"], ["schemas", "check"], ["token", "--subject", "u-1"]],
    ids=["topics-list", "schemas-list", "schemas-check", "token"],
)
def test_a_command_that_needs_neither_works_without_them(closed: Stack, args: list[str]) -> None:
    result, elapsed = timed(closed.env, *args)
    assert result.returncode == 0, result.stderr
    assert elapsed < DEADLINE_S
    assert result.stdout and "cannot reach" not in result.stderr


def test_the_gateway_starts_without_them_says_so_once_and_answers_503(closed: Stack) -> None:
    port = free_port()
    started = time.monotonic()
    gateway = subprocess.Popen(
        [PIPELINE, "gateway", "--port", str(port)],
        env=closed.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    statuses: list[int] = []

    def not_ready() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
            return True
        except OSError:
            return False  # not listening yet
        statuses.append(200)
        return True

    try:
        wait_until(not_ready, timeout=DEADLINE_S, what="the gateway answering /ready")
        assert time.monotonic() - started < DEADLINE_S
    finally:
        gateway.terminate()
        _, stderr = gateway.communicate(timeout=30)
    assert statuses == [503]
    first = stderr.splitlines()[0]
    assert first.startswith("warning: "), stderr
    assert f"cannot reach Kafka at {closed.address(KAFKA)} (connection refused)" in first
    assert f"cannot reach Redis at {closed.address(REDIS)} (connection refused)" in first
    assert "Traceback" not in stderr
    assert sum("librdkafka" in line for line in stderr.splitlines()) <= 2, stderr  # one per 5 s at most


def test_a_reachable_stack_passes_the_probe(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "PYTHONPATH": str(ROOT)}
    for args in (["wait-ready", "--timeout", "60"], ["topics", "apply"]):
        result = run_cli(env, *args)
        assert result.returncode == 0, result.stderr
    result = run_cli(env, "publish", "orders.events.v1", "OrderConfirmed", "-k", "o-1", "-d", CONFIRMED)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["topic"] == "orders.events.v1"
