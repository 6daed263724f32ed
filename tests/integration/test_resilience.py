"""The payment provider goes down: the circuit breaker opens, charges wait visibly as PAYMENT_PENDING and are
retried when the provider is back, or cancelled (nothing charged) when the saga's deadline comes first."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Producer

from common.admin import admin_client, apply_topics
from common.encoding import registry_codec
from common.envelope import dead_letter_headers
from common.settings import Settings
from producers.toolkit import EventPublisher, producer_config
from schemas.catalog import SchemaCatalog
from schemas.codec import AvroCodec
from schemas.topics import INVENTORY_COMMANDS, INVENTORY_EVENTS, ORDER_COMMANDS, PAYMENT_COMMANDS, TOPICS
from schemas.topics import topic as topic_by_name
from streams.incoming import key_partition
from streams.payment_provider import LEDGER
from streams.stores import answer_key
from streams.views import read as views
from tests.integration.promises import changelog_history
from tests.seeding import register_users, uid
from tests.stack import wait_until
from tests.workers import Pipeline, run_cli, running_pipeline

SAGA_TIMEOUT_S = 15


@pytest.fixture(scope="module")
def pipeline(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(
        settings,
        tmp_path_factory.mktemp("resilience"),
        worker_http=True,
        PIPELINE_SAGA_TIMEOUT_S=str(SAGA_TIMEOUT_S),
        PIPELINE_BREAKER_FAILURE_THRESHOLD="2",
        PIPELINE_BREAKER_RESET_S="1",
        PIPELINE_PAYMENT_RETRY_INTERVAL_S="0.5",
        PIPELINE_PROVIDER_RETRY_BASE_S="0.02",
    ) as running:
        yield running


def outage(cli_env: dict[str, str], state: str) -> None:
    switched = run_cli(cli_env, "provider", "outage", state)
    assert switched.returncode == 0, switched.stderr


def order_for_a_new_customer(
    pipeline: Pipeline,
    publisher: EventPublisher,
    store: redis.Redis,
    before_placing: Callable[[str], object] = lambda order_id: None,
) -> tuple[str, str]:
    """A new customer and a new SKU of 5 units, then an order of 2 (``before_placing`` runs just before)."""
    user, sku, order_id = uid("u"), uid("sku"), uid("o")
    register_users(publisher, store, [user], alive=pipeline.assert_alive)
    publisher.publish(INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": 5, "reason": "test"})
    publisher.flush()
    wait_until(lambda: views.stock(store, sku) is not None, timeout=60, what=f"stock of {sku}")
    before_placing(order_id)
    publisher.publish(ORDER_COMMANDS, "PlaceOrder", user,
                      {"order_id": order_id, "user_id": user,
                       "lines": [{"sku": sku, "quantity": 2, "unit_price_cents": 900}],
                       "payment": {"method": "card", "token": "tok_ok"}, "idempotency_key": order_id,
                       "requested_at": int(time.time() * 1000)})  # fmt: skip
    publisher.flush()
    return order_id, sku


def wait_status(
    pipeline: Pipeline, store: redis.Redis, order_id: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        pipeline.assert_alive()
        seen["view"] = views.get_order(store, order_id) or {}
        return seen["view"].get("status") == status

    wait_until(check, timeout=timeout, what=lambda: f"{order_id} {status} (now {seen.get('view', {}).get('status')})")
    return seen["view"]


def test_charges_wait_while_the_provider_is_down_and_go_through_once_it_is_back(
    pipeline: Pipeline,
    publisher: EventPublisher,
    store: redis.Redis,
    provider_ledger: redis.Redis,
    cli_env: dict[str, str],
) -> None:
    outage(cli_env, "on")
    try:
        order_id, sku = order_for_a_new_customer(pipeline, publisher, store)
        pending = wait_status(pipeline, store, order_id, "PAYMENT_PENDING")
        assert provider_ledger.hget(LEDGER, order_id) is None, "nothing charged while the provider is down"
        assert [e["event"] for e in pending["timeline"]].count("PaymentPending") == 1
    finally:
        outage(cli_env, "off")
    confirmed = wait_status(pipeline, store, order_id, "CONFIRMED")
    assert json.loads(provider_ledger.hget(LEDGER, order_id) or b"{}")["status"] == "charged"  # type: ignore[arg-type]
    assert confirmed["charged_cents"] == 1800, "charged exactly once"
    wait_until(lambda: (views.stock(store, sku) or {}).get("sold") == 2, timeout=30, what="sold")


def test_a_charge_still_waiting_at_the_deadline_is_cancelled_with_nothing_charged(
    pipeline: Pipeline,
    publisher: EventPublisher,
    store: redis.Redis,
    provider_ledger: redis.Redis,
    cli_env: dict[str, str],
) -> None:
    outage(cli_env, "on")
    try:
        order_id, sku = order_for_a_new_customer(pipeline, publisher, store)
        wait_status(pipeline, store, order_id, "PAYMENT_PENDING")
        cancelled = wait_status(pipeline, store, order_id, "CANCELLED", timeout=SAGA_TIMEOUT_S + 60)
    finally:
        outage(cli_env, "off")
    assert cancelled["cancel_reason"] == "deadline_exceeded"
    assert provider_ledger.hget(LEDGER, order_id) is None and cancelled["charged_cents"] == 0
    wait_until(lambda: (views.stock(store, sku) or {}).get("available") == 5, timeout=30,
               what="the reservation released")  # fmt: skip


# --- poison messages and dead letters -----------------------------------------------------------------------

KCAT = shutil.which("kcat") or "kcat"
CONSUMED_TOPICS = sorted(spec.name for spec in TOPICS if spec.dead_letter)
"""Every topic someone consumes has a dead-letter topic (users.snapshots.v1, read only to load, has none)."""


def kcat_produce(bootstrap: str, topic: str, key: str, payload: bytes, workdir: Path) -> None:
    """One message, as a person would send it: kcat with a file argument sends the file's bytes as one message,
    keyed as the pipeline keys (murmur2; kcat's own CRC32 would put it off its key's partition, refused for that)."""
    path = workdir / f"{key}.bin"
    path.write_bytes(payload)
    subprocess.run([KCAT, "-b", bootstrap, "-P", "-t", topic, "-k", key, "-X", "topic.partitioner=murmur2_random",
                    str(path)], capture_output=True, timeout=60, check=True)  # fmt: skip


def poison(codec: AvroCodec) -> dict[str, tuple[bytes, tuple[str, ...]]]:
    """Four kinds of bad bytes, each with the decode errors it may be parked with (a truncated AddStock on a
    topic that does not carry AddStock is refused for its record before its body is read)."""
    good = codec.encode("AddStock", {"sku": "s", "quantity": 1, "reason": "x"})
    return {
        "garbage": (b"\xffnot avro at all", ("NotConfluentFramed",)),
        "truncated": (good[: len(good) - 3], ("CorruptPayload", "UnexpectedRecord")),
        "single-object": (b"\xc3\x01" + bytes(range(8)) + good[5:], ("NotConfluentFramed",)),
        "unknown-schema-id": (b"\x00\x7f\xff\xff\xff" + good[5:], ("UnknownSchemaId",)),
    }


def test_poison_in_every_consumed_topic_is_dead_lettered_and_orders_still_complete(
    pipeline: Pipeline,
    publisher: EventPublisher,
    store: redis.Redis,
    settings: Settings,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:6]
    codec = registry_codec(SchemaCatalog.load(), settings)
    kinds = poison(codec)
    for topic_name in CONSUMED_TOPICS:
        for kind, (payload, _) in kinds.items():
            kcat_produce(settings.kafka_bootstrap, topic_name, f"poison-{run}-{kind}", payload, tmp_path)

    order_id, _ = order_for_a_new_customer(pipeline, publisher, store)
    wait_status(pipeline, store, order_id, "CONFIRMED")

    def parked() -> dict[tuple[str, str], set[str]]:
        listed = run_cli(cli_env, "dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        found: dict[tuple[str, str], set[str]] = {}
        for line in listed.stdout.splitlines():
            letter = json.loads(line)
            if letter["key"].startswith(f"poison-{run}-"):
                source = letter["source"].rsplit(":", 2)[0]
                found.setdefault((source, letter["key"].removeprefix(f"poison-{run}-")), set()).add(letter["error"])
        return found

    expected = {(t, kind) for t in CONSUMED_TOPICS for kind in kinds}
    wait_until(lambda: expected <= set(parked()), timeout=90,
               what=lambda: f"dead letters missing: {sorted(expected - set(parked()))}")  # fmt: skip
    for (topic_name, kind), errors in parked().items():
        assert all(error.startswith(kinds[kind][1]) for error in errors), (topic_name, kind, errors)
        if kind == "truncated" and "AddStock" in topic_by_name(topic_name).records:
            assert all(error.startswith("CorruptPayload") for error in errors), (topic_name, errors)

    # bytes no fix will make readable park their key for good, unless an operator gives up on them
    def garbage_status() -> set[str]:
        listed = run_cli(cli_env, "dlq", "list", INVENTORY_COMMANDS.name, "--json")
        return {e["status"] for line in listed.stdout.splitlines()
                if (e := json.loads(line))["key"] == f"poison-{run}-garbage"}  # fmt: skip

    assert garbage_status() and "released" not in garbage_status(), "the garbage's key waits on it"
    listed = run_cli(cli_env, "dlq", "list", INVENTORY_COMMANDS.name, "--json")
    [at] = {e["position"].split(":", 1)[1] for line in listed.stdout.splitlines()
            if (e := json.loads(line))["key"] == f"poison-{run}-garbage"}  # fmt: skip
    discarded = run_cli(cli_env, "dlq", "discard", INVENTORY_COMMANDS.name, "--at", at)
    assert discarded.returncode == 0 and "sent 1 discard" in discarded.stdout, discarded.stderr
    wait_until(lambda: garbage_status() == {"released"}, timeout=60,
               what=lambda: f"the garbage's key released (statuses: {garbage_status()})")  # fmt: skip


def test_a_dead_letter_is_replayed_to_its_source_once_asked(
    pipeline: Pipeline, settings: Settings, store: redis.Redis, cli_env: dict[str, str]
) -> None:
    sku = uid("sku")
    codec = registry_codec(SchemaCatalog.load(), settings)
    parked_value = codec.encode("AddStock", {"sku": sku, "quantity": 7, "reason": "restock"})
    # a message parked earlier (say while a bug was being fixed), with the headers an agent writes
    partition = key_partition(sku.encode(), INVENTORY_COMMANDS.partitions)  # where an agent would have read it
    headers = dead_letter_headers(
        [], topic=INVENTORY_COMMANDS.name, partition=partition, offset=0,
        error="RuntimeError in keep_stock: fixed since", agent="keep_stock", attempts=1,
    )  # fmt: skip
    raw = Producer(producer_config(settings))  # the toolkit's settings: acks=all, murmur2 partitioner
    raw.produce(INVENTORY_COMMANDS.dead_letter_name, key=sku.encode(), value=parked_value, headers=headers)
    assert raw.flush(30) == 0
    letters = [json.loads(line) for line in run_cli(cli_env, "dlq", "list", INVENTORY_COMMANDS.name, "--json")
               .stdout.splitlines()]  # fmt: skip
    [letter] = [entry for entry in letters if entry["key"] == sku]
    at = letter["position"].split(":", 1)[1]  # PARTITION:OFFSET

    refused = run_cli(cli_env, "dlq", "replay", INVENTORY_COMMANDS.name)
    assert refused.returncode != 0 and "--at" in refused.stderr, "nothing chosen: nothing replayed"
    dry = run_cli(cli_env, "dlq", "replay", INVENTORY_COMMANDS.name, "--at", at, "--dry-run")
    assert dry.returncode == 0 and "would replay" in dry.stdout
    assert views.stock(store, sku) is None
    replayed = run_cli(cli_env, "dlq", "replay", INVENTORY_COMMANDS.name, "--at", at)
    assert replayed.returncode == 0 and "replayed 1 message" in replayed.stdout, replayed.stderr
    wait_until(lambda: (views.stock(store, sku) or {}).get("available") == 7, timeout=60, what="replayed stock")


# --- a dead letter parks its key -----------------------------------------------------------------------------


def letters_of(cli_env: dict[str, str], key: str) -> list[dict[str, Any]]:
    listed = run_cli(cli_env, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [entry for line in listed.stdout.splitlines() if (entry := json.loads(line))["key"] == key]


def dead_letter_depth(pipeline: Pipeline, agent: str) -> float:
    """The payments worker's ``pipeline_dead_letter_depth`` of ``agent``, summed over source topics."""
    port = pipeline.http_ports["payments"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    prefix = f'pipeline_dead_letter_depth{{agent="{agent}",'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_a_dead_letter_parks_its_key_until_replays_release_it_in_order(
    pipeline: Pipeline,
    publisher: EventPublisher,
    store: redis.Redis,
    provider_ledger: redis.Redis,
    cli_env: dict[str, str],
) -> None:
    """The provider holds a corrupt record for one order: its charge raises, so settle_payments parks the order's
    key; a later message of that order waits behind it while other orders complete; once the record is mended,
    ``pipeline dlq replay --key`` hands the order's messages over in their order and the order ends."""
    depths: list[float] = []

    def corrupt_the_providers_record(order_id: str) -> None:
        depths.append(dead_letter_depth(pipeline, "settle_payments"))  # keys other tests parked (poison) stay parked
        provider_ledger.hset(LEDGER, order_id, "{corrupt")  # the provider's record of this order: its charge raises

    order_id, sku = order_for_a_new_customer(pipeline, publisher, store, before_placing=corrupt_the_providers_record)
    [baseline] = depths

    def parked_head() -> dict[str, Any] | None:
        return next((e for e in letters_of(cli_env, order_id) if e["status"].startswith("head of settle_payments")),
                    None)  # fmt: skip

    wait_until(lambda: parked_head() is not None, timeout=90, what=f"{order_id}'s charge parked with its key")
    head = parked_head()
    assert head is not None and head["source"].startswith((INVENTORY_EVENTS.name, "orders.events.v1")), head
    assert head["error"].startswith("JSONDecodeError in settle_payments") and head["attempts"] == 3, head

    publisher.publish(PAYMENT_COMMANDS, "RetryPayment", order_id,
                      {"order_id": order_id, "requested_at": int(time.time() * 1000)})  # fmt: skip
    publisher.flush()

    def parked_behind() -> list[dict[str, Any]]:
        return [e for e in letters_of(cli_env, order_id) if e["parked_behind"] == head["origin"]]

    wait_until(lambda: any(e["source"].startswith(PAYMENT_COMMANDS.name) for e in parked_behind()), timeout=60,
               what="the order's later message parked behind its head")  # fmt: skip
    behind = next(e for e in parked_behind() if e["source"].startswith(PAYMENT_COMMANDS.name))
    assert behind["error"].startswith(f"parked behind {head['origin'].rsplit(':', 2)[0]}[") and (
        behind["agent"] == "settle_payments"
    ), behind
    assert behind["status"].startswith("#") and "settle_payments" in behind["status"], behind
    assert dead_letter_depth(pipeline, "settle_payments") >= baseline + 2

    other, _ = order_for_a_new_customer(pipeline, publisher, store)
    wait_status(pipeline, store, other, "CONFIRMED")  # every other key flows on
    assert provider_ledger.hget(LEDGER, order_id) == b"{corrupt", "nothing of the parked order was charged meanwhile"

    provider_ledger.hdel(LEDGER, order_id)  # mended
    replayed_at = [0.0]

    def released() -> bool:
        pipeline.assert_alive()
        letters = letters_of(cli_env, order_id)
        if all(e["status"] == "released" for e in letters):
            return True
        if time.monotonic() - replayed_at[0] > 15:  # a replay seen before its key's head was refused: again
            replay = run_cli(cli_env, "dlq", "replay", "--key", order_id)
            assert replay.returncode == 0, replay.stderr
            replayed_at[0] = time.monotonic()
        return False

    wait_until(released, timeout=120, what=lambda: f"{order_id} released: {letters_of(cli_env, order_id)}",
               interval=2)  # fmt: skip
    final: dict[str, Any] = {}

    def terminal() -> bool:
        final.update(views.get_order(store, order_id) or {})
        return final.get("status") in {"CONFIRMED", "CANCELLED"} and (
            final["status"] == "CONFIRMED" or final.get("refunded_cents") == final.get("charged_cents")
        )

    wait_until(terminal, timeout=60, what=lambda: f"{order_id} terminal (now {final.get('status')})")
    charge = json.loads(provider_ledger.hget(LEDGER, order_id) or b"{}")  # type: ignore[arg-type]
    assert charge["status"] in {"charged", "refunded"} and final["charged_cents"] == 1800, (charge, final)
    events = [entry["event"] for entry in final["timeline"]]
    assert events.count("PaymentSucceeded") == 1, events
    if "PaymentRefunded" in events:  # its deadline passed while it was parked: the late charge is refunded
        assert events.index("PaymentSucceeded") < events.index("PaymentRefunded"), events
    wait_until(lambda: dead_letter_depth(pipeline, "settle_payments") == baseline, timeout=30,
               what="the dead-letter depth back where it was")  # fmt: skip


# --- the key contract ----------------------------------------------------------------------------------------


def test_records_without_their_key_or_off_their_key_s_partition_are_dead_lettered_and_change_nothing(
    pipeline: Pipeline, publisher: EventPublisher, store: redis.Redis, settings: Settings, cli_env: dict[str, str]
) -> None:
    """A valid PlaceOrder sent with no key, and one sent on another partition than its customer's (what plain
    kcat's CRC32 does), are both dead-lettered by admission with their reasons; the customer's record stays on
    its one changelog partition without them, and the customer's next order, keyed as the contract says, goes
    through."""
    user, sku = uid("u"), uid("sku")
    order_ids = {kind: uid(f"o-{kind}") for kind in ("unkeyed", "misplaced", "keyed")}
    register_users(publisher, store, [user], alive=pipeline.assert_alive)
    publisher.publish(INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": 5, "reason": "test"})
    publisher.flush()
    wait_until(lambda: views.stock(store, sku) is not None, timeout=60, what=f"stock of {sku}")

    codec = registry_codec(SchemaCatalog.load(), settings)
    home = key_partition(user.encode(), ORDER_COMMANDS.partitions)
    wrong = (home + 1) % ORDER_COMMANDS.partitions

    def place(kind: str, quantity: int) -> bytes:
        return codec.encode("PlaceOrder", {
            "order_id": order_ids[kind], "user_id": user, "lines": [{"sku": sku, "quantity": quantity,
            "unit_price_cents": 900}], "payment": {"method": "card", "token": "tok_ok"},
            "idempotency_key": order_ids[kind], "requested_at": int(time.time() * 1000)})  # fmt: skip

    landed: dict[str, tuple[int, int]] = {}

    def delivered(kind: str) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            assert err is None, err
            landed[kind] = (msg.partition(), msg.offset())

        return report

    # as a person with a raw producer (or kcat) would send them: no envelope, one without a key on the customer's
    # own partition, one keyed by the customer on another partition, then one the way every producer here sends
    raw = Producer(producer_config(settings))  # the toolkit's settings: acks=all, murmur2 partitioner
    raw.produce(ORDER_COMMANDS.name, value=place("unkeyed", 1), partition=home, on_delivery=delivered("unkeyed"))
    raw.produce(ORDER_COMMANDS.name, key=user.encode(), value=place("misplaced", 1), partition=wrong,
                on_delivery=delivered("misplaced"))  # fmt: skip
    raw.produce(ORDER_COMMANDS.name, key=user.encode(), value=place("keyed", 2), on_delivery=delivered("keyed"))
    assert raw.flush(30) == 0 and len(landed) == 3
    assert landed["keyed"][0] == home, "confluent-kafka's murmur2_random puts the key where the check expects it"

    expected = {
        "unkeyed": f"missing key: {ORDER_COMMANDS.name} is keyed by user_id",
        "misplaced": f"wrong partition {wrong} for key {user!r}, expected {home}",
    }
    origins = {kind: f"{ORDER_COMMANDS.name}:{landed[kind][0]}:{landed[kind][1]}" for kind in expected}

    def letters() -> dict[str, dict[str, Any]]:
        listed = run_cli(cli_env, "dlq", "list", ORDER_COMMANDS.name, "--json")
        assert listed.returncode == 0, listed.stderr
        found = {json.loads(line)["origin"]: json.loads(line) for line in listed.stdout.splitlines()}
        return {kind: found[origin] for kind, origin in origins.items() if origin in found}

    wait_until(lambda: letters().keys() == expected.keys(), timeout=60,
               what=lambda: f"both dead-lettered (so far {sorted(letters())})")  # fmt: skip
    for kind, letter in letters().items():
        assert (letter["error"], letter["agent"]) == (expected[kind], "admit_orders"), letter
        assert letter["status"] == "released", f"nothing waits on it, no key parked: {letter}"
    wait_status(pipeline, store, order_ids["keyed"], "CONFIRMED")
    wait_until(lambda: (views.stock(store, sku) or {}).get("sold") == 2, timeout=30, what="the keyed order's sale")

    # the customer's state: one changelog partition, never told of the refused orders; nothing else of them
    # (admission keeps the customer under the user id and each order's answer under its own key)
    tables = changelog_history(settings, "orders", "orders_customers")
    mine = {key: history for key, history in tables.items() if key == user or key.startswith(f"{user}/")}
    assert {partition for history in mine.values() for partition, *_ in history} == {home}, mine
    assert answer_key(user, order_ids["keyed"]) in mine, sorted(mine)
    assert not any(
        order_ids[kind] in key or order_ids[kind] in json.dumps(value)
        for kind in expected
        for key, history in mine.items()
        for *_, value in history
    ), mine
    assert all(views.get_order(store, order_ids[kind]) is None for kind in expected), "no view of a refused order"
    stock = views.stock(store, sku) or {}
    assert (stock.get("available"), stock.get("reserved"), stock.get("sold")) == (3, 0, 2), stock
