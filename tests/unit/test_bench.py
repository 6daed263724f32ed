"""The benchmark's pure parts: percentiles, the open-loop schedule, saturation, ratios, perf-test and profile
parsing, and the result document's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.figures import (
    FULL_SCHEDULE,
    QUICK_SCHEDULE,
    STAGES,
    Schedule,
    check_result,
    frame_bucket,
    is_saturated,
    latency_growth,
    latency_summary,
    parse_perf_test,
    parse_rates,
    percentile,
    ratio,
    ratios,
    saturation_rate,
    send_offsets,
    summarise_profile,
)
from bench.report import write_json

pytestmark = pytest.mark.unit


# --- percentiles ----------------------------------------------------------------------------------------------


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 99) == pytest.approx(9.91)


def test_percentile_ignores_input_order_and_handles_one_or_no_value() -> None:
    assert percentile([10, 1, 5], 50) == 5
    assert percentile([42], 99) == 42
    assert percentile([], 50) is None


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_refuses_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1, 2], q)


def test_latency_summary_of_a_known_distribution() -> None:
    summary = latency_summary(float(v) for v in range(1, 101))
    assert summary == {"count": 100, "p50": 50.5, "p95": 95.0, "p99": 99.0, "max": 100.0, "mean": 50.5}


def test_latency_summary_of_nothing() -> None:
    assert latency_summary([]) == {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}


# --- the offered-rate schedule --------------------------------------------------------------------------------


def test_send_offsets_are_an_open_loop_at_the_offered_rate() -> None:
    offsets = send_offsets(4, 2)
    assert offsets == [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert send_offsets(0.5, 1) == [0]  # at least one order per step
    assert len(send_offsets(16, 8)) == 128


@pytest.mark.parametrize(("rate", "duration"), [(0, 1), (-1, 1), (1, 0)])
def test_send_offsets_refuse_nonsense(rate: float, duration: float) -> None:
    with pytest.raises(ValueError):
        send_offsets(rate, duration)


def test_schedules_rise_and_fit_their_time_budgets() -> None:
    for schedule in (QUICK_SCHEDULE, FULL_SCHEDULE):
        assert list(schedule.rates) == sorted(schedule.rates)
    # placing time alone, before settling and the other stages: well within 3 and 15 minutes
    assert len(QUICK_SCHEDULE.rates) * QUICK_SCHEDULE.step_s <= 60
    assert len(FULL_SCHEDULE.rates) * FULL_SCHEDULE.step_s <= 300
    assert Schedule((2.0, 4.0), 10).orders == 60


@pytest.mark.parametrize("rates", [(), (4.0, 2.0), (0.0, 1.0)])
def test_schedule_refuses_rates_that_do_not_rise_or_are_not_positive(rates: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        Schedule(rates, 10)


def test_parse_rates() -> None:
    assert parse_rates("4, 8,16") == (4.0, 8.0, 16.0)
    for bad in ("4,x", "8,4", ""):
        with pytest.raises(ValueError):
            parse_rates(bad)


# --- saturation -----------------------------------------------------------------------------------------------


def test_a_step_that_keeps_up_is_not_saturated() -> None:
    flat = [300.0, 320, 310, 290, 305, 315, 300, 298, 330]
    assert not is_saturated(10, 9.8, 100, 100, flat)


def test_a_step_is_saturated_when_orders_are_left_slower_rate_or_latency_grows() -> None:
    assert is_saturated(10, 10, 99, 100)  # one order did not settle in time
    assert is_saturated(20, 14, 100, 100)  # completed well below the offered rate
    growing = [300.0, 400, 500, 900, 1400, 2000, 2600, 3100, 3600]
    assert latency_growth(growing) == (400, 3100)
    assert is_saturated(10, 9.9, 100, 100, growing)


def test_latency_growth_needs_a_few_orders() -> None:
    assert latency_growth([1.0, 2, 3, 4, 5]) is None


def test_saturation_rate_is_the_best_completed_rate() -> None:
    steps = [{"achieved_orders_per_s": 4.0}, {"achieved_orders_per_s": 13.5}, {"achieved_orders_per_s": 12.9}]
    assert saturation_rate(steps) == 13.5
    assert saturation_rate([]) is None


# --- ratios ---------------------------------------------------------------------------------------------------


def test_ratios_between_the_layers() -> None:
    got = ratios(
        raw_per_s=40_000, faust_per_s=2_000, pipeline_events_per_s=150, faust_acked_per_s=300, faust_batched_per_s=900
    )
    assert got == {
        "pipeline_over_faust": 0.075,
        "faust_over_raw": 0.05,
        "pipeline_over_raw": 0.00375,
        "faust_acked_over_faust": 0.15,
        "pipeline_over_faust_acked": 0.5,
        "faust_batched_over_acked": 3.0,
    }


def test_ratios_without_a_figure_are_none() -> None:
    assert ratio(None, 2) is None
    assert ratio(2, None) is None
    assert ratio(2, 0) is None
    got = ratios(raw_per_s=None, faust_per_s=2_000, pipeline_events_per_s=None)
    assert got["faust_over_raw"] is None and got["pipeline_over_faust"] is None


# --- kafka-producer-perf-test output --------------------------------------------------------------------------

PERF_OUTPUT = """\
61237 records sent, 12247.4 records/sec (7.39 MB/sec), 1123.4 ms avg latency, 2011.0 ms max latency.
200000 records sent, 18348.623853 records/sec (11.08 MB/sec), 1210.55 ms avg latency, 2232.00 ms max latency, \
1190 ms 50th, 1989 ms 95th, 2180 ms 99th, 2221 ms 99.9th.
"""


def test_parse_perf_test_takes_the_final_summary() -> None:
    parsed = parse_perf_test(PERF_OUTPUT)
    assert parsed == {
        "records": 200000,
        "rps": 18348.623853,
        "mbps": 11.08,
        "avg": 1210.55,
        "max": 2232.0,
        "p50": 1190,
        "p95": 1989,
        "p99": 2180,
    }
    assert parse_perf_test("Exception in thread main") is None


# --- profiles -------------------------------------------------------------------------------------------------

PROFILE = """\
agent (streams/app.py:166);StepRunner._handle (streams/runtime.py:287);Outbox.prepare (streams/runtime.py:139) 6
agent (streams/app.py:166);StepRunner._handle (streams/runtime.py:270);AvroCodec.decode (schemas/codec.py:120) 4
_run_once (asyncio/base_events.py:1936);Fetcher._fetch (aiokafka/consumer/fetcher.py:639);Logger.debug \
(logging/__init__.py:1477) 8
_run_once (asyncio/base_events.py:1936);_SelectorSocketTransport.write (asyncio/selector_events.py:1057) 2
_run_once (asyncio/base_events.py:1923);EpollSelector.select (selectors.py:468) 20
not a profile line
"""


def test_summarise_profile_shares_of_busy_samples() -> None:
    profile = summarise_profile(PROFILE.splitlines())
    assert profile.samples == 40
    assert profile.idle_samples == 20
    assert profile.top_self[0] == ("Logger.debug (logging/__init__.py:1477)", 0.4)
    totals = dict(profile.top_total)
    assert totals["agent (streams/app.py:166)"] == 0.5
    assert "_run_once (asyncio/base_events.py:1936)" not in totals  # every stack passes the event loop
    assert dict(profile.buckets) == {
        "logging": 0.4,
        "pipeline edge (streams/)": 0.3,
        "Avro codec": 0.2,
        "asyncio event loop": 0.1,
    }
    assert profile.as_dict()["busy_share"] == 0.5


def test_frame_buckets() -> None:
    assert frame_bucket("decide (streams/domain/orders.py:12)") == "domain steps (pure)"
    assert frame_bucket("send (aiokafka/producer/producer.py:500)") == "Kafka client (aiokafka)"
    assert frame_bucket("main (somewhere.py:1)") == "other"


# --- the result document --------------------------------------------------------------------------------------


def _document() -> dict[str, object]:
    step = {"offered_orders_per_s": 4.0, "achieved_orders_per_s": 4.0, "latency_view_ms": latency_summary([300.0])}
    return {
        "meta": {
            "version": 1,
            "started_at": "2026-01-01T00:00:00+00:00",
            "mode": "quick",
            "machine": {"cores": 2},
            "kafka": {},
            "stages": list(STAGES),
        },  # fmt: skip
        "raw": {"record_bytes": {}, "produce": {}, "consume": {}, "perf_test": {}},
        "faust": {"events": 1, "variants": {}, "ceiling_events_per_s": 1.0},
        "pipeline": {
            "steps": [step],
            "saturation_orders_per_s": 4.0,
            "events_per_order": 14.0,
            "busiest_worker_events_per_s": 40.0,
        },  # fmt: skip
        "codec": {"iterations": 1, "records": {}},
        "query": {"connections": 1, "duration_s": 1.0, "endpoints": {}},
        "history": {"orders": 1, "additions": 1, "place_order_ratio": 1.0, "largest_value_bytes": 1},
        "ratios": ratios(raw_per_s=1.0, faust_per_s=1.0, pipeline_events_per_s=1.0),
    }


def test_a_complete_result_document_has_no_problems(tmp_path: Path) -> None:
    doc = _document()
    assert check_result(doc) == []
    write_json(doc, tmp_path / "results" / "r.json")
    assert json.loads((tmp_path / "results" / "r.json").read_text()) == doc


def test_result_problems_name_what_is_missing() -> None:
    doc = _document()
    del doc["faust"]
    del doc["ratios"]
    pipeline = doc["pipeline"]
    assert isinstance(pipeline, dict)
    del pipeline["steps"]
    assert check_result(doc) == ["missing section 'ratios'", "missing section 'faust'", "pipeline: missing 'steps'"]


def test_only_the_stages_that_ran_are_required() -> None:
    doc = _document()
    meta = doc["meta"]
    assert isinstance(meta, dict)
    meta["stages"] = ["codec"]
    for section in ("raw", "faust", "pipeline", "query", "history"):
        del doc[section]
    assert check_result(doc) == []


def test_the_view_service_costs_are_per_event_and_per_batch() -> None:
    from bench.probes import view_costs

    before = {"batches": 10.0, "redis_round_trips": 8.0, "redis_commands": 100.0}
    after = {"batches": 110.0, "redis_round_trips": 98.0, "redis_commands": 1300.0}
    costs = view_costs(before, after, events=400, cpu_s=0.1)
    assert costs == {
        "events": 400,
        "batches": 100,
        "redis_round_trips": 90,
        "redis_commands": 1200,
        "cpu_ms_per_event": 0.25,
        "redis_round_trips_per_batch": 0.9,
        "redis_round_trips_per_event": 0.225,
    }
    assert view_costs({}, {}, events=0, cpu_s=None) is None


def test_box_cpu_per_order_is_the_machine_busy_share_times_cores_over_orders_per_second() -> None:
    from bench.probes import box_cpu_per_order

    cpu = {"machine_busy_share": 0.5, "process_cores": {"orders": 0.2}, "container_cores": {"kafka": 0.3}}
    box = box_cpu_per_order(cpu, orders_per_s=20.0, cores=2)
    assert box == {
        "box_cpu_ms_per_order": 50.0,
        "split_ms_per_order": {"orders": 10.0, "kafka": 15.0, "rest of the box": 25.0},
    }
    assert box_cpu_per_order(cpu, orders_per_s=0.0) is None
