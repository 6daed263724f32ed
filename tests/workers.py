"""The pipeline's own processes for integration tests: real `pipeline worker` processes (the view service's too).

They run as separate OS processes against the testcontainers broker and Redis, exactly as a person starts
them, so the tests can kill them with real signals. Readiness is observed, not assumed: a worker is ready
once its consumer group is stable with partitions assigned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common.settings import Settings
from schemas.topics import APP_PREFIX, SERVICES
from streams.watchdog import STALLED_EXIT_CODE
from tests.stack import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = str(ROOT / ".venv" / "bin" / "pipeline")


def run_cli(
    env: dict[str, str], *args: str, input: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``pipeline ARGS`` as a person runs it, with ``env`` (which points it at the test stack)."""
    return subprocess.run(
        [PIPELINE, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input, check=False
    )


@dataclass
class Process:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            self.popen.wait(timeout=60)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Pipeline:
    """The running workers of one test module (the view service's included)."""

    settings: Settings
    env: dict[str, str]
    processes: dict[str, Process] = field(default_factory=dict)
    watchdog_restarts: int = 0
    http_ports: dict[str, int] = field(default_factory=dict)
    """Each worker's /metrics, /health, /ready, /live port (``running_pipeline(worker_http=True)``)."""

    def assert_alive(self) -> None:
        """Act as the supervisor: restart a worker its watchdog stopped; fail on any other exit (a bug)."""
        for process in self.processes.values():
            if process.popen is not None and process.popen.poll() == STALLED_EXIT_CODE:
                self.watchdog_restarts += 1
                print(f"{process.name} stopped by its watchdog (stalled); restarting it")
                process.start()
        dead = [p for p in self.processes.values() if not p.alive]
        if dead:
            details = "\n".join(
                f"--- {p.name} (exit {p.popen.returncode if p.popen else '?'}) ---\n{p.log_tail()}" for p in dead
            )
            raise AssertionError(f"pipeline processes died:\n{details}")

    def commit_guard_warnings(self) -> list[str]:
        """The workers' log lines where the consumer caught a message fetched past unhandled or held a commit for
        one (``streams.faust_patches.AtLeastOnceConsumer``): each would have been a lost message without the guard."""
        marks = ("fetched past unhandled", "held at")
        found = []
        for process in self.processes.values():
            try:
                lines = process.log_path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            found += [f"{process.name}: {line}" for line in lines if any(mark in line for mark in marks)]
        return found

    def restart(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill ``name`` with ``sig`` and start it again (the crash a test wants to survive)."""
        process = self.processes[name]
        process.kill(sig)
        process.start()

    def worker(self, service: str, index: int = 0) -> Process:
        """Worker ``index`` of ``service`` (``running_pipeline(workers_per_service=N)``: 0 … N-1)."""
        return self.processes[worker_name(service, index)]

    def restart_worker(self, service: str, index: int = 0, sig: int = signal.SIGKILL) -> None:
        """Kill worker ``index`` of ``service`` with ``sig`` and start it again."""
        self.restart(worker_name(service, index), sig)


def worker_name(service: str, index: int = 0) -> str:
    """``orders`` for a service's first worker (the name every single-worker test uses), ``orders.1`` … after."""
    return service if index == 0 else f"{service}.{index}"


def worker_env(settings: Settings, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIPELINE_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        PIPELINE_REDIS_URL=settings.redis_url,
        PIPELINE_SCHEMA_REGISTRY_URL=settings.schema_registry_url,
        PIPELINE_DATA_DIR=str(data_dir),
        PIPELINE_TOPIC_REPLICATION_FACTOR=str(settings.topic_replication_factor),
        PIPELINE_TOPIC_MIN_INSYNC_REPLICAS=str(settings.topic_min_insync_replicas),
        PIPELINE_WORKER_LOG_LEVEL=os.environ.get("PIPELINE_TEST_WORKER_LOG_LEVEL", "warning"),
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


_WAIT_FOR_GROUPS = """
import json, sys, time
from common.admin import admin_client, groups_not_ready
from common.settings import Settings
admin, members = admin_client(Settings()), json.loads(sys.argv[1])
while True:
    try:
        if not groups_not_ready(admin, list(members), members=members, timeout=15):
            break
    except Exception as exc:  # a coordinator still loading or moving: ask again
        print(repr(exc), flush=True)
    time.sleep(0.5)
"""


@contextmanager
def groups_ready(env: dict[str, str], members: dict[str, int]) -> Iterator[Callable[[], bool]]:
    """A check that every group of ``members`` is stable with its members holding partitions.

    Asked from a child process: librdkafka's admin client can abort the whole process (assertion
    ``eonce->refcnt > 0`` in ``rd_kafka_enq_once_del_source_return``, librdkafka issues 4605 and 3663) when a
    group's coordinator request is retried, as it is while a cluster's coordinators load or move. A child that
    dies that way is started again; the test process survives."""
    child: subprocess.Popen[bytes] | None = None

    def ready() -> bool:
        nonlocal child
        if child is None or child.poll() not in (None, 0):
            if child is not None:
                print(f"group readiness check exited {child.returncode}; asking again")
            child = subprocess.Popen([sys.executable, "-c", _WAIT_FOR_GROUPS, json.dumps(members)], env=env, cwd=ROOT)
        return child.poll() == 0

    try:
        yield ready
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait(timeout=10)


@contextmanager
def running_pipeline(
    settings: Settings,
    workdir: Path,
    *,
    worker_http: bool = False,
    workers_per_service: int = 1,
    services: Sequence[str] = SERVICES,
    **env_overrides: str,
) -> Iterator[Pipeline]:
    """Start every service's worker(s), the view service's included, or only ``services``'; stop them all
    afterwards (logs in ``workdir``).

    With ``workers_per_service`` N, each service runs N processes in its one consumer group, each with its own
    data dir (``workdir/faust``, ``workdir/faust.1`` …) and log (``orders.log``, ``orders.1.log`` …). With
    ``worker_http`` each worker serves /metrics, /health, /ready and /live on a port of its own
    (``Pipeline.http_ports``, by worker name)."""
    env = worker_env(settings, workdir / "faust", **env_overrides)
    pipeline = Pipeline(settings, env)
    for service in services:
        for index in range(workers_per_service):
            name = worker_name(service, index)
            own = dict(env)
            if index:
                own["PIPELINE_DATA_DIR"] = str(workdir / f"faust.{index}")
            if worker_http:
                pipeline.http_ports[name] = free_port()
                own["PIPELINE_WORKER_HTTP_PORT"] = str(pipeline.http_ports[name])
            pipeline.processes[name] = Process(name, [PIPELINE, "worker", service], own, workdir / f"{name}.log")
    try:
        for process in pipeline.processes.values():
            process.start()
        members = {f"{APP_PREFIX}-{service}": workers_per_service for service in services}
        with groups_ready(env, members) as ready:

            def all_ready() -> bool:
                pipeline.assert_alive()
                return ready()

            wait_until(all_ready, timeout=180, what="workers holding their partitions", interval=0.5)
        yield pipeline
    finally:
        for process in pipeline.processes.values():
            process.stop()
        if sys.exc_info()[0] is not None:
            for process in pipeline.processes.values():
                print(f"--- {process.name} ---\n{process.log_tail()}")
