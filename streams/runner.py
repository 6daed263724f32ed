"""The edge every saga agent runs: sort (parking), decide, write the state, make it durable, send, then ack.

Domain steps are pure (:mod:`streams.domain`); the runner is where an agent's message meets its table, the
payment provider and Kafka. The rules it keeps:

* Values are decoded here, not by Faust, so a malformed message is dead-lettered with its reason
  (``<topic>.dlq``: original key, value and headers, plus ``dlq_*`` headers) and the partition flows on.
  A step that raises (a bug) is dead-lettered the same way: Faust would otherwise ack and lose the event. So is
  an input its step refuses outright (``Decision.refusal``, for an input that has no rejection record), without
  parking its key and without a write.
* Parking stands in front of deciding (:mod:`streams.parking`): each message is first sorted into to-decide,
  dead-lettered behind its key's parked head, or passed by, and only the first kind reaches the step. Sorting
  begins with the key contract (:mod:`streams.incoming`): a message without a key, with a key other than its
  record's key field, or on another partition than its key's is dead-lettered with the reason before any table
  is read or written, so it can never put its key's state into a second changelog partition.
* A step's new state is written, and made durable (the broker acknowledged its changelog record),
  **before** the events it decided are sent; the input is acked only once those events are acknowledged.
  A crash before the state is stored loses both and the input is replayed from scratch; a crash after it
  replays the input against the new state, which the step recognises as a duplicate and answers by
  re-emitting the very same events (same content, same ids). Sending first would be unsafe: a replay that
  meets its inputs in another order (a deadline before a payment) could decide differently and contradict
  events already sent. Every table write is durable before its input is acked, also one whose step sends
  nothing, and a parked key's queue is durable before its dead letter is sent.
* Messages already fetched are handled as a batch (:meth:`StepRunner.handle_batch`): each is sorted and decided
  in turn, exactly as alone, then one wait makes all their writes durable, all their outputs are sent in order and
  one wait collects the acknowledgements, and only then are they acked. The rules above hold per message; the
  broker is waited for twice per batch instead of twice per message, and the records share produce requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode

from common.telemetry import EVENTS, SAGA_OUTCOMES, STEP_SECONDS, consumer_span, traceparent_of
from schemas.codec import AvroCodec, Decoded
from schemas.topics import topic
from streams.incoming import Incoming
from streams.outbox import Outbox, Outgoing
from streams.parking import KeyParking, Parked, ToDecide
from streams.resilience import RetryPolicy, retry
from streams.state import ScannableTable, StateStore, StateTable, TableStore

log = logging.getLogger(__name__)

STEP_RETRY = RetryPolicy(attempts=3, base_s=0.1, cap_s=1.0)
"""A step that raises is tried this often in all (with jittered backoff) before its message is parked."""


@dataclass(frozen=True)
class Step:
    """What one agent does: which records it handles, how it decides, how its state is stored."""

    agent: str
    handles: frozenset[str]
    decide: Callable[[Any, Any, Any], Any]
    load_state: Callable[[Mapping[str, Any]], Any]
    message_from_record: Callable[[str, Mapping[str, Any]], Any]
    message_to_record: Callable[[Any], dict[str, Any]]
    context: Callable[[Incoming, str], Any]
    """The step's context for an input, given the trace its step span continues (a ``traceparent``)."""
    run_effects: Callable[[Any, Any, Any], Awaitable[Any]] | None = None
    after_write: Callable[[str, Any], None] | None = None


@dataclass
class Staged:
    """One message handled up to the broker: whether its table writes must be made durable, what to send once
    they are, and the record counted as processed once that is acknowledged."""

    outgoing: list[Outgoing] = field(default_factory=list)
    durable: bool = False
    processed: str | None = None
    started: float = 0.0


