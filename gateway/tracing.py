"""W3C trace context (``traceparent``) for the gateway: continue the caller's trace or start one per request.

The gateway is a span of its own: it keeps the caller's trace id and flags, takes a fresh span id, and hands
that ``traceparent`` on in the Kafka headers of every command it publishes, so an order is one trace from the
HTTP request to the saga's last step.

OpenTelemetry's W3C propagator (``TraceContextTextMapPropagator``) reads and writes the header, the same one
:mod:`common.telemetry` uses for Kafka headers, so the gateway and the workers agree on what a valid header is:
an absent or invalid one (another shape, version ``ff``, all-zero ids, extra fields on version ``00``) names no
parent, and the request starts a new trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    format_span_id,
    format_trace_id,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_IDS = RandomIdGenerator()
_HEADER = "traceparent"
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


@dataclass(frozen=True)
class TraceContext:
    """One request's place in a trace: the gateway's span, and the caller's span it continues (if any)."""

    span: SpanContext
    parent: SpanContext | None = None

    @property
    def trace_id(self) -> str:
        return format_trace_id(self.span.trace_id)

    @property
    def span_id(self) -> str:
        return format_span_id(self.span.span_id)

    @property
    def parent_span_id(self) -> str | None:
        return None if self.parent is None else format_span_id(self.parent.span_id)

    @property
    def traceparent(self) -> str:
        return format_traceparent(self.span)

    def parent_context(self) -> Context | None:
        """The caller's span as an OpenTelemetry parent (None: the gateway's span starts a new trace)."""
        return None if self.parent is None else set_span_in_context(NonRecordingSpan(self.parent))

    def carried_by(self, span: SpanContext) -> TraceContext:
        """The same request with ``span`` (the gateway's own, when OpenTelemetry records it) as its span."""
        return TraceContext(span, self.parent)

    @classmethod
    def from_header(cls, header: str | None) -> TraceContext:
        """The caller's trace continued with a new span, or a new trace when the header is absent or invalid."""
        parent = parse_traceparent(header)
        if parent is None:
            span = SpanContext(_IDS.generate_trace_id(), _IDS.generate_span_id(), is_remote=False, trace_flags=_SAMPLED)
            return cls(span)
        span = SpanContext(parent.trace_id, _IDS.generate_span_id(), is_remote=False, trace_flags=parent.trace_flags)
        return cls(span, parent)


def parse_traceparent(header: str | None) -> SpanContext | None:
    """The caller's span a valid ``traceparent`` header names, else None (W3C Trace Context §3.2)."""
    if not header:
        return None
    span = get_current_span(_PROPAGATOR.extract({_HEADER: header})).get_span_context()
    return span if span.is_valid else None


def format_traceparent(span: SpanContext) -> str:
    """``span`` as a ``traceparent`` header (version ``00``)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, set_span_in_context(NonRecordingSpan(span)))
    return carrier[_HEADER]
