"""Stage 3, the pipeline: orders/s through the whole saga and command → terminal-view latency, open loop.

Customers are registered through the user service (``RegisterUser``) and awaited in the user view, stock is
added through ``AddStock``; then each offered rate of the schedule runs for a fixed time: the n-th order goes
out at ``n / rate`` whatever the pipeline's pace, and each order's view is watched in Redis until it is
terminal. Per step: completed orders/s, latency percentiles (to the view seen terminal, and to the terminal
event's own time), messages written per topic and consumed per worker group, and CPU per process. The
schedule stops once a step (two in the full run) saturated the pipeline.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from bench.figures import is_saturated, latency_growth, latency_summary, per_second, send_offsets
from bench.probes import (
    CpuSnapshot,
    Offsets,
    batch_counters,
    batch_sizes,
    box_cpu_per_order,
    deltas,
    read_offsets,
    view_costs,
    view_counters,
)
from bench.stack import wait_until
from common.admin import worker_groups
from producers.orders import place_order, random_order
from producers.toolkit import EventPublisher
from schemas.topics import INVENTORY_COMMANDS, TOPICS, USER_COMMANDS, VIEWS_STOCK_LINES, internal_topics
from streams.domain.orders import TERMINAL_STATUSES
from streams.views.keys import order_key

POLL_S = 0.05
VIEWS_GROUP = "order-pipeline-views"
"""The view service's consumer group (its Faust app id)."""
"""How often pending orders' views are read (the resolution of the view latency)."""


@dataclass(frozen=True)
class LoadPlan:
    customers: int = 50
    skus: int = 40
    stock_per_sku: int = 1_000_000
    decline_share: float = 0.1
    """Share of orders paid with a card the provider declines (their sagas compensate), as in the demo."""
    seed: int = 42


@dataclass
class Placed:
    user_id: str
    requested_ms: int
    observed_ms: int | None = None
    terminal_ms: int | None = None
    status: str | None = None


@dataclass
class LoadContext:
    publisher: EventPublisher
    store: redis.Redis
    admin: AdminClient
    plan: LoadPlan
    console: Console
    check_alive: Callable[[], None] = lambda: None
    pids: Callable[[], dict[str, int]] = dict
    containers: dict[str, str] = field(default_factory=dict)
    views_port: int = 0
    """The view service's endpoint (its batch and Redis counters); 0: not read."""
    worker_ports: dict[str, int] = field(default_factory=dict)
    """Every worker's endpoint, for its agents' batch sizes; empty: not read."""
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    customers: list[str] = field(default_factory=list)
    skus: list[str] = field(default_factory=list)
    orders: dict[str, Placed] = field(default_factory=dict)
    """Every order placed in a recorded step (the query stage reads them back through the gateway)."""
    rng: random.Random = field(default_factory=random.Random)
    sequence: int = 0


def _now_ms() -> int:
    return int(time.time() * 1000)


def seed(ctx: LoadContext, timeout_s: float = 180) -> None:
    """Register the customers through the user service and stock every SKU; wait until the views know them."""
    plan = ctx.plan
    ctx.rng.seed(plan.seed)
    ctx.customers = [f"bench-{ctx.run}-u{i}" for i in range(plan.customers)]
    ctx.skus = [f"bench-{ctx.run}-sku{i}" for i in range(plan.skus)]
    for user_id in ctx.customers:
        ctx.publisher.publish(USER_COMMANDS, "RegisterUser", user_id,
                              {"user_id": user_id, "username": user_id, "email": f"{user_id}@example.com",
                               "profile": {}})  # fmt: skip
    for sku in ctx.skus:
        ctx.publisher.publish(
            INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": plan.stock_per_sku, "reason": "bench"}
        )
    ctx.publisher.flush()
    keys = [f"view:user:{u}" for u in ctx.customers] + [f"view:stock:{s}" for s in ctx.skus]

    def known() -> bool:
        ctx.check_alive()
        return int(ctx.store.exists(*keys)) == len(keys)

    with ctx.console.status(f"registering {len(ctx.customers)} customers and stocking {len(ctx.skus)} SKUs"):
        wait_until(known, timeout=timeout_s, what="customers registered and SKUs stocked", interval=0.25)


def _place(ctx: LoadContext) -> tuple[str, Placed]:
    rng = ctx.rng
    ctx.sequence += 1
    order_id = f"bench-{ctx.run}-o{ctx.sequence}"
    user_id, order = random_order(rng, order_id, ctx.customers, ctx.skus, decline_share=ctx.plan.decline_share)
    requested = _now_ms()
    place_order(ctx.publisher, order, requested_at=requested, correlation_id=order_id)
    return order_id, Placed(user_id, requested)


