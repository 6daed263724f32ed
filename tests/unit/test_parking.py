"""The per-key parking rule (pure), the dead-letter headers that carry a message's origin, and the replay order."""

from __future__ import annotations

from dataclasses import replace

import pytest
from click.testing import CliRunner

from common.envelope import dead_letter_headers, headers_dict
from consumers.deadletter import DeadLetter, parked_status, replay_order, replay_partition
from pipeline.cli import main
from streams.domain.parking import (
    Arrival,
    ParkedMessage,
    Position,
    Queue,
    Verdict,
    admit,
    parked_behind_reason,
    settle,
)

pytestmark = pytest.mark.unit

A = Position("orders.events.v1", 2, 10)
B = Position("payments.events.v1", 2, 11)
C = Position("orders.events.v1", 2, 12)


def arrive(origin: Position, *, key: str | None = "o-1", replay: bool = False) -> Arrival:
    return Arrival(key, origin, replay=replay)


def parked(*origins: Position) -> Queue:
    return tuple(ParkedMessage(o, f"id-{o.offset}", "boom") for o in origins)


def test_a_key_that_is_not_parked_is_processed_and_its_failure_parks_it() -> None:
    assert admit((), arrive(A)) is Verdict.PROCESS
    assert settle((), arrive(A), "id-10", failure=None) == (), "a success parks nothing"
    assert settle((), arrive(A), "id-10", failure="boom") == (ParkedMessage(A, "id-10", "boom"),)


def test_a_later_message_of_a_parked_key_is_parked_behind_the_head_and_other_keys_flow() -> None:
    queue = parked(A)
    assert admit(queue, arrive(B)) is Verdict.PARK_BEHIND
    behind = settle(queue, arrive(B), "id-11", failure=parked_behind_reason(queue[0], "o-1"))
    assert [m.origin for m in behind] == [A, B]
    assert behind[1].reason == "parked behind orders.events.v1[2]@10 (key 'o-1' waits for its replay)"
    assert admit((), arrive(C, key="o-2")) is Verdict.PROCESS, "another key's queue is its own (empty)"


def test_replays_release_the_key_in_order() -> None:
    queue = parked(A, B, C)
    assert admit(queue, arrive(A, replay=True)) is Verdict.PROCESS_HEAD
    queue = settle(queue, arrive(A, replay=True), "id-10", failure=None)
    assert [m.origin for m in queue] == [B, C], "the head is popped"
    assert admit(queue, arrive(B, replay=True)) is Verdict.PROCESS_HEAD
    queue = settle(queue, arrive(B, replay=True), "id-11", failure=None)
    assert admit(queue, arrive(C, replay=True)) is Verdict.PROCESS_HEAD
    assert settle(queue, arrive(C, replay=True), "id-12", failure=None) == (), "an empty queue releases the key"


def test_a_failing_replay_of_the_head_is_parked_again_and_stays_head() -> None:
    queue = parked(A, B)
    assert settle(queue, arrive(A, replay=True), "id-10", failure="still broken") == queue


def test_a_replay_that_is_not_the_head_is_refused_and_keeps_its_place() -> None:
    queue = parked(A, B)
    assert admit(queue, arrive(B, replay=True)) is Verdict.REFUSE


def test_a_redelivered_parked_message_is_parked_again_without_queueing_twice() -> None:
    """A crash after the queue was stored, before the input was acked: the input comes again."""
    queue = parked(A, B)
    assert admit(queue, arrive(A)) is Verdict.PARK_AGAIN
    assert admit(queue, arrive(B)) is Verdict.PARK_AGAIN
    assert settle(queue, arrive(B), "id-11", failure="boom") == queue


def test_the_same_fact_again_while_its_key_waits_does_not_grow_the_queue() -> None:
    """A timer repeats a passed deadline every few seconds, with the same event id, while the saga is parked."""
    queue = (*parked(A), ParkedMessage(B, "deadline-of-o-1", "parked behind"))
    again = Arrival("o-1", Position("orders.deadlines.v1", 2, 40), event_id="deadline-of-o-1")
    assert admit(queue, again) is Verdict.DUPLICATE
    assert admit((), again) is Verdict.PROCESS, "a key that is not parked handles it"


def test_a_replay_older_than_the_head_is_processed() -> None:
    """Every message of a parked key is queued, so a replay no queue holds was handled already (a duplicate)."""
    queue = parked(B)
    assert admit(queue, arrive(A, replay=True)) is Verdict.PROCESS
    assert settle(queue, arrive(A, replay=True), "id-10", failure=None) == queue


