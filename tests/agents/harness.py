"""In-memory stand-ins around the real edge, shared by the agent-layer tests.

Everything real that can be real: the domain steps, :class:`~streams.runner.StepRunner`,
:class:`~streams.outbox.Outbox`, the schema catalog and :class:`~schemas.codec.AvroCodec`, and (in
:class:`FaustService`) the service's own Faust app from :func:`streams.bootstrap.create_app`. Stand-ins replace only
what would touch a broker: the sender (a :class:`Recorder` collecting ``(topic, key, value, headers)``) and
``make_durable`` (a recorded call instead of flushing a producer).

One :class:`Recorder` log holds table writes, ``make_durable`` calls and sends in the order they happened, so a
test can assert the edge's ordering rule (state written, then made durable, then sent) as a sequence.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from common.envelope import Envelope, headers_dict
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec, Decoded
from schemas.topics import topic as topic_spec
from schemas.topics import topic_for_record
from streams.agents import ServiceApp
from streams.domain.core import SagaConfig
from streams.domain.messages import Message, to_record
from streams.domain.saga import Service
from streams.incoming import Incoming, key_partition
from streams.outbox import Outbox
from streams.runner import StepRunner
from streams.services import _step

CATALOG = SchemaCatalog.load()
CODEC = AvroCodec(CATALOG)

T0 = datetime(2025, 4, 1, 10, 0, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SOURCE = "/order-pipeline/tests"

Headers = tuple[tuple[str, bytes], ...]


def encoded(message: Message) -> bytes:
    """The message as it travels: the latest schema version, Confluent-framed (this process's registry)."""
    return CODEC.encode(message.record_name, to_record(message))


def envelope_headers(
    record: str,
    *,
    event_id: str | None = None,
    correlation_id: str | None = None,
    traceparent: str | None = TRACEPARENT,
) -> Headers:
    """Headers made by :class:`~common.envelope.Envelope` for a message of ``record``."""
    schema = CATALOG.latest(record)
    envelope = Envelope(
        event_type=schema.full_name,
        schema_version=schema.version,
        source=SOURCE,
        event_id=event_id or str(uuid.uuid4()),
        correlation_id=correlation_id,
        causation_id=None,
        traceparent=traceparent,
    )
    return tuple((k, v if isinstance(v, bytes) else str(v).encode()) for k, v in envelope.to_headers())


def partition_of(message: Message) -> int:
    """The partition the pipeline's producers put ``message`` on: its key's, on its topic."""
    spec = topic_for_record(message.record_name)
    return key_partition(message.key.encode(), spec.partitions)


def incoming(
    message: Message,
    *,
    partition: int | None = None,
    offset: int = 0,
    event_id: str | None = None,
    correlation_id: str | None = None,
    traceparent: str | None = TRACEPARENT,
    headers: Headers | None = None,
) -> Incoming:
    """``message`` as the agent receives it from its topic (key = the message's key, on the key's partition unless
    ``partition`` says otherwise, envelope headers)."""
    return Incoming(
        topic=topic_for_record(message.record_name).name,
        partition=partition_of(message) if partition is None else partition,
        offset=offset,
        key=message.key.encode(),
        value=encoded(message),
        headers=headers
        if headers is not None
        else envelope_headers(
            message.record_name, event_id=event_id, correlation_id=correlation_id, traceparent=traceparent
        ),
    )


@dataclass(frozen=True)
class Sent:
    """One message handed to the sender."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def header(self) -> dict[str, str]:
        return headers_dict(self.headers)

    @property
    def ce_id(self) -> str:
        return self.header["ce_id"]

    def decoded(self) -> Decoded:
        """The value read back with the real codec, as a consumer of the topic reads it."""
        return CODEC.decode(self.value, expected=topic_spec(self.topic).records)

    def same_message(self, other: Sent) -> bool:
        """Same topic, key, bytes and headers apart from ``ce_time`` (the moment of sending)."""
        mine = {k: v for k, v in self.header.items() if k != "ce_time"}
        theirs = {k: v for k, v in other.header.items() if k != "ce_time"}
        return (self.topic, self.key, self.value, mine) == (other.topic, other.key, other.value, theirs)


@dataclass
class Recorder:
    """The broker's stand-in: a Sender collecting what is sent, and a ``make_durable`` counting its calls."""

    sent: list[Sent] = field(default_factory=list)
    log: list[tuple[str, ...]] = field(default_factory=list)
    """``("write", key)``, ``("delete", key)``, ``("durable",)``, ``("send", topic)`` in the order they happened."""

    async def send(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, str | bytes | None]]
    ) -> Any:  # Any, not None: ``outbox.Sender`` declares ``async def ... -> Awaitable[Any]``
        raw = tuple((k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in headers)
        self.log.append(("send", topic))
        self.sent.append(Sent(topic, key, value, raw))

    async def make_durable(self) -> None:
        self.log.append(("durable",))

    def clear(self) -> None:
        self.sent.clear()
        self.log.clear()

    @property
    def durable_calls(self) -> int:
        return self.log.count(("durable",))

    def writes(self, key: str) -> int:
        return self.log.count(("write", key))


class RecordingTable(dict[str, Any]):
    """A dict-backed state table that logs its writes into the recorder's log."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self._recorder = recorder

    def __setitem__(self, key: str, value: Any) -> None:
        self._recorder.log.append(("write", key))
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._recorder.log.append(("delete", key))
        super().__delitem__(key)


@dataclass
class Edge:
    """One StepRunner over a dict-backed table, the real codec and an Outbox sending into a Recorder."""

    runner: StepRunner
    table: RecordingTable
    recorder: Recorder
    parked: RecordingTable
    """The parked-keys table (``<agent>/<key>`` → the key's queue), writes logged like the state's."""

    @classmethod
    def build(cls, agent: str, service: Service[Any], *, config: SagaConfig | None = None) -> Edge:
        recorder = Recorder()
        table = RecordingTable(recorder)
        parked = RecordingTable(recorder)
        step = _step(agent, service, config or SagaConfig())
        outbox = Outbox(CODEC, CATALOG, recorder.send, source=f"/order-pipeline/{agent}")
        runner = StepRunner(step, table, CODEC, outbox, make_durable=recorder.make_durable, parked=parked)
        return cls(runner, table, recorder, parked)


# --- the real Faust app in Faust's own test context ------------------------------------------------------


class AgentDriver:
    """Feeds raw Kafka messages to one real agent of a service through ``agent.test_context()``.

    Two adjustments, both to Faust's test wrapper rather than to our code:

    * ``AgentTestWrapper`` names every message after the agent's channel, which it can only do for a
      single-topic channel; a multi-topic agent's messages would arrive as topic ``<internal>``. So each
      delivery first names the topic it comes from (``original_channel``).
    * ``put(wait=True)`` returns when the stream hands the value to the agent, not when the agent is done
      with it. So the runner's ``handle_batch`` is wrapped to report completion of each message it was
      given, and :meth:`deliver` waits (bounded) for that instead; an exception from it is re-raised here.
    * The wrapper numbers every message it is given from one counter, whatever its partition. A partition's
      offsets follow one another on a broker (the agent stops at a hole), and each message now stands on its
      key's partition, so each delivery is given its own partition's next offset instead.
    """

    def __init__(self, service: FaustService, agent: str, wrapper: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self._service = service
        self.wrapper = wrapper
        self.runner = service.built.runners[agent]
        self._done: asyncio.Queue[BaseException | None] = asyncio.Queue()
        self._offsets: dict[tuple[str, int], int] = {}
        handle_batch = self.runner.handle_batch

        async def reporting_handle_batch(batch: Sequence[Incoming], *args: Any) -> int:
            try:
                handled = await handle_batch(batch, *args)
            except BaseException as exc:
                self._done.put_nowait(exc)
                raise
            for _ in batch:
                self._done.put_nowait(None)
            return handled

        monkeypatch.setattr(self.runner, "handle_batch", reporting_handle_batch)

    def next_offset(self, topic_name: str, partition: int) -> int:
        """The offset the next message delivered to ``partition`` of ``topic_name`` gets (each counts from 0)."""
        return self._offsets.get((topic_name, partition), 0)

    def next_offset_of(self, message: Message) -> int:
        """The offset ``message`` gets when delivered next, on its key's partition."""
        return self.next_offset(topic_for_record(message.record_name).name, partition_of(message))

    def skip(self, topic_name: str, partition: int, count: int) -> None:
        """Leave a hole of ``count`` offsets in ``partition`` of ``topic_name``: messages the agent never sees."""
        self._offsets[(topic_name, partition)] = self.next_offset(topic_name, partition) + count

    async def put_raw(
        self, topic_name: str, key: bytes | None, value: bytes | None, headers: Headers, *, partition: int
    ) -> None:
        """Hand a message to the agent's stream at its partition's next offset, not waiting for the agent."""
        self.wrapper.original_channel = self._service.built.app.topic(topic_name)
        self.wrapper.sent_offset = offset = self.next_offset(topic_name, partition)
        self._offsets[(topic_name, partition)] = offset + 1
        await self.wrapper.put(value=value, key=key, headers=list(headers), partition=partition, wait=False)

    async def deliver_raw(
        self, topic_name: str, key: bytes | None, value: bytes | None, headers: Headers, *, partition: int
    ) -> None:
        """Hand a message to the agent and wait until it is done with it (its error raised here)."""
        await self.put_raw(topic_name, key, value, headers, partition=partition)
        outcome = await asyncio.wait_for(self._done.get(), timeout=2.0)
        if outcome is not None:
            raise outcome

    async def deliver(
        self,
        message: Message,
        *,
        partition: int | None = None,
        event_id: str | None = None,
        correlation_id: str | None = None,
        traceparent: str | None = TRACEPARENT,
    ) -> Headers:
        """Deliver ``message`` from its topic with envelope headers, on its key's partition unless ``partition``
        says otherwise; returns the headers it carried."""
        headers = envelope_headers(
            message.record_name, event_id=event_id, correlation_id=correlation_id, traceparent=traceparent
        )
        spec = topic_for_record(message.record_name)
        where = partition_of(message) if partition is None else partition
        await self.deliver_raw(spec.name, message.key.encode(), encoded(message), headers, partition=where)
        return headers


@dataclass
class FaustService:
    """A service built by ``create_app`` with its sender and producer flush replaced by a Recorder."""

    built: ServiceApp
    recorder: Recorder
    monkeypatch: pytest.MonkeyPatch

    def table(self, name: str) -> Any:
        return self.built.tables[name]

    def log_writes(self, name: str) -> None:
        """Log the Faust table's writes (its ``on_key_set`` / ``on_key_del`` hooks) into the recorder."""
        t = self.table(name)
        on_set, on_del = t.on_key_set, t.on_key_del

        def logged_set(key: str, value: Any) -> None:
            self.recorder.log.append(("write", key))
            on_set(key, value)

        def logged_del(key: str) -> None:
            self.recorder.log.append(("delete", key))
            on_del(key)

        self.monkeypatch.setattr(t, "on_key_set", logged_set)
        self.monkeypatch.setattr(t, "on_key_del", logged_del)

    @asynccontextmanager
    async def agent(self, name: str) -> AsyncIterator[AgentDriver]:
        """The real agent ``name`` running in Faust's in-memory test context."""
        async with self.built.app.agents[name].test_context() as wrapper:
            yield AgentDriver(self, name, wrapper, self.monkeypatch)


FaustServiceFactory = Callable[..., FaustService]
