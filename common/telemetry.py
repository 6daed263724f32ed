"""Tracing and metrics, the same way in every process (gateway and workers, the view service's included).

**Tracing** is OpenTelemetry. The W3C ``traceparent`` travels in every Kafka message's headers (the envelope),
so one order is one trace: the gateway's request span is the parent of admission's step span, which is the
parent of every step its events cause, down to the last projection. Each process names itself as a service
(``order-pipeline-<name>``, or ``OTEL_SERVICE_NAME`` where set). The exporters are OpenTelemetry's standard
``OTEL_TRACES_EXPORTER`` (a comma-separated list), or ``PIPELINE_OTEL_EXPORTER`` where set, which wins:

* ``none`` (the default when neither is set): spans are made (ids travel on) but not exported;
* ``console``: spans printed as JSON on stdout;
* ``otlp``: OTLP over HTTP to ``PIPELINE_OTEL_ENDPOINT``, else where the SDK's ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` say (Jaeger, the OpenTelemetry collector…);
* ``zipkin``: Zipkin's JSON v2 API at ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` (the exporter's default:
  ``http://localhost:9411/api/v2/spans``);
* ``file:<path>``: one JSON line per finished span appended to ``<path>`` (the integration tests merge the
  files of every process and check the whole trace).

The SDK itself reads the rest of the standard variables: ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``
(the tracer provider's sampler), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*`` (the batch processor).

**Metrics** are Prometheus counters, histograms and gauges defined once here and served on ``/metrics`` by each
process's HTTP endpoint.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter, Gauge, Histogram

TRACER_NAME = "order-pipeline"
_PROPAGATOR = TraceContextTextMapPropagator()

# --- metrics -------------------------------------------------------------------------------------------------

EVENTS = Counter(
    "pipeline_events_total",
    "Messages an agent handled, by outcome: processed, dead_lettered, ignored, refused (a replay out of order), "
    "duplicate (an event id already parked for its key).",
    ["agent", "record", "outcome"],
)
STEP_SECONDS = Histogram(
    "pipeline_step_seconds",
    "Time an agent spent on one message: decide, effects, durable state, acknowledged events.",
    ["agent"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_MESSAGES = Histogram(
    "pipeline_batch_messages",
    "Messages an agent took together (those already fetched): a batch's writes and events share two produce "
    "requests, so larger batches under load cost the broker fewer requests per message.",
    ["agent"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
SAGA_OUTCOMES = Counter(
    "pipeline_saga_outcomes_total",
    "Orders that reached a terminal state, by outcome and reason.",
    ["outcome", "reason"],
)
CONSUMER_LAG = Gauge(
    "pipeline_consumer_lag",
    "Messages not yet committed by the worker's group, per source topic (as the broker sees it).",
    ["group", "topic"],
)
BREAKER_STATE = Gauge(
    "pipeline_circuit_breaker_state",
    "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
    ["breaker"],
)
DEAD_LETTER_DEPTH = Gauge(
    "pipeline_dead_letter_depth",
    "Messages parked per agent and source topic: dead letters and the later messages of their keys queued "
    "behind them, not yet released by a replay (partitions this worker holds).",
    ["agent", "topic"],
)
PARKED_KEYS = Gauge(
    "pipeline_parked_keys",
    "Keys an agent holds back behind a dead letter (partitions this worker holds).",
    ["agent"],
)
MAILS = Counter(
    "pipeline_mails_total",
    "Notices handed to the mail server, by kind and outcome: sent, or undeliverable (dead-lettered with the reason).",
    ["kind", "outcome"],
)
REGISTRY_WAITS = Counter(
    "pipeline_registry_waits_total",
    "Times an agent waited for the schema registry to look up a schema id it had not met (the registry was "
    "unreachable; the partition held, nothing was dead-lettered).",
    ["agent"],
)
VIEW_BATCHES = Counter("pipeline_view_batches_total", "Batches the view service folded, per agent.", ["agent"])
VIEW_REDIS_ROUND_TRIPS = Counter(
    "pipeline_view_redis_round_trips_total",
    "Round trips the view service made to Redis to mirror its tables (one MULTI/EXEC per batch that changed a view).",
)
VIEW_REDIS_COMMANDS = Counter("pipeline_view_redis_commands_total", "Redis writes the view service mirrored.")
HTTP_REQUESTS = Counter(
    "pipeline_http_requests_total", "Gateway requests by method, route and status.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram("pipeline_http_request_seconds", "Gateway request duration.", ["method", "route"])

# --- tracing -------------------------------------------------------------------------------------------------


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per finished span to a file (several processes may share a directory)."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_record(span), sort_keys=True) for span in spans]
        with self._lock, self._path.open("a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain JSON: ids in hex, times in ns, its service, attributes and status."""
    context = span.get_span_context()
    parent = span.parent
    return {
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
    }


