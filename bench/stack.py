"""Kafka, Redis and the schema registry started through testcontainers from compose.yaml's own service definitions.

The service definitions (image, environment, command) are read from compose.yaml, so what the benchmark and
the integration tests run is the documented stack; only the published port changes (a free one of 127.0.0.1),
so parallel runs and a running `make run` do not collide. Containers carry a label and are removed on exit;
a killed run's leftovers are removed by label next time (Ryuk is off where its image cannot be pulled).
``tests/stack.py`` re-exports this module with the tests' own label.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_before_delay,
    wait_fixed,
)

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

ROOT = Path(__file__).resolve().parent.parent
LABEL = "org.order-pipeline.bench"
"""The label of the benchmark's containers (the tests use their own, so neither removes the other's)."""
COMPOSE_FILE = ROOT / "compose.yaml"
CLUSTER_FILE = ROOT / "compose.cluster.yaml"
"""The three-broker cluster, layered on compose.yaml (compose's own override rules: environments merge)."""
CLUSTER_NODES = ("kafka", "kafka-2", "kafka-3")
"""The cluster's nodes as compose names them: node ids 1, 2, 3; also their host names on the cluster's network."""
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def testcontainers_env() -> None:
    """Reach containers through 127.0.0.1 only; no Ryuk (its image cannot be pulled everywhere)."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TC_HOST", "127.0.0.1")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")


def compose_service(name: str, compose_file: Path = COMPOSE_FILE) -> dict[str, Any]:
    """One service of compose.yaml with ``${VAR:-default}`` expanded from the environment."""
    services = yaml.safe_load(compose_file.read_text())["services"]
    service: dict[str, Any] = services[name]

    def expand(value: Any) -> Any:
        if isinstance(value, str):
            return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
        if isinstance(value, list):
            return [expand(v) for v in value]
        if isinstance(value, dict):
            return {k: expand(v) for k, v in value.items()}
        return value

    return expand(service)  # type: ignore[no-any-return]


def cluster_service(name: str) -> dict[str, Any]:
    """A node of the three-broker cluster as ``compose -f compose.yaml -f compose.cluster.yaml`` defines it.

    Merged the way compose merges an override file: the environment key by key, anything else replaced."""
    base = compose_service(name) if name in yaml.safe_load(COMPOSE_FILE.read_text())["services"] else {}
    override = compose_service(name, CLUSTER_FILE)
    merged = {**base, **override}
    merged["environment"] = {**(base.get("environment") or {}), **(override.get("environment") or {})}
    return merged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str | Callable[[], str], interval: float = 0.2
) -> None:
    """Poll ``check`` until it holds; fail with ``what`` (text, or a function giving it then) after ``timeout``.

    An exception from ``check`` means "not yet" and is retried, except an ``AssertionError``: a broken invariant
    (a dead process, say) passes straight through. No try starts after the deadline."""
    last_error: BaseException | None = None

    def remember_error(state: RetryCallState) -> None:
        nonlocal last_error
        if state.outcome is not None and state.outcome.failed:
            last_error = state.outcome.exception()

    not_yet = retry_if_result(lambda held: not held) | retry_if_exception(
        lambda exc: isinstance(exc, Exception) and not isinstance(exc, AssertionError)
    )
    polling = Retrying(stop=stop_before_delay(timeout), wait=wait_fixed(interval), retry=not_yet, after=remember_error)
    try:
        polling(check)
    except RetryError:
        described = what() if callable(what) else what
        raise TimeoutError(f"{described} not reached within {timeout:.0f}s (last error: {last_error!r})") from None


def remove_stale_containers(label: str = LABEL) -> None:
    """Remove containers with ``label`` that a killed earlier run left behind.

    Each container's label holds the id of the process that started it; a container whose process still runs
    belongs to a run in progress (two test runs side by side) and is left alone."""
    import docker

    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": label}):
        if not _owner_alive(container.labels.get(label, "")):
            container.remove(force=True, v=True)
    for network in client.networks.list(filters={"label": label}):  # a cluster's own network
        if not _owner_alive(network.attrs.get("Labels", {}).get(label, "")):
            network.remove()


def _owner_alive(owner: str) -> bool:
    """Is the process that started a container still running? (This one is; labels from before owners were
    kept are not.)"""
    if not owner.isdigit():
        return False
    if int(owner) == os.getpid():
        return True
    try:
        os.kill(int(owner), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class KafkaNode:
    container: DockerContainer
    bootstrap: str
    node_id: int = 1

    @property
    def container_id(self) -> str:
        return str(self.container.get_wrapped_container().id)

    def stop_broker(self) -> None:
        """A clean shutdown (SIGTERM): the node hands its partition leaderships over first."""
        self.container.get_wrapped_container().stop(timeout=10)

    def kill_broker(self) -> None:
        """SIGKILL: the node vanishes mid-write, as in a crash; the others notice by its missed heartbeats."""
        self.container.get_wrapped_container().kill()

    def start_broker(self) -> None:
        """Start the stopped node again, with its log as it was (same container, same host port)."""
        self.container.get_wrapped_container().start()
        wait_kafka(self.bootstrap)


@dataclass
class RedisNode:
    container: DockerContainer
    url: str


def wait_kafka(bootstrap: str, timeout: float = 120) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    wait_until(lambda: bool(admin.list_topics(timeout=2).brokers), timeout=timeout, what=f"Kafka at {bootstrap}")


def _container(service: dict[str, Any], label: str) -> DockerContainer:
    """A container from a compose service; ports are published by the caller, on 127.0.0.1 only."""
    testcontainers_env()
    from testcontainers.core.container import DockerContainer

    kwargs: dict[str, Any] = {"labels": {label: str(os.getpid())}}
    if service.get("hostname"):
        kwargs["hostname"] = service["hostname"]
    container = DockerContainer(service["image"]).with_kwargs(**kwargs)
    for key, value in (service.get("environment") or {}).items():
        container = container.with_env(key, str(value))
    if service.get("command"):
        container = container.with_command(service["command"])
    return container


@contextmanager
def _logs_on_failure(container: DockerContainer) -> Iterator[None]:
    """A container that fails to come up says why: its last log lines join the error."""
    try:
        yield
    except TimeoutError as exc:
        out, err = container.get_logs()
        tail = b"\n".join((out + err).splitlines()[-30:]).decode(errors="replace")
        raise TimeoutError(f"{exc}\n--- container log ---\n{tail}") from None


@contextmanager
def kafka_node(*, label: str = LABEL, heap: str | None = None) -> Iterator[KafkaNode]:
    """A single KRaft node as compose.yaml declares it, its client listener moved to a free host port.

    The broker advertises 127.0.0.1:PORT and the container publishes PORT on 127.0.0.1:PORT, so the
    advertised address works from the host and from inside the container alike. ``heap`` replaces
    compose.yaml's ``KAFKA_HEAP_OPTS`` (the tests run a smaller broker).
    """
    port = free_port()
    service = compose_service("kafka")
    env = service["environment"]
    for key in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS"):
        env[key] = env[key].replace(":9092", f":{port}")
    if heap is not None:
        env["KAFKA_HEAP_OPTS"] = heap
    container = _container(service, label)
    container.ports[f"{port}/tcp"] = ("127.0.0.1", port)  # type: ignore[assignment]
    container.start()
    try:
        node = KafkaNode(container, f"127.0.0.1:{port}")
        with _logs_on_failure(container):
            wait_kafka(node.bootstrap)
        yield node
    finally:
        container.stop()


@dataclass
class KafkaCluster:
    """Three KRaft nodes (each broker and controller) on a docker network of their own."""

    nodes: list[KafkaNode]

    @property
    def bootstrap(self) -> str:
        """Every node's host listener: clients fall over to the next when one is down."""
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    def _admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def brokers(self) -> set[int]:
        """The node ids the cluster's metadata lists as live brokers."""
        return set(self._admin().list_topics(timeout=5).brokers)

    def wait_brokers(self, node_ids: set[int], timeout: float = 120) -> None:
        wait_until(lambda: self.brokers() == node_ids, timeout=timeout, what=f"brokers {sorted(node_ids)} live")

    def coordinator(self, group: str) -> int:
        """The node that coordinates ``group``: the leader of its ``__consumer_offsets`` partition.

        Found from metadata as the broker does it (``Utils.abs(groupId.hashCode) % partitions``), not with the
        admin API's group calls, which can abort the process in librdkafka while coordinators move (see
        ``tests.workers.groups_ready``)."""
        partitions = self._admin().list_topics("__consumer_offsets", timeout=10).topics["__consumer_offsets"].partitions
        java_hash = 0
        for char in group:
            java_hash = (31 * java_hash + ord(char)) & 0xFFFFFFFF
        signed = java_hash - (1 << 32) if java_hash >= 1 << 31 else java_hash
        return int(partitions[(0 if signed == -(1 << 31) else abs(signed)) % len(partitions)].leader)

    def under_replicated(self) -> list[str]:
        """Partitions with fewer in-sync replicas than replicas (empty: replication is whole again)."""
        topics = self._admin().list_topics(timeout=10).topics
        return [
            f"{name}[{p.id}] isr {sorted(p.isrs)} of {sorted(p.replicas)}"
            for name, meta in sorted(topics.items())
            for p in meta.partitions.values()
            if len(p.isrs) < len(p.replicas)
        ]

    def wait_in_sync(self, timeout: float = 120) -> None:
        """Wait until replication is whole again (a node that was down has caught up on every partition)."""
        wait_until(
            lambda: not self.under_replicated(),
            timeout=timeout,
            what=lambda: f"every partition in sync again (still behind: {self.under_replicated()[:5]})",
            interval=1.0,
        )


@contextmanager
def kafka_cluster(*, label: str = LABEL, heap: str | None = None) -> Iterator[KafkaCluster]:
    """Three KRaft nodes as compose.cluster.yaml declares them (controller quorum of 3, replication factor 3,
    ``min.insync.replicas=2``), each on a free port of 127.0.0.1, on a docker network of their own where they
    reach each other by their compose names. Each node can be stopped, killed and started again.
    """
    testcontainers_env()
    from testcontainers.core.network import Network

    network = Network(docker_network_kw={"labels": {label: str(os.getpid())}}).create()
    containers: list[DockerContainer] = []
    try:
        nodes = []
        for name in CLUSTER_NODES:
            service = cluster_service(name)
            env = service["environment"]
            listener = re.search(r"PLAINTEXT://:(\d+)", env["KAFKA_LISTENERS"])
            assert listener is not None, f"{name}: no PLAINTEXT listener in KAFKA_LISTENERS"
            port = free_port()
            for key in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS"):
                env[key] = env[key].replace(f":{listener.group(1)}", f":{port}")
            if heap is not None:
                env["KAFKA_HEAP_OPTS"] = heap
            container = _container(service, label).with_network(network).with_network_aliases(name)
            container.ports[f"{port}/tcp"] = ("127.0.0.1", port)  # type: ignore[assignment]
            containers.append(container)
            nodes.append(KafkaNode(container, f"127.0.0.1:{port}", int(env["KAFKA_NODE_ID"])))
        for container in containers:  # all at once: each waits for a quorum of the others
            container.start()
        cluster = KafkaCluster(nodes)
        for node in nodes:
            with _logs_on_failure(node.container):
                wait_kafka(node.bootstrap)
        cluster.wait_brokers({node.node_id for node in nodes})
        yield cluster
    finally:
        for container in containers:
            container.stop()
        network.remove()


@contextmanager
def redis_node(*, label: str = LABEL) -> Iterator[RedisNode]:
    """Redis as compose.yaml declares it, on a free port of 127.0.0.1."""
    import redis

    port = free_port()
    service = compose_service("redis")
    container = _container(service, label)
    container.ports["6379/tcp"] = ("127.0.0.1", port)  # type: ignore[assignment]
    container.start()
    try:
        node = RedisNode(container, f"redis://127.0.0.1:{port}/0")
        client = redis.Redis.from_url(node.url, socket_timeout=2)
        with _logs_on_failure(container):
            wait_until(lambda: bool(client.ping()), timeout=60, what=f"Redis at {node.url}")
        yield node
    finally:
        container.stop()


@dataclass
class RegistryNode:
    """The schema registry; ``url`` is its Confluent-compatible API, as ``PIPELINE_SCHEMA_REGISTRY_URL`` takes it."""

    container: DockerContainer
    url: str

    def stop(self) -> None:
        """A clean shutdown; its data stays in the container's data directory."""
        self.container.get_wrapped_container().stop(timeout=10)

    def start(self) -> None:
        """Start the stopped registry again (same container, same data, same port) and wait until it is ready."""
        self.container.get_wrapped_container().start()
        wait_registry(self.url)


def registry_ready(url: str) -> bool:
    """Whether the registry at ``url`` (its ccompat API) answers its readiness check."""
    import urllib.request

    base = url.split("/apis/", 1)[0]
    with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as response:  # noqa: S310 - 127.0.0.1
        return bool(response.status == 200)


def wait_registry(url: str, timeout: float = 120) -> None:
    wait_until(lambda: registry_ready(url), timeout=timeout, what=f"schema registry at {url}", interval=0.5)


@contextmanager
def registry_node(*, label: str = LABEL) -> Iterator[RegistryNode]:
    """The schema registry as compose.yaml declares it (H2 on its data directory), on a free port of 127.0.0.1."""
    port = free_port()
    service = compose_service("registry")
    container = _container(service, label)
    container.ports["8080/tcp"] = ("127.0.0.1", port)  # type: ignore[assignment]
    container.start()
    try:
        node = RegistryNode(container, f"http://127.0.0.1:{port}/apis/ccompat/v7")
        with _logs_on_failure(container):
            wait_registry(node.url)
        yield node
    finally:
        container.stop()


def container_publishing(port: int) -> str | None:
    """The id of the running container that publishes ``port`` on the host (the broker of a running stack)."""
    import docker

    for container in docker.from_env().containers.list():
        for bindings in (container.ports or {}).values():
            if any(str(b.get("HostPort")) == str(port) for b in bindings or []):
                return str(container.id)
    return None
