"""What the CLI says when a dependency cannot be reached: the probe's wording and bookkeeping, and a client error
escaping a command turned into one line (the probes themselves run against real ports in
tests/integration/test_cli_unreachable.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import click
import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaError, KafkaException

from common.health import bootstrap_addresses, redacted_url
from common.settings import LIBRDKAFKA_LOGGER, Settings, get_settings
from common.telemetry import RepeatedRecords
from consumers.toolkit import ConsumeError, EventConsumer
from pipeline.cli import PipelineGroup
from pipeline.cli.reach import Dependency, kafka_at, quiet_client_logs, redis_at, unreachable

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("bootstrap", "addresses"),
    [
        ("127.0.0.1:9092", [("127.0.0.1", 9092)]),
        ("kafka-1:9092, kafka-2:9093", [("kafka-1", 9092), ("kafka-2", 9093)]),
        ("PLAINTEXT://broker:19092", [("broker", 19092)]),
        ("[::1]:9092", [("::1", 9092)]),
    ],
)
def test_bootstrap_servers_are_read_as_host_and_port(bootstrap: str, addresses: list[tuple[str, int]]) -> None:
    assert bootstrap_addresses(bootstrap) == addresses


@pytest.mark.parametrize("bootstrap", ["", " , ", "kafka", "kafka:port"])
def test_a_bootstrap_list_without_host_and_port_is_named(bootstrap: str) -> None:
    with pytest.raises(ValueError, match="host:port|no bootstrap servers"):
        bootstrap_addresses(bootstrap)


def test_a_redis_password_never_reaches_the_terminal() -> None:
    assert redacted_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redacted_url("rediss://app:s3cret@cache:6380/2") == "rediss://app:***@cache:6380/2"
    assert redacted_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert redis_at("redis://:s3cret@cache:6379/0").address == "redis://:***@cache:6379/0"


def probe_answering(reason: str | None, calls: list[str]) -> Any:
    def probe(timeout_s: float) -> str | None:
        calls.append(reason or "ok")
        return reason

    return probe


def test_each_dependency_that_does_not_answer_is_named_with_its_address_and_reason() -> None:
    calls: list[str] = []
    broker = Dependency("Kafka", "127.0.0.1:9", "kafka:127.0.0.1:9", probe_answering("connection refused", calls))
    views = Dependency("Redis", "redis://r:1/0", "redis:redis://r:1", probe_answering("no answer within 3s", calls))
    fine = Dependency("Redis", "redis://s:1/0", "redis:redis://s:1", probe_answering(None, calls))

    assert unreachable(broker, fine, views) == [
        "cannot reach Kafka at 127.0.0.1:9 (connection refused)",
        "cannot reach Redis at redis://r:1/0 (no answer within 3s)",
    ]
    assert sorted(calls) == ["connection refused", "no answer within 3s", "ok"]
    assert unreachable(fine) == [] and unreachable() == []


def test_two_databases_of_one_redis_server_are_probed_once() -> None:
    calls: list[str] = []
    views = Dependency("Redis", "redis://r:1/0", "redis:redis://r:1", probe_answering("connection refused", calls))
    ledger = Dependency("Redis", "redis://r:1/1", "redis:redis://r:1", probe_answering("connection refused", calls))
    assert unreachable(views, ledger) == ["cannot reach Redis at redis://r:1/0 (connection refused)"]
    assert len(calls) == 1
    assert redis_at("redis://r:1/0").server == redis_at("redis://r:1/1").server != redis_at("redis://q:1/1").server


def test_the_broker_is_named_by_its_bootstrap_servers() -> None:
    assert kafka_at(Settings(kafka_bootstrap="k1:9092,k2:9092")).address == "k1:9092,k2:9092"


@pytest.fixture
def broker_at_port_1(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process-wide settings name 127.0.0.1:1 as the broker while the test runs."""
    monkeypatch.setenv("PIPELINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def group_with(command: click.Command) -> click.Group:
    group = PipelineGroup(plugins=list)
    group.add_command(command)
    return group


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata")),
            "error: Kafka at 127.0.0.1:1: Failed to get metadata",
        ),
        (
            ConsumeError("cannot read orders.events.v1: timed out"),
            "error: cannot read orders.events.v1: timed out (Kafka at 127.0.0.1:1)",
        ),
    ],
)
@pytest.mark.usefixtures("broker_at_port_1")
def test_a_client_error_escaping_a_command_ends_it_with_one_line(error: Exception, line: str) -> None:
    @click.command()
    def broken() -> None:
        raise error

    result = CliRunner().invoke(group_with(broken), ["broken"])
    assert result.exit_code == 1
    assert line in result.output
    assert len(result.output.splitlines()) == 1
    assert "Traceback" not in result.output


def test_any_other_error_is_a_bug_and_shown_whole() -> None:
    @click.command()
    def broken() -> None:
        raise RuntimeError("a bug")

    result = CliRunner().invoke(group_with(broken), ["broken"])
    assert isinstance(result.exception, RuntimeError)


class SilentConsumer:
    """A confluent-kafka consumer whose broker never answers a metadata request."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        raise KafkaException(
            KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure")
        )


def test_tail_s_assignment_reports_a_broker_that_does_not_answer_as_a_consume_error() -> None:
    consumer = EventConsumer(SilentConsumer())  # type: ignore[arg-type]
    with pytest.raises(ConsumeError, match="cannot read orders.events.v1: Failed to get metadata"):
        consumer.assign_all("orders.events.v1", from_beginning=True)
    with pytest.raises(ConsumeError, match="cannot read orders.events.v1: Failed to get metadata"):
        consumer.assign_from_beginning(["orders.events.v1"])


def test_client_logs_are_held_back_by_one_filter_however_often_commands_run() -> None:
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    quiet_client_logs()
    quiet_client_logs()
    assert sum(isinstance(f, RepeatedRecords) for f in logger.filters) == 1
