"""A load of orders against scarce stock, and the design's promises checked on what a person can inspect.

Shared by the load test and the crash test: publish customers, stock and orders; wait until every order is
terminal and nothing is left reserved; then check, from the Redis views, the payment provider's ledger and
the services' own changelogs, that every promise holds.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from confluent_kafka import Consumer, TopicPartition

from common.encoding import registry_codec
from common.settings import LIBRDKAFKA_LOGGER, Settings
from consumers.toolkit import EventConsumer
from consumers.view_log import PROJECTED_TOPICS
from producers.toolkit import EventPublisher
from schemas.catalog import SchemaCatalog
from schemas.topics import (
    INVENTORY_COMMANDS,
    INVENTORY_EVENTS,
    ORDER_COMMANDS,
    ORDER_DEADLINES,
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    VIEWS_STOCK_LINES,
    table,
)
from streams.app import app_id
from streams.domain.orders import TERMINAL_STATUSES
from streams.domain.reservations import HANDLES as RESERVATION_INPUTS
from streams.payment_provider import LEDGER
from streams.stores import hold_key
from streams.views import read as views
from streams.views.keys import order_key
from streams.views.read import views_whole as views_mirrored
from tests.seeding import register_users
from tests.stack import wait_until

LOAD_DELIVERY_TIMEOUT_S = 180.0
"""How long the test load's messages may wait for the broker: longer than a broker restart on a busy machine."""


