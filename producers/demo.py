"""The main job's load: seed customers and stock, stream sample orders at a steady rate, then summarise.

It is an open-loop generator: orders go out at the offered rate whatever the pipeline's pace, so time to a
terminal state is measured honestly (from the command's ``requested_at`` to the terminal event's time, both
event times). Outcomes are read where a person would read them: the Redis views and the provider's ledger.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producers.orders import place_order, random_order
from producers.toolkit import EventPublisher
from schemas.topics import INVENTORY_COMMANDS, USER_COMMANDS
from streams.domain.orders import TERMINAL_STATUSES
from streams.payment_provider import LEDGER
from streams.views import read as views


@dataclass(frozen=True)
class DemoPlan:
    orders: int = 200
    rate: float = 10.0
    """Orders offered per second."""
    customers: int = 20
    skus: int = 5
    stock_per_sku: int = 60
    decline_share: float = 0.1
    """Share of orders paid with a card the provider declines."""
    seed: int = 42
    settle_timeout_s: float = 180.0


@dataclass
class DemoResult:
    placed: dict[str, int] = field(default_factory=dict)
    """Order id → requested_at (epoch ms)."""
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    initial_stock: dict[str, int] = field(default_factory=dict)

    def latencies_ms(self) -> list[int]:
        return sorted(
            int(view["terminal_at"]) - self.placed[order_id]
            for order_id, view in self.outcomes.items()
            if view.get("terminal_at")
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def run_demo(publisher: EventPublisher, store: redis.Redis, plan: DemoPlan, console: Console) -> DemoResult:
    """Seed, place ``plan.orders`` orders at ``plan.rate``/s, wait for every one to settle."""
    rng = random.Random(plan.seed)
    run = uuid.uuid4().hex[:6]
    result = DemoResult()
    customers = [f"demo-{run}-u{i}" for i in range(plan.customers)]
    skus = [f"demo-{run}-sku{i}" for i in range(plan.skus)]

    for user_id in customers:  # through the user service: its aggregate, e-mail claim and reactions
        publisher.publish(
            USER_COMMANDS,
            "RegisterUser",
            user_id,
            {"user_id": user_id, "username": user_id, "email": f"{user_id}@example.com", "profile": {}},
        )
    for sku in skus:
        publisher.publish(
            INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": plan.stock_per_sku, "reason": "demo"}
        )
        result.initial_stock[sku] = plan.stock_per_sku
    publisher.flush()
    _wait(console, "stock views", lambda: all(views.stock(store, s) for s in skus), plan.settle_timeout_s)
    _wait(
        console, "registered customers", lambda: all(views.get_user(store, u) for u in customers), plan.settle_timeout_s
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        placing = progress.add_task("orders placed ", total=plan.orders)
        settling = progress.add_task("orders settled", total=plan.orders)
        start = time.monotonic()
        for n in range(plan.orders):
            # open loop: the n-th order goes out at start + n/rate, however the pipeline keeps up
            delay = start + n / plan.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            order_id = f"demo-{run}-o{n}"
            requested = _now_ms()
            _, order = random_order(rng, order_id, customers, skus, decline_share=plan.decline_share)
            place_order(publisher, order, requested_at=requested)
            result.placed[order_id] = requested
            progress.advance(placing)
            if n % 20 == 0:
                progress.update(settling, completed=_settle(store, result))
        publisher.flush()

        deadline = time.monotonic() + plan.settle_timeout_s
        while len(result.outcomes) < plan.orders and time.monotonic() < deadline:
            progress.update(settling, completed=_settle(store, result))
            time.sleep(0.25)
        progress.update(settling, completed=_settle(store, result))
        # a quiet point: the sales and releases that follow the terminal events have landed too
        while time.monotonic() < deadline and any(
            int((views.stock(store, sku) or {}).get("reserved", 0)) for sku in skus
        ):
            time.sleep(0.25)
    return result


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _settle(store: redis.Redis, result: DemoResult) -> int:
    pending = [o for o in result.placed if o not in result.outcomes]
    for order_id in pending:
        view = views.get_order(store, order_id)
        if view is not None and view.get("status") in TERMINAL_STATUSES:
            result.outcomes[order_id] = view
    return len(result.outcomes)


def _wait(console: Console, what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with console.status(f"waiting for {what}"):
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not appear within {timeout:.0f}s: are the workers running?")
            time.sleep(0.2)


def summarise(store: redis.Redis, ledger_store: redis.Redis, result: DemoResult, console: Console) -> bool:
    """Print outcomes, stock and latency; return whether every promise checked here holds."""
    outcomes = Counter(
        view["status"] + (f" ({view['cancel_reason']})" if view.get("cancel_reason") else "")
        for view in result.outcomes.values()
    )
    unsettled = len(result.placed) - len(result.outcomes)
    table = Table(title="orders")
    table.add_column("outcome")
    table.add_column("orders", justify="right")
    for outcome, count in sorted(outcomes.items()):
        table.add_row(outcome, str(count))
    if unsettled:
        table.add_row("[red]not settled[/red]", str(unsettled))
    console.print(table)

    ok = unsettled == 0
    stock_table = Table(title="stock (initial = available + reserved + sold)")
    for column in ("sku", "initial", "available", "reserved", "sold", "conserved"):
        stock_table.add_column(column, justify="right" if column != "sku" else "left")
    for sku, initial in result.initial_stock.items():
        level = views.stock(store, sku) or {}
        available, reserved, sold = (int(level.get(k, 0)) for k in ("available", "reserved", "sold"))
        conserved = available + reserved + sold == initial and min(available, reserved, sold) >= 0
        ok &= conserved
        stock_table.add_row(
            sku, str(initial), str(available), str(reserved), str(sold), "yes" if conserved else "[red]NO[/red]"
        )
    console.print(stock_table)

    raw_ledger: dict[Any, Any] = dict(ledger_store.hgetall(LEDGER))
    ledger = {_text(k): json.loads(v) for k, v in raw_ledger.items() if _text(k) in result.placed}
    charged = [o for o, e in ledger.items() if e["status"] in ("charged", "refunded")]
    unrefunded = [
        o
        for o in charged
        if result.outcomes.get(o, {}).get("status") != "CONFIRMED" and ledger[o]["status"] != "refunded"
    ]
    ok &= not unrefunded
    latencies = result.latencies_ms()
    if latencies:
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        console.print(f"time to terminal state: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(latencies)} orders")
    console.print(
        f"charges: {len(charged)}, of cancelled orders not refunded: {len(unrefunded)}; "
        f"promises {'hold' if ok else '[red]BROKEN[/red]'}"
    )
    return ok
