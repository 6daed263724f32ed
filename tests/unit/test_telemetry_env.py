"""Tracing set up from OpenTelemetry's standard variables: spans reach the exporter's endpoint the variables name."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from common import telemetry
from common.telemetry import exporter_names, setup_tracing

pytestmark = pytest.mark.unit


class Collector:
    """An HTTP server on 127.0.0.1 that keeps every POST it is sent: (path, content type, body)."""

    def __init__(self) -> None:
        received: list[tuple[str, str, bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    monkeypatch.setattr(telemetry, "_EXPORTING", False)  # setup_tracing sets it; leave it as it was
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "PIPELINE_OTEL_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    server = Collector()
    yield server
    server.server.shutdown()


def test_the_pipelines_own_variable_wins_over_the_standard_one() -> None:
    assert exporter_names("file:/tmp/x", {"OTEL_TRACES_EXPORTER": "zipkin"}) == ["file:/tmp/x"]
    assert exporter_names(None, {"OTEL_TRACES_EXPORTER": "zipkin, otlp"}) == ["zipkin", "otlp"]
    assert exporter_names(None, {"OTEL_TRACES_EXPORTER": "none"}) == []
    assert exporter_names(None, {}) == []


def test_otel_traces_exporter_zipkin_sends_spans_to_otel_exporter_zipkin_endpoint(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", f"{collector.url}/api/v2/spans")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders-under-test")
    provider = setup_tracing("orders")
    with provider.get_tracer("test").start_as_current_span("admit"):
        pass
    assert provider.force_flush(10_000)
    provider.shutdown()
    [(path, _, body)] = collector.received
    [span] = json.loads(body)
    assert path == "/api/v2/spans"
    assert (span["name"], span["localEndpoint"]["serviceName"]) == ("admit", "orders-under-test")
    assert telemetry._EXPORTING


def test_otel_traces_exporter_otlp_sends_spans_to_otel_exporter_otlp_endpoint(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    provider = setup_tracing("payments")
    with provider.get_tracer("test").start_as_current_span("settle"):
        pass
    assert provider.force_flush(10_000)
    provider.shutdown()
    [(path, content_type, body)] = collector.received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    assert b"settle" in body and b"order-pipeline-payments" in body


def test_otel_traces_sampler_is_the_providers_sampler(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert setup_tracing("views").sampler is ALWAYS_OFF
    assert not telemetry._EXPORTING, "no exporter named: spans are made but not exported"


def test_an_unknown_exporter_is_refused(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger-thrift")
    with pytest.raises(ValueError, match="jaeger-thrift"):
        setup_tracing("gateway")
