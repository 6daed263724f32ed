"""After a rebalance, a stream partition is fetched only once it sits at its committed offset and flow is resumed.

The Faust build we run ends table recovery by resuming the stream partitions, then seeking them to their
committed offsets and resuming flow control (which clears every agent's queue). Whatever the fetcher
delivered meanwhile was lost: cleared from the queue unprocessed, re-fetched but dropped as already read,
and the hole then committed as an offset gap. A restarted inventory worker so skipped an ``OrderCancelled``
or a ``StockLineReserved`` and left stock reserved for good (tests/integration/test_saga_crash.py).
``streams.faust_patches.SeekThenResumeRecovery`` keeps the streams paused until the seek and the flow resume are done.

These tests run a recovery's last step against the service's real Faust app, with only the consumer's
broker calls replaced: ``assignment`` (what the group assigned), ``perform_seek`` (which looks at what the
fetcher could hand to agents while it runs) and the fetcher's start.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from faust.tables.recovery import Recovery
from faust.types import TP

from schemas.topics import INVENTORY_COMMANDS, INVENTORY_EVENTS, ORDER_EVENTS, PARTITIONS, table
from streams.bootstrap import create_app
from streams.faust_patches import SeekThenResumeRecovery
from tests.agents.conftest import agent_settings

pytestmark = pytest.mark.agents

GENERATION = 3


def _assignment() -> tuple[set[TP], set[TP]]:
    """Every partition of the inventory service's sources and changelogs: (streams, changelogs)."""
    streams = {
        TP(spec.name, p) for spec in (ORDER_EVENTS, INVENTORY_EVENTS, INVENTORY_COMMANDS) for p in range(PARTITIONS)
    }
    changelogs = {
        TP(table("inventory", name).changelog, p)
        for name in ("inventory_reservations", "inventory_stock", "inventory_holds")
        for p in range(PARTITIONS)
    }
    return streams, changelogs


async def _finish_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recovery_class: type[Recovery] | None = None
) -> dict[str, Any]:
    """Run ``on_recovery_completed`` as a worker reaches it after a rebalance; report what was fetchable when."""
    built = create_app("inventory", agent_settings(tmp_path))
    app = built.app
    tables = app.tables
    recovery = tables.recovery if recovery_class is None else recovery_class(app, tables, beacon=tables.beacon)
    consumer = app.consumer
    streams, changelogs = _assignment()
    seen: dict[str, Any] = {}

    async def perform_seek() -> None:
        await asyncio.sleep(0)  # the committed offsets are a broker round trip away
        seen["fetchable during the seek"] = streams & consumer._get_active_partitions()
        seen["flow active during the seek"] = app.flow_control.is_active()

    def resume_partitions(tps: Any) -> None:
        tps = set(tps)
        if tps & streams:
            seen["flow active when streams resumed"] = app.flow_control.is_active()
            seen["seeked when streams resumed"] = "fetchable during the seek" in seen
        original_resume(tps)

    async def no_fetcher() -> None:
        return None

    original_resume = consumer.resume_partitions
    monkeypatch.setattr(consumer, "assignment", lambda: streams | changelogs)
    monkeypatch.setattr(consumer, "perform_seek", perform_seek)
    monkeypatch.setattr(consumer, "resume_partitions", resume_partitions)
    monkeypatch.setattr(app._fetcher, "maybe_start", no_fetcher)
    monkeypatch.setattr(app.assignor, "assigned_standbys", lambda: set())
    # where the rebalance left things: every assigned partition paused, flow resumed to read the changelogs
    app.consumer_generation_id = GENERATION
    consumer.pause_partitions(streams | changelogs)
    app.flow_control.resume()

    await recovery.on_recovery_completed(GENERATION)
    seen["fetchable after"] = streams & consumer._get_active_partitions()
    seen["completed"] = recovery.completed.is_set()
    return seen


async def test_the_service_apps_recover_with_the_seek_first(tmp_path: Path) -> None:
    for service in ("orders", "inventory", "payments", "notifications", "users"):
        recovery = create_app(service, agent_settings(tmp_path / service)).app.tables.recovery
        assert isinstance(recovery, SeekThenResumeRecovery), service


async def test_no_stream_partition_is_fetchable_before_it_is_seeked_and_flow_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = await _finish_recovery(tmp_path, monkeypatch)
    streams, _ = _assignment()

    assert seen["fetchable during the seek"] == set(), "a message fetched before the seek is lost"
    assert seen["seeked when streams resumed"]
    assert seen["flow active when streams resumed"], "resuming flow clears the agents' queues: it must come first"
    assert seen["fetchable after"] == streams
    assert seen["completed"]


async def test_a_newer_rebalance_during_the_seek_leaves_the_streams_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = create_app("inventory", agent_settings(tmp_path))
    app = built.app
    consumer = app.consumer
    streams, changelogs = _assignment()

    async def perform_seek() -> None:
        app.consumer_generation_id = GENERATION + 1  # the group rebalanced meanwhile

    async def no_fetcher() -> None:
        return None

    monkeypatch.setattr(consumer, "assignment", lambda: streams | changelogs)
    monkeypatch.setattr(consumer, "perform_seek", perform_seek)
    monkeypatch.setattr(app._fetcher, "maybe_start", no_fetcher)
    app.consumer_generation_id = GENERATION
    consumer.pause_partitions(streams | changelogs)

    await app.tables.recovery.on_recovery_completed(GENERATION)

    assert streams & consumer._get_active_partitions() == set()
    assert not app.tables.recovery.completed.is_set()


