"""Due-time indexes for timer tables: what a timer must report now, found in O(due), not O(open).

A timer table maps a key to the epoch milliseconds it is due at (``orders_deadlines``: order id → deadline;
``orders_admission_holds``: user id → when its held orders are due). Its agent writes it while handling an event,
so each write goes to the changelog partition of that event; the timer reads it outside any event, once a
second. Scanning the table there costs O(open sagas) a sweep, which a backlog turns into seconds. A
:class:`DueIndex` keeps the table's entries in a heap by the time each is next to be reported:

* the agent's write path tells it every change (:meth:`DueIndex.track`, with the partition written to);
* when a rebalance's recovery completes (Faust's ``table.on_recover``), it is rebuilt from the table
  (:meth:`DueIndex.rebuild`), keeping only the partitions this worker is now active for: the in-memory store
  keeps the keys it wrote for a partition after that partition moved to another worker;
* a popped entry is checked against the table: a key gone (its saga ended) or due at another time is dropped;
* a reported entry comes due again after a delay that doubles up to a cap (:data:`RESEND_S`, :data:`RESEND_CAP_S`),
  so a report that was lost, or sent just as its partition moved, is repeated, while a backlog is not fed the
  same reports every few seconds.

:func:`report_due` is one sweep: pop what is due (at most ``limit``), send one report each, wait for the broker
once for all of them.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from faust.streams import current_event

from streams.state import ScannableTable

RESEND_S = 5.0
"""A report whose key is still due this long after it was sent is sent again (the delay doubles each time)."""
RESEND_CAP_S = 300.0
"""The longest delay between two reports of one key."""


@dataclass(frozen=True, order=True)
class Due:
    """One key to report: due at ``due_ms``, reported ``attempt`` times before."""

    due_ms: int
    key: str
    attempt: int = 0


class DueIndex:
    """The entries of one timer table, in a heap by the time each is next to be reported."""

    def __init__(
        self, table: ScannableTable, *, resend_s: float = RESEND_S, resend_cap_s: float = RESEND_CAP_S
    ) -> None:
        self._table = table
        self._resend_ms = int(resend_s * 1000)
        self._resend_cap_ms = int(resend_cap_s * 1000)
        self._heap: list[tuple[int, str, int, int]] = []
        """(report at, key, due at, attempt); entries of keys since gone or moved are dropped when popped."""
        self._known: dict[str, tuple[int, int | None]] = {}
        """Each tracked key's due time and the partition its entry was written to (None: not known)."""

    def __len__(self) -> int:
        """How many keys are due sometime (the open entries of the table, as far as this worker holds them)."""
        return len(self._known)

    def track(self, key: str, due_ms: int | None, partition: int | None) -> None:
        """The table entry of ``key`` was just written (``due_ms``) or deleted (None), in ``partition``."""
        if due_ms is None:
            self._known.pop(key, None)
            return
        if self._known.get(key) == (due_ms, partition):
            return
        self._known[key] = (due_ms, partition)
        heapq.heappush(self._heap, (due_ms, key, due_ms, 0))

    def rebuild(self, owned: Collection[int] | None) -> None:
        """Start again from the table: every entry, but those written to a partition outside ``owned`` (the
        partitions this worker is active for; None: all of them). O(open), once per rebalance."""
        known: dict[str, tuple[int, int | None]] = {}
        for key, due_ms in self._table.items():
            if not isinstance(due_ms, int):
                continue
            partition = self._known.get(key, (0, None))[1]
            if owned is not None and partition is not None and partition not in owned:
                continue
            known[key] = (due_ms, partition)
        self._known = known
        self._heap = [(due_ms, key, due_ms, 0) for key, (due_ms, _) in known.items()]
        heapq.heapify(self._heap)

    def take_due(self, now_ms: int, limit: int) -> list[Due]:
        """Pop up to ``limit`` entries due by ``now_ms``, earliest first, each still so in the table."""
        taken: list[Due] = []
        heap, known, table = self._heap, self._known, self._table
        while heap and heap[0][0] <= now_ms and len(taken) < limit:
            _, key, due_ms, attempt = heapq.heappop(heap)
            tracked = known.get(key)
            if tracked is None or tracked[0] != due_ms:
                continue  # gone, or due at another time (its own entry stands in the heap)
            stored = table.get(key)
            if stored != due_ms:
                del known[key]  # the table no longer holds it (the saga ended), or holds another time
                if isinstance(stored, int):
                    self.track(key, stored, tracked[1])
                continue
            taken.append(Due(due_ms, key, attempt))
        return taken

    def reported(self, entries: Sequence[Due], now_ms: int) -> None:
        """``entries`` were reported at ``now_ms``: each comes due again after its resend delay."""
        for entry in entries:
            delay = min(self._resend_cap_ms, self._resend_ms * 2**entry.attempt)
            heapq.heappush(self._heap, (now_ms + delay, entry.key, entry.due_ms, entry.attempt + 1))

    def put_back(self, entries: Sequence[Due]) -> None:
        """``entries`` could not be reported: due again at once."""
        for entry in entries:
            heapq.heappush(self._heap, (entry.due_ms, entry.key, entry.due_ms, entry.attempt))


def written_partition() -> int | None:
    """The partition a table write made now goes to: the current event's (None outside any event)."""
    event = current_event()
    return None if event is None else int(event.message.partition)


def active_partitions(table: Any) -> set[int]:
    """The partitions of ``table`` (a Faust table) this worker is active for, as the last assignment gave them."""
    topic = table.changelog_topic_name
    return {tp.partition for tp in table.app.assignor.assigned_actives() if tp.topic == topic}


async def report_due(
    index: DueIndex, now_ms: int, limit: int, send: Callable[[Sequence[Due]], Awaitable[None]]
) -> list[Due]:
    """One sweep: pop what is due (at most ``limit``), ``send`` the reports (all at once), then schedule their
    resends; what could not be sent is due again at the next sweep. Returns what was reported."""
    due = index.take_due(now_ms, limit)
    if not due:
        return due
    try:
        await send(due)
    except BaseException:
        index.put_back(due)
        raise
    index.reported(due, now_ms)
    return due