def test_a_message_without_a_key_cannot_park_one() -> None:
    queue = parked(A)
    assert admit(queue, arrive(B, key=None)) is Verdict.PROCESS
    assert settle((), arrive(B, key=None), "id-11", failure="garbage") == ()


def test_positions_read_back_from_headers() -> None:
    assert Position.from_header(A.to_header()) == A
    assert str(A) == "orders.events.v1[2]@10"
    assert Position.from_header("orders.events.v1:x:1") is None
    assert Position.from_header("") is None


def test_a_dead_letter_keeps_the_origin_of_a_replay_that_failed_again() -> None:
    first = headers_dict(dead_letter_headers([], topic="t.v1", partition=1, offset=5, error="e", agent="a", attempts=1))
    assert first["dlq_origin"] == "t.v1:1:5" and "dlq_parked_behind" not in first
    replayed = [("ce_id", b"x"), ("dlq_replay_of", b"t.v1.dlq:1:0"), ("dlq_origin", b"t.v1:1:5")]
    again = headers_dict(
        dead_letter_headers(
            replayed, topic="t.v1", partition=1, offset=9, error="e", agent="a", attempts=1, parked_behind="t.v1:1:2"
        )
    )
    assert again["dlq_origin"] == "t.v1:1:5", "the original position, not the replay's"
    assert (again["dlq_source_offset"], again["dlq_parked_behind"]) == ("9", "t.v1:1:2")
    assert "dlq_replay_of" not in again


def letter(origin: Position, offset: int, parked_at: str, key: bytes = b"o-1") -> DeadLetter:
    return DeadLetter(
        topic=f"{origin.topic}.dlq",
        partition=origin.partition,
        offset=offset,
        key=key,
        value=b"v",
        original_headers=(),
        error="boom",
        agent="run_order_sagas",
        attempts=1,
        source_topic=origin.topic,
        source_partition=origin.partition,
        source_offset=origin.offset,
        parked_at=parked_at,
        origin=origin,
    )


def test_replay_sends_one_copy_per_origin_in_its_queue_order() -> None:
    old = Position("orders.events.v1", 2, 3)
    letters = [
        letter(C, 7, "2026-01-01T00:00:03.000Z"),
        letter(A, 5, "2026-01-01T00:00:01.000Z"),
        letter(B, 0, "2026-01-01T00:00:02.000Z"),
        letter(A, 9, "2026-01-01T00:00:04.000Z"),  # A replayed and parked again: the newest copy is sent
        letter(old, 1, "2026-01-01T00:00:00.500Z"),  # handled long since
    ]
    queues = {("run_order_sagas", "o-1"): (A, B, C)}
    assert [(d.origin, d.offset) for d in replay_order(letters, queues)] == [(old, 1), (A, 9), (B, 0), (C, 7)]
    by_time = [d.origin for d in replay_order(letters)]
    assert by_time == [old, A, B, C], "without the queues: by when each origin was first parked"
    assert parked_status(letters[0], queues) == "#2 behind in run_order_sagas"
    assert parked_status(letters[1], queues) == "head of run_order_sagas (3 queued)"
    assert parked_status(letters[4], queues) == "released"


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "replay", "orders.events.v1"],
        ["dlq", "replay", "orders.events.v1", "--all", "--key", "o-1"],
        ["dlq", "replay", "--at", "1:2"],
        ["dlq", "replay", "orders.events.v1", "--at", "x:2"],
        ["dlq", "replay", "no.such.topic", "--all"],
    ],
)
def test_a_malformed_replay_exits_non_zero_before_reading_anything(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, env={"PIPELINE_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and "replaying" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["dlq", "discard", "orders.events.v1"],
        ["dlq", "discard", "--at", "1:2"],
        ["dlq", "discard", "orders.events.v1", "--at", "x:2"],
        ["dlq", "discard", "no.such.topic", "--at", "1:2"],
    ],
)
def test_a_malformed_discard_exits_non_zero_before_reading_anything(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, env={"PIPELINE_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code != 0, result.output
    assert "discarding" not in result.output and "sent" not in result.output


def test_a_replay_goes_back_to_the_partition_its_message_was_first_read_from() -> None:
    """Not where the partitioner would put its key (kcat hashes keys with CRC32, the pipeline with murmur2): the
    key's queue lives with the partition the message was first read from."""
    first = letter(Position("inventory.commands.v1", 3, 17), 0, "t")
    assert replay_partition(first) == 3
    again = replace(first, source_partition=1, source_offset=40)  # a replay that failed again, read from 1
    assert replay_partition(again) == 3, "its origin's partition, which the queue is kept with"
