"""Stage 2, the Faust ceiling: a bare pass-through agent (topic → agent → topic, concurrency 1).

The app is built by :func:`streams.app.new_faust_app`, so it has exactly the workers' settings (at-least-once,
acks=-1, linger 0, memory store, raw keys). Two variants:

* ``bare``: the agent enqueues each event in Faust's producer and moves on (Faust's usual pattern);
* ``acked``: the agent waits for each output's acknowledgement before taking the next event, as the
  pipeline's edge did one message at a time;
* ``batched``: the agent takes the events already fetched together (``streams.app.ready_batches``, at most
  ``PIPELINE_STREAM_BATCH_MAX``), sends their outputs, waits for all the acknowledgements at once and only then
  acks them, as the pipeline's edge does now (``StepRunner.handle_batch``).

Run as a process: ``python -m bench.passthrough`` with ``BENCH_PASSTHROUGH_MODE`` and the ``PIPELINE_*``
settings in the environment. :func:`run_variant` pre-fills the input topic, starts that process and times
the outputs by their timestamps.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.raw import SampleMessage
from bench.stack import ROOT
from common.settings import LIBRDKAFKA_LOGGER, Settings, get_settings
from schemas.topics import PARTITIONS, TopicSpec

MODES = ("bare", "acked", "batched")


def service_name(mode: str) -> str:
    return f"bench-passthrough-{mode}"


def topics(mode: str) -> tuple[TopicSpec, TopicSpec, TopicSpec]:
    """Input, output and the app's leader topic (pre-created: the broker creates no topic by itself)."""
    from schemas.topics import APP_PREFIX

    return (
        TopicSpec(f"bench.faust-{mode}.in", records=(), description="bench input", dead_letter=False),
        TopicSpec(f"bench.faust-{mode}.out", records=(), description="bench output", dead_letter=False),
        TopicSpec(
            f"{APP_PREFIX}-{service_name(mode)}-__assignor-__leader",
            records=(),
            description="bench leader",
            partitions=1,
            dead_letter=False,
        ),
    )


def create_app(mode: str, settings: Settings) -> Any:
    """The pass-through Faust app of ``mode``."""
    from streams.app import new_faust_app

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    source_spec, sink_spec, _ = topics(mode)
    app = new_faust_app(service_name(mode), settings)
    source = app.topic(source_spec.name, key_serializer="raw", value_serializer="raw", partitions=PARTITIONS)
    sink = app.topic(sink_spec.name, key_serializer="raw", value_serializer="raw")
    acked = mode == "acked"

    async def passthrough(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            sent = await sink.send(key=message.key, value=message.value, headers=list(message.headers or ()))
            if acked:
                await sent

    async def batched(stream: Any) -> None:
        import asyncio
        from contextlib import aclosing

        from streams.app import ready_batches

        manual = stream.noack()
        async with aclosing(ready_batches(manual.events(), settings.stream_batch_max)) as batches:
            async for events in batches:
                sent = [
                    await sink.send(key=e.message.key, value=e.message.value, headers=list(e.message.headers or ()))
                    for e in events
                ]
                await asyncio.gather(*sent)
                for e in events:
                    await manual.ack(e)

    app.agent(source, name="passthrough", concurrency=1)(batched if mode == "batched" else passthrough)
    return app


def main() -> None:
    import faust

    settings = get_settings()
    app = create_app(os.environ.get("BENCH_PASSTHROUGH_MODE", "bare"), settings)
    faust.Worker(app, loglevel=settings.worker_log_level, quiet=True).execute_from_commandline()


def run_variant(
    settings: Settings, mode: str, message: SampleMessage, events: int, workdir: Path, timeout_s: float = 300
) -> dict[str, Any]:
    """Fill the input with ``events`` messages, start the pass-through process, time the outputs it writes.

    The rate is taken from the outputs' own timestamps (set by Faust's producer as it sends), first to last,
    so the worker's start-up and the reader's fetch batching do not count.
    """
    from confluent_kafka import Consumer, Producer, TopicPartition

    from common.admin import admin_client, apply_topics
    from producers.toolkit import producer_config

    source, sink, leader = topics(mode)
    apply_topics(admin_client(settings), settings, [source, sink, leader])
    producer = Producer(producer_config(settings, **{"client.id": "bench-fill"}))
    for i in range(events):
        while True:
            try:
                producer.produce(
                    source.name, value=message.value, key=message.key + str(i % 997).encode(), headers=message.headers
                )
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise RuntimeError("the pass-through input was not acknowledged")

    env = dict(os.environ)
    env.update(
        PIPELINE_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        PIPELINE_REDIS_URL=settings.redis_url,
        PIPELINE_DATA_DIR=str(workdir / "faust"),
        PIPELINE_WORKER_LOG_LEVEL="warning",
        BENCH_PASSTHROUGH_MODE=mode,
        PYTHONUNBUFFERED="1",
    )
    log_path = workdir / f"passthrough-{mode}.log"
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
            "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        }
    )
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.passthrough"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    started = time.monotonic()
    stamps: list[int] = []
    try:
        consumer.assign([TopicPartition(sink.name, p, 0) for p in range(sink.partitions)])
        deadline = started + timeout_s
        while len(stamps) < events and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the {mode} pass-through worker exited with {process.returncode}; see {log_path}")
            batch = consumer.consume(num_messages=1000, timeout=0.5)
            stamps.extend(m.timestamp()[1] for m in batch if m.error() is None)
    finally:
        consumer.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    span_s = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else 0.0
    return {
        "mode": mode,
        "events": len(stamps),
        "span_s": round(span_s, 3),
        "events_per_s": round((len(stamps) - 1) / span_s, 1) if span_s > 0 else None,
        "wall_s_including_start": round(time.monotonic() - started, 1),
        "complete": len(stamps) >= events,
    }


if __name__ == "__main__":
    main()