def exporter_names(configured: str | None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters to install: ``PIPELINE_OTEL_EXPORTER`` (``configured``) where set, else the standard
    ``OTEL_TRACES_EXPORTER`` list, else none."""
    env = os.environ if environ is None else environ
    chosen = configured if configured else env.get("OTEL_TRACES_EXPORTER", "")
    names = [name.strip() for name in chosen.split(",") if name.strip() and name.strip() != "none"]
    return names


def setup_tracing(service: str, exporter: str | None = None, endpoint: str | None = None) -> TracerProvider:
    """Install this process's tracer provider with the configured exporters (see the module doc)."""
    name = os.environ.get("OTEL_SERVICE_NAME") or f"order-pipeline-{service}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    names = exporter_names(exporter)
    for chosen in names:
        provider.add_span_processor(_span_processor(chosen, endpoint))
    trace.set_tracer_provider(provider)
    global _EXPORTING
    _EXPORTING = bool(names)
    return provider


def _span_processor(exporter: str, endpoint: str | None) -> SpanProcessor:
    if exporter == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter())
    if exporter == "zipkin":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        return BatchSpanProcessor(ZipkinExporter())
    if exporter.startswith("file:"):
        return SimpleSpanProcessor(JsonLinesExporter(exporter.removeprefix("file:")))
    raise ValueError(f"unknown OpenTelemetry exporter {exporter!r}: none, console, otlp, zipkin or file:<path>")


_EXPORTING = False
"""Whether this process exports spans (:func:`setup_tracing` with an exporter other than ``none``)."""


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


@contextmanager
def consumer_span(
    name: str, traceparent: str | None, attributes: Callable[[], Mapping[str, str | int]]
) -> Iterator[Span]:
    """The span of handling one message, a child of the span that sent it (``traceparent``).

    A process that exports no spans starts none (an SDK span costs tens of microseconds even when dropped): it
    hands on the sender's span itself, non-recording, so what the message causes carries the sender's
    ``traceparent`` and the trace stays whole (and keeps its sampling decision) across this hop. ``attributes`` is
    only called for a recorded span."""
    if not _EXPORTING:
        parent = trace.get_current_span(context_from(traceparent)) if traceparent else trace.INVALID_SPAN
        yield trace.NonRecordingSpan(parent.get_span_context())
        return
    with tracer().start_as_current_span(
        name, context=context_from(traceparent), kind=SpanKind.CONSUMER, attributes=dict(attributes())
    ) as span:
        yield span


def context_from(traceparent: str | None) -> Context | None:
    """The remote parent a ``traceparent`` header names (None: start a new trace)."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def traceparent_of(span: Span) -> str | None:
    """The ``traceparent`` header that makes ``span`` the parent of what a message causes."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


class RepeatedRecords(logging.Filter):
    """Lets a log line through once per window: the first, then one with how many were held back meanwhile.

    A client that retries in a tight loop (aiokafka while the broker is away) would otherwise write the same
    line thousands of times a second, burying everything else in the log."""

    def __init__(self, window_s: float) -> None:
        super().__init__()
        self._window_s = window_s
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            since, held = self._seen.get(key, (0.0, 0))
            if since and now - since < self._window_s:
                self._seen[key] = (since, held + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # the keys are format strings: few, but never let them pile up
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._window_s}
        if held:
            record.msg = f"{record.msg} [{held} like it in the last {self._window_s:.0f}s not shown]"
        return True
