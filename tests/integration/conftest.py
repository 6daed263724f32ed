from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from common.encoding import registry_codec
from common.settings import Settings
from producers.toolkit import EventPublisher
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.registry import HttpRegistry, apply_catalog
from tests.forensics import describe_failure
from tests.stack import (
    CLUSTER_MIN_INSYNC_REPLICAS,
    CLUSTER_REPLICATION_FACTOR,
    KafkaCluster,
    KafkaNode,
    RedisNode,
    RegistryNode,
    kafka_cluster,
    kafka_node,
    redis_node,
    registry_node,
    remove_stale_containers,
)
from tests.workers import Pipeline


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that ran workers reports where each group stands and how each process ended."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    running = getattr(item, "funcargs", {}).get("pipeline")
    if report.when == "call" and report.failed and isinstance(running, Pipeline):
        report.sections.append(("pipeline at failure", describe_failure(running)))


@pytest.fixture(scope="session", autouse=True)
def no_stale_containers() -> None:
    """Before any container of this run starts (a module may start its own Kafka cluster besides the session's
    broker and Redis), remove those a killed earlier run left behind."""
    remove_stale_containers()


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaNode]:
    with kafka_node() as node:
        yield node


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisNode]:
    with redis_node() as node:
        yield node


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[RegistryNode]:
    """One registry for the session (it starts in about 8 s), the whole catalog registered as ``make run`` does."""
    with registry_node() as node:
        apply_catalog(HttpRegistry(node.url), SchemaCatalog.load())
        yield node


@pytest.fixture(scope="session")
def settings(kafka: KafkaNode, redis_server: RedisNode, schema_registry: RegistryNode) -> Settings:
    return Settings(
        kafka_bootstrap=kafka.bootstrap, redis_url=redis_server.url, schema_registry_url=schema_registry.url
    )


@pytest.fixture(scope="session")
def codec(settings: Settings) -> AvroCodec:
    """The codec the pipeline's processes use: ids from the session's registry."""
    return registry_codec(SchemaCatalog.load(), settings)


@pytest.fixture(scope="module")
def cluster() -> Iterator[KafkaCluster]:
    """Three brokers (compose.cluster.yaml's nodes) for the module that asks for them, gone after it."""
    with kafka_cluster() as running:
        yield running


CLUSTER_VIEWS_DB = 6
"""The Redis database of a cluster module's views: its view service's tables live on the module's own brokers, so
its keys must not outlive it in the database the session's view service mirrors (a flush there could not give them
back)."""


@pytest.fixture(scope="module")
def cluster_settings(
    cluster: KafkaCluster, redis_server: RedisNode, schema_registry: RegistryNode
) -> Iterator[Settings]:
    """Settings pointing at the module's cluster, with its replication (3 replicas, 2 in sync), and a Redis
    database of the module's own, empty at its start and at its end."""
    url = urlunsplit(urlsplit(redis_server.url)._replace(path=f"/{CLUSTER_VIEWS_DB}"))
    redis.Redis.from_url(url).flushdb()
    yield Settings(
        kafka_bootstrap=cluster.bootstrap,
        redis_url=url,
        schema_registry_url=schema_registry.url,
        topic_replication_factor=CLUSTER_REPLICATION_FACTOR,
        topic_min_insync_replicas=CLUSTER_MIN_INSYNC_REPLICAS,
    )
    redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="session")
def cli_env(settings: Settings) -> dict[str, str]:
    """The environment a person would set to point the CLI at the test stack."""
    env = dict(os.environ)
    env["PIPELINE_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["PIPELINE_REDIS_URL"] = settings.redis_url
    env["PIPELINE_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    return env


@pytest.fixture(scope="module")
def publisher(settings: Settings) -> Iterator[EventPublisher]:
    """The toolkit's producer, as the tests publish commands and events with it."""
    with EventPublisher.from_settings(settings, SchemaCatalog.load()) as pub:
        yield pub


@pytest.fixture
def store(settings: Settings) -> redis.Redis:
    """The query side's Redis (bytes; a module may override it, e.g. with decode_responses)."""
    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture
def provider_ledger(settings: Settings) -> redis.Redis:
    """The simulated payment provider's own Redis database (its ledger of charges and refunds)."""
    return redis.Redis.from_url(settings.provider_store)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The chaos runs' own reports (seed, faults, exits, outcomes, stock, charges) even when they pass."""
    for report in terminalreporter.stats.get("passed", []):
        chaos = "chaos" in report.keywords or "chaos_long" in report.keywords
        if report.when == "call" and chaos and report.capstdout:
            terminalreporter.write_sep("-", f"chaos run: {report.nodeid}")
            terminalreporter.write_line(report.capstdout.strip())