def _poll(ctx: LoadContext, pending: dict[str, Placed]) -> int:
    """Read the pending orders' views; move terminal ones out of ``pending``; returns how many settled now."""
    ids = list(pending)
    settled = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        raws: list[Any] = ctx.store.mget([order_key(o) for o in chunk])
        now = _now_ms()
        for order_id, raw in zip(chunk, raws, strict=True):
            if raw is None:
                continue
            view = json.loads(raw)
            if view.get("status") in TERMINAL_STATUSES:
                placed = pending.pop(order_id)
                placed.observed_ms, placed.status = now, str(view["status"])
                placed.terminal_ms = int(view["terminal_at"]) if view.get("terminal_at") else None
                settled += 1
    return settled


def groups_and_topics() -> tuple[list[str], list[str], list[str]]:
    groups = worker_groups()
    topics = [t.name for t in (*TOPICS, VIEWS_STOCK_LINES)]
    changelogs = [t.name for t in internal_topics() if t.name.endswith("-changelog")]
    return groups, topics, changelogs


def wait_quiet(ctx: LoadContext, timeout_s: float = 30) -> Offsets:
    """Wait until every worker group has committed all it consumed (bounded), and return the offsets then."""
    groups, topics, changelogs = groups_and_topics()
    deadline = time.monotonic() + timeout_s
    while True:
        ctx.check_alive()
        offsets = read_offsets(ctx.admin, topics + changelogs, groups)
        if not any(offsets.lag.values()) or time.monotonic() > deadline:
            return offsets
        time.sleep(0.5)


def run_step(
    ctx: LoadContext, rate: float, duration_s: float, settle_s: float, *, record: bool = True, label: str = "step"
) -> dict[str, Any]:
    """Offer ``rate`` orders/s for ``duration_s``; wait up to ``settle_s`` after the last one for the rest."""
    before = wait_quiet(ctx)
    cpu_before = CpuSnapshot.take(ctx.pids(), ctx.containers)
    views_before = view_counters(ctx.views_port)
    batches_before = batch_counters(ctx.worker_ports)
    offsets = send_offsets(rate, duration_s)
    placed: dict[str, Placed] = {}
    pending: dict[str, Placed] = {}
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=ctx.console, transient=not record) as progress:
        placing = progress.add_task(f"{label}: {rate:g}/s placed", total=len(offsets), note="")
        settling = progress.add_task(f"{label}: terminal in Redis", total=len(offsets), note="")
        start = time.monotonic()
        next_poll = start
        n = 0
        while n < len(offsets):
            now = time.monotonic()
            if now >= start + offsets[n]:
                order_id, order = _place(ctx)
                placed[order_id] = pending[order_id] = order
                n += 1
                progress.advance(placing)
                continue
            if now >= next_poll:
                progress.advance(settling, _poll(ctx, pending))
                next_poll = now + POLL_S
                ctx.check_alive()
                lag = len(pending)
                progress.update(settling, note=f"in flight {lag}")
                continue
            time.sleep(max(0.0, min(start + offsets[n], next_poll) - now))
        ctx.publisher.flush()
        deadline = time.monotonic() + settle_s
        while pending and time.monotonic() < deadline:
            progress.advance(settling, _poll(ctx, pending))
            progress.update(settling, note=f"in flight {len(pending)}")
            ctx.check_alive()
            time.sleep(POLL_S)
    cpu_after = CpuSnapshot.take(ctx.pids(), ctx.containers)
    after = wait_quiet(ctx)
    views_after = view_counters(ctx.views_port)
    batches_after = batch_counters(ctx.worker_ports)
    if record:
        ctx.orders.update(placed)
    step = summarise_step(rate, duration_s, placed, before, after, cpu_after.since(cpu_before))
    cpu = step["cpu"]
    views_cores = cpu.get("process_cores", {}).get("views")
    views_cpu_s = views_cores * cpu["wall_s"] if views_cores is not None and cpu.get("wall_s") else None
    step["box"] = box_cpu_per_order(cpu, step["achieved_orders_per_s"])
    step["batches"] = batch_sizes(batches_before, batches_after)
    step["views"] = view_costs(views_before, views_after, step["consumed_per_group"].get(VIEWS_GROUP, 0), views_cpu_s)
    return step


