"""The consumer toolkit's edge cases that need no broker: waiting out a partition without a leader."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers.toolkit import EventConsumer

pytestmark = pytest.mark.unit


class LeaderlessFor:
    """A consumer whose watermark query fails ``failures`` times with ``code``, then answers."""

    def __init__(self, failures: int, code: int) -> None:
        self.failures = failures
        self.code = code
        self.calls = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(self.code))
        return 3, 9


def consumer(fake: Any) -> EventConsumer:
    return EventConsumer(fake)


def test_a_partition_without_a_leader_yet_is_waited_for() -> None:
    fake = LeaderlessFor(2, KafkaError.NOT_LEADER_FOR_PARTITION)
    assert consumer(fake)._watermarks(TopicPartition("t", 0), timeout=10) == (3, 9)
    assert fake.calls == 3


def test_an_error_that_will_not_pass_is_raised_at_once() -> None:
    fake = LeaderlessFor(1, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        consumer(fake)._watermarks(TopicPartition("t", 0), timeout=10)
    assert fake.calls == 1


def test_a_leader_that_never_comes_is_reported_after_the_timeout() -> None:
    fake = LeaderlessFor(10_000, KafkaError.LEADER_NOT_AVAILABLE)
    with pytest.raises(KafkaException):
        consumer(fake)._watermarks(TopicPartition("t", 0), timeout=0.5)
    assert 2 <= fake.calls < 10
