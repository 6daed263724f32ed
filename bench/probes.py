"""What the benchmark reads off the running system: CPU time of processes, containers and the machine, and
Kafka offsets (messages written per topic, consumed per group)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` (Linux), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over every core."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / _TICK, total / _TICK


def container_cpu_s(container_id: str) -> float | None:
    """CPU seconds a container used so far (cgroup accounting through the Docker API)."""
    try:
        import docker

        stats: Any = docker.from_env().containers.get(container_id).stats(stream=False, one_shot=True)
        return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9
    except Exception:  # noqa: BLE001 - a figure we can do without
        return None


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    processes: dict[str, float]
    containers: dict[str, float]
    machine_busy: float
    machine_total: float

    @classmethod
    def take(cls, pids: Mapping[str, int], containers: Mapping[str, str]) -> CpuSnapshot:
        procs = {name: cpu for name, pid in pids.items() if (cpu := process_cpu_s(pid)) is not None}
        boxes = {name: cpu for name, cid in containers.items() if (cpu := container_cpu_s(cid)) is not None}
        busy, total = machine_cpu()
        return cls(time.monotonic(), procs, boxes, busy, total)

    def since(self, before: CpuSnapshot) -> dict[str, Any]:
        """Cores used in between (1.0 = one core fully busy), per process and container, and the machine's
        busy share of all its cores."""
        wall = self.at - before.at

        def cores(now: Mapping[str, float], then: Mapping[str, float]) -> dict[str, float]:
            return {k: round((now[k] - then[k]) / wall, 3) for k in now if k in then} if wall > 0 else {}

        total = self.machine_total - before.machine_total
        return {
            "wall_s": round(wall, 2),
            "process_cores": cores(self.processes, before.processes),
            "container_cores": cores(self.containers, before.containers),
            "machine_busy_share": round((self.machine_busy - before.machine_busy) / total, 3) if total > 0 else None,
        }


@dataclass
class Offsets:
    """End offsets per topic (summed over partitions) and committed offsets per consumer group."""

    topics: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)


def end_offsets(admin: AdminClient, topics: Iterable[str], timeout: float = 10) -> dict[TopicPartition, int]:
    names = list(topics)
    meta = admin.list_topics(timeout=timeout).topics
    request = {
        TopicPartition(name, p): OffsetSpec.latest()  # type: ignore[no-untyped-call]
        for name in names
        if name in meta
        for p in meta[name].partitions
    }
    if not request:
        return {}
    result = admin.list_offsets(request, request_timeout=timeout)
    return {tp: int(future.result().offset) for tp, future in result.items()}


def committed(admin: AdminClient, group: str, timeout: float = 10) -> dict[TopicPartition, int]:
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)
    answer = futures[group].result()
    return {
        TopicPartition(tp.topic, tp.partition): int(tp.offset)
        for tp in answer.topic_partitions or []
        if tp.offset is not None and tp.offset >= 0
    }


def read_offsets(admin: AdminClient, topics: Iterable[str], groups: Iterable[str]) -> Offsets:
    ends = end_offsets(admin, topics)
    offsets = Offsets()
    for tp, end in ends.items():
        offsets.topics[tp.topic] = offsets.topics.get(tp.topic, 0) + end
    group_ends = end_offsets(admin, {tp.topic for g in groups for tp in committed(admin, g)})
    for group in groups:
        done = committed(admin, group)
        offsets.groups[group] = sum(done.values())
        offsets.lag[group] = sum(max(0, group_ends.get(tp, off) - off) for tp, off in done.items())
    return offsets


def deltas(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


VIEW_COUNTERS = {
    "pipeline_view_batches_total": "batches",
    "pipeline_view_redis_round_trips_total": "redis_round_trips",
    "pipeline_view_redis_commands_total": "redis_commands",
}


def view_counters(port: int, timeout: float = 5.0) -> dict[str, float]:
    """The view service's batch and Redis counters from its ``/metrics`` (empty when it has no endpoint)."""
    import urllib.request

    if not port:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        metric = name.split("{", 1)[0]
        if metric in VIEW_COUNTERS:
            totals[VIEW_COUNTERS[metric]] = totals.get(VIEW_COUNTERS[metric], 0.0) + float(value)
    return totals


BATCH_SUM, BATCH_COUNT = "pipeline_batch_messages_sum", "pipeline_batch_messages_count"


def batch_counters(ports: Mapping[str, int], timeout: float = 5.0) -> dict[str, tuple[float, float]]:
    """Each worker's (messages, batches) so far, over all its agents, from its ``/metrics``."""
    import urllib.request

    totals: dict[str, tuple[float, float]] = {}
    for service, port in ports.items():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:  # noqa: S310
                text = response.read().decode()
        except OSError:
            continue
        messages = batches = 0.0
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            metric = name.split("{", 1)[0]
            if metric == BATCH_SUM:
                messages += float(value)
            elif metric == BATCH_COUNT:
                batches += float(value)
        totals[service] = (messages, batches)
    return totals


def batch_sizes(
    before: Mapping[str, tuple[float, float]], after: Mapping[str, tuple[float, float]]
) -> dict[str, dict[str, float]]:
    """Per worker, the batches a step's agents took and their mean size (a batch costs two produce requests)."""
    sizes = {}
    for service, (messages, batches) in after.items():
        messages0, batches0 = before.get(service, (0.0, 0.0))
        if batches > batches0:
            sizes[service] = {
                "batches": int(batches - batches0),
                "messages_per_batch": round((messages - messages0) / (batches - batches0), 2),
            }
    return sizes


def view_costs(
    before: Mapping[str, float], after: Mapping[str, float], events: int, cpu_s: float | None
) -> dict[str, Any] | None:
    """What the view service spent on a step: CPU per event and Redis round trips per batch and per event."""
    if not before and not after:
        return None
    delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in VIEW_COUNTERS.values()}
    trips, batches = delta["redis_round_trips"], delta["batches"]
    return {
        "events": events,
        **{name: int(value) for name, value in delta.items()},
        "cpu_ms_per_event": round(cpu_s * 1000 / events, 3) if cpu_s is not None and events else None,
        "redis_round_trips_per_batch": round(trips / batches, 3) if batches else None,
        "redis_round_trips_per_event": round(trips / events, 3) if events else None,
    }


def box_cpu_per_order(cpu: Mapping[str, Any], orders_per_s: float, cores: int | None = None) -> dict[str, Any] | None:
    """CPU of the whole box per completed order: machine busy share × cores ÷ orders/s (ms), and each pipeline
    process's and container's share of it; what is left is the rest of the box (Redis, the load, the kernel)."""
    cores = cores or os.cpu_count() or 1
    busy = cpu.get("machine_busy_share")
    if not orders_per_s or busy is None:
        return None
    per_order = {name: round(c * 1000 / orders_per_s, 2) for name, c in (cpu.get("process_cores") or {}).items()}
    per_order |= {name: round(c * 1000 / orders_per_s, 2) for name, c in (cpu.get("container_cores") or {}).items()}
    total = busy * cores * 1000 / orders_per_s
    return {
        "box_cpu_ms_per_order": round(total, 2),
        "split_ms_per_order": per_order | {"rest of the box": round(total - sum(per_order.values()), 2)},
    }
