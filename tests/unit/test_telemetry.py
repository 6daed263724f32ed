"""Telemetry helpers that need no exporter: the log filter for clients that retry in a tight loop."""

from __future__ import annotations

import logging

import pytest

from common.telemetry import RepeatedRecords

pytestmark = pytest.mark.unit


def test_a_line_logged_in_a_tight_loop_comes_through_once_per_window() -> None:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("test.repeated")
    logger.propagate = False
    logger.addHandler(Keep())
    repeats = RepeatedRecords(window_s=60)
    logger.addFilter(repeats)
    for _ in range(500):
        logger.error("Unable connect to node with id %s", 1)
    logger.error("something else")
    assert seen == ["Unable connect to node with id 1", "something else"]
    repeats._seen = {k: (v[0] - 61, v[1]) for k, v in repeats._seen.items()}  # the window has passed
    logger.error("Unable connect to node with id %s", 1)
    assert seen[-1] == "Unable connect to node with id 1 [499 like it in the last 60s not shown]"


def test_a_process_that_exports_no_spans_hands_on_the_senders_span_and_starts_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from common import telemetry

    sender = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    asked: list[str] = []

    def attributes() -> dict[str, str | int]:
        asked.append("asked")
        return {"pipeline.event_id": "e-1"}

    monkeypatch.setattr(telemetry, "_EXPORTING", False)
    with telemetry.consumer_span("step", sender, attributes) as span:
        assert not span.is_recording() and asked == []
        assert telemetry.traceparent_of(span) == sender, "what the message causes continues the sender's trace"
    with telemetry.consumer_span("step", None, attributes) as span:
        assert telemetry.traceparent_of(span) is None

    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setattr(telemetry, "_EXPORTING", True)
    monkeypatch.setattr(telemetry, "tracer", lambda: TracerProvider().get_tracer("test"))
    with telemetry.consumer_span("step", sender, attributes) as span:
        assert span.is_recording() and asked == ["asked"]
        child = telemetry.traceparent_of(span) or ""
        assert child.split("-")[1] == sender.split("-")[1] and child != sender, "a child in the same trace"
