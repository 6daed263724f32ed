"""The edge every saga agent runs: decode, look up state, decide, run effects, send, write back.

Domain steps are pure (:mod:`streams.domain`); this module is the only place where an agent touches Kafka,
its table or the payment provider. The rules it keeps:

* Values are decoded here, not by Faust, so a malformed message is dead-lettered with its reason
  (``<topic>.dlq``: original key, value and headers, plus ``dlq_*`` headers) and the partition flows on.
  A step that raises (a bug) is dead-lettered the same way: Faust would otherwise ack and lose the event.
* A step's new state is written, and made durable (the broker acknowledged its changelog record),
  **before** the events it decided are sent; the input is acked only once those events are acknowledged.
  A crash before the state is stored loses both and the input is replayed from scratch; a crash after it
  replays the input against the new state, which the step
  recognises as a duplicate and answers by re-emitting the very same events (same content, same ids).
  Sending first would be unsafe: a replay that meets its inputs in another order (a deadline before a
  payment) could decide differently and contradict events already sent. Every table write is durable before
  its input is acked, also one whose step sends nothing.
* Messages already fetched are handled as a batch (:meth:`StepRunner.handle_batch`): each is decided in turn,
  exactly as alone, then one wait makes all their writes durable, all their events are sent in order and one
  wait collects the acknowledgements, and only then are they acked. The rules above hold per message; the
  broker is waited for twice per batch instead of twice per message, and the records share produce requests.
* A parked message parks its key (:mod:`streams.domain.parking`): the key's later messages on this agent's
  inputs are dead-lettered behind it (``dlq_parked_behind``) while other keys flow on, until a replay of the
  head (``pipeline dlq replay``, headers ``dlq_replay_of`` and ``dlq_origin``) is handled. Each parked key's
  queue is a table entry, written and made durable **before** its dead letter is sent (a redelivery finds
  itself queued and is dead-lettered again), and a handled head is popped in the same durable write as the
  step's state, so a crash anywhere neither loses a key's message nor lets one overtake another.
* Every output carries the envelope: a deterministic ``ce_id`` (:func:`derived_event_id`), ``ce_causationid``
  = the input's id,
  ``ce_correlationid`` = the order id, and the input's ``traceparent``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from common.envelope import Envelope, dead_letter_headers
from common.telemetry import (
    DEAD_LETTER_DEPTH,
    EVENTS,
    PARKED_KEYS,
    SAGA_OUTCOMES,
    STEP_SECONDS,
    context_from,
    traceparent_of,
    tracer,
)
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.errors import DecodeError
from schemas.topics import topic, topic_for_record
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
from streams.resilience import RetryPolicy, retry

log = logging.getLogger(__name__)

STEP_RETRY = RetryPolicy(attempts=3, base_s=0.1, cap_s=1.0)
"""A step that raises is tried this often in all (with jittered backoff) before its message is parked."""

EVENT_ID_NAMESPACE = uuid.UUID("6f1c1e4a-58a4-4a36-9a1e-8f0a4b1f5f21")


class Sender(Protocol):
    """Sends raw bytes to a topic and resolves when the broker acknowledged them."""

    def __call__(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, str | bytes | None]]
    ) -> Awaitable[Any]: ...


class StateTable(Protocol):
    def get(self, key: str) -> Any: ...
    def __setitem__(self, key: str, value: Any) -> None: ...
    def __delitem__(self, key: str) -> None: ...
    def __contains__(self, key: object) -> bool: ...


class ScannableTable(StateTable, Protocol):
    def items(self) -> Iterable[tuple[str, Any]]: ...


REPLAY_HEADER = "dlq_replay_of"
"""Set by ``pipeline dlq replay`` on a re-published dead letter: the dead letter's own position."""
ORIGIN_HEADER = "dlq_origin"
"""Where a dead letter's message was first read (``topic:partition:offset``), carried by its replays."""
ACTION_HEADER = "dlq_action"
"""``discard`` on a replay sent by ``pipeline dlq discard``: drop the parked head it re-publishes, unhandled."""


