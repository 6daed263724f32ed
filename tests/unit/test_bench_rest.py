"""The rest stage's arithmetic: shares of the whole box and CPU per container from two kernel readings."""

from __future__ import annotations

import pytest

from bench.figures import BROKERLESS, REQUIRED, STAGES, STAGES_ON_REQUEST
from bench.rest import Counters, box_jiffies, rest_figures

pytestmark = pytest.mark.unit


def test_idle_and_iowait_are_the_only_idle_fields_of_proc_stat() -> None:
    # user nice system idle iowait irq softirq steal
    assert box_jiffies("cpu  100 5 50 800 40 3 2 0 0 0") == (160, 1000)


def test_shares_are_of_the_whole_box_and_per_container_in_ms_per_second() -> None:
    before = Counters(at=10.0, box_busy=1_000, box_total=10_000, containers={"kafka": 5.0, "redis": 1.0}, daemons_s=2.0)
    after = Counters(
        at=70.0, box_busy=1_600, box_total=22_000, containers={"kafka": 7.4, "redis": 1.3, "new": 0.1}, daemons_s=2.6
    )
    figures = rest_figures(before, after)
    assert figures["seconds"] == 60.0
    assert figures["box_busy_share"] == 0.05  # 600 of 12,000 jiffies
    assert figures["containers_cpu_ms_per_s"] == {"kafka": 40.0, "redis": 5.0}  # one started meanwhile: left out
    assert figures["docker_daemons_cpu_ms_per_s"] == 10.0


def test_the_rest_stage_needs_no_broker_of_its_own_and_its_result_is_checked() -> None:
    assert "rest" in STAGES_ON_REQUEST and "rest" not in STAGES  # the default run does not start make run's stack
    assert "rest" in BROKERLESS and "box_busy_share" in REQUIRED["rest"]


def test_batch_sizes_are_a_steps_messages_over_its_batches_per_worker() -> None:
    from bench.probes import batch_sizes

    before = {"orders": (100.0, 80.0), "views": (50.0, 50.0)}
    after = {"orders": (400.0, 180.0), "views": (50.0, 50.0), "payments": (30.0, 10.0)}
    assert batch_sizes(before, after) == {
        "orders": {"batches": 100, "messages_per_batch": 3.0},
        "payments": {"batches": 10, "messages_per_batch": 3.0},  # started during the step: counted from nothing
    }  # the view service took no batch in the step: left out
