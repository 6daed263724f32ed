"""``pipeline bench``: every stage on one stack, one JSON document, one plot, one printed summary.

The stack is the benchmark's own (Kafka and Redis from compose.yaml through testcontainers, removed at the
end) unless ``bootstrap``/``redis_url`` name a running one (``make run``'s); its benchmark topics
(``bench.*``) are created for the run and deleted afterwards.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.figures import (
    BROKERLESS,
    FULL_SCHEDULE,
    QUICK_SCHEDULE,
    RESULT_VERSION,
    STAGES,
    STAGES_ON_REQUEST,
    Schedule,
    check_result,
    ratios,
    saturation_rate,
    summarise_profile,
)
from bench.stack import ROOT
from common.settings import Settings, get_settings
from schemas.topics import TopicSpec

RAW_TOPIC = TopicSpec("bench.raw", records=(), description="raw client ceiling", dead_letter=False)


@dataclass(frozen=True)
class Sizes:
    raw_messages: int
    perf_records: int
    faust_events: int
    codec_iterations: int
    query_s: float
    schedule: Schedule
    settle_s: float
    profile_s: float


QUICK = Sizes(30_000, 30_000, 2_000, 2_000, 4.0, QUICK_SCHEDULE, 30.0, 8.0)
FULL = Sizes(200_000, 200_000, 10_000, 20_000, 15.0, FULL_SCHEDULE, 90.0, 20.0)


@dataclass(frozen=True)
class BenchOptions:
    quick: bool = False
    stages: tuple[str, ...] = STAGES
    out: Path | None = None
    bootstrap: str | None = None
    redis_url: str | None = None
    kafka_container: str | None = None
    external_workers: bool = False
    rates: tuple[float, ...] | None = None
    step_s: float | None = None
    connections: int = 16
    profile: bool = True
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def sizes(self) -> Sizes:
        sizes = QUICK if self.quick else FULL
        if self.rates or self.step_s:
            schedule = Schedule(self.rates or sizes.schedule.rates, self.step_s or sizes.schedule.step_s)
            sizes = Sizes(**{**sizes.__dict__, "schedule": schedule})
        return sizes

    @property
    def stamp(self) -> str:
        return self.started.strftime("%Y%m%dT%H%M%SZ")

    @property
    def out_path(self) -> Path:
        return self.out or ROOT / ".cache" / "bench" / f"{self.stamp}.json"

    @property
    def workdir(self) -> Path:
        return ROOT / ".cache" / "bench" / self.stamp


def _versions() -> dict[str, str]:
    found = {}
    for name in ("confluent-kafka", "faust-streaming", "aiokafka", "fastavro", "avro", "redis", "aiohttp"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import confluent_kafka

        found["librdkafka"] = str(confluent_kafka.libversion()[0])
    except ImportError:
        pass
    return found


def _machine() -> dict[str, Any]:
    memory_gib = None
    try:
        with open("/proc/meminfo") as f:
            memory_gib = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def run_bench(options: BenchOptions, console: Console) -> dict[str, Any]:
    """Run the chosen stages and write the JSON (and the plot beside it); returns the document."""
    from bench.report import plot_latency, print_summary, write_json

    sizes = options.sizes
    workdir = options.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "meta": {
            "version": RESULT_VERSION,
            "started_at": options.started.isoformat(timespec="seconds"),
            "mode": "quick" if options.quick else "full",
            "machine": _machine(),
            "kafka": {},
            "stages": [s for s in STAGES + STAGES_ON_REQUEST if s in options.stages],
            "versions": _versions(),
            "sizes": {k: v for k, v in sizes.__dict__.items() if k != "schedule"}
            | {"rates": list(sizes.schedule.rates), "step_s": sizes.schedule.step_s},
            "command": " ".join(["pipeline", *sys.argv[1:]]) if sys.argv else "pipeline bench",
            "logs": str(workdir),
        }
    }
    began = time.monotonic()
    with ExitStack() as stack:
        settings, container = _stack(options, stack, console, doc["meta"]["kafka"])
        created: list[str] = []
        try:
            _run_stages(options, sizes, settings, container, workdir, console, doc, created)
        finally:
            _drop_topics(settings, created)
    doc["meta"]["elapsed_s"] = round(time.monotonic() - began, 1)
    doc["meta"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    doc["ratios"] = _ratios(doc)
    problems = check_result(doc)
    if problems:
        doc["meta"]["problems"] = problems
    out = options.out_path
    write_json(doc, out)
    png = out.with_suffix(".png")
    why_not = plot_latency(doc, png)
    print_summary(doc, console)
    console.print(f"results: {out}" + (f"\nplot: {png}" if why_not is None else f"\nno plot: {why_not}"))
    console.print(f"logs and profiles: {workdir}; elapsed {doc['meta']['elapsed_s']:.0f} s")
    return doc


def _stack(
    options: BenchOptions, stack: ExitStack, console: Console, meta: dict[str, Any]
) -> tuple[Settings, str | None]:
    from bench import stack as containers

    base = get_settings()
    if set(options.stages) <= BROKERLESS:
        meta.update(own_stack=False, skipped="no chosen stage needs a broker")
        return base, None
    if options.bootstrap or options.redis_url:
        bootstrap = options.bootstrap or base.kafka_bootstrap
        redis_url = options.redis_url or base.redis_url
        port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
        container = options.kafka_container or containers.container_publishing(port)
        meta.update(bootstrap=bootstrap, redis=redis_url, own_stack=False, container=container)
    else:
        with console.status("starting Kafka, Redis and the schema registry from compose.yaml (testcontainers)"):
            containers.testcontainers_env()
            containers.remove_stale_containers()
            kafka = stack.enter_context(containers.kafka_node())
            redis_node = stack.enter_context(containers.redis_node())
            registry = stack.enter_context(containers.registry_node())
        bootstrap, redis_url, container = kafka.bootstrap, redis_node.url, kafka.container_id
        image = containers.compose_service("kafka")["image"]
        meta.update(
            bootstrap=bootstrap,
            redis=redis_url,
            registry=registry.url,
            own_stack=True,
            container=container,
            image=image,
        )
        console.print(f"stack: Kafka {bootstrap} ({image}), Redis {redis_url}, registry {registry.url}")
        return base.model_copy(
            update={"kafka_bootstrap": bootstrap, "redis_url": redis_url, "schema_registry_url": registry.url}
        ), container
    return base.model_copy(update={"kafka_bootstrap": bootstrap, "redis_url": redis_url}), container


def _drop_topics(settings: Settings, names: list[str]) -> None:
    if not names:
        return
    from common.admin import admin_client

    try:
        for future in admin_client(settings).delete_topics(names, operation_timeout=30).values():
            future.result()
    except Exception:  # noqa: BLE001, S110 - a leftover benchmark topic is harmless
        pass


def _run_stages(
    options: BenchOptions,
    sizes: Sizes,
    settings: Settings,
    container: str | None,
    workdir: Path,
    console: Console,
    doc: dict[str, Any],
    created: list[str],
) -> None:
    from bench import raw
    from schemas.catalog import SchemaCatalog
    from schemas.codec import AvroCodec

    catalog = SchemaCatalog.load()
    message = raw.sample_message(catalog, AvroCodec(catalog))
    stages = options.stages

    if "raw" in stages:
        console.rule("1. raw ceiling: confluent-kafka and kafka-producer-perf-test")
        doc["raw"] = _raw_stage(settings, container, message, sizes, console, created)
    if "faust" in stages:
        console.rule("2. Faust ceiling: a bare pass-through agent in its own process")
        doc["faust"] = _faust_stage(settings, message, sizes, workdir, console, created)
    orders_by_user: dict[str, list[str]] = {}
    if "pipeline" in stages:
        console.rule("3. the pipeline: open-loop orders through the saga, real worker processes")
        doc["pipeline"], doc["profile"], orders_by_user = _pipeline_stage(options, sizes, settings, container,
                                                                          workdir, console)  # fmt: skip
    if "codec" in stages:
        console.rule("4. codec: fastavro (AvroCodec) against Apache avro")
        from bench.codec_rates import run_codec

        with console.status("timing encode and decode"):
            doc["codec"] = run_codec(catalog, sizes.codec_iterations)
    if "query" in stages:
        console.rule("5. query side: the gateway's reads under load")
        doc["query"] = _query_stage(options, sizes, settings, workdir, console, orders_by_user)
    if "history" in stages:
        console.rule("6. history: what one customer's and one SKU's past costs a step (no broker)")
        from bench.history import FULL_ENTRIES, QUICK_ENTRIES, run_history

        with console.status("filling one customer and one SKU, then timing their steps"):
            doc["history"] = run_history(QUICK_ENTRIES if options.quick else FULL_ENTRIES)
    if "rest" in stages:
        console.rule("7. the stack at rest: make run's stack, nothing flowing, the kernel's CPU counters")
        from bench.rest import measure_rest

        with console.status("reading the box's and each container's CPU while the stack rests"):
            doc["rest"] = measure_rest(20.0 if options.quick else 60.0)
        console.print(f"the stack at rest: {doc['rest']['box_busy_share']:.1%} of the box")


def _raw_stage(
    settings: Settings,
    container: str | None,
    message: Any,
    sizes: Sizes,
    console: Console,
    created: list[str],
) -> dict[str, Any]:
    from bench import raw
    from common.admin import admin_client, apply_topics

    apply_topics(admin_client(settings), settings, [RAW_TOPIC])
    created.append(RAW_TOPIC.name)
    raw.produce(settings, RAW_TOPIC.name, message, 2_000)  # warm-up: producer id, metadata, the broker's JIT
    with console.status(f"producing {sizes.raw_messages:,} messages of {message.size} bytes"):
        produced = raw.produce(settings, RAW_TOPIC.name, message, sizes.raw_messages)
    with console.status("consuming them"):
        consumed = raw.consume(settings, RAW_TOPIC.name, sizes.raw_messages + 2_000, message.size)
    console.print(f"  produce {produced['messages_per_s']:,.0f} msg/s, consume {consumed['messages_per_s']:,.0f} msg/s")
    perf: dict[str, Any] = {"error": "no broker container known (pass --kafka-container)"}
    if container:
        with console.status(f"kafka-producer-perf-test: {sizes.perf_records:,} records inside the broker container"):
            perf = raw.perf_test(container, settings.kafka_bootstrap, RAW_TOPIC.name, sizes.perf_records, message.size)
        console.print(f"  kafka-producer-perf-test {perf.get('messages_per_s', '-')} msg/s")
    return {
        "record_bytes": {"total": message.size, "value": len(message.value), "headers": len(message.headers)},
        "producer_config": "producers.toolkit.producer_config: acks=all, idempotence, lz4, linger.ms=5",
        "produce": produced,
        "consume": consumed,
        "perf_test": perf,
    }


def _faust_stage(
    settings: Settings, message: Any, sizes: Sizes, workdir: Path, console: Console, created: list[str]
) -> dict[str, Any]:
    from bench import passthrough

    variants = {}
    for mode in passthrough.MODES:
        created.extend(t.name for t in passthrough.topics(mode))
        with console.status(f"{mode} pass-through: {sizes.faust_events:,} events"):
            variants[mode] = passthrough.run_variant(settings, mode, message, sizes.faust_events, workdir)
        console.print(f"  {mode}: {variants[mode]['events_per_s']} events/s")
    return {
        "events": sizes.faust_events,
        "variants": variants,
        "ceiling_events_per_s": variants["bare"]["events_per_s"],
        "app": "streams.app.new_faust_app settings, one agent, concurrency 1",
    }


PIPELINE_ENV = {
    "PIPELINE_SAGA_TIMEOUT_S": "600",  # a backlog shows as latency, not as deadline cancellations
    "PIPELINE_STALL_TIMEOUT_S": "60",
}


def _pipeline_stage(
    options: BenchOptions,
    sizes: Sizes,
    settings: Settings,
    container: str | None,
    workdir: Path,
    console: Console,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    import redis

    from bench.saga_load import LoadContext, LoadPlan, profiling, run_schedule, run_step, seed
    from bench.workers import Workers, running_workers
    from common.admin import admin_client, apply_topics, groups_not_ready, worker_groups
    from producers.toolkit import EventPublisher
    from schemas.catalog import SchemaCatalog

    admin = admin_client(settings)
    apply_topics(admin, settings)
    schedule = sizes.schedule
    with ExitStack() as stack:
        workers: Workers | None = None
        if options.external_workers:
            pending = groups_not_ready(admin, worker_groups())
            if pending:
                raise RuntimeError(f"--external-workers, but the workers are not ready: {'; '.join(pending)}")
        else:
            busy = _groups_with_members(admin, worker_groups())
            if busy:
                raise RuntimeError(f"workers already run against this stack ({', '.join(busy)}): "
                                   "stop them or pass --external-workers")  # fmt: skip
            with console.status("starting the workers (pipeline worker …, the view service's too)"):
                workers = stack.enter_context(running_workers(settings, workdir, **PIPELINE_ENV))
        publisher = stack.enter_context(EventPublisher.from_settings(settings, SchemaCatalog.load()))
        store = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
        containers = {"kafka": container} if container else {}
        ctx = LoadContext(
            publisher,
            store,
            admin,
            LoadPlan(),
            console,
            check_alive=workers.check if workers else (lambda: None),
            pids=workers.pids if workers else dict,
            containers=containers,
            views_port=workers.views_port if workers else 0,
            worker_ports=dict(workers.ports) if workers else {},
        )
        seed(ctx)
        steps = run_schedule(
            ctx, schedule.rates, schedule.step_s, settle_s=sizes.settle_s, past_saturation=1 if options.quick else 2
        )
        saturation = saturation_rate(steps)
        best = max(steps, key=lambda s: s["achieved_orders_per_s"])
        profile: dict[str, Any] = {}
        if workers is not None and options.profile and saturation:
            rate = round(min(max(schedule.rates), saturation * 1.1), 1)
            console.print(f"  profiling every worker with py-spy for {sizes.profile_s:.0f} s at {rate:g} orders/s")
            with profiling(workers.pids(), sizes.profile_s, workdir, True) as outputs:
                step = run_step(ctx, rate, sizes.profile_s, sizes.settle_s, label="profile")
            profile = _profiles(outputs, step, rate)
        orders_by_user: dict[str, list[str]] = {}
        for order_id, placed in ctx.orders.items():
            if placed.observed_ms is not None:
                orders_by_user.setdefault(placed.user_id, []).append(order_id)
        result = {
            "plan": {**LoadPlan().__dict__, "payment_latency_ms": settings.payment_latency_ms, **PIPELINE_ENV},
            "external_workers": options.external_workers,
            "steps": steps,
            "saturation_orders_per_s": saturation,
            # whole-box CPU per order at saturation (the step that completed the most orders)
            "box_cpu_ms_per_order": (best.get("box") or {}).get("box_cpu_ms_per_order"),
            "box_cpu_split_ms_per_order": (best.get("box") or {}).get("split_ms_per_order"),
            "events_per_order": best["events_per_order"],
            "busiest_worker": best["busiest_group"],
            "busiest_worker_events_per_s": best["busiest_group_events_per_s"],
            "watchdog_restarts": workers.watchdog_restarts if workers else None,
        }
    return result, profile, orders_by_user


def _groups_with_members(admin: Any, groups: list[str]) -> list[str]:
    """The groups some consumer is a member of now (workers already running against the stack).

    A fresh broker may not answer yet (its group coordinator is still loading): no answer counts as no member.
    """
    from confluent_kafka import KafkaException

    busy = []
    for name, future in admin.describe_consumer_groups(groups, request_timeout=30).items():
        try:
            if future.result().members:
                busy.append(name)
        except KafkaException:
            continue
    return busy


def _profiles(outputs: dict[str, Path], step: dict[str, Any], rate: float) -> dict[str, Any]:
    """Each worker's py-spy profile with its CPU use and the events its group consumed in the profiled step."""
    from schemas.topics import APP_PREFIX

    workers = {}
    cpu, consumed = step["cpu"], step["consumed_per_group"]
    seconds = cpu["wall_s"]
    for name, path in outputs.items():
        if not path.exists():
            continue
        profile = summarise_profile(path.read_text(errors="replace").splitlines())
        group = f"{APP_PREFIX}-{name}"
        events = consumed.get(group, 0)
        cores = cpu["process_cores"].get(name)
        workers[name] = {
            "cores": cores,
            "events": events,
            "events_per_s": round(events / seconds, 1) if seconds else None,
            "cpu_ms_per_event": round(cores * seconds * 1000 / events, 3) if cores and events else None,
            "profile": profile.as_dict(),
            "raw": str(path),
        }
    return {
        "offered_orders_per_s": rate,
        "step": {k: step[k] for k in ("achieved_orders_per_s", "latency_view_ms", "placed", "settled", "window_s")},
        "cpu": cpu,
        "tool": "py-spy record --rate 50 --nonblocking --format raw (busy threads only)",
        "workers": workers,
    }


