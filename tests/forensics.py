"""What a failed integration test leaves in its report: where every group stands and how each process ended.

A lost or late message shows up in a test as a view that never arrives; the question is then which group did
not pass it. The report answers it on the spot (in CI too, where the workers' logs are gone afterwards)."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from common.admin import worker_groups
from common.settings import Settings
from schemas.topics import PARTITIONS, TOPICS
from tests.workers import Pipeline


def group_positions(settings: Settings, groups: list[str] | None = None) -> str:
    """Every partition some group has committed on and not read to its end: ``group topic[p] committed/end``."""
    lines = []
    partitions = [TopicPartition(t.name, p) for t in TOPICS for p in range(PARTITIONS)]
    for group in groups or worker_groups():
        reader = Consumer(
            {"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        try:
            for tp in reader.committed(partitions, timeout=20):
                if tp.offset < 0:
                    continue
                _, end = reader.get_watermark_offsets(tp, timeout=10)
                if tp.offset != end:
                    lines.append(f"{group} {tp.topic}[{tp.partition}] committed {tp.offset} of end {end}")
        except Exception as exc:  # noqa: BLE001 - a report, not a check: say what could not be read
            lines.append(f"{group}: {exc!r}")
        finally:
            reader.close()
    return "\n".join(lines) or "every group has read every partition it committed on to its end"


def describe_failure(pipeline: Pipeline, log_lines: int = 25) -> str:
    """Group positions, then each process's state, log file and log tail."""
    parts = ["== group positions ==", group_positions(pipeline.settings)]
    for process in pipeline.processes.values():
        state = "alive" if process.alive else f"exited {process.popen.returncode if process.popen else '?'}"
        parts.append(f"== {process.name} ({state}; {process.log_path}) ==\n{process.log_tail(log_lines)}")
    return "\n".join(parts)
