"""Brings the broker's topics in line with :mod:`schemas.topics`, idempotently."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from common.settings import LIBRDKAFKA_LOGGER, Settings
from schemas.topics import TOPICS, TopicSpec, dead_letter_topics, internal_topics


class TopicDrift(Exception):
    """The broker holds a topic that cannot be changed into its declaration (fewer partitions declared)."""


@dataclass(frozen=True)
class TopicChange:
    topic: str
    action: str  # created | partitions | config | unchanged
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:<10} {self.topic}" + (f"  ({self.detail})" if self.detail else "")


def all_topics() -> tuple[TopicSpec, ...]:
    """Declared topics, their dead-letter topics and the Faust apps' changelog and leader topics."""
    return TOPICS + dead_letter_topics() + internal_topics()


def admin_client(settings: Settings, **overrides: Any) -> AdminClient:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": f"{settings.client_id}-admin",
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
    }
    config.update(overrides)
    return AdminClient(config)


def desired_config(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    config = spec.config()
    config["min.insync.replicas"] = str(min(settings.topic_min_insync_replicas, settings.topic_replication_factor))
    return config


def apply_topics(
    admin: AdminClient,
    settings: Settings,
    specs: Sequence[TopicSpec] | None = None,
    *,
    timeout: float = 30.0,
) -> list[TopicChange]:
    """Create missing topics, add partitions and set configs where the broker differs; report each topic."""
    specs = list(specs or all_topics())
    existing = admin.list_topics(timeout=timeout).topics
    changes: list[TopicChange] = []

    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=settings.topic_replication_factor,
                    config=desired_config(s, settings),
                )
                for s in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                changes.append(TopicChange(name, "created"))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                changes.append(TopicChange(name, "unchanged", "created concurrently"))

    present = [s for s in specs if s.name in existing]
    grow: list[NewPartitions] = []
    for spec in present:
        have = len(existing[spec.name].partitions)
        if have > spec.partitions:
            raise TopicDrift(
                f"{spec.name} has {have} partitions but declares {spec.partitions}; partitions cannot shrink: "
                "declare a new major version of the topic instead"
            )
        if have < spec.partitions:
            grow.append(NewPartitions(spec.name, spec.partitions))
        replicas = min((len(p.replicas) for p in existing[spec.name].partitions.values()), default=0)
        if replicas < settings.topic_replication_factor:
            # min.insync.replicas would be set above the replicas there are, and every acks=all write refused
            raise TopicDrift(
                f"{spec.name} has {replicas} replica(s) per partition but {settings.topic_replication_factor} are "
                "wanted; a topic's replication factor is not changed here: reassign its partitions or recreate it"
            )
    grown = set()
    if grow:
        for name, future in admin.create_partitions(grow, request_timeout=timeout).items():
            future.result()
            grown.add(name)

    resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in present]
    current = {}
    if resources:
        for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
            current[resource.name] = {k: v.value for k, v in future.result().items()}

    to_alter: list[ConfigResource] = []
    altered: dict[str, list[str]] = {}
    for spec in present:
        want = desired_config(spec, settings)
        diff = {k: v for k, v in want.items() if current.get(spec.name, {}).get(k) != v}
        if diff:
            entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diff.items()]
            to_alter.append(ConfigResource(ConfigResource.Type.TOPIC, spec.name, incremental_configs=entries))
            altered[spec.name] = [f"{k}={v}" for k, v in sorted(diff.items())]
    if to_alter:
        for future in admin.incremental_alter_configs(to_alter, request_timeout=timeout).values():
            future.result()

    for spec in present:
        if spec.name in grown:
            changes.append(TopicChange(spec.name, "partitions", f"now {spec.partitions}"))
        if spec.name in altered:
            changes.append(TopicChange(spec.name, "config", ", ".join(altered[spec.name])))
        if spec.name not in grown and spec.name not in altered:
            changes.append(TopicChange(spec.name, "unchanged"))
    _wait_for_leaders(admin, [c.topic for c in changes if c.action == "created"], timeout)
    order = {s.name: i for i, s in enumerate(specs)}
    return sorted(changes, key=lambda c: order.get(c.topic, len(order)))


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float) -> None:
    """New topics are usable once every partition has a leader; wait for that, bounded."""
    deadline = time.monotonic() + timeout
    pending = set(topics)
    while pending and time.monotonic() < deadline:
        meta = admin.list_topics(timeout=timeout).topics
        pending = {
            t
            for t in pending
            if t not in meta or not meta[t].partitions or any(p.leader < 0 for p in meta[t].partitions.values())
        }
        if pending:
            time.sleep(0.1)
    if pending:
        raise TimeoutError(f"topics without a leader after {timeout:.0f}s: {', '.join(sorted(pending))}")


def worker_groups() -> list[str]:
    """The consumer groups of the pipeline's own processes: one per service (the view service's included)."""
    from schemas.topics import APP_PREFIX, SERVICES

    return [f"{APP_PREFIX}-{s}" for s in SERVICES]


def groups_not_ready(
    admin: AdminClient, groups: Sequence[str], *, timeout: float = 5.0, members: Mapping[str, int] | None = None
) -> list[str]:
    """The groups that are not yet stable with every member holding partitions (empty: all ready).

    ``members`` asks for at least that many members in a group (several workers of a service), so a group is
    not taken as ready while its first worker holds every partition and the others are still joining."""
    pending = []
    for name, future in admin.describe_consumer_groups(list(groups), request_timeout=timeout).items():
        group = future.result()
        joined = group.members or []
        state = str(group.state).rsplit(".", 1)[-1]
        wanted = max(1, (members or {}).get(name, 1))
        if state != "STABLE" or len(joined) < wanted or any(not m.assignment.topic_partitions for m in joined):
            pending.append(f"{name} ({state.lower()}, {len(joined)} of {wanted} members)")
    return pending