def summarise_step(
    rate: float,
    duration_s: float,
    placed: dict[str, Placed],
    before: Offsets,
    after: Offsets,
    cpu: dict[str, Any],
) -> dict[str, Any]:
    done = [p for p in placed.values() if p.observed_ms is not None]
    first = min((p.requested_ms for p in placed.values()), default=0)
    last = max((p.observed_ms or 0 for p in done), default=first)
    window_s = (last - first) / 1000
    # completions per second between the first and the last order seen terminal: the offered rate while the
    # pipeline keeps up, its capacity once it does not (a step's latency does not dilute it)
    seen = sorted(p.observed_ms for p in done if p.observed_ms is not None)
    achieved = per_second(len(seen) - 1, (seen[-1] - seen[0]) / 1000) if len(seen) > 1 else 0.0
    in_order = [p.observed_ms - p.requested_ms for p in placed.values() if p.observed_ms is not None]
    growth = latency_growth(in_order)
    consumed = deltas(after.groups, before.groups)
    written = deltas(after.topics, before.topics)
    changelog_writes = sum(v for k, v in written.items() if k.endswith("-changelog"))
    events = sum(v for k, v in written.items() if not k.endswith("-changelog"))
    busiest = max(consumed.items(), key=lambda kv: kv[1], default=("", 0))
    return {
        "offered_orders_per_s": rate,
        "duration_s": duration_s,
        "placed": len(placed),
        "settled": len(done),
        "window_s": round(window_s, 2),
        "achieved_orders_per_s": round(achieved, 2),
        "saturated": is_saturated(rate, achieved, len(done), len(placed), in_order),
        "latency_p50_first_last_third_ms": None if growth is None else [round(g, 1) for g in growth],
        "outcomes": dict(Counter(p.status for p in done if p.status)),
        "latency_view_ms": latency_summary(p.observed_ms - p.requested_ms for p in done if p.observed_ms),
        "latency_event_ms": latency_summary(p.terminal_ms - p.requested_ms for p in done if p.terminal_ms),
        "messages_written": {"events_and_commands": events, "changelog": changelog_writes, "per_topic": written},
        "events_per_order": round(events / len(placed), 2) if placed else None,
        "events_per_s": round(per_second(events, window_s), 1),
        "consumed_per_group": consumed,
        "busiest_group": busiest[0],
        "busiest_group_events_per_s": round(per_second(busiest[1], window_s), 1),
        "lag_after": {k: v for k, v in after.lag.items() if v},
        "cpu": cpu,
    }


@contextmanager
def profiling(pids: dict[str, int], seconds: float, workdir: Path, enabled: bool) -> Iterator[dict[str, Path]]:
    """py-spy ``record`` (raw collapsed stacks of busy threads, 50 Hz, non-blocking) on every pid for ``seconds``."""
    import shutil
    import subprocess

    spy = shutil.which("py-spy") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy")
    if not enabled or not Path(spy).exists():
        with nullcontext():
            yield {}
        return
    outputs = {name: workdir / f"profile-{name}.txt" for name in pids}
    options = ["--rate", "50", "--format", "raw", "--nonblocking", "--duration", str(int(seconds))]
    procs = [
        subprocess.Popen(
            [spy, "record", "--pid", str(pid), *options, "--output", str(outputs[name])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    try:
        yield outputs
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def run_schedule(
    ctx: LoadContext,
    rates: tuple[float, ...],
    step_s: float,
    *,
    settle_s: float,
    warmup_s: float = 3.0,
    past_saturation: int = 1,
) -> list[dict[str, Any]]:
    """A short unrecorded warm-up, then each offered rate in turn until ``past_saturation`` steps saturated."""
    run_step(ctx, min(5.0, rates[0]), warmup_s, settle_s, record=False, label="warm-up")
    steps: list[dict[str, Any]] = []
    for rate in rates:
        step = run_step(ctx, rate, step_s, settle_s, label=f"step {len(steps) + 1}/{len(rates)}")
        steps.append(step)
        view = step["latency_view_ms"]
        ctx.console.print(
            f"  offered {rate:g}/s → {step['achieved_orders_per_s']:.1f} orders/s, view latency p50 {view['p50']} "
            f"p99 {view['p99']} ms, busiest worker {step['busiest_group']} "
            f"{step['busiest_group_events_per_s']:.0f} events/s" + (" [saturated]" if step["saturated"] else "")
        )
        if sum(s["saturated"] for s in steps) >= past_saturation:
            break
    return steps