async def test_faust_own_recovery_lets_the_fetcher_deliver_during_the_seek(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the override exists: should this fail after a Faust upgrade, the override may be dropped."""
    seen = await _finish_recovery(tmp_path, monkeypatch, recovery_class=Recovery)
    streams, _ = _assignment()

    assert seen["fetchable during the seek"] == streams
    assert not seen["seeked when streams resumed"]


def test_an_ack_from_an_older_consumer_generation_does_not_count(tmp_path: Path) -> None:
    """Faust's stream acks, unprocessed, a message it skips because it was fetched before a rebalance; the commit
    after the new assignment could then pass it. The pipeline's consumer refuses such an ack, so the message is
    read again from the committed offset and handled."""
    from types import SimpleNamespace

    from faust.types import Message

    from streams.app import new_faust_app
    from streams.faust_patches import AtLeastOnceConsumer, AtLeastOnceTransport

    app = new_faust_app("inventory", agent_settings(tmp_path))
    assert isinstance(app.transport, AtLeastOnceTransport)
    assert app.transport.Consumer is AtLeastOnceConsumer
    stale = Message("t", 0, 7, 0.0, None, None, b"k", b"v", None, generation_id=1)
    consumer = SimpleNamespace(app=SimpleNamespace(consumer_generation_id=2))
    assert AtLeastOnceConsumer.ack(consumer, stale) is False  # type: ignore[arg-type]


def _consumer_with(tmp_path: Path, topic: str, committed: int, acked: list[int]) -> tuple[Any, TP]:
    """The inventory worker's real consumer (never started) with one partition's commit bookkeeping set."""
    app = create_app("inventory", agent_settings(tmp_path)).app
    consumer = app.consumer
    tp = TP(topic, 0)
    consumer._committed_offset[tp] = committed
    consumer._acked[tp] = list(acked)
    consumer._acked_index[tp] = set(acked)
    return consumer, tp


async def test_faust_commits_past_one_unhandled_message_at_a_partition_head(tmp_path: Path) -> None:
    """Pins Faust's own rule, so an upgrade shows whether the pipeline's consumer still needs to hold it."""
    from faust.transport.drivers.aiokafka import Consumer as FaustConsumer

    consumer, tp = _consumer_with(tmp_path, INVENTORY_COMMANDS.name, committed=10, acked=[11, 12])
    assert FaustConsumer._new_offset(consumer, tp) == 13


async def test_a_commit_waits_for_an_unhandled_message_at_the_head(tmp_path: Path) -> None:
    consumer, tp = _consumer_with(tmp_path, INVENTORY_COMMANDS.name, committed=10, acked=[11, 12])
    consumer._log_starts = {tp: 0}
    assert consumer._new_offset(tp) is None
    consumer._acked[tp].insert(0, 10)  # the head is handled at last (read again after a restart, say)
    consumer._acked_index[tp].add(10)
    assert consumer._new_offset(tp) == 13


async def test_a_head_recorded_as_a_gap_or_gone_from_the_log_does_not_hold_the_commit(tmp_path: Path) -> None:
    consumer, tp = _consumer_with(tmp_path, INVENTORY_COMMANDS.name, committed=10, acked=[11, 12])
    consumer._gap[tp].addi(10, 11)
    assert consumer._new_offset(tp) == 13

    consumer, tp = _consumer_with(tmp_path / "gone", INVENTORY_COMMANDS.name, committed=10, acked=[11, 12])
    consumer._log_starts = {tp: 11}  # retention deleted offset 10: the group resumes from the log's start
    assert consumer._new_offset(tp) == 13


async def test_a_compacted_topic_keeps_faust_rule(tmp_path: Path) -> None:
    """A compacted log has holes of its own; its head may be gone without being retention's doing."""
    from schemas.topics import USER_SNAPSHOTS

    assert USER_SNAPSHOTS.compacted
    consumer, tp = _consumer_with(tmp_path, USER_SNAPSHOTS.name, committed=10, acked=[11, 12])
    assert consumer._new_offset(tp) == 13


async def test_a_missing_head_asks_the_broker_where_the_log_starts(tmp_path: Path) -> None:
    consumer, tp = _consumer_with(tmp_path, INVENTORY_COMMANDS.name, committed=10, acked=[11, 12])
    asked: list[TP] = []

    async def earliest_offsets(*partitions: TP) -> dict[TP, int]:
        asked.extend(partitions)
        return dict.fromkeys(partitions, 11)

    consumer.earliest_offsets = earliest_offsets
    assert consumer._new_offset(tp) is None  # not known yet: held, and asked
    for _ in range(3):
        await asyncio.sleep(0)
    assert asked == [tp]
    assert consumer._new_offset(tp) == 13


async def test_offsets_fetched_past_unhandled_are_not_counted_as_done(tmp_path: Path) -> None:
    """Faust records a hole in what it fetched as a gap and commits over it; only a compacted log has real holes."""
    consumer, tp = _consumer_with(tmp_path, INVENTORY_COMMANDS.name, committed=10, acked=[10, 16])
    await consumer._add_gap(tp, 11, 16)
    assert not consumer._gap[tp]
    assert consumer._new_offset(tp) == 11  # Faust's own bookkeeping would say 17

    from schemas.topics import USER_SNAPSHOTS

    consumer, tp = _consumer_with(tmp_path / "compacted", USER_SNAPSHOTS.name, committed=10, acked=[10, 16])
    await consumer._add_gap(tp, 11, 16)
    assert consumer._new_offset(tp) == 17


async def test_a_fetch_asks_for_the_partitions_active_when_it_began(tmp_path: Path) -> None:
    """Faust hands its live set of active partitions to the consumer thread and pauses partitions in it while the
    fetch waits; aiokafka reads an empty set as every partition, so the paused stream partitions' records came
    back, were dropped as not active, and were never read again. The pipeline's consumer fetches for a copy."""
    consumer = create_app("inventory", agent_settings(tmp_path)).app.consumer
    changelog = TP(table("inventory", "inventory_stock").changelog, 0)
    live = {changelog}
    asked: list[set[TP]] = []

    async def thread_getmany(active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:  # noqa: ASYNC109
        live.clear()  # recovery pauses the last changelog partition while the fetch waits
        await asyncio.sleep(0)
        asked.append(set(active_partitions))
        return {}

    consumer._thread.getmany = thread_getmany
    assert await consumer._getmany(live, 1.0) == {}
    assert asked == [{changelog}]

    assert await consumer._getmany(set(), 1.0) == {}  # nothing active: no fetch for "every partition"
    assert len(asked) == 1


async def test_acks_made_between_a_revocation_and_the_next_assignment_do_not_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust clears a partition's acks when it is revoked, but a message skipped (and acked unprocessed) or
    finished during the rebalance adds one afterwards, and the next generation's commit would count it."""
    from faust.transport.drivers.aiokafka import Consumer as FaustConsumer

    consumer, tp = _consumer_with(tmp_path, INVENTORY_COMMANDS.name, committed=60, acked=[69, 70])
    consumer._gap[tp].addi(71, 72)
    assigned_by_faust: list[set[TP]] = []

    async def faust_assignment(self: Any, assigned: set[TP], generation_id: int = 0) -> None:
        assigned_by_faust.append(assigned)

    monkeypatch.setattr(FaustConsumer, "on_partitions_assigned", faust_assignment)
    await consumer.on_partitions_assigned({tp}, 4)
    assert assigned_by_faust == [{tp}]
    assert not consumer._acked[tp] and not consumer._acked_index[tp] and not consumer._gap[tp]


class _Flow:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


class _App:
    def __init__(self) -> None:
        self.consumer_generation_id = 3
        self.flow_control = _Flow()


def _message(offset: int, generation: int = 3) -> Any:
    from faust.types import Message

    topic = "inventory.commands.v1"
    return Message(topic, 0, offset, 0.0, 0, None, b"k", b"v", None, tp=TP(topic, 0), generation_id=generation)


def test_a_message_waiting_in_a_batch_is_not_decided_once_a_rebalance_began() -> None:
    """Faust checked generation and flow when it handed the message over; a message of a batch waits while the ones
    before it are decided, so the agent asks again right before each decision."""
    from streams.faust_patches import Admission

    app = _App()
    admission = Admission(app, "keep_stock", frozenset())
    assert admission.admits(_message(0))
    app.flow_control.active = False  # a rebalance began: the partitions are being revoked
    assert not admission.admits(_message(1))
    app.flow_control.active = True
    app.consumer_generation_id = 4  # and a new generation was assigned
    assert not admission.admits(_message(1)), "fetched in the old generation: it is read again, not decided"
    assert admission.admits(_message(1, generation=4))


def test_a_hole_in_a_batch_stops_the_worker_before_the_message_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.faust_patches

    exits: list[str] = []
    monkeypatch.setattr(streams.faust_patches, "exit_for_restart", lambda: exits.append("exit"))
    admission = streams.faust_patches.Admission(_App(), "keep_stock", frozenset())
    assert admission.admits(_message(0))
    with pytest.raises(streams.faust_patches.RestartForRedelivery):
        admission.admits(_message(2))
    assert exits == ["exit"]


def test_offset_continuity_allows_redeliveries_and_a_new_generation_but_no_hole() -> None:
    from streams.faust_patches import OffsetContinuity

    seen = OffsetContinuity()
    assert [seen.skipped(1, "t", 0, o) for o in (10, 11, 11, 9, 12)] == [None] * 5, "in order, or again"
    assert seen.skipped(1, "t", 1, 40) is None, "another partition starts where it starts"
    assert seen.skipped(1, "t", 0, 15) == 13, "13 and 14 never came"
    assert seen.skipped(2, "t", 0, 7) is None, "a rebalance seeks to the committed offset: a new count"