@dataclass
class OrderLoad:
    """What a load published: its customers, SKUs and each order's lines."""

    settings: Settings
    orders: int
    skus: int = 4
    stock_per_sku: int = 150
    customers: int = 50
    decline_rate: float = 0.1
    seed: int = 1234
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    ordered: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def customer_ids(self) -> list[str]:
        return [f"load-{self.run}-u{i}" for i in range(self.customers)]

    @property
    def sku_ids(self) -> list[str]:
        return [f"load-{self.run}-sku{i}" for i in range(self.skus)]

    def publish(self, store: redis.Redis, alive: Callable[[], None], *, rate: float | None = None) -> None:
        """Register the customers, stock every SKU, then place every order (1–2 SKUs, 1–3 units each), all at
        once or ``rate`` orders a second."""
        commands = self.prepare(store, alive)
        self.place(commands, rate=rate)

    def prepare(self, store: redis.Redis, alive: Callable[[], None]) -> list[tuple[str, dict[str, Any]]]:
        """Register the customers and stock every SKU; return the PlaceOrder commands (user id, value) to send.

        Every order is known (``ordered``) from here on, placed or not."""
        rng = random.Random(self.seed)
        with EventPublisher.from_settings(self.settings, SchemaCatalog.load()) as publisher:
            register_users(publisher, store, self.customer_ids, alive=alive)
            for sku in self.sku_ids:
                publisher.publish(
                    INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": self.stock_per_sku, "reason": "load"}
                )
            publisher.flush()
        commands: list[tuple[str, dict[str, Any]]] = []
        for n in range(self.orders):
            order_id = f"load-{self.run}-o{n}"
            user_id = rng.choice(self.customer_ids)
            lines = {sku: rng.randint(1, 3) for sku in rng.sample(self.sku_ids, k=rng.randint(1, 2))}
            self.ordered[order_id] = lines
            token = "tok_decline" if rng.random() < self.decline_rate else "tok_ok"
            value = {
                "order_id": order_id,
                "user_id": user_id,
                "lines": [{"sku": s, "quantity": q, "unit_price_cents": 700} for s, q in lines.items()],
                "payment": {"method": "card", "token": token},
                "idempotency_key": order_id,
            }
            commands.append((user_id, value))
        return commands

    def place(self, commands: list[tuple[str, dict[str, Any]]], *, rate: float | None = None) -> None:
        """Send the PlaceOrder commands, all at once or paced at ``rate`` a second (a steady load).

        The load outlasts a broker restart (the chaos runs restart it under this load): each message may wait for
        the broker for up to :data:`LOAD_DELIVERY_TIMEOUT_S`, as a client configured for such outages would."""
        started = time.monotonic()
        patient = self.settings.model_copy(
            update={"delivery_timeout_s": max(self.settings.delivery_timeout_s, LOAD_DELIVERY_TIMEOUT_S)}
        )
        with EventPublisher.from_settings(patient, SchemaCatalog.load()) as publisher:
            for n, (user_id, value) in enumerate(commands):
                if rate is not None:
                    ahead = started + n / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)  # pacing the load, not waiting for a condition
                requested = {**value, "requested_at": int(time.time() * 1000)}
                publisher.publish(ORDER_COMMANDS, "PlaceOrder", user_id, requested)
            publisher.flush()

    @cached_property
    def ledger(self) -> redis.Redis:
        """The simulated payment provider's own database (one client, asked on every poll of the settle wait)."""
        return redis.Redis.from_url(self.settings.provider_store)

    def terminal_count(self, store: redis.Redis) -> int:
        """How many of the orders the views show terminal (one MGET per thousand orders)."""
        ids = list(self.ordered)
        count = 0
        for start in range(0, len(ids), 1000):
            for raw in store.mget([order_key(o) for o in ids[start : start + 1000]]):
                count += raw is not None and json.loads(raw).get("status") in TERMINAL_STATUSES
        return count

    def unrefunded(self, store: redis.Redis) -> dict[str, str | None]:
        """Orders charged at the provider that are neither confirmed nor parked for attention (a refund that kept
        failing), with their status: refunds still due."""
        ledger = {k.decode(): json.loads(v) for k, v in self.ledger.hgetall(LEDGER).items()}
        charged = [o for o in self.ordered if (ledger.get(o) or {}).get("status") == "charged"]
        statuses = {o: (views.get_order(store, o) or {}).get("status") for o in charged}
        return {o: status for o, status in statuses.items() if status not in ("CONFIRMED", "COMPENSATION_FAILED")}

    def wait_settled(self, store: redis.Redis, alive: Callable[[], None], timeout: float = 600) -> None:
        """Wait for the quiet point: every order terminal, no SKU holding reserved units, every charge of an order
        that is not confirmed refunded (``alive`` raises if a process died). On timeout, print what is stuck."""

        def settled() -> bool:
            alive()
            if not views_whole(store):
                return False  # the views are being re-mirrored: what they show is not the quiet point yet
            if self.terminal_count(store) < len(self.ordered):
                return False
            if any(int((views.stock(store, s) or {}).get("reserved", -1)) != 0 for s in self.sku_ids):
                return False
            return not self.unrefunded(store)

        try:
            wait_until(
                settled, timeout=timeout, what="every order terminal, no stock reserved, refunds done", interval=1.0
            )
        except TimeoutError:
            print(f"\norders charged, not confirmed and not refunded: {self.unrefunded(store)}")
            print(self.explain_open(store))
            print(self.explain_leaks(store))
            raise

    def check_promises(self, store: redis.Redis) -> Counter[str]:
        """Assert every promise; return the outcomes (status:reason) for the test's report."""
        orders = {o: views.get_order(store, o) or {} for o in self.ordered}
        outcomes = Counter(v["status"] + ":" + str(v.get("cancel_reason")) for v in orders.values())
        print(f"\noutcomes of {len(orders)} orders: {dict(outcomes)}")

        # 1. one terminal state per order: never both confirmed and cancelled
        for order_id, view in orders.items():
            terminal = [
                e["event"]
                for e in view["timeline"]
                if e["event"] in ("OrderConfirmed", "OrderCancelled", "OrderRejected")
            ]
            assert len(terminal) == 1, (order_id, terminal)
        assert outcomes.get("CONFIRMED:None", 0) > 0

        # 2. stock conserved, never oversold: sold is exactly what confirmed orders bought
        for sku in self.sku_ids:
            level = views.stock(store, sku)
            assert level is not None
            available, reserved, sold = int(level["available"]), int(level["reserved"]), int(level["sold"])
            bought = sum(lines.get(sku, 0) for o, lines in self.ordered.items() if orders[o]["status"] == "CONFIRMED")
            print(f"{sku}: available {available} reserved {reserved} sold {sold} (confirmed orders bought {bought})")
            assert available + reserved + sold == self.stock_per_sku
            assert min(available, reserved, sold) >= 0
            assert sold == bought

        # 3. no double charge; every charge of an order that is not confirmed is refunded
        raw_ledger = self.ledger.hgetall(LEDGER).items()
        ledger = {k.decode(): json.loads(v) for k, v in raw_ledger if k.decode() in self.ordered}
        for order_id, view in orders.items():
            entry = ledger.get(order_id)
            if view["status"] == "CONFIRMED":
                assert entry is not None and entry["status"] == "charged", (order_id, entry)
                assert entry["amount_cents"] == view["total_cents"]
            elif entry is not None:
                assert entry["status"] in ("declined", "refunded"), (order_id, entry)
        print(f"charges: {sum(e['status'] in ('charged', 'refunded') for e in ledger.values())}, "
              f"refunded: {sum(e['status'] == 'refunded' for e in ledger.values())}")  # fmt: skip

        # 4. Redis equals the services' own tables, read back from their changelogs
        sagas = changelog(self.settings, "orders", "orders_sagas")
        for order_id, view in orders.items():
            if view["status"] == "REJECTED":
                continue  # rejected at admission: no saga was started
            assert sagas[order_id]["status"] == view["status"], order_id
        stock_table = changelog(self.settings, "inventory", "inventory_stock")
        for sku in self.sku_ids:
            level = views.stock(store, sku) or {}
            state = stock_table[sku]
            assert (state["available"], state["reserved"], state["sold"]) == (
                int(level["available"]), int(level["reserved"]), int(level["sold"]),
            )  # fmt: skip
        return outcomes

    def explain_leaks(self, store: redis.Redis) -> str:
        """Why stock stays reserved: per SKU the holds still RESERVED, and for each such order everything that
        was said about it (view, reservation state, every message on the inventory and order topics), with the
        inputs its steps never applied marked ``<-- not applied``."""
        out: list[str] = ["", "=== stock left reserved: evidence ==="]
        levels_log = changelog_history(self.settings, "inventory", "inventory_stock")
        levels = _latest(levels_log)
        holds_log = changelog_history(self.settings, "inventory", "inventory_holds")
        holds = _latest(holds_log)
        reservations_log = changelog_history(self.settings, "inventory", "inventory_reservations")
        reservations = _latest(reservations_log)
        messages: dict[str, list[_Logged]] | None = None
        missed: list[str] = []
        for sku in self.sku_ids:
            view = views.stock(store, sku) or {}
            state = levels.get(sku) or {}
            held = {k: v for k, v in holds.items() if k.startswith(f"{sku}/") and v and v.get("status") == "RESERVED"}
            out.append(
                f"{sku}: view available {view.get('available')} reserved {view.get('reserved')} sold {view.get('sold')}"
                f" v{view.get('stock_version')} | inventory_stock changelog available {state.get('available')}"
                f" reserved {state.get('reserved')} sold {state.get('sold')} v{state.get('version')}"
                f" | holds RESERVED: {len(held)} = {sum(int(v.get('quantity', 0)) for v in held.values())} units"
            )
            regressions = _regressions(levels_log.get(sku, []), lambda v: int(v.get("version", 0)))
            out.extend(f"  inventory_stock changelog went back: {r}" for r in regressions)
            orphans = _unanswered_versions(levels_log.get(sku, []), holds_log, sku)
            out.extend(f"  inventory_stock version no hold answers for: {o}" for o in orphans)
            odd = {
                k: v
                for k, h in holds_log.items()
                if k.startswith(f"{sku}/") and (v := holds.get(k)) is not None and k not in held and _odd_hold(h)
            }
            if int(view.get("reserved", 0) or 0) <= 0 and not held and not odd and not regressions and not orphans:
                continue
            for key, hold in sorted({**held, **odd}.items()):
                order_id = key.split("/", 1)[1]
                out.append(f"  hold {key}{' (odd history)' if key in odd else ''}: {json.dumps(hold)[:300]}")
                out.extend(
                    f"    holds changelog p{p}@{o} {_ts(ts)} {_hold_summary(value)}"
                    for p, o, ts, value in holds_log.get(key, [])
                )
                order = views.get_order(store, order_id) or {}
                out.append(f"  order {order_id}: view status {order.get('status')} reason {order.get('cancel_reason')}")
                out.extend(
                    f"    timeline {_ts(int(e.get('at', 0)))} {e.get('event')} ({e.get('service')})"
                    f" {json.dumps(e.get('detail') or {})[:120]}"
                    for e in order.get("timeline", [])
                )
                reservation = reservations.get(order_id)
                out.append(f"    inventory_reservations now: {_reservation_summary(reservation)}")
                out.extend(
                    f"    reservations changelog p{p}@{o} {_ts(ts)} {_reservation_summary(value)}"
                    for p, o, ts, value in reservations_log.get(order_id, [])
                )
                if messages is None:
                    messages = self._messages_by_order()
                for logged in messages.get(order_id, []):
                    skipped = _not_applied(logged, reservation, holds)
                    if skipped:
                        missed.append(f"{logged.where} {logged.name} ({order_id})")
                    out.append(f"    {logged}{'   <-- not applied' if skipped else ''}")
        out.insert(2, f"inputs of leaked orders their step never applied ({len(missed)}):")
        out[3:3] = [f"  {m}" for m in sorted(set(missed))]
        return "\n".join(out)

    def explain_open(self, store: redis.Redis, limit: int = 10) -> str:
        """Why orders are not terminal: for each (up to ``limit``) its view, its saga and deadline as the orders
        service's changelogs hold them, and every message said about it."""
        open_orders = [
            o for o in self.ordered if (views.get_order(store, o) or {}).get("status") not in TERMINAL_STATUSES
        ]
        out = ["", f"=== orders not terminal: {len(open_orders)} ==="]
        if not open_orders:
            return "\n".join(out)
        sagas = _latest(changelog_history(self.settings, "orders", "orders_sagas"))
        deadlines = _latest(changelog_history(self.settings, "orders", "orders_deadlines"))
        messages = self._messages_by_order(extra=(PAYMENT_EVENTS.name, ORDER_DEADLINES.name))
        for order_id in open_orders[:limit]:
            view = views.get_order(store, order_id) or {}
            saga = sagas.get(order_id) or {}
            applied = sorted(saga.get("outputs") or {})
            out.append(f"order {order_id}: view {view.get('status')} | saga {saga.get('status')} applied {applied}"
                       f" | deadline {deadlines.get(order_id)}")  # fmt: skip
            out.extend(f"    {logged}" for logged in messages.get(order_id, []))
        return "\n".join(out)

    def _messages_by_order(self, extra: tuple[str, ...] = ()) -> dict[str, list[_Logged]]:
        """Every message on the inventory and order topics (and ``extra``) by order id (its correlation id), in
        time order."""
        codec = registry_codec(SchemaCatalog.load(), self.settings)
        found: dict[str, list[_Logged]] = {}
        with EventConsumer.reader(self.settings) as consumer:
            for m in consumer.read_log([INVENTORY_COMMANDS.name, INVENTORY_EVENTS.name, ORDER_EVENTS.name, *extra]):
                headers = m.headers
                order_id = headers.get("ce_correlationid") or m.key or ""
                if order_id not in self.ordered:
                    continue
                try:
                    decoded = codec.decode(m.value or b"")
                    name, value = decoded.name, decoded.value
                except Exception as exc:  # noqa: BLE001 - report what cannot be read
                    name, value = f"undecodable {exc!r}", {}
                found.setdefault(order_id, []).append(
                    _Logged(m.timestamp_ms, m.topic, m.partition, m.offset, name, value, headers)
                )
        return {order_id: sorted(rows) for order_id, rows in found.items()}


