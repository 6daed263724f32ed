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
