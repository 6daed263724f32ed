"""The pipeline's own processes for the benchmark: real ``pipeline worker`` processes.

The minimum of tests/workers.py: start every service's worker (the view service's too) as OS processes against the
benchmark's stack (their pids are what py-spy and the CPU figures look at), wait until their consumer groups
hold their partitions, stop them afterwards. A worker its watchdog stopped (exit 75) is restarted and counted.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.stack import ROOT, free_port, wait_until
from common.admin import admin_client, groups_not_ready, worker_groups
from common.settings import Settings
from schemas.topics import SERVICES
from streams.watchdog import STALLED_EXIT_CODE

PIPELINE = str(ROOT / ".venv" / "bin" / "pipeline")


@dataclass
class Process:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Workers:
    processes: dict[str, Process] = field(default_factory=dict)
    watchdog_restarts: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    """Each worker's endpoint port (its /metrics: batch sizes, the view service's Redis counters)."""

    @property
    def views_port(self) -> int:
        """The view service's endpoint port (0: none)."""
        return self.ports.get("views", 0)

    def pids(self) -> dict[str, int]:
        return {name: pid for name, p in self.processes.items() if (pid := p.pid) is not None}

    def check(self) -> None:
        """Act as the supervisor: restart a worker its watchdog stopped; fail on any other exit."""
        for process in self.processes.values():
            if process.popen is not None and process.popen.poll() == STALLED_EXIT_CODE:
                self.watchdog_restarts += 1
                process.start()
        dead = [p for p in self.processes.values() if p.popen is not None and p.popen.poll() is not None]
        if dead:
            details = "\n".join(f"--- {p.name} (exit {p.popen.returncode if p.popen else '?'}) ---\n{p.log_tail()}"
                                for p in dead)  # fmt: skip
            raise RuntimeError(f"pipeline processes died:\n{details}")


def worker_env(settings: Settings, workdir: Path, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIPELINE_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        PIPELINE_REDIS_URL=settings.redis_url,
        PIPELINE_SCHEMA_REGISTRY_URL=settings.schema_registry_url,
        PIPELINE_DATA_DIR=str(workdir / "faust"),
        PIPELINE_WORKER_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@contextmanager
def running_workers(settings: Settings, workdir: Path, **env_overrides: str) -> Iterator[Workers]:
    """Every service's worker (the view service's too), holding their partitions; stopped on exit (logs in workdir)."""
    env = worker_env(settings, workdir, **env_overrides)
    workers = Workers()
    for service in SERVICES:
        own = dict(env)
        # each /metrics counts its agents' batches; the view service's also its Redis round trips (bench.probes)
        workers.ports[service] = free_port()
        own["PIPELINE_WORKER_HTTP_PORT"] = str(workers.ports[service])
        workers.processes[service] = Process(service, [PIPELINE, "worker", service], own, workdir / f"{service}.log")
    try:
        for process in workers.processes.values():
            process.start()
        admin = admin_client(settings)

        def ready() -> bool:
            workers.check()
            return not groups_not_ready(admin, worker_groups())

        wait_until(ready, timeout=180, what="workers holding their partitions", interval=0.5)
        yield workers
    finally:
        for process in workers.processes.values():
            process.stop()
