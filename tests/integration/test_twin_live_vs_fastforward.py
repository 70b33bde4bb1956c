"""Acceptance: the bench core measuring the live twin agrees with the twin's fast-forward prediction.

The live twin runs in its own process (pinned to core 0 when there are two cores) and the bench core
(``run_sweep``, one load-generator worker, pinned to the last core) measures it over real HTTP in real
time. Fast-forward plays the same sampled prompts, seed and Poisson arrivals through the same engine on a
virtual clock. Output throughput and p99 TTFT must agree within 10% at each of three request rates (p99
TTFT within one decode step where that is more: see the assertion).

The scale keeps real time near half a minute: gemma-3-27b-it on one A100 80GB, 64 ShareGPT prompts of 32
output tokens, at 4, 16 and 64 req/s, with ``--max-num-seqs 16`` so the busier rates make requests queue
(p99 TTFT from a quarter of a second to seconds): idle, busy and overloaded regimes. The profile is
chosen so a decode step (~34 ms) is small next to the p99 TTFT: a request that reaches the server a
millisecond after a step began waits for the next step in the live run but not in fast-forward (which
has no network), so a p99 close to one step would swing by a step on such timing luck, which is
physics, not an error of either side. The completions endpoint is used because a chat request's
template tokens are not in the dataset's prompt lengths that fast-forward is given; with completions both
count exactly the twin's ``/tokenize`` numbers.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from backends.bench.loadgen.selfmon import CPU_LIMIT_PERCENT
from backends.bench.metrics import BenchmarkMetrics
from backends.bench.models import Axis
from backends.bench.results import RunStatus, SweepConfig
from backends.bench.sweep import SweepEvent, run_sweep, sample_for
from backends.target_types import TargetKind
from backends.targets import discover_target
from backends.twin import fastforward
from backends.twin.engine_config import TwinConfig
from backends.twin.process import start_twin_process

TWIN = TwinConfig.build("gemma-3-27b-it", "a100-80gb", 1, max_num_seqs=16)
REQUEST_RATES = [4.0, 16.0, 64.0]
NUM_PROMPTS = 64
OUTPUT_LEN = 32
SEED = 0
TOLERANCE = 0.10


def _relative_difference(live: float, predicted: float) -> float:
    return abs(live - predicted) / predicted


def _row(label: str, live: BenchmarkMetrics, predicted: BenchmarkMetrics) -> str:
    return (
        f"{label}: output tok/s live {live.output_throughput:.1f} vs fast-forward "
        f"{predicted.output_throughput:.1f}; p99 TTFT live {live.ttft.percentiles['99']:.1f} ms vs "
        f"{predicted.ttft.percentiles['99']:.1f} ms"
    )


@pytest.mark.timeout(240)
def test_live_twin_measured_by_the_bench_core_agrees_with_fast_forward() -> None:
    server_cpu = 0 if len(os.sched_getaffinity(0)) > 1 else None
    events: list[SweepEvent] = []
    with start_twin_process(TWIN, cpu=server_cpu, log_interval_s=3600.0) as twin:
        target = asyncio.run(discover_target(twin.base_url))
        assert target.kind is TargetKind.TWIN
        sweep = SweepConfig(
            target=target,
            axis=Axis.REQUEST_RATE,
            levels=REQUEST_RATES,
            num_prompts=NUM_PROMPTS,
            output_len=OUTPUT_LEN,
            seed=SEED,
            endpoint="completions",
            workers=1,
        )
        dataset = sample_for(sweep)  # token counts from the twin's own /tokenize
        live = asyncio.run(run_sweep(sweep, events.append, dataset=dataset))
    predicted = fastforward.run_sweep(TWIN, sweep, dataset=dataset)

    assert live.status is RunStatus.COMPLETE, live.message
    assert len(live.levels) == len(predicted.levels) == len(REQUEST_RATES)
    rows = [
        _row(measured.level.label, measured.metrics, forecast.metrics)
        for measured, forecast in zip(live.levels, predicted.levels, strict=True)
    ]
    report = "\n".join(rows)
    print(report)  # shown with pytest -s
    for measured, forecast in zip(live.levels, predicted.levels, strict=True):
        live_metrics, predicted_metrics = measured.metrics, forecast.metrics
        assert live_metrics.completed == predicted_metrics.completed == NUM_PROMPTS, report
        assert live_metrics.total_output_tokens == predicted_metrics.total_output_tokens, report
        # The client's own CPU share is ours to keep low; event-loop lag on a shared CI host is not.
        assert measured.client.cpu_percent < CPU_LIMIT_PERCENT, measured.client.reason
        throughput_gap = _relative_difference(
            live_metrics.output_throughput, predicted_metrics.output_throughput
        )
        live_p99, predicted_p99 = (
            live_metrics.ttft.percentiles["99"],
            predicted_metrics.ttft.percentiles["99"],
        )
        # One decode step of slack (the level's median TPOT): p99 of 64 requests is the slowest one or two,
        # and one that reached the server just after a step began waits one step more. At 4 req/s a step
        # is 13% of p99 (34 of 256 ms; a fresh-clone run measured 229 ms, one step early).
        allowed_ms = max(TOLERANCE * predicted_p99, predicted_metrics.tpot.median)
        assert throughput_gap <= TOLERANCE, f"output throughput off by {throughput_gap:.1%}\n{report}"
        print(f"{measured.level.label}: p99 TTFT allowed +-{allowed_ms:.1f} ms")
        assert abs(live_p99 - predicted_p99) <= allowed_ms, (
            f"p99 TTFT off by {abs(live_p99 - predicted_p99):.1f} ms (allowed {allowed_ms:.1f})\n{report}"
        )
    # The top rate overloads the engine: requests queued, so this is not only an idle-server comparison.
    assert (
        predicted.levels[-1].metrics.ttft.percentiles["99"]
        > 10 * predicted.levels[0].metrics.ttft.percentiles["99"]
    )
    # The bench core scraped the twin's /metrics as a twin while it ran.
    snapshots = [s for level in live.levels for s in level.server_snapshots]
    assert snapshots and all(s.source == "twin" for s in snapshots)


@pytest.mark.timeout(240)
def test_closed_loop_follow_up_requests_join_the_next_step_in_both() -> None:
    """A closed-loop client sends its next request only after the last chunk arrives, so in the live twin
    that request joins the step after the one that began at that instant; fast-forward must do the same
    (before this was modelled, its p99 TTFT at concurrency 4 came out at half the live value)."""
    server_cpu = 0 if len(os.sched_getaffinity(0)) > 1 else None
    with start_twin_process(TWIN, cpu=server_cpu, log_interval_s=3600.0) as twin:
        target = asyncio.run(discover_target(twin.base_url))
        sweep = SweepConfig(
            target=target,
            axis=Axis.CONCURRENCY,
            levels=[4],
            num_prompts=32,
            output_len=OUTPUT_LEN,
            seed=SEED,
            endpoint="completions",
            workers=1,
        )
        dataset = sample_for(sweep)
        live = asyncio.run(run_sweep(sweep, lambda _: None, dataset=dataset))
    predicted = fastforward.run_sweep(TWIN, sweep, dataset=dataset)
    measured, forecast = live.levels[0].metrics, predicted.levels[0].metrics
    report = _row("concurrency 4", measured, forecast)
    print(report)
    assert _relative_difference(measured.output_throughput, forecast.output_throughput) <= TOLERANCE, report
    assert _relative_difference(measured.ttft.median, forecast.ttft.median) <= TOLERANCE, report
