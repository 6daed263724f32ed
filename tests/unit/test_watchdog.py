"""The stall rule: partitions behind whose committed offsets stand still for the whole timeout."""

from __future__ import annotations

import pytest

from streams.watchdog import StallDetector

pytestmark = pytest.mark.unit

TP = ("orders.events.v1", 0)


def test_a_partition_behind_with_offsets_standing_still_is_a_stall_after_the_timeout() -> None:
    detector = StallDetector(stall_timeout_s=30)
    assert not detector.observe(0, {TP: 5}, {TP: 10})
    assert not detector.observe(29, {TP: 5}, {TP: 10})
    assert detector.observe(30, {TP: 5}, {TP: 10})


def test_progress_resets_the_clock() -> None:
    detector = StallDetector(stall_timeout_s=30)
    detector.observe(0, {TP: 5}, {TP: 10})
    assert not detector.observe(25, {TP: 6}, {TP: 10})
    assert not detector.observe(50, {TP: 6}, {TP: 10})
    assert detector.observe(55, {TP: 6}, {TP: 10})


def test_caught_up_or_empty_partitions_are_never_a_stall() -> None:
    detector = StallDetector(stall_timeout_s=1)
    assert not detector.observe(0, {TP: 10}, {TP: 10})
    assert not detector.observe(100, {TP: 10}, {TP: 10})
    assert not detector.observe(200, {}, {TP: 0})


def test_a_partition_never_committed_but_with_messages_counts_as_behind() -> None:
    detector = StallDetector(stall_timeout_s=10)
    detector.observe(0, {}, {TP: 3})
    assert detector.observe(10, {}, {TP: 3})


def test_one_partition_standing_still_is_a_stall_while_others_move() -> None:
    """A commit held at one unhandled message: the worker commits elsewhere, but that partition never moves."""
    other = ("orders.events.v1", 1)
    detector = StallDetector(stall_timeout_s=30)
    assert not detector.observe(0, {TP: 5, other: 0}, {TP: 10, other: 100})
    assert not detector.observe(20, {TP: 5, other: 40}, {TP: 10, other: 100})
    assert detector.observe(30, {TP: 5, other: 60}, {TP: 10, other: 100})
    assert detector.still_for(30) == 30


def test_a_partition_that_caught_up_starts_afresh_when_it_falls_behind_again() -> None:
    detector = StallDetector(stall_timeout_s=30)
    detector.observe(0, {TP: 5}, {TP: 10})
    detector.observe(20, {TP: 10}, {TP: 10})
    assert not detector.observe(40, {TP: 10}, {TP: 12})
    assert detector.observe(70, {TP: 10}, {TP: 12})


def test_a_broker_outage_starts_the_clocks_afresh() -> None:
    """While the group's coordinator is away no worker can commit; that time is not the worker's stall."""
    detector = StallDetector(stall_timeout_s=30)
    detector.observe(0, {TP: 5}, {TP: 10})
    detector.forgive(25)
    assert not detector.observe(40, {TP: 5}, {TP: 10})
    assert detector.observe(55, {TP: 5}, {TP: 10})