@dataclass(frozen=True)
class Incoming:
    """One message as the agent received it, before decoding.

    The properties derived from the headers are computed once per message (``cached_property``): the edge asks
    for the envelope, the event id and the origin several times while handling one message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @cached_property
    def envelope(self) -> Envelope | None:
        return Envelope.from_headers(self.headers)

    @cached_property
    def event_id(self) -> str:
        """The envelope's id, or the message's (original) position when it came without one (e.g. from kcat)."""
        envelope = self.envelope
        return envelope.event_id if envelope else self.origin.to_header()

    @cached_property
    def replay_of(self) -> str | None:
        """The dead letter this message re-publishes (``pipeline dlq replay``), or None."""
        for name, value in reversed(self.headers):
            if name == REPLAY_HEADER:
                return value.decode(errors="replace")
        return None

    @cached_property
    def discards(self) -> bool:
        """A replay that asks to drop its parked original unhandled (an operator gave up on it)."""
        if self.replay_of is None:
            return False
        return any(name == ACTION_HEADER and value == b"discard" for name, value in self.headers)

    @cached_property
    def origin(self) -> Position:
        """Where the message was first read: a replay's original position, else its own."""
        if self.replay_of is not None:
            for name, value in reversed(self.headers):
                if name == ORIGIN_HEADER and (origin := Position.from_header(value.decode(errors="replace"))):
                    return origin
        return Position(self.topic, self.partition, self.offset)

    @cached_property
    def arrival(self) -> Arrival:
        """The message as the parking rule sees it (the Kafka key; an empty key parks nothing)."""
        key = self.key.decode(errors="replace") if self.key else None
        return Arrival(key, self.origin, replay=self.replay_of is not None, event_id=self.event_id)


def derived_event_id(cause: str, index: int, record: str, value: Mapping[str, Any], key: str) -> str:
    """The id of an emitted event: the same however often, and from whichever input, it is emitted.

    A saga fact happens at most once per order (and per SKU line for line facts): ``OrderPlaced`` of order
    o-1 is one event whether admission emits it for the command or again for a repeated command. So an
    event that names an order gets its id from (record, order, SKU); any other (``StockAdded``) from its
    cause and position, which a replay of that cause repeats.
    """
    order_id = value.get("order_id")
    if order_id:
        return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{record}/{order_id}/{value.get('sku') or ''}"))
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{cause}/{index}/{record}/{key}"))


def normalise_headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """Faust hands headers over as a mapping or a list of pairs; make them one shape."""
    items: Iterable[tuple[str, Any]] = raw.items() if isinstance(raw, Mapping) else (raw or ())
    return tuple((k, v if isinstance(v, bytes) else str(v or "").encode()) for k, v in items)


