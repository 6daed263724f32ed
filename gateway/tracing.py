"""W3C trace context (``traceparent``) for the gateway: continue the caller's trace or start one per request.

The gateway is a span of its own: it keeps the caller's trace id and flags, takes a fresh span id, and hands
that ``traceparent`` on in the Kafka headers of every command it publishes, so an order is one trace from the
HTTP request to the saga's last step.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16


@dataclass(frozen=True)
class TraceContext:
    """One request's place in a trace."""

    trace_id: str
    span_id: str
    flags: str = "01"
    parent_span_id: str | None = None

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @classmethod
    def from_header(cls, header: str | None) -> TraceContext:
        """The caller's trace continued with a new span, or a new trace when the header is absent or invalid."""
        parent = parse_traceparent(header)
        if parent is None:
            return cls(trace_id=_new_id(16, _INVALID_TRACE_ID), span_id=_new_id(8, _INVALID_SPAN_ID))
        trace_id, parent_span, flags = parent
        return cls(trace_id=trace_id, span_id=_new_id(8, _INVALID_SPAN_ID), flags=flags, parent_span_id=parent_span)


def parse_traceparent(header: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_span_id, flags)`` of a valid ``traceparent`` header, else None.

    Version ``ff`` and all-zero ids are invalid (W3C Trace Context §3.2); a future version's extra fields are
    ignored, as the spec asks.
    """
    if not header:
        return None
    match = _TRACEPARENT.match(header.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _INVALID_TRACE_ID or span_id == _INVALID_SPAN_ID:
        return None
    if version == "00" and len(header.strip()) != 55:
        return None
    return trace_id, span_id, flags


def _new_id(size: int, invalid: str) -> str:
    while True:
        value = secrets.token_hex(size)
        if value != invalid:
            return value