class StepRunner:
    """Runs one :class:`Step` over a stream of :class:`Incoming` messages."""

    def __init__(
        self,
        step: Step,
        store: StateTable | StateStore,
        codec: AvroCodec,
        outbox: Outbox,
        make_durable: Callable[[], Awaitable[None]],
        retry_policy: RetryPolicy = STEP_RETRY,
        parked: ScannableTable | None = None,
    ) -> None:
        self.step = step
        self.retry_policy = retry_policy
        self.parking = KeyParking(parked if parked is not None else {}, step.agent, step.handles)
        self._store: StateStore = store if isinstance(store, StateStore) else TableStore(store, step.load_state)
        self._codec = codec
        self._outbox = outbox
        self._make_durable = make_durable
        self.processed = 0
        self.dead_lettered = 0
        self.last_progress = time.monotonic()
        self.busy_since: float | None = None
        self.sources: tuple[str, ...] = ()
        """The topics the agent around this runner reads (set when it is registered)."""

    async def handle(self, incoming: Incoming) -> None:
        """Handle one message; never raises for a message's content (it dead-letters instead)."""
        await self.handle_batch((incoming,))

    async def handle_batch(
        self, batch: Sequence[Incoming], admit_next: Callable[[Incoming], bool] | None = None
    ) -> int:
        """Handle messages taken together, in order; how many (from the first) were handled.

        Each message is sorted and decided in turn against the state the ones before it left, its writes made and
        its outputs prepared, exactly as alone. Then one wait makes every write of the batch durable, every
        output is sent in order, and their acknowledgements are awaited together. So, as for a single message,
        each message's state is durable before its events are sent, and both are acknowledged before the
        caller acks it; but a batch waits for the broker twice, not twice per message, and its records share
        produce requests. ``admit_next`` is asked right before each message is decided; False leaves that
        message and the rest unhandled (a rebalance began: the caller must not ack them, they are read again).
        Raises only when the broker did not take a write or an output: then nothing of the batch may be acked.
        """
        self.busy_since = time.monotonic()
        staged: list[Staged] = []
        try:
            for incoming in batch:
                if admit_next is not None and not admit_next(incoming):
                    break
                staged.append(await self._stage(incoming))
            if any(s.durable for s in staged):
                await self._make_durable()
            await self._outbox.send_prepared([message for s in staged for message in s.outgoing])
        finally:
            done = time.monotonic()
            observe = STEP_SECONDS.labels(self.step.agent).observe
            for s in staged:
                observe(done - s.started)
            self.busy_since = None
            self.last_progress = done
        for s in staged:
            if s.processed is not None:
                EVENTS.labels(self.step.agent, s.processed, "processed").inc()
                self.processed += 1
        return len(staged)

    def busy_for(self) -> float:
        """How long the step now running has been running (0 when idle)."""
        return 0.0 if self.busy_since is None else time.monotonic() - self.busy_since

    async def _stage(self, incoming: Incoming) -> Staged:
        """Decide one message and make its writes; what to confirm and send comes back.

        Each message is one span, a child of the span that sent it (the ``traceparent`` header), and the
        parent of everything it causes; but a record the step does not handle is passed by before any span or
        decoding when nothing about it needs more (:meth:`_passes_by`)."""
        started = time.monotonic()
        if self._passes_by(incoming):
            EVENTS.labels(self.step.agent, "?", "ignored").inc()
            return Staged(started=started)
        envelope = incoming.envelope

        def attributes() -> dict[str, str | int]:
            return {
                "messaging.system": "kafka",
                "messaging.destination.name": incoming.topic,
                "messaging.kafka.destination.partition": incoming.partition,
                "messaging.kafka.message.offset": incoming.offset,
                "messaging.kafka.message.key": (incoming.key or b"").decode(errors="replace"),
                "pipeline.event_id": incoming.event_id,
                "pipeline.event_type": envelope.event_type if envelope else "",
            }

        with consumer_span(self.step.agent, envelope.traceparent if envelope else None, attributes) as span:
            staged = await self._handle(incoming, span)
        staged.started = started
        return staged

    def _passes_by(self, incoming: Incoming) -> bool:
        """Whether ``incoming`` holds a record of its topic this step does not handle (read off the writer's
        schema id, not a header a producer could get wrong), well placed, no replay, its key not parked: the sort
        (:class:`~streams.parking.KeyParking`) would pass it by unchanged, and it costs neither a span nor a
        decode. Anything else takes the full path: a misplaced record is dead-lettered there, a parked key's
        queue may be waiting on it."""
        name = self._codec.record_name(incoming.value or b"")
        if name is None or name in self.step.handles or incoming.replay_of is not None:
            return False
        if name not in topic(incoming.topic).records:
            return False  # a record its topic does not carry: dead-lettered on the full path
        return incoming.misplaced is None and not self.parking.keys.parked(incoming.arrival.key)

    async def _handle(self, incoming: Incoming, span: Span) -> Staged:
        """Sort the message (parking stands in front), then decide it, or dead-letter or pass it as sorted."""
        agent = self.step.agent
        front = self.parking.sort(incoming, self._decode)
        if front.record is not None:
            span.update_name(f"{agent} {front.record}")
        if front.parking is not None:
            span.set_attribute("pipeline.parking", front.parking)
        if isinstance(front, ToDecide):
            return await self._decide(front, span)
        if isinstance(front, Parked):
            return self._dead_letter(incoming, front, span)
        if front.refusal is not None:
            span.set_status(Status(StatusCode.ERROR, front.refusal))
        EVENTS.labels(agent, front.record or "?", front.outcome).inc()
        return Staged(durable=front.written)

    def _decode(self, incoming: Incoming) -> Decoded:
        return self._codec.decode(incoming.value or b"", expected=topic(incoming.topic).records)

    async def _decide(self, sorted_: ToDecide, span: Span) -> Staged:
        """Run the step (retried), write its state, prepare its events; a step that keeps failing parks the message."""
        step = self.step
        incoming, decoded = sorted_.incoming, sorted_.decoded

        def attempt_failed(exc: Exception) -> bool:
            log.warning("%s failed on %s (will retry): %r", step.agent, decoded.name, exc)
            return True

        repaired = False  # a load rewrote entries a crash had left torn (in any attempt)

        async def attempt() -> tuple[str, Any, Any, Any, list[tuple[str, dict[str, Any]]], list[Outgoing]]:
            nonlocal repaired
            message = step.message_from_record(decoded.name, decoded.value)
            key = str(message.key)
            state = self._store.load(key, message)
            repaired = self._store.take_repaired() or repaired
            ctx = step.context(incoming, traceparent_of(span) or "")
            decision = step.decide(state, message, ctx)
            if step.run_effects is not None and decision.effects:
                decision = await step.run_effects(decision, ctx, message)
            records = [(e.record_name, step.message_to_record(e)) for e in decision.events]
            outgoing = self._outbox.prepare(
                records,
                cause=incoming,
                cause_id=incoming.event_id,
                traceparent=traceparent_of(span),
                traces=decision.traces,
                causes=decision.causes,
            )
            return key, state, message, decision, records, outgoing

        try:
            # a failure (a dependency's hiccup, or a bug) is retried with backoff a bounded number of times, then
            # the message is parked with the reason, so the partition never waits on it for longer than that
            key, state, _, decision, records, outgoing = await retry(
                attempt, self.retry_policy, transient=attempt_failed
            )
        except Exception as exc:  # a bug in a step must not lose the event: park it with the reason
            log.exception("%s failed on %s", step.agent, decoded.name)
            span.record_exception(exc)
            reason = f"{type(exc).__name__} in {step.agent}: {exc}"
            return self._dead_letter(incoming, self.parking.park(sorted_, reason, self.retry_policy.attempts), span)
        if decision.refusal is not None:  # the step refuses the input itself: a dead letter, nothing kept
            refused = Parked(decoded.name, decision.refusal, None, written=self.parking.release(sorted_))
            return self._dead_letter(incoming, refused, span)
        span.set_attribute("pipeline.emitted", [name for name, _ in records])
        changed = decision.state != state
        if changed:
            self._store.save(key, state, decision.state)
            if step.after_write is not None:
                step.after_write(key, decision.state)
            count_outcomes(decision.events)
        popped = self.parking.release(sorted_)
        # every write is durable before the input is acked (and before its events are sent), even one that sends
        # nothing; a repair is made durable even when the replay has nothing new to send
        return Staged(outgoing, durable=changed or repaired or popped, processed=decoded.name)

    def _dead_letter(self, incoming: Incoming, parked: Parked, span: Span) -> Staged:
        """Dead-letter ``incoming`` as sorted; its key's queue (written when it changed) is durable before the send."""
        self.dead_lettered += 1
        span.set_status(Status(StatusCode.ERROR, parked.reason))
        EVENTS.labels(self.step.agent, parked.record or "?", "dead_lettered").inc()
        letter = self._outbox.prepare_dead_letter(
            incoming, agent=self.step.agent, error=parked.reason, attempts=parked.attempts, behind=parked.behind
        )
        return Staged([letter], durable=parked.written)


TERMINAL_OUTCOMES = {"OrderConfirmed": "confirmed", "OrderCancelled": "cancelled", "OrderRejected": "rejected"}


def count_outcomes(events: Iterable[Any]) -> None:
    """Saga outcomes for the metrics: each terminal event a step decided for the first time."""
    for event in events:
        outcome = TERMINAL_OUTCOMES.get(getattr(event, "record_name", ""))
        if outcome is not None:
            SAGA_OUTCOMES.labels(outcome, str(getattr(event, "reason", "") or "")).inc()
