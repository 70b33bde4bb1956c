"""Acceptance of the bench core against the real local engine (Gemma 3 270M on llama.cpp)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, RunStatus, SweepConfig, SweepResult
from backends.bench.sweep import SweepEvent, run_sweep
from backends.engines.local import LocalEngine
from backends.target_types import Target
from backends.targets import discover_target

pytestmark = pytest.mark.engine


def _sweep(
    target: Target, axis: Axis, levels: list[float], num_prompts: int, dataset: DatasetSpec | None = None
) -> SweepResult:
    config = SweepConfig(
        target=target,
        dataset=dataset or DatasetSpec(kind="sharegpt"),
        axis=axis,
        levels=levels,
        num_prompts=num_prompts,
        output_len=24,
        ignore_eos=True,
        seed=1,
        percentiles=[50.0, 99.0],
    )

    def ignore(_: SweepEvent) -> None:
        pass

    return asyncio.run(asyncio.wait_for(run_sweep(config, ignore), timeout=600))


@pytest.fixture(scope="module")
def target(local_engine: LocalEngine) -> Target:
    found = asyncio.run(discover_target(local_engine.base_url))
    assert found.model == "gemma-3-270m"
    assert found.capabilities.tokenize and found.capabilities.metrics
    return found


def test_concurrency_sweep_scales_up_to_the_slot_count(target: Target) -> None:
    # Short prompts, so decoding (which batches) dominates rather than prompt processing (which does not).
    short = DatasetSpec(kind="random", random_input_len=48, random_output_len=24)
    result = _sweep(target, Axis.CONCURRENCY, [1, 2, 4, 8], num_prompts=16, dataset=short)
    assert result.status is RunStatus.COMPLETE, [lvl.message for lvl in result.levels]
    throughput = [lvl.metrics.output_throughput for lvl in result.levels]
    print("output tok/s at concurrency 1,2,4,8:", [round(t, 1) for t in throughput])
    for level in result.levels:
        assert level.metrics.completed == 16 and level.metrics.failed == 0
        # --ignore-eos with a fixed output length: the server's usage says 24 tokens every time.
        assert level.metrics.output_len_sources == {"usage": 16}
        assert level.metrics.total_output_tokens == 16 * 24
        assert level.metrics.max_concurrent_requests == int(level.level.value)
    # Continuous batching: 8 slots in flight produce clearly more tokens per second than one stream.
    # (Only the ends are compared: on a shared 2-core host the middle levels are at the mercy of neighbours.)
    assert throughput[3] > 1.3 * throughput[0]
    # The scraper saw the engine's own counters during the sweep.
    assert any(s.generation_tokens_total for lvl in result.levels for s in lvl.server_snapshots)


def test_client_ttft_is_checked_against_the_servers_own_prompt_time(target: Target) -> None:
    result = _sweep(target, Axis.CONCURRENCY, [1], num_prompts=12)
    level = result.levels[0]
    gaps_ms = []
    for record in level.records:
        assert record.server_timings is not None and "prompt_ms" in record.server_timings
        timings = record.server_timings
        # usage.prompt_tokens counts the cached prefix too; timings.prompt_n only what was evaluated.
        assert record.input_tokens == timings["prompt_n"] + timings.get("cache_n", 0.0)
        assert record.ttft is not None
        gaps_ms.append(record.ttft * 1000 - record.server_timings["prompt_ms"])
    gap = level.metrics.ttft_minus_server_prompt
    assert gap is not None
    print(
        f"client TTFT - server prompt_ms: median {gap.median:.2f} ms, p99 {gap.percentiles['99']:.2f} ms; "
        f"TTFT median {level.metrics.ttft.median:.2f} ms"
    )
    assert gap.median == pytest.approx(float(np.median(gaps_ms)))
    # A client cannot see a token before the server finished the prompt: a negative gap means broken timing.
    assert min(gaps_ms) > -1.0


def test_request_rate_sweep_runs_open_loop(target: Target) -> None:
    result = _sweep(target, Axis.REQUEST_RATE, [0.5, 1.0], num_prompts=4)
    assert result.status is RunStatus.COMPLETE
    assert [lvl.level.label for lvl in result.levels] == ["0.5 req/s", "1 req/s"]
    for level in result.levels:
        assert level.metrics.completed == 4
        sends = sorted(r.sent_at for r in level.records if r.sent_at is not None)
        # Open loop: arrivals are spread over (N-1)/rate seconds, not fired at once.
        assert sends[-1] - sends[0] > 0.5 * 3 / level.level.value