def _query_stage(
    options: BenchOptions,
    sizes: Sizes,
    settings: Settings,
    workdir: Path,
    console: Console,
    orders_by_user: dict[str, list[str]],
) -> dict[str, Any]:
    import redis

    from bench.query_load import orders_in_views, run_query

    if not orders_by_user:
        orders_by_user = orders_in_views(redis.Redis.from_url(settings.redis_url))
    if not orders_by_user:
        return {"connections": options.connections, "duration_s": sizes.query_s, "endpoints": {},
                "skipped": "no orders in the views to read (run the pipeline stage too)"}  # fmt: skip
    some = dict(list(orders_by_user.items())[:50])
    with console.status(f"gateway reads: {options.connections} connections, {sizes.query_s:.0f} s per endpoint"):
        result = run_query(
            settings, workdir, some, connections=options.connections, duration_s=sizes.query_s, profile=options.profile
        )
    for name, figures in result["endpoints"].items():
        console.print(f"  {name}: {figures['requests_per_s']:,.0f} requests/s, p99 {figures['latency_ms']['p99']} ms")
    return result


def _ratios(doc: dict[str, Any]) -> dict[str, float | None]:
    raw = doc.get("raw") or {}
    raw_rate = (
        min(raw["produce"]["messages_per_s"], raw["consume"]["messages_per_s"])
        if raw.get("produce") and raw.get("consume")
        else None
    )
    faust = doc.get("faust") or {}
    pipeline = doc.get("pipeline") or {}
    return ratios(
        raw_per_s=raw_rate,
        faust_per_s=faust.get("ceiling_events_per_s"),
        pipeline_events_per_s=pipeline.get("busiest_worker_events_per_s"),
        faust_acked_per_s=(faust.get("variants") or {}).get("acked", {}).get("events_per_s"),
        faust_batched_per_s=(faust.get("variants") or {}).get("batched", {}).get("events_per_s"),
    )