@dataclass(frozen=True, order=True)
class _Logged:
    """One message about an order, as the log holds it."""

    timestamp_ms: int
    topic: str
    partition: int
    offset: int
    name: str
    value: dict[str, Any] = field(compare=False)
    headers: dict[str, str] = field(compare=False)

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"

    def __str__(self) -> str:
        detail = " ".join(f"{k}={self.value[k]}" for k in ("sku", "quantity", "requested", "reason") if k in self.value)
        ids = f"ce_id={self.headers.get('ce_id', '')[:8]} cause={self.headers.get('ce_causationid', '')[:8]}"
        return f"{_ts(self.timestamp_ms)} {self.where} {self.name} {detail} {ids}"


_ANSWERS = {"ReserveStock": "reserve_answer", "ReleaseStock": "release_answer", "CommitStock": "commit_answer"}


def _not_applied(logged: _Logged, reservation: Any, holds: dict[str, Any]) -> bool:
    """Whether the step that consumes ``logged`` shows no trace of it: the reservation step remembers every
    input it applied (``outputs``), the SKU step the answer it gave to each command."""
    if logged.topic == INVENTORY_COMMANDS.name:
        answer = _ANSWERS.get(logged.name)
        hold = holds.get(hold_key(str(logged.value.get("sku")), str(logged.value.get("order_id"))))
        return answer is not None and not (hold or {}).get(answer)
    if logged.name not in RESERVATION_INPUTS:
        return False
    sku = logged.value.get("sku")
    trigger = f"{logged.name}:{sku}" if sku is not None else logged.name
    return trigger not in ((reservation or {}).get("outputs") or {})