@dataclass(frozen=True)
class Outgoing:
    """One encoded message with its envelope, ready to send."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, str | bytes | None]]


class Outbox:
    """Encodes domain messages, stamps their envelope and sends them to their topics."""

    def __init__(self, codec: AvroCodec, catalog: SchemaCatalog, send: Sender, source: str) -> None:
        self._codec = codec
        self._catalog = catalog
        self._send = send
        self._source = source

    def prepare(
        self,
        records: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        cause: Incoming | None,
        cause_id: str,
        traceparent: str | None = None,
        traces: Sequence[str] = (),
    ) -> list[Outgoing]:
        """Encode ``(record name, value)`` pairs and stamp their envelopes; raises before any I/O if one is bad.

        Each goes out in ``traceparent``'s trace unless ``traces`` names another for it (same position)."""
        prepared = []
        for index, (name, value) in enumerate(records):
            spec = topic_for_record(name)
            key = str(value[spec.key_field])
            schema = self._catalog.latest(name)
            correlation = value.get("order_id") or (cause.envelope.correlation_id if cause and cause.envelope else None)
            envelope = Envelope(
                event_type=schema.full_name,
                schema_version=schema.version,
                source=self._source,
                event_id=derived_event_id(cause_id, index, name, value, key),
                correlation_id=correlation or key,
                causation_id=cause_id if cause is not None else None,
                traceparent=(traces[index] if index < len(traces) and traces[index] else None) or traceparent,
            )
            payload = self._codec.encode(schema.full_name, value, version=schema.version)
            prepared.append(Outgoing(spec.name, key.encode(), payload, envelope.to_headers()))
        return prepared

    async def send_prepared(self, prepared: Sequence[Outgoing]) -> None:
        """Send in order and wait for the broker's acknowledgements, so an input is only acked once its
        events are stored (a send that fails raises here instead of being logged and lost)."""
        acks = []
        for message in prepared:
            ack = await self._send(message.topic, message.key, message.value, message.headers)
            if inspect.isawaitable(ack):
                acks.append(ack)
        if acks:
            await asyncio.gather(*acks)

    async def send_all(
        self,
        records: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        cause: Incoming | None,
        cause_id: str,
        traceparent: str | None = None,
    ) -> None:
        """Encode and send ``(record name, value)`` pairs in order."""
        await self.send_prepared(self.prepare(records, cause=cause, cause_id=cause_id, traceparent=traceparent))

    async def dead_letter(
        self, incoming: Incoming, *, agent: str, error: str, attempts: int = 1, behind: Position | None = None
    ) -> None:
        """Park ``incoming`` in its topic's dead-letter topic with the reason; original bytes kept."""
        await self.send_prepared(
            [self.prepare_dead_letter(incoming, agent=agent, error=error, attempts=attempts, behind=behind)]
        )

    def prepare_dead_letter(
        self, incoming: Incoming, *, agent: str, error: str, attempts: int = 1, behind: Position | None = None
    ) -> Outgoing:
        """The dead letter of ``incoming`` (original key, bytes and headers plus ``dlq_*``), ready to send."""
        spec = topic(incoming.topic)
        headers = dead_letter_headers(
            incoming.headers,
            topic=incoming.topic,
            partition=incoming.partition,
            offset=incoming.offset,
            error=error,
            agent=agent,
            attempts=attempts,
            parked_behind=behind.to_header() if behind is not None else None,
        )
        log.warning("dead-lettered %s[%s]@%s: %s", incoming.topic, incoming.partition, incoming.offset, error)
        return Outgoing(spec.dead_letter_name, incoming.key or b"", incoming.value or b"", headers)


class StateStore(ABC):
    """Where a step's state lives: loaded before the step decides, saved (when changed) after."""

    @abstractmethod
    def load(self, key: str, message: Any) -> Any:
        """The state the step sees for ``message`` (None: none yet)."""

    @abstractmethod
    def save(self, key: str, before: Any, after: Any) -> None:
        """Write what changed between ``before`` and ``after`` (``after`` None: forget the key)."""

    def take_repaired(self) -> bool:
        """Whether the last :meth:`load` rewrote entries a crash had left torn (they must be made durable too)."""
        return False


class TableStore(StateStore):
    """A step's whole state in one table entry under the message key (JSON, as ``JsonState.to_json``)."""

    def __init__(self, table: StateTable, load_state: Callable[[Mapping[str, Any]], Any]) -> None:
        self.table = table
        self._load_state = load_state

    def load(self, key: str, message: Any) -> Any:
        stored = self.table.get(key)
        return self._load_state(stored) if stored is not None else None

    def save(self, key: str, before: Any, after: Any) -> None:
        if after is None:
            if key in self.table:
                del self.table[key]
        else:
            self.table[key] = after.to_json()


