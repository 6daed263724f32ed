"""The observe profile's tools against the pipeline: one order is one trace in Zipkin, every service in Prometheus.

Zipkin and Prometheus run from the images infra/setup.sh provides (official where pullable, else built here:
Zipkin's jar on the Kafka image's JRE, Debian's prometheus). The workers and the gateway run as processes on the
host, each configured by OpenTelemetry's standard variables only (OTEL_TRACES_EXPORTER=zipkin and the endpoint),
and serving /metrics; Prometheus (on the host's network, listening on 127.0.0.1) scrapes each of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from common.admin import admin_client, apply_topics
from common.settings import Settings
from producers.toolkit import EventPublisher
from schemas.topics import INVENTORY_COMMANDS, SERVICES
from streams.views import read as views
from tests.gateway_support import random_secret
from tests.integration.test_gateway import Gateway, http, order_body, start_gateway, stop_gateway
from tests.seeding import register_users, uid
from tests.stack import LABEL, ROOT, KafkaNode, RedisNode, RegistryNode, free_port, wait_until
from tests.workers import Pipeline, running_pipeline

pytestmark = pytest.mark.timeout(1500)  # a first run on a fresh machine builds the two images
SAGA_SERVICES = {"gateway", "orders", "inventory", "payments", "notifications", "views"}
SAGA_SPANS = {
    "POST /api/orders", "admit_orders PlaceOrder", "reserve_inventory OrderPlaced", "keep_stock ReserveStock",
    "settle_payments InventoryReserved", "run_order_sagas PaymentSucceeded", "fold_order_views OrderConfirmed",
}  # fmt: skip
"""Spans of one confirmed order's trace, as test_gateway.py names them (Zipkin keeps names in lower case)."""


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 (a plain-text health page: not JSON)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return bool(response.status == 200)


