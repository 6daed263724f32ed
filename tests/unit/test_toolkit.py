"""The consumer toolkit's edge cases that need no broker: waiting out a partition without a leader."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumers.toolkit import EventConsumer, GroupPosition, ProgressWatch

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


# --- ProgressWatch: a consumer that stops making progress while its group has messages waiting ----------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watch(positions: list[GroupPosition | None], clock: _Clock, stall_timeout_s: float = 30.0) -> ProgressWatch:
    answers = iter(positions)
    return ProgressWatch(lambda: next(answers), stall_timeout_s=stall_timeout_s, look_interval_s=5.0, clock=clock)


def test_a_consumer_idle_with_messages_waiting_and_no_commits_moving_is_stalled_after_the_timeout() -> None:
    clock = _Clock()
    watch = _watch([GroupPosition(committed=100, lag=7)] * 10, clock)
    seen = []
    for _ in range(7):
        clock.now += 5.0
        seen.append(watch.stalled())
    assert seen == [False, False, False, False, False, True, True]
    assert watch.behind == 7
    assert watch.stalled_for_s == 35.0


def test_nothing_waiting_is_never_a_stall() -> None:
    clock = _Clock()
    watch = _watch([GroupPosition(committed=100, lag=0)] * 20, clock)
    for _ in range(20):
        clock.now += 5.0
        assert not watch.stalled()


def test_another_member_moving_the_groups_commits_is_progress() -> None:
    """Two consumers share a group: this one idles on an empty assignment while the other one works."""
    clock = _Clock()
    watch = _watch([GroupPosition(committed=100 + 10 * i, lag=50) for i in range(20)], clock)
    for _ in range(20):
        clock.now += 5.0
        assert not watch.stalled()


def test_a_broker_that_cannot_answer_starts_the_clock_afresh() -> None:
    clock = _Clock()
    stuck = GroupPosition(committed=100, lag=3)
    watch = _watch([stuck, stuck, stuck, stuck, None, stuck, stuck, stuck, stuck, stuck, stuck, stuck], clock)
    seen = []
    for _ in range(12):
        clock.now += 5.0
        seen.append(watch.stalled())
    assert seen.index(True) == 10  # 30 s after the unanswered look (the 5th), not after the first


def test_handled_messages_keep_the_watch_quiet_without_asking_the_broker() -> None:
    clock = _Clock()
    asked: list[int] = []

    def position() -> GroupPosition:
        asked.append(1)
        return GroupPosition(committed=100, lag=9)

    watch = ProgressWatch(position, stall_timeout_s=30.0, look_interval_s=5.0, clock=clock)
    for _ in range(30):
        clock.now += 2.0
        watch.progressed()
        assert not watch.stalled()
    assert asked == []


# --- reading from given offsets up to the end as it is now -----------------------------------------------------


class _Record:
    def __init__(self, topic: str, partition: int, offset: int, ts: int) -> None:
        self._at = (topic, partition, offset, ts)

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._at[0]

    def partition(self) -> int:
        return self._at[1]

    def offset(self) -> int:
        return self._at[2]

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, self._at[3])


class PartitionLog:
    """One partition of a topic, offsets ``low`` … ``high - 1`` (the record at offset n written at 1000 + 10 n);
    fetching goes on past ``high``, as it would while producers write."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.next = -1001
        self.assigned: list[TopicPartition] = []

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return self.low, self.high

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions
        self.next = partitions[0].offset

    def assignment(self) -> list[TopicPartition]:
        return self.assigned

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        at = self.next if self.next != self.assigned[0].offset else -1001
        return [TopicPartition(tp.topic, tp.partition, at) for tp in partitions]

    def poll(self, timeout: float) -> _Record:
        record = _Record("t", 0, self.next, 1000 + 10 * self.next)
        self.next += 1
        return record

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        (tp,) = partitions
        first = max(self.low, -(-(tp.offset - 1000) // 10))
        return [TopicPartition(tp.topic, tp.partition, first if first < self.high else -1)]


def test_a_read_from_an_offset_stops_at_the_end_as_it_was_when_it_began() -> None:
    log = PartitionLog(low=3, high=9)
    reader = consumer(log)
    assert [m.offset for m in reader.read_from({("t", 0): 5})] == [5, 6, 7, 8]
    assert reader.ends == {("t", 0): (5, 9)} and not reader.unfinished
    assert [m.offset for m in reader.read_from({("t", 0): None})] == list(range(3, 9)), "None: the log's start"
    assert [m.offset for m in reader.read_from({("t", 0): 0})] == list(range(3, 9)), "retention took 0 … 2"
    assert list(reader.read_from({("t", 0): 12})) == [] and reader.ends == {("t", 0): (9, 9)}


def test_the_offset_for_a_time_is_the_first_written_then_or_later_else_the_end() -> None:
    reader = consumer(PartitionLog(low=3, high=9))
    assert reader.offset_for_time("t", 0, 1055) == 6
    assert reader.offset_for_time("t", 0, 1060) == 6
    assert reader.offset_for_time("t", 0, 0) == 3
    assert reader.offset_for_time("t", 0, 5000) == 9, "nothing written since: the end, where nothing is to read"
