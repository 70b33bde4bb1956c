"""The advisor and its verify search in a child process (what the TUI's Advisor view runs)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from backends.advisor.host import (
    AdviseJob,
    AdvisorProgress,
    HostMessage,
    VerifyJob,
    VerifyLevel,
    run_in_child,
)
from backends.bench.models import Axis
from backends.bench.results import SweepConfig
from backends.errors import ConfigError
from backends.targets import discover_target
from backends.twin.engine_config import TwinConfig
from backends.twin.process import start_twin_process
from manifests.gpus import GpuType

TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1, max_num_seqs=8)


@pytest.mark.timeout(300)
def test_advice_in_a_child_reports_every_shape_then_the_ranking() -> None:
    seen: list[HostMessage] = []
    job = AdviseJob(
        model="gemma-3-27b-it",
        rate=2.0,
        slo="p99_ttft:2000,p99_tpot:100",
        gpus=[GpuType.H100, GpuType.L4],
        num_prompts=60,
    )
    done = run_in_child(job, seen.append)
    progress = [m for m in seen if isinstance(m, AdvisorProgress)]
    assert progress and progress[-1].label == "done" and progress[-1].done == progress[-1].total
    assert [m.done for m in progress] == list(range(progress[-1].total + 1))
    assert done.advice is not None and done.advice.passing
    assert {s.gpu for s in done.advice.shapes} <= {GpuType.H100, GpuType.L4}
    assert done.advice.rate == 2.0 and done.advice.num_prompts == 60
    costs = [s.usd_per_million for s in done.advice.passing]
    assert costs == sorted(costs)  # ranked by $/1M


def test_bad_advisor_input_is_one_line_before_any_process() -> None:
    with pytest.raises(ConfigError, match="unknown --slo key 'p99_ttfx'"):
        run_in_child(AdviseJob(model="gemma-3-27b-it", rate=1.0, slo="p99_ttfx:5"), lambda _m: None)
    with pytest.raises(ConfigError, match="rate must be"):
        run_in_child(AdviseJob(model="gemma-3-27b-it", rate=0.0, slo="p99_ttft:5"), lambda _m: None)


@pytest.mark.timeout(120)
def test_a_cancelled_advice_ends_with_one_line() -> None:
    cancel = threading.Event()

    def on_message(message: HostMessage) -> None:
        if isinstance(message, AdvisorProgress) and message.done >= 1:
            cancel.set()

    job = AdviseJob(model="gemma-3-27b-it", rate=1.0, slo="p99_ttft:2000", num_prompts=400)
    with pytest.raises(ConfigError, match="cancelled"):
        run_in_child(job, on_message, cancel)


@pytest.mark.timeout(300)
def test_verify_runs_the_slo_search_on_a_live_target_from_the_prediction() -> None:
    levels: list[VerifyLevel] = []
    with start_twin_process(TWIN, log_interval_s=3600.0) as twin:
        target = asyncio.run(discover_target(twin.base_url))
        base = SweepConfig(
            target=target,
            axis=Axis.REQUEST_RATE,
            levels=[1.0],
            num_prompts=16,
            output_len=16,
            endpoint="completions",
        )
        job = VerifyJob(
            base=base,
            slo="p99_ttft:2000,p99_tpot:100",
            start=4.0,
            start_source="advisor prediction for 1xH100: 4 req/s",
            max_levels=3,
        )
        done = run_in_child(job, lambda m: levels.append(m) if isinstance(m, VerifyLevel) else None)
    search = done.search
    assert search is not None and search.start == 4.0
    assert [m.level.value for m in levels] == [lvl.value for lvl in search.levels]
    assert 1 <= len(search.levels) <= 3 and search.levels[0].value == 4.0
    record = search.run.config.search
    assert record is not None and record.start_source.startswith("advisor prediction")
    assert len(search.run.levels) == len(search.levels)