def _ts(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _latest(history: dict[str, list[tuple[int, int, int, Any]]]) -> dict[str, Any]:
    return {k: v[-1][3] for k, v in history.items() if v and v[-1][3] is not None}


def _regressions(history: list[tuple[int, int, int, Any]], version: Callable[[Any], int]) -> list[str]:
    """Records of one key whose version is not newer than the one before (state written from an old view)."""
    found = []
    previous: tuple[int, int, int, Any] | None = None
    for record in history:
        if previous is not None and record[3] is not None and previous[3] is not None:
            if version(record[3]) <= version(previous[3]):
                found.append(
                    f"@{previous[1]} v{version(previous[3])} -> @{record[1]} {_ts(record[2])} v{version(record[3])}"
                )
        previous = record
    return found


def _unanswered_versions(
    levels: list[tuple[int, int, int, Any]], holds: dict[str, list[tuple[int, int, int, Any]]], sku: str
) -> list[str]:
    """Versions of a SKU's levels that no stock addition and no order's hold accounts for.

    Every change of the levels is made by one command, and the hold of the order it served records the answer
    with the levels and version after it (an addition is recorded in the levels it changed, as their
    ``last_change``). A version no answer names is a levels write whose hold write was lost: a replay of that
    command then applies it again.
    """
    answered: set[int] = set()
    for key, history in holds.items():
        if key.startswith(f"{sku}/"):
            for _, _, _, hold in history:
                for answer in ("reserve_answer", "release_answer", "commit_answer"):
                    value = ((hold or {}).get(answer) or {}).get("value") or {}
                    if "stock_version" in value:
                        answered.add(int(value["stock_version"]))
    found = []
    previous: Any = None
    for _, offset, ts, record in levels:
        if not record:
            continue
        version = int(record.get("version", 0))
        added = {int(a["event"]["value"]["stock_version"]) for a in record.get("additions", [])}  # older shape
        if (addition := (record.get("last_change") or {}).get("addition")) is not None:
            added.add(int(addition[1]))  # [id, version, …]: the AddStock this levels record was written for
        if version not in answered and version not in added and (previous or {}).get("version") != version:
            before = {k: (previous or {}).get(k) for k in ("available", "reserved", "sold", "version")}
            after = {k: record.get(k) for k in ("available", "reserved", "sold", "version")}
            found.append(f"@{offset} {_ts(ts)} {before} -> {after}")
        previous = record
    return found


def _odd_hold(history: list[tuple[int, int, int, Any]]) -> bool:
    """A hold whose answers changed or vanished between two of its records, or that was reserved and then
    released with nothing given back: written from a state that had missed one of its records."""
    seen: dict[str, Any] = {}
    for _, _, _, value in history:
        for answer in ("reserve_answer", "release_answer", "commit_answer"):
            before, now = seen.get(answer), (value or {}).get(answer)
            if before is not None and now != before:
                return True
            seen[answer] = now if now is not None else before
    statuses = [(value or {}).get("status") for _, _, _, value in history]
    given_back = [_answer_quantity((value or {}).get("release_answer")) for _, _, _, value in history]
    return "RESERVED" in statuses and statuses[-1] == "RELEASED" and not any(given_back)


def _answer_quantity(answer: Any) -> int:
    """The quantity of a stored answer (``{"record": …, "value": {…}}``)."""
    return int(((answer or {}).get("value") or {}).get("quantity") or 0)


def _hold_summary(value: Any) -> str:
    if not value:
        return "(deleted)"
    answers = [a for a in ("reserve_answer", "release_answer", "commit_answer") if value.get(a)]
    return f"{value.get('status')} quantity {value.get('quantity')} answers {answers}"


def _reservation_summary(value: Any) -> str:
    if not value:
        return "(none)"
    lines = ", ".join(
        f"{line['sku'].rsplit('-', 1)[-1]}:{line['status']}/rel {line['release']}/commit {line['commit']}"
        for line in value.get("lines", [])
    )
    return (f"reserved={value.get('reserved')} verdict={value.get('verdict')} released={value.get('released')}"
            f" committed={value.get('committed')} [{lines}] inputs {sorted(value.get('outputs', {}))}")  # fmt: skip


def changelog_history(settings: Settings, service: str, name: str) -> dict[str, list[tuple[int, int, int, Any]]]:
    """Every record of a service's table changelog by key: (partition, offset, timestamp ms, value or None)."""
    history: dict[str, list[tuple[int, int, int, Any]]] = {}
    with EventConsumer.reader(settings) as consumer:
        for message in consumer.read_log([table(service, name).changelog]):
            key = json.loads(message.key or "null") if (message.key or "").startswith('"') else message.key
            value = json.loads(message.value) if message.value is not None else None
            history.setdefault(str(key), []).append((message.partition, message.offset, message.timestamp_ms, value))
    return history


def changelog(settings: Settings, service: str, name: str) -> dict[str, Any]:
    """A service's table as its changelog holds it: the newest value of every key."""
    latest: dict[str, Any] = {}
    with EventConsumer.reader(settings) as consumer:
        for message in consumer.read_log([table(service, name).changelog]):
            key = json.loads(message.key or "null") if (message.key or "").startswith('"') else message.key
            if message.value is None:
                latest.pop(str(key), None)
            else:
                latest[str(key)] = json.loads(message.value)
        assert not consumer.unfinished
    return latest


def dump_views(client: redis.Redis) -> dict[str, Any]:
    """Every view:* key by type, read independently of the code under test."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(match="view:*", count=1000):
        kind = client.type(key).decode()  # type: ignore[union-attr]
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            raise AssertionError(f"unexpected type {kind} of {key!r}")
        out[key.decode()] = (kind, value)
    return out


VIEWS_GROUP = app_id("views")


def views_whole(store: redis.Redis) -> bool:
    """Redis holds every view table partition: none is lost (flushed) or being re-mirrored."""
    return views_mirrored(store)


def wait_fully_projected(settings: Settings, alive: Callable[[], None], timeout: float = 300) -> None:
    """Wait until nothing more is written to the projected topics and the view service has read all of it: its
    group's committed offsets equal the end offsets (its own stock-lines topic included), which stay unchanged over
    three looks a second apart, and Redis holds every view partition."""
    store = redis.Redis.from_url(settings.redis_url)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": VIEWS_GROUP, "enable.auto.commit": False,
         "logger": logging.getLogger(LIBRDKAFKA_LOGGER)}
    )  # fmt: skip
    try:
        names = [t.name for t in (*PROJECTED_TOPICS, VIEWS_STOCK_LINES)]
        parts = [
            TopicPartition(n, p)
            for n in names
            for p in sorted(consumer.list_topics(n, timeout=10).topics[n].partitions)
        ]
        last: dict[tuple[str, int], int] | None = None
        streak = 0

        def quiet() -> bool:
            nonlocal last, streak
            alive()
            ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(parts, timeout=10)}
            caught_up = all(end == 0 or committed.get(tp, -1) >= end for tp, end in ends.items()) and views_whole(store)
            streak = streak + 1 if caught_up and ends == last else 0
            last = ends
            return streak >= 3

        wait_until(quiet, timeout=timeout, what="the projected topics quiet and fully projected", interval=1.0)
    finally:
        consumer.close()
        store.close()


def scratch_redis(settings: Settings, db: int = 5) -> redis.Redis:
    """An empty Redis database beside the query side's, to rebuild views into without touching the live ones."""
    client = redis.Redis.from_url(urlunsplit(urlsplit(settings.redis_url)._replace(path=f"/{db}")))
    client.flushdb()
    return client