class ParkedKeys:
    """An agent's parked keys: each key's queue in one table entry ``<agent>/<key>`` (one table per service).

    The entry is written from the agent handling a message of that key, so Faust puts it in the changelog
    partition of the key's source partition: it is recovered by whoever takes that partition over.
    """

    def __init__(self, table: ScannableTable, agent: str) -> None:
        self.table = table
        self.agent = agent
        self._prefix = f"{agent}/"

    def queue(self, key: str | None) -> Queue:
        stored = self.table.get(self._prefix + key) if key is not None else None
        return tuple(ParkedMessage.from_json(m) for m in (stored or {}).get("queue", ()))

    def save(self, key: str, queue: Queue) -> None:
        """Store ``key``'s queue; an empty one releases the key (the entry is deleted)."""
        entry = self._prefix + key
        if queue:
            self.table[entry] = {"agent": self.agent, "key": key, "queue": [m.to_json() for m in queue]}
        elif entry in self.table:
            del self.table[entry]

    def queues(self) -> dict[str, Queue]:
        """Every key of this agent parked in the partitions this worker holds, with its queue."""
        return {
            name.removeprefix(self._prefix): tuple(ParkedMessage.from_json(m) for m in (value or {}).get("queue", ()))
            for name, value in list(self.table.items())
            if name.startswith(self._prefix)
        }


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
        self.parked = ParkedKeys(parked if parked is not None else {}, step.agent)
        self._depth_topics: set[str] = set()
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

        Each message is decided in turn against the state the ones before it left, its table writes made and
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
        parent of everything it causes."""
        started = time.monotonic()
        envelope = incoming.envelope
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.destination.name": incoming.topic,
            "messaging.kafka.destination.partition": incoming.partition,
            "messaging.kafka.message.offset": incoming.offset,
            "messaging.kafka.message.key": (incoming.key or b"").decode(errors="replace"),
            "pipeline.event_id": incoming.event_id,
            "pipeline.event_type": envelope.event_type if envelope else "",
        }
        with tracer().start_as_current_span(
            self.step.agent,
            context=context_from(envelope.traceparent if envelope else None),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            staged = await self._handle(incoming, span)
        staged.started = started
        return staged

    async def _handle(self, incoming: Incoming, span: Span) -> Staged:
        step = self.step
        arrival = incoming.arrival
        queue = self.parked.queue(arrival.key)
        if incoming.discards:
            return self._discard(incoming, arrival, queue, span)
        try:
            decoded = self._codec.decode(incoming.value or b"", expected=topic(incoming.topic).records)
        except DecodeError as exc:
            return self._park(incoming, f"{type(exc).__name__}: {exc}", span, "?", queue)
        span.update_name(f"{step.agent} {decoded.name}")
        verdict = admit(queue, arrival)
        if verdict is not Verdict.PROCESS:
            span.set_attribute("pipeline.parking", verdict.value)
        if decoded.name not in step.handles:
            EVENTS.labels(step.agent, decoded.name, "ignored").inc()
            # a head that decodes now as a record this agent passes by is done with
            done = settle(queue, arrival, incoming.event_id, failure=None)
            return Staged(durable=verdict is Verdict.PROCESS_HEAD and self._save_parked(arrival, queue, done))
        if verdict is Verdict.PARK_BEHIND:
            return self._park(incoming, parked_behind_reason(queue[0], arrival.key or ""), span, decoded.name, queue)
        if verdict is Verdict.PARK_AGAIN:  # redelivered after a crash: its dead letter may not have been sent
            mine = next(m for m in queue if m.origin == arrival.origin)
            return self._park(incoming, mine.reason, span, decoded.name, queue)
        if verdict is Verdict.DUPLICATE:
            log.info("%s: %s repeats %s, queued for key %r", step.agent, arrival.origin, arrival.event_id, arrival.key)
            EVENTS.labels(step.agent, decoded.name, "duplicate").inc()
            return Staged()
        if verdict is Verdict.REFUSE:
            reason = f"replay refused: {arrival.origin} waits behind {queue[0].origin}, which must be replayed first"
            log.warning("%s: %s (dead letter %s stays)", step.agent, reason, incoming.replay_of)
            span.set_status(Status(StatusCode.ERROR, reason))
            EVENTS.labels(step.agent, decoded.name, "refused").inc()
            return Staged()

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
            return self._park(
                incoming,
                f"{type(exc).__name__} in {step.agent}: {exc}",
                span,
                decoded.name,
                queue,
                attempts=self.retry_policy.attempts,
            )
        span.set_attribute("pipeline.emitted", [name for name, _ in records])
        changed = decision.state != state
        if changed:
            self._store.save(key, state, decision.state)
            if step.after_write is not None:
                step.after_write(key, decision.state)
            count_outcomes(decision.events)
        # a handled head is popped in the same durable write as the state: a crash replays it, or finds it done
        popped = self._save_parked(arrival, queue, settle(queue, arrival, incoming.event_id, failure=None))
        # every write is durable before the input is acked (and before its events are sent), even one that sends
        # nothing; a repair is made durable even when the replay has nothing new to send
        return Staged(outgoing, durable=changed or repaired or popped, processed=decoded.name)

    def _park(
        self,
        incoming: Incoming,
        error: str,
        span: Span,
        record: str,
        queue: Queue,
        attempts: int = 1,
    ) -> Staged:
        """Dead-letter ``incoming``; its key's queue (it queued, unless already) is durable before the send."""
        self.dead_lettered += 1
        span.set_status(Status(StatusCode.ERROR, error))
        EVENTS.labels(self.step.agent, record, "dead_lettered").inc()
        arrival = incoming.arrival
        durable = self._save_parked(arrival, queue, settle(queue, arrival, incoming.event_id, failure=error))
        head = queue[0].origin if queue and arrival.key is not None else None
        letter = self._outbox.prepare_dead_letter(
            incoming,
            agent=self.step.agent,
            error=error,
            attempts=attempts,
            behind=head if head != arrival.origin else None,
        )
        return Staged([letter], durable=durable)

    def _discard(self, incoming: Incoming, arrival: Arrival, queue: Queue, span: Span) -> Staged:
        """Drop the parked head ``incoming`` re-publishes, never running the step on it (it may not even decode):
        the key's next parked message becomes head. Anything but the head is left as it is."""
        agent = self.step.agent
        if admit(queue, arrival) is not Verdict.PROCESS_HEAD:
            head = f"its head is {queue[0].origin}" if queue else "it is not parked"
            log.warning("%s: discard of %s refused: %s for key %r", agent, arrival.origin, head, arrival.key)
            span.set_status(Status(StatusCode.ERROR, "discard refused"))
            EVENTS.labels(agent, "?", "refused").inc()
            return Staged()
        self._save_parked(arrival, queue, queue[1:])
        log.warning("%s: parked %s of key %r discarded (%s)", agent, arrival.origin, arrival.key, incoming.replay_of)
        span.set_attribute("pipeline.parking", "discarded")
        EVENTS.labels(agent, "?", "discarded").inc()
        return Staged(durable=True)

    def _save_parked(self, arrival: Arrival, before: Queue, after: Queue) -> bool:
        """Write a key's changed queue (the caller makes it durable); whether it changed."""
        if after == before or arrival.key is None:
            return False
        self.parked.save(arrival.key, after)
        if not after:
            log.warning("%s: key %r released", self.step.agent, arrival.key)
        self.refresh_depth()
        return True

    def refresh_depth(self) -> None:
        """Set the dead-letter depth gauges from the parked keys this worker holds (after a change, on scrape)."""
        queues = self.parked.queues()
        depth: dict[str, int] = dict.fromkeys(self._depth_topics, 0)
        for queue in queues.values():
            for message in queue:
                depth[message.origin.topic] = depth.get(message.origin.topic, 0) + 1
        for source, count in depth.items():
            DEAD_LETTER_DEPTH.labels(self.step.agent, source).set(count)
        self._depth_topics = set(depth)
        PARKED_KEYS.labels(self.step.agent).set(len(queues))


TERMINAL_OUTCOMES = {"OrderConfirmed": "confirmed", "OrderCancelled": "cancelled", "OrderRejected": "rejected"}


def count_outcomes(events: Iterable[Any]) -> None:
    """Saga outcomes for the metrics: each terminal event a step decided for the first time."""
    for event in events:
        outcome = TERMINAL_OUTCOMES.get(getattr(event, "record_name", ""))
        if outcome is not None:
            SAGA_OUTCOMES.labels(outcome, str(getattr(event, "reason", "") or "")).inc()
