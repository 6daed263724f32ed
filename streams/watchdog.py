"""A worker that holds partitions with unread messages but makes no progress is stopped, so it can be restarted.

Faust can leave a worker alive, in its group and holding partitions, yet not fetching (after a rebalance that
followed a crashed peer we saw it happen once in a few runs). Nothing inside the process notices. The
watchdog looks from the outside, as an operator would: every few seconds it compares, for every partition of
the worker's source topics, its group's committed offsets with the partitions' end offsets (through
confluent-kafka and the broker's view, so a stuck Faust consumer, or one that wrongly believes it holds
nothing, cannot hide it). If some partition stays behind and its committed offset does not move for
``stall_timeout_s``, or a step has been running that long, the process exits with
:data:`STALLED_EXIT_CODE`; its supervisor (compose's restart policy, the test harness) starts it again and the
at-least-once rules replay whatever was in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from common.settings import LIBRDKAFKA_LOGGER, Settings
from common.telemetry import CONSUMER_LAG

log = logging.getLogger(__name__)

STALLED_EXIT_CODE = 75
"""EX_TEMPFAIL: try again."""

TopicPart = tuple[str, int]

PARTITIONS_REFRESH_S = 60.0
"""How long the watchdog trusts the source topics' partition lists it read."""


@dataclass
class StallDetector:
    """Pure bookkeeping: has some partition been behind while its committed offset stood still?

    Each partition is judged on its own: a worker whose commit is held at one unhandled message keeps
    committing on its other partitions, and that one must still count as stalled."""

    stall_timeout_s: float
    _last_committed: dict[TopicPart, int] = field(default_factory=dict)
    _still_since: dict[TopicPart, float] = field(default_factory=dict)

    def still_for(self, now: float) -> float:
        """How long the longest-waiting partition has been behind without moving (0: none is)."""
        return max((now - since for since in self._still_since.values()), default=0.0)

    def forgive(self, now: float) -> None:
        """Start every partition's clock afresh: the broker was away, and no worker commits without it."""
        self._still_since = dict.fromkeys(self._still_since, now)

    def observe(self, now: float, committed: dict[TopicPart, int], ends: dict[TopicPart, int]) -> bool:
        """Record one look; True once some partition behind has not moved for the whole timeout."""
        behind = {tp for tp, end in ends.items() if committed.get(tp, -1) < end and end > 0}
        still_since = {}
        for tp in behind:
            moved = committed.get(tp) != self._last_committed.get(tp)
            still_since[tp] = now if moved or tp not in self._still_since else self._still_since[tp]
        self._still_since = still_since
        self._last_committed = dict(committed)
        return any(now - since >= self.stall_timeout_s for since in self._still_since.values())


