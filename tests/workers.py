"""The pipeline's own processes for integration tests: real `pipeline worker` and `pipeline project` processes.

They run as separate OS processes against the testcontainers broker and Redis, exactly as a person starts
them, so the tests can kill them with real signals. Readiness is observed, not assumed: a worker is ready
once its consumer group is stable with partitions assigned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.admin import admin_client, groups_not_ready, worker_groups
from pipeline.settings import Settings
from streams.topics import SERVICES
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
    """The running workers and projector of one test module."""

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

    def restart(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill ``name`` with ``sig`` and start it again (the crash a test wants to survive)."""
        process = self.processes[name]
        process.kill(sig)
        process.start()


def worker_env(settings: Settings, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIPELINE_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        PIPELINE_REDIS_URL=settings.redis_url,
        PIPELINE_DATA_DIR=str(data_dir),
        PIPELINE_WORKER_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@contextmanager
def running_pipeline(
    settings: Settings, workdir: Path, *, worker_http: bool = False, **env_overrides: str
) -> Iterator[Pipeline]:
    """Start every service's worker and the projector; stop them all afterwards (logs kept in ``workdir``).

    With ``worker_http`` each worker serves /metrics, /health, /ready and /live on a port of its own
    (``Pipeline.http_ports``)."""
    env = worker_env(settings, workdir / "faust", **env_overrides)
    pipeline = Pipeline(settings, env)
    for service in SERVICES:
        own = dict(env)
        if worker_http:
            pipeline.http_ports[service] = free_port()
            own["PIPELINE_WORKER_HTTP_PORT"] = str(pipeline.http_ports[service])
        pipeline.processes[service] = Process(service, [PIPELINE, "worker", service], own, workdir / f"{service}.log")
    pipeline.processes["projector"] = Process("projector", [PIPELINE, "project"], env, workdir / "projector.log")
    try:
        for process in pipeline.processes.values():
            process.start()
        admins = [admin_client(settings)]

        def ready() -> bool:
            pipeline.assert_alive()
            return not groups_not_ready(admins[0], worker_groups())

        wait_until(ready, timeout=120, what="workers and projector holding their partitions", interval=0.5)
        # let the client go while the broker is up: destroying one after a broker restart can hang for good
        admins.clear()
        yield pipeline
    finally:
        for process in pipeline.processes.values():
            process.stop()
        if sys.exc_info()[0] is not None:
            for process in pipeline.processes.values():
                print(f"--- {process.name} ---\n{process.log_tail()}")
