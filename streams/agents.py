"""A service's agents: each a Faust agent around one :class:`~streams.runner.StepRunner`, in batches.

An agent is thin: it turns the Faust events already fetched into :class:`~streams.incoming.Incoming` messages,
hands them to its runner (which decodes, decides, writes, sends) and acks those the runner handled. Faust's own
checks are repeated right before each decision (:class:`~streams.faust_patches.Admission`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import EventT, Message

from common.health import Check
from common.telemetry import BATCH_MESSAGES, REGISTRY_WAITS
from schemas.codec import AvroCodec
from schemas.errors import DecodeError
from schemas.registry import RegistryUnavailable
from schemas.topics import PARTITIONS, TopicSpec, parked_keys_table
from streams.app import new_table, ready_batches
from streams.faust_patches import Admission, DurableTable, RestartForRedelivery, make_current
from streams.incoming import Incoming, normalise_headers
from streams.outbox import Outbox
from streams.resilience import CircuitBreaker
from streams.runner import Step, StepRunner
from streams.state import StateStore, StateTable

log = logging.getLogger(__name__)


@dataclass
class ServiceApp:
    """A built service: its Faust app, the outbox its agents and timers send through, and the runners of its
    agents (for health and tests)."""

    name: str
    app: faust.App
    outbox: Outbox
    runners: dict[str, StepRunner] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    parked: DurableTable | None = None
    """The service's parked-keys table, shared by its agents (built with the first agent registered)."""
    views: list[Any] = field(default_factory=list)
    """The view service's folding agents (:class:`streams.view_service.ViewAgent`); empty elsewhere."""
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    """Health checks of the dependencies its wiring added (the payment provider, the view service's Redis)."""
    timers: dict[str, Callable[..., Awaitable[None]]] = field(default_factory=dict)
    """Timer bodies by name, as Faust runs them every interval (tests and benchmarks call them directly)."""
    started_at: float = field(default_factory=time.monotonic)
    write_timeout_s: float = 30.0
    batch_max: int = 16
    """Most messages an agent handles together (``PIPELINE_STREAM_BATCH_MAX``)."""

    async def confirm_writes(self) -> None:
        """Wait until the broker acknowledged every table write made so far (raises if one failed)."""
        pending = [fut for t in self.tables.values() if isinstance(t, DurableTable) for fut in t.unconfirmed()]
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), self.write_timeout_s)


def incoming_of(message: Message) -> Incoming:
    """A Faust message as the edge takes it."""
    return Incoming(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=normalise_headers(message.headers),
    )


REGISTRY_BACKOFF_S = (0.2, 5.0)
"""First and longest wait between two lookups of a schema id while the registry cannot be reached."""


async def resolve_schema_ids(codec: AvroCodec, incomings: list[Incoming], agent: str) -> None:
    """Look up the schema ids of a batch this process has not met, before it is handled: off the event loop, so an
    agent never blocks it on the registry, and, while the registry cannot be reached, again and again with backoff.

    The batch (so its partitions) waits meanwhile; nothing is dead-lettered because the registry is down. An id
    the registry does not know is left to the decode, which dead-letters it with the reason."""
    delay = REGISTRY_BACKOFF_S[0]
    for schema_id in dict.fromkeys(i for m in incomings if (i := codec.unknown_id(m.value)) is not None):
        while True:
            try:
                await asyncio.to_thread(codec.writer, schema_id)
                break
            except DecodeError:
                break
            except RegistryUnavailable as exc:
                REGISTRY_WAITS.labels(agent).inc()
                log.warning("%s waits for the schema registry (schema id %d): %s", agent, schema_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REGISTRY_BACKOFF_S[1])


def register_step(
    service: ServiceApp,
    step: Step,
    sources: tuple[TopicSpec, ...],
    store: StateTable | StateStore,
    codec: AvroCodec,
) -> StepRunner:
    """Subscribe ``step`` to ``sources`` as one agent (concurrency 1: per-partition order is the saga's order)."""

    async def make_durable() -> None:
        await service.confirm_writes()

    if service.parked is None:
        spec = parked_keys_table(service.name)
        service.parked = service.tables[spec.name] = new_table(service.app, spec)
    runner = StepRunner(step, store, codec, service.outbox, make_durable=make_durable, parked=service.parked)
    runner.sources = tuple(s.name for s in sources)
    channel = service.app.topic(
        *[s.name for s in sources], key_serializer="raw", value_serializer="raw", partitions=PARTITIONS
    )

    admission = Admission(service.app, step.agent, frozenset(spec.name for spec in sources if spec.compacted))

    def admit_next(stream: Any, fetched: dict[tuple[str, int, int], EventT[Any]], incoming: Incoming) -> bool:
        """Admit the next message of a batch; an admitted one becomes the agent's current event, as Faust's stream
        iteration would make it (a table write goes to the changelog partition of the current event's)."""
        event = fetched[(incoming.topic, incoming.partition, incoming.offset)]
        if not admission.admits(event.message):
            return False
        make_current(stream, event)
        return True

    async def handle(manual: Any, events: list[EventT[Any]]) -> int:
        incomings = [incoming_of(event.message) for event in events]
        fetched = {(i.topic, i.partition, i.offset): e for i, e in zip(incomings, events, strict=True)}
        await resolve_schema_ids(codec, incomings, step.agent)
        return await runner.handle_batch(incomings, functools.partial(admit_next, manual, fetched))

    add_batch_agent(service, channel, step.agent, handle)
    service.runners[step.agent] = runner
    return runner


def add_batch_agent(
    service: ServiceApp, channel: Any, name: str, handle: Callable[[Any, list[EventT[Any]]], Awaitable[int]]
) -> None:
    """Register agent ``name`` on ``channel`` (concurrency 1: per-partition order): it hands ``handle`` the events
    already fetched, in batches (:func:`~streams.app.ready_batches`), and acks the ones it says it handled.

    Acks are the agent's own: a message is acked only once its batch's writes and outputs are acknowledged. A
    batch that raises stops the worker before Faust acks its inputs, so whoever takes the partition replays them."""
    app = service.app
    batch_size = BATCH_MESSAGES.labels(name).observe

    async def agent(stream: Any) -> None:
        manual = stream.noack()
        async with aclosing(ready_batches(manual.events(), service.batch_max)) as batches:
            async for events in batches:
                batch_size(len(events))
                try:
                    handled = await handle(manual, events)
                except RestartForRedelivery:
                    return  # nothing after the hole is acked; the agent stops (the real exit ended the process)
                except Exception as exc:
                    # a state write or an event the broker did not take
                    log.critical("%s could not store the outcome of a batch of %d: %r; stopping", name, len(events),
                                 exc)  # fmt: skip
                    await app.crash(exc)
                    raise
                finally:
                    make_current(manual, None)
                for event in events[:handled]:
                    await manual.ack(event)

    agent.__name__ = agent.__qualname__ = name
    app.agent(channel, name=name, concurrency=1)(agent)
