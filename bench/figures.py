"""The benchmark's pure parts: percentiles, the offered-rate schedule, ratios, profiles and the result's shape.

Nothing here does I/O, so all of it is unit-tested (tests/unit/test_bench.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

RESULT_VERSION = 1
STAGES = ("raw", "faust", "pipeline", "codec", "query", "history")
"""The benchmark's stages, in the order they run: the default run."""
STAGES_ON_REQUEST = ("rest",)
"""Stages run only when named: ``rest`` measures `make run`'s stack, which the other stages do not start."""
BROKERLESS = frozenset({"codec", "history", "rest"})
"""Stages that need no broker: run alone, they start no stack."""


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) with linear interpolation between closest ranks; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(values_ms: Iterable[float]) -> dict[str, float | int | None]:
    """Count, p50, p95, p99, max and mean of latencies in milliseconds (None where there are none)."""
    ordered = sorted(values_ms)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "count": len(ordered),
        "p50": rounded(percentile(ordered, 50)),
        "p95": rounded(percentile(ordered, 95)),
        "p99": rounded(percentile(ordered, 99)),
        "max": rounded(ordered[-1]) if ordered else None,
        "mean": rounded(sum(ordered) / len(ordered)) if ordered else None,
    }


def per_second(count: float, seconds: float) -> float:
    """A rate; 0 when no time passed (nothing was measured)."""
    return count / seconds if seconds > 0 else 0.0


# --- the pipeline stage's open-loop schedule ----------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Offered rates (orders/s) tried in turn, each for ``step_s`` seconds, until the pipeline saturates."""

    rates: tuple[float, ...]
    step_s: float

    def __post_init__(self) -> None:
        if not self.rates or any(r <= 0 for r in self.rates):
            raise ValueError("a schedule needs positive rates")
        if list(self.rates) != sorted(self.rates):
            raise ValueError("offered rates must rise")
        if self.step_s <= 0:
            raise ValueError("a step must last a positive time")

    @property
    def orders(self) -> int:
        """Orders offered if no step is skipped."""
        return sum(len(send_offsets(r, self.step_s)) for r in self.rates)


QUICK_SCHEDULE = Schedule(rates=(3.0, 6.0, 9.0, 12.0, 18.0), step_s=8.0)
FULL_SCHEDULE = Schedule(rates=(2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 28.0), step_s=30.0)


def parse_rates(text: str) -> tuple[float, ...]:
    """``"4,8,16"`` as offered rates, checked to be positive and rising."""
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"rates must be numbers separated by commas, got {text!r}") from exc
    Schedule(rates, 1.0)  # validates
    return rates


