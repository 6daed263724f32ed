"""Kafka, Redis and the schema registry for integration tests, started through testcontainers from compose.yaml.

The implementation lives in :mod:`bench.stack` (the benchmark starts the same stack); this module binds it to
the tests' own container label and their smaller broker heap, so a test run and a benchmark never remove each
other's containers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bench import stack as _stack
from bench.stack import (
    ROOT,
    KafkaCluster,
    KafkaNode,
    RedisNode,
    RegistryNode,
    compose_service,
    free_port,
    testcontainers_env,
    wait_kafka,
    wait_until,
)

__all__ = [
    "CLUSTER_MIN_INSYNC_REPLICAS",
    "CLUSTER_REPLICATION_FACTOR",
    "LABEL",
    "ROOT",
    "KafkaCluster",
    "KafkaNode",
    "RedisNode",
    "RegistryNode",
    "compose_service",
    "free_port",
    "kafka_cluster",
    "kafka_node",
    "redis_node",
    "registry_node",
    "remove_stale_containers",
    "wait_kafka",
    "wait_until",
]

testcontainers_env()

LABEL = "org.order-pipeline.test"
HEAP = "-Xmx512m -Xms256m"
CLUSTER_REPLICATION_FACTOR, CLUSTER_MIN_INSYNC_REPLICAS = 3, 2
"""What compose.cluster.yaml gives every topic: the settings of the pipeline's processes on the cluster."""


_cleaned = False


def remove_stale_containers() -> None:
    """Remove containers a killed earlier run left behind, once per test run: containers this process
    started count as stale too, so a second call (a module starting its own cluster) would remove them."""
    global _cleaned
    if not _cleaned:
        _stack.remove_stale_containers(LABEL)
        _cleaned = True


@contextmanager
def kafka_node() -> Iterator[KafkaNode]:
    """A single KRaft node as compose.yaml declares it, its client listener moved to a free host port."""
    with _stack.kafka_node(label=LABEL, heap=HEAP) as node:
        yield node


@contextmanager
def kafka_cluster() -> Iterator[KafkaCluster]:
    """Three KRaft nodes as compose.cluster.yaml declares them, on a network of their own (see bench.stack)."""
    with _stack.kafka_cluster(label=LABEL, heap=HEAP) as cluster:
        yield cluster


@contextmanager
def redis_node() -> Iterator[RedisNode]:
    """Redis as compose.yaml declares it, on a free port of 127.0.0.1."""
    with _stack.redis_node(label=LABEL) as node:
        yield node


@contextmanager
def registry_node() -> Iterator[RegistryNode]:
    """The schema registry as compose.yaml declares it, on a free port of 127.0.0.1."""
    with _stack.registry_node(label=LABEL) as node:
        yield node