class Watchdog:
    """Looks at one Faust worker's progress from the outside and stops it when it stalls."""

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        sources: Iterable[str],
        busy_for: Callable[[], float],
        ready: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._group_id = group_id
        self._sources = sorted(set(sources))
        self._busy_for = busy_for
        self._ready = ready
        self._detector = StallDetector(settings.stall_timeout_s)
        self.lag: dict[str, int] | None = None
        """Messages behind per source topic at the last look (None: not looked yet, or the broker is away)."""
        self._clients: tuple[Consumer, Consumer] | None = None
        self._partitions: list[TopicPart] | None = None
        self._partitions_at = 0.0
        self._started = time.monotonic()

    def _offsets(self) -> tuple[dict[TopicPart, int], dict[TopicPart, int]]:
        """(committed, end) offsets of every partition of the sources; blocking, run in a thread.

        The group's committed offsets are read by a consumer that carries the group's id but never subscribes
        (so it never joins the group), not by the admin API: librdkafka's admin ListConsumerGroupOffsets aborts
        the whole process (assertion ``eonce->refcnt > 0``, librdkafka issues 3663 and 4605) when its
        coordinator request is retried, as it is when a broker of a cluster dies and the coordinator moves."""
        if self._clients is None:
            quiet = logging.getLogger(LIBRDKAFKA_LOGGER)
            common = {"bootstrap.servers": self._settings.kafka_bootstrap, "enable.auto.commit": False, "logger": quiet}
            self._clients = (
                Consumer({**common, "group.id": f"{self._group_id}-watchdog"}),
                Consumer({**common, "group.id": self._group_id, "enable.auto.offset.store": False}),
            )
        consumer, group_reader = self._clients
        partitions = self._source_partitions(consumer)
        read = group_reader.committed([TopicPartition(t, p) for t, p in partitions], timeout=10)
        committed = {(tp.topic, tp.partition): tp.offset for tp in read if tp.error is None and tp.offset >= 0}
        # one ListOffsets request per leader for every partition (a timestamp of OFFSET_END asks for the end),
        # not one per partition as get_watermark_offsets sends: at rest this look was most of the broker's work
        latest = consumer.offsets_for_times([TopicPartition(t, p, OFFSET_END) for t, p in partitions], timeout=10)
        ends = {(tp.topic, tp.partition): tp.offset for tp in latest if tp.error is None and tp.offset >= 0}
        return committed, ends

    def _source_partitions(self, consumer: Consumer) -> list[TopicPart]:
        """The partitions of the sources, from one metadata request, asked again at most every
        :data:`PARTITIONS_REFRESH_S` (partitions are added rarely; a look between misses them for that long)."""
        now = time.monotonic()
        if self._partitions is None or now - self._partitions_at >= PARTITIONS_REFRESH_S:
            metadata = consumer.list_topics(timeout=10).topics
            self._partitions = [(name, p) for name in self._sources for p in sorted(metadata[name].partitions)]
            self._partitions_at = now
        return self._partitions

    def stalled_for(self) -> float:
        """How long the worker has had waiting messages and no progress (0: it is moving or has nothing to do)."""
        return self._detector.still_for(time.monotonic())

    def stuck_for(self) -> float:
        """How long the worker has made no progress by either rule that stops it: waiting messages standing still,
        or one step running (a view service's batch waiting for Redis)."""
        return max(self.stalled_for(), self._busy_for())

    async def check(self) -> bool:
        """One look; True when the worker is stalled (the caller stops it)."""
        if not self._ready():
            return False
        if self._busy_for() >= self._settings.stall_timeout_s:
            log.critical("a step has been running for %.0fs", self._busy_for())
            return True
        try:
            committed, ends = await asyncio.to_thread(self._offsets)
        except Exception as exc:  # the broker is away: that is not this worker's stall
            log.warning("watchdog could not read offsets: %r", exc)
            self._partitions = None  # read the partitions again too
            self.lag = None
            self._detector.forgive(time.monotonic())
            return False
        self.lag = lag_by_topic(committed, ends)
        for topic_name, behind_by in self.lag.items():
            CONSUMER_LAG.labels(self._group_id, topic_name).set(behind_by)
        stalled = self._detector.observe(time.monotonic(), committed, ends)
        if time.monotonic() - self._started < self._settings.stall_timeout_s:
            return False  # joining the group and recovering tables is not a stall
        if stalled:
            behind = {tp: end - committed.get(tp, 0) for tp, end in ends.items() if committed.get(tp, -1) < end}
            log.critical("no progress for %.0fs with messages waiting: %s", self._settings.stall_timeout_s, behind)
        return stalled


def lag_by_topic(committed: dict[TopicPart, int], ends: dict[TopicPart, int]) -> dict[str, int]:
    """How many messages of each topic the group has not committed yet."""
    lag: dict[str, int] = {}
    for (topic_name, partition), end in ends.items():
        lag[topic_name] = lag.get(topic_name, 0) + max(0, end - max(committed.get((topic_name, partition), 0), 0))
    return lag


def stop_stalled_process() -> None:
    """Exit at once: a stalled Faust worker may not stop cleanly, and nothing it holds needs a clean stop."""
    logging.shutdown()
    os._exit(STALLED_EXIT_CODE)
