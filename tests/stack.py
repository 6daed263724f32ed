"""Kafka and Redis for integration tests, started through testcontainers from compose.yaml's definitions.

The service definitions (image, environment, command) are read from compose.yaml so the tested stack is the
documented one; only the published port changes, so parallel runs and a running `make run` do not collide.
Containers carry a label and are removed by the fixtures (Ryuk is off where its image cannot be pulled).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TC_HOST", "127.0.0.1")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

from testcontainers.core.container import DockerContainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LABEL = "org.order-pipeline.test"
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def compose_service(name: str) -> dict[str, Any]:
    """One service of compose.yaml with ``${VAR:-default}`` expanded from the environment."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str | Callable[[], str], interval: float = 0.2
) -> None:
    """Poll ``check`` until it holds; fail with ``what`` (text, or a function giving it then) after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except AssertionError:
            raise  # a broken invariant (a dead process, say) is not "not yet"
        except Exception as exc:  # noqa: BLE001 - the condition is not there yet
            last_error = exc
        time.sleep(interval)
    described = what() if callable(what) else what
    raise TimeoutError(f"{described} not reached within {timeout:.0f}s (last error: {last_error!r})")


def remove_stale_containers() -> None:
    """Remove containers a killed earlier run left behind."""
    import docker

    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        container.remove(force=True, v=True)


@dataclass
class KafkaNode:
    container: DockerContainer
    bootstrap: str

    def stop_broker(self) -> None:
        self.container.get_wrapped_container().stop(timeout=10)

    def start_broker(self) -> None:
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


def _container(service: dict[str, Any]) -> DockerContainer:
    """A container from a compose service; ports are published by the caller, on 127.0.0.1 only."""
    kwargs: dict[str, Any] = {"labels": {LABEL: "1"}}
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
def kafka_node() -> Iterator[KafkaNode]:
    """A single KRaft node as compose.yaml declares it, its client listener moved to a free host port.

    The broker advertises 127.0.0.1:PORT and the container publishes PORT on 127.0.0.1:PORT, so the
    advertised address works from the host.
    """
    port = free_port()
    service = compose_service("kafka")
    env = service["environment"]
    for key in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS"):
        env[key] = env[key].replace(":9092", f":{port}")
    env["KAFKA_HEAP_OPTS"] = "-Xmx512m -Xms256m"
    container = _container(service)
    container.ports[f"{port}/tcp"] = ("127.0.0.1", port)  # type: ignore[assignment]
    container.start()
    try:
        node = KafkaNode(container, f"127.0.0.1:{port}")
        with _logs_on_failure(container):
            wait_kafka(node.bootstrap)
        yield node
    finally:
        container.stop()


@contextmanager
def redis_node() -> Iterator[RedisNode]:
    """Redis as compose.yaml declares it, on a free port of 127.0.0.1."""
    import redis

    port = free_port()
    service = compose_service("redis")
    container = _container(service)
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
