"""The stack at rest: what share of the machine `make run`'s stack uses while no order flows.

Read off the kernel's own counters over a window, no sampling: the box's busy share from ``/proc/stat``, each
container's CPU from its cgroup (v1 ``cpuacct.usage`` or v2 ``cpu.stat``), and the Docker daemons' (which run
every health check's exec) from ``/proc/<pid>/stat``. Run it against the running stack, nothing else busy.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
DAEMONS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Counters:
    """One reading: the box's busy and total jiffies, each container's CPU seconds, the daemons' CPU seconds."""

    at: float
    box_busy: int
    box_total: int
    containers: Mapping[str, float]
    daemons_s: float


def box_jiffies(stat_line: str) -> tuple[int, int]:
    """(busy, total) jiffies from the ``cpu`` line of /proc/stat; idle and iowait are the only idle fields."""
    fields = [int(v) for v in stat_line.split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def rest_figures(before: Counters, after: Counters) -> dict[str, Any]:
    """The shares between two readings: of the whole box (all cores), and per container / daemons in ms per s."""
    seconds = after.at - before.at
    total = after.box_total - before.box_total
    per_container = {
        name: round((after.containers[name] - before.containers[name]) * 1000 / seconds, 1)
        for name in sorted(after.containers)
        if name in before.containers
    }
    return {
        "seconds": round(seconds, 1),
        "box_busy_share": round((after.box_busy - before.box_busy) / total, 4) if total else None,
        "containers_cpu_ms_per_s": per_container,
        "docker_daemons_cpu_ms_per_s": round((after.daemons_s - before.daemons_s) * 1000 / seconds, 1),
    }


def _container_cpu_s(container_id: str) -> float | None:
    v1 = CGROUP_ROOT / "cpuacct" / "docker" / container_id / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (CGROUP_ROOT / "system.slice" / f"docker-{container_id}.scope", CGROUP_ROOT / "docker" / container_id):
        stat = v2 / "cpu.stat"
        if stat.exists():
            usage = dict(line.split() for line in stat.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    return None


def _containers(project: str) -> dict[str, str]:
    listed = subprocess.run(
        ["docker", "ps", "--no-trunc", "--filter", f"label=com.docker.compose.project={project}",
         "--format", "{{.ID}} {{.Names}}"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    pairs = (line.split(maxsplit=1) for line in listed.splitlines() if line.strip())
    return {name: container_id for container_id, name in pairs}


def _daemons_s() -> float:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] in DAEMONS:
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def read_counters(containers: Mapping[str, str]) -> Counters:
    with open("/proc/stat") as f:
        busy, total = box_jiffies(f.readline())
    cpu = {name: _container_cpu_s(cid) for name, cid in containers.items()}
    return Counters(time.monotonic(), busy, total, {n: s for n, s in cpu.items() if s is not None}, _daemons_s())


def measure_rest(seconds: float, project: str = "order-pipeline") -> dict[str, Any]:
    """The stack's share of the box over ``seconds`` of rest (raises when no container of ``project`` runs)."""
    containers = _containers(project)
    if not containers:
        raise RuntimeError(f"no container of compose project {project!r} runs: start the stack (`make run`) first")
    before = read_counters(containers)
    time.sleep(seconds)  # the measuring window itself: counters are read at both ends
    figures = rest_figures(before, read_counters(containers))
    return {"project": project, "containers": len(containers), **figures}