def send_offsets(rate: float, duration_s: float) -> list[float]:
    """Open loop: the n-th order of a step goes out ``n / rate`` seconds after the step starts."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    count = max(1, math.floor(rate * duration_s + 1e-9))
    return [n / rate for n in range(count)]


def latency_growth(latencies_in_order: Sequence[float]) -> tuple[float, float] | None:
    """Median latency of the first and of the last third of a step's orders (in placement order): under an
    open loop a backlog that keeps growing shows as the later orders waiting longer. None below 6 orders."""
    if len(latencies_in_order) < 6:
        return None
    third = len(latencies_in_order) // 3
    first = percentile(latencies_in_order[:third], 50)
    last = percentile(latencies_in_order[-third:], 50)
    assert first is not None and last is not None
    return first, last


def is_saturated(
    offered: float,
    achieved: float,
    settled: int,
    placed: int,
    latencies_in_order: Sequence[float] = (),
    *,
    tolerance: float = 0.9,
    growth_ms: float = 1000.0,
) -> bool:
    """A step saturated the pipeline when it did not settle every order it placed in time, completed clearly
    fewer orders per second than were offered, or its latency kept growing through the step (the last third's
    median more than ``growth_ms`` above, and more than twice, the first third's)."""
    if settled < placed or achieved < tolerance * offered:
        return True
    growth = latency_growth(latencies_in_order)
    return growth is not None and growth[1] - growth[0] > growth_ms and growth[1] > 2 * growth[0]


def saturation_rate(steps: Sequence[Mapping[str, Any]]) -> float | None:
    """The highest completed orders/s over the steps (the pipeline's sustained ceiling); None without steps."""
    rates = [float(s["achieved_orders_per_s"]) for s in steps if s.get("achieved_orders_per_s")]
    return max(rates) if rates else None


# --- ratios -------------------------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` to four significant digits; None when either is unknown."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return float(f"{numerator / denominator:.4g}")


def ratios(
    *,
    raw_per_s: float | None,
    faust_per_s: float | None,
    pipeline_events_per_s: float | None,
    faust_acked_per_s: float | None = None,
    faust_batched_per_s: float | None = None,
) -> dict[str, float | None]:
    """The ratios that matter: how much of each ceiling the layer above it keeps.

    ``raw_per_s`` is the client round trip ceiling (the lower of produce and consume rates), ``faust_per_s``
    the bare pass-through agent's events/s, ``pipeline_events_per_s`` the busiest worker's input events/s
    at the pipeline's saturation point; ``faust_acked_per_s`` the pass-through that awaits each output's
    acknowledgement, as the pipeline's edge did one message at a time; ``faust_batched_per_s`` the pass-through
    that takes the events already fetched together and awaits their acknowledgements at once, as it does now.
    """
    return {
        "pipeline_over_faust": ratio(pipeline_events_per_s, faust_per_s),
        "faust_over_raw": ratio(faust_per_s, raw_per_s),
        "pipeline_over_raw": ratio(pipeline_events_per_s, raw_per_s),
        "faust_acked_over_faust": ratio(faust_acked_per_s, faust_per_s),
        "pipeline_over_faust_acked": ratio(pipeline_events_per_s, faust_acked_per_s),
        "faust_batched_over_acked": ratio(faust_batched_per_s, faust_acked_per_s),
    }


# --- kafka-producer-perf-test -------------------------------------------------------------------------------

_PERF_LINE = re.compile(
    r"(?P<records>\d+) records sent, (?P<rps>[\d.]+) records/sec \((?P<mbps>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency"
    r"(?:, (?P<p50>\d+) ms 50th, (?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th)?"
)


def parse_perf_test(output: str) -> dict[str, float] | None:
    """The final summary line of ``kafka-producer-perf-test`` (the last matching line), or None."""
    found = None
    for line in output.splitlines():
        if (m := _PERF_LINE.search(line)) is not None:
            found = m
    if found is None:
        return None
    return {k: float(v) for k, v in found.groupdict().items() if v is not None}


# --- profiles (py-spy collapsed stacks) ---------------------------------------------------------------------

IDLE_LEAVES = ("select (selectors.py", "EpollSelector.poll")
"""Leaves of a thread waiting for I/O, should a profile include idle samples (py-spy ``--idle``)."""
_BUCKETS: tuple[tuple[str, str], ...] = (
    ("(fastavro/", "Avro codec"),
    ("(schemas/", "Avro codec"),
    ("(aiokafka/", "Kafka client (aiokafka)"),
    ("(kafka/", "Kafka client (aiokafka)"),
    ("(confluent_kafka/", "Kafka client (confluent-kafka)"),
    ("(faust/", "Faust and mode"),
    ("(mode/", "Faust and mode"),
    ("(redis/", "Redis client"),
    ("(streams/domain/", "domain steps (pure)"),
    ("(streams/view", "view service (streams/view*)"),
    ("(streams/", "pipeline edge (streams/)"),
    ("(consumers/", "consumer toolkit (consumers/)"),
    ("(gateway/", "gateway (gateway/)"),
    ("(aiohttp/", "aiohttp"),
    ("(jwt/", "JWT"),
    ("(pydantic", "pydantic"),
    ("(common/envelope.py", "envelope headers"),
    ("(uuid.py", "uuid"),
    ("(json/", "JSON"),
    ("(logging/", "logging"),
    ("(asyncio/", "asyncio event loop"),
    ("(selectors.py", "asyncio event loop"),
    ("(selector_events.py", "asyncio event loop"),
)


def frame_bucket(frame: str) -> str:
    """Which part of the stack a py-spy frame (``function (package/module.py:line)``) belongs to."""
    for needle, bucket in _BUCKETS:
        if needle in frame:
            return bucket
    return "other"


@dataclass(frozen=True)
class Profile:
    """A py-spy collapsed-stack profile summarised: where the samples' leaves (self) and stacks (total) are."""

    samples: int
    idle_samples: int
    top_self: list[tuple[str, float]]
    top_total: list[tuple[str, float]]
    buckets: list[tuple[str, float]]
    """Shares of the *busy* samples by part of the stack, attributed by each stack's deepest known frame."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "idle_samples": self.idle_samples,
            "busy_share": round(1 - self.idle_samples / self.samples, 4) if self.samples else None,
            "top_self": [{"frame": f, "share": s} for f, s in self.top_self],
            "top_total": [{"frame": f, "share": s} for f, s in self.top_total],
            "buckets": [{"part": b, "share": s} for b, s in self.buckets],
        }


_STRUCTURAL = ("(asyncio/", "(threading.py", "(click/", "(mode/worker.py", "(mode/threads.py", "(selectors.py",
               "(mode/services.py", "(pipeline:", "(pipeline/cli/", "(runpy.py", "<module>")  # fmt: skip
"""Frames every stack passes through (the event loop, threads, the CLI): left out of ``top_total``."""


def _is_idle(leaf: str) -> bool:
    return any(marker in leaf for marker in IDLE_LEAVES)


def summarise_profile(lines: Iterable[str], top: int = 12) -> Profile:
    """Summarise py-spy ``--format raw`` output (``frame;frame;frame COUNT`` per line).

    Shares of ``top_self`` and ``top_total`` are of the busy samples (py-spy leaves idle threads out unless
    ``--idle``; a thread waiting in ``select`` counts as idle then); a frame counts once per stack in
    ``top_total`` however deep it recurs, and frames every stack passes through (event loop, threads, CLI) are
    left out of it. ``buckets`` attribute each stack to its deepest frame of a known part
    (a log call made by aiokafka counts as logging).
    """
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    bucket_counts: Counter[str] = Counter()
    samples = idle = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        if _is_idle(frames[-1]):
            idle += count
            continue
        self_counts[frames[-1]] += count
        for frame in set(frames):
            if not any(marker in frame for marker in _STRUCTURAL):
                total_counts[frame] += count
        bucket = next((b for f in reversed(frames) if (b := frame_bucket(f)) != "other"), "other")
        bucket_counts[bucket] += count
    busy = samples - idle

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(n / busy, 4)) for name, n in counter.most_common(top)] if busy else []

    return Profile(samples, idle, shares(self_counts), shares(total_counts), shares(bucket_counts))


# --- the result document ------------------------------------------------------------------------------------

REQUIRED: dict[str, tuple[str, ...]] = {
    "meta": ("version", "started_at", "mode", "machine", "kafka", "stages"),
    "raw": ("record_bytes", "produce", "consume", "perf_test"),
    "faust": ("events", "variants", "ceiling_events_per_s"),
    "pipeline": ("steps", "saturation_orders_per_s", "events_per_order", "busiest_worker_events_per_s"),
    "codec": ("iterations", "records"),
    "query": ("connections", "duration_s", "endpoints"),
    "history": ("orders", "additions", "place_order_ratio", "largest_value_bytes"),
    "rest": ("seconds", "box_busy_share", "containers_cpu_ms_per_s", "docker_daemons_cpu_ms_per_s"),
    "ratios": ("pipeline_over_faust", "faust_over_raw", "pipeline_over_raw"),
}


def check_result(doc: Mapping[str, Any]) -> list[str]:
    """What is missing from a result document: top-level sections of the stages that ran, and their keys."""
    problems = [f"missing section {section!r}" for section in ("meta", "ratios") if section not in doc]
    ran = doc.get("meta", {}).get("stages", STAGES)
    for section in ran:
        if section not in REQUIRED:
            problems.append(f"unknown stage {section!r}")
        elif not isinstance(doc.get(section), Mapping):
            problems.append(f"missing section {section!r}")
    for section, keys in REQUIRED.items():
        value = doc.get(section)
        if isinstance(value, Mapping):
            problems.extend(f"{section}: missing {key!r}" for key in keys if key not in value)
    return problems