def image(name: str) -> str:
    """The image infra/setup.sh provides for ``name`` (``setup.sh env``), built or pulled first."""
    built = subprocess.run([str(ROOT / "infra" / "setup.sh"), "observe"], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    names = subprocess.run([str(ROOT / "infra" / "setup.sh"), "env"], capture_output=True, text=True, check=True)
    found = dict(line.split("=", 1) for line in names.stdout.split())
    return os.environ.get(f"PIPELINE_{name.upper()}_IMAGE") or found[f"PIPELINE_{name.upper()}_IMAGE"]


@pytest.fixture(scope="module")
def settings(kafka: KafkaNode, redis_server: RedisNode, schema_registry: RegistryNode) -> Settings:
    return Settings(
        kafka_bootstrap=kafka.bootstrap,
        redis_url=redis_server.url,
        schema_registry_url=schema_registry.url,
        jwt_secret=random_secret(),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def zipkin() -> Iterator[str]:
    """Zipkin on a free port of 127.0.0.1; its base URL."""
    from testcontainers.core.container import DockerContainer

    port = free_port()
    container = DockerContainer(image("zipkin")).with_kwargs(labels={LABEL: str(os.getpid())})
    container.ports["9411/tcp"] = ("127.0.0.1", port)  # type: ignore[assignment]
    container.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/health"), timeout=120, what="Zipkin answering")
        yield url
    finally:
        container.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("observe")


def tracing(zipkin: str) -> dict[str, str]:
    """OpenTelemetry's own variables, as the observe profile sets them in compose.yaml."""
    return {"OTEL_TRACES_EXPORTER": "zipkin", "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"{zipkin}/api/v2/spans",
            "OTEL_BSP_SCHEDULE_DELAY": "200"}  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(settings: Settings, zipkin: str, workdir: Path) -> Iterator[Pipeline]:
    apply_topics(admin_client(settings), settings)
    with running_pipeline(settings, workdir, worker_http=True, **tracing(zipkin)) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(settings: Settings, pipeline: Pipeline, zipkin: str, workdir: Path) -> Iterator[Gateway]:
    running = start_gateway(settings, workdir, "gateway", **tracing(zipkin))
    yield running
    stop_gateway(running)


@pytest.fixture(scope="module")
def prometheus(pipeline: Pipeline, gateway: Gateway, workdir: Path) -> Iterator[str]:
    """Prometheus scraping every worker's and the gateway's /metrics on 127.0.0.1; its base URL."""
    from testcontainers.core.container import DockerContainer

    jobs = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}} for name, port in pipeline.http_ports.items()
    ]
    jobs.append({"targets": [gateway.url.removeprefix("http://")], "labels": {"service": "gateway"}})
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [{"job_name": "pipeline", "static_configs": jobs}]}
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    container = (
        DockerContainer(image("prometheus"))
        .with_kwargs(
            labels={LABEL: str(os.getpid())},
            network_mode="host",
            entrypoint=[
                "prometheus",
                "--config.file=/etc/observe/prometheus.yml",
                "--storage.tsdb.path=/tmp/prometheus",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
        )  # fmt: skip
        .with_volume_mapping(str(workdir / "prometheus.yml"), "/etc/observe/prometheus.yml", "ro")
    )
    container.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/-/ready"), timeout=120, what="Prometheus ready")
        yield url
    finally:
        container.stop()


@pytest.fixture(scope="module")
def confirmed_order(gateway: Gateway, pipeline: Pipeline, settings: Settings) -> str:
    """An order placed through the gateway by a newly registered customer, once it is confirmed: its id."""
    from schemas.catalog import SchemaCatalog

    store = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    user, sku = uid("u"), uid("sku")
    with EventPublisher.from_settings(settings, SchemaCatalog.load()) as publisher:
        register_users(publisher, store, [user], alive=pipeline.assert_alive)
        publisher.publish(INVENTORY_COMMANDS, "AddStock", sku, {"sku": sku, "quantity": 5, "reason": "test"})
        publisher.flush()
    wait_until(lambda: (views.stock(store, sku) or {}).get("available") == 5, timeout=60, what=f"stock of {sku}")
    placed = gateway.send("POST", "/api/orders", order_body(sku), subject=user)
    assert placed.status == 202, placed.body
    order_id: str = placed.body["order_id"]
    done = gateway.get(f"/api/orders/{order_id}?wait_for=terminal", subject=user)
    assert done.body["status"] == "CONFIRMED", done.body
    return order_id


def test_an_order_placed_through_the_gateway_is_one_trace_in_zipkin_across_every_service(
    confirmed_order: str, pipeline: Pipeline, zipkin: str
) -> None:
    order_id = confirmed_order
    # the saga's hops are keyed by the order id: find the traces holding a span with that key
    query = urllib.parse.urlencode(
        {"annotationQuery": f"messaging.kafka.message.key={order_id}", "limit": 100, "lookback": 3_600_000}
    )
    seen: dict[str, Any] = {}

    def whole_trace() -> bool:
        pipeline.assert_alive()
        traces = http("GET", f"{zipkin}/api/v2/traces?{query}").body
        seen["traces"] = traces
        names = {span["name"] for trace in traces for span in trace}
        return {name.lower() for name in SAGA_SPANS} <= names

    def described() -> str:
        traces = seen.get("traces") or []
        names = {span["name"] for trace in traces for span in trace}
        return f"the order's trace (traces: {len(traces)}, missing {sorted({n.lower() for n in SAGA_SPANS} - names)})"

    wait_until(whole_trace, timeout=60, what=described, interval=0.5)
    [trace] = seen["traces"]
    assert len({span["traceId"] for span in trace}) == 1
    services = {span.get("localEndpoint", {}).get("serviceName") for span in trace}
    assert services >= {f"order-pipeline-{service}" for service in SAGA_SERVICES}, sorted(services)


def test_prometheus_scrapes_pipeline_events_total_of_every_service(
    confirmed_order: str, prometheus: str, pipeline: Pipeline
) -> None:
    query = urllib.parse.urlencode({"query": "count by (service) (pipeline_events_total)"})
    seen: dict[str, Any] = {}

    def every_service() -> bool:
        pipeline.assert_alive()
        answer = http("GET", f"{prometheus}/api/v1/query?{query}").body
        seen["services"] = {row["metric"].get("service") for row in answer["data"]["result"]}
        return set(SERVICES) <= seen["services"]

    wait_until(every_service, timeout=90, what=lambda: f"pipeline_events_total of {sorted(SERVICES)} "
               f"(have {sorted(seen.get('services') or [])})", interval=0.5)  # fmt: skip
    up = http("GET", f"{prometheus}/api/v1/query?query=up").body["data"]["result"]
    assert {row["metric"]["service"] for row in up if row["value"][1] == "1"} == {*pipeline.http_ports, "gateway"}
