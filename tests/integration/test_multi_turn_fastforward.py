"""The twin's fast-forward (`servedeck plan`) on multi-turn and ramp-up workloads (issue 13): sessions
replayed turn by turn on the virtual clock hit the prefix cache as the live twin does, and a ramp-up's
arrivals are vLLM's per-request rates, not all at once."""

from __future__ import annotations

import asyncio
import math

import pytest

from backends.bench.loadgen.arrivals import arrival_times
from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, SweepConfig, SweepResult
from backends.bench.sweep import run_sweep
from backends.prometheus import prefix_cache_hit_rate
from backends.target_types import Target, TargetKind
from backends.targets import discover_target
from backends.twin.engine_config import TwinConfig
from backends.twin.fastforward import run_sweep as fast_forward
from backends.twin.process import start_twin_process

TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1)
OFFLINE = Target(name="twin", base_url="twin://1xh100", model=TWIN.model.hf_id, kind=TargetKind.TWIN)


def _config(target: Target, dataset: DatasetSpec, **fields: object) -> SweepConfig:
    return SweepConfig.model_validate({"target": target, "dataset": dataset, "output_len": 16, **fields})


def _live(config: SweepConfig) -> SweepResult:
    with start_twin_process(TWIN, log_interval_s=3600.0) as twin:

        async def go() -> SweepResult:
            target = await discover_target(twin.base_url)
            return await run_sweep(config.model_copy(update={"target": target}), lambda _: None)

        return asyncio.run(asyncio.wait_for(go(), timeout=240))


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("dataset", "axis", "levels"),
    [
        (DatasetSpec(kind="multi_turn", turns=4, max_context_len=1800), Axis.CONCURRENCY, [4]),
        (
            DatasetSpec(kind="multi_turn", turns=3, max_context_len=1800, dataset_answers=True),
            Axis.REQUEST_RATE,
            [4.0],
        ),
    ],
)
def test_fast_forward_multi_turn_hits_the_prefix_cache_as_the_live_twin_does(
    dataset: DatasetSpec, axis: Axis, levels: list[float]
) -> None:
    config = _config(OFFLINE, dataset, axis=axis, levels=levels, num_prompts=6)
    predicted = fast_forward(TWIN, config)
    measured = _live(config)
    rates = []
    for result in (predicted, measured):
        (level,) = result.levels
        assert level.metrics.completed == sum(1 for r in level.records if r.success) > 6
        assert level.turns is not None and [t.turn for t in level.turns] == list(range(dataset.turns))
        assert {r.session for r in level.records} == set(range(6))
        rate = prefix_cache_hit_rate(level.server_snapshots)
        assert rate is not None
        rates.append(rate)
    print(f"multi-turn prefix-cache hit rate: fast-forward {rates[0]:.1%}, live twin {rates[1]:.1%}")
    assert rates[1] > 0.3
    assert abs(rates[0] - rates[1]) <= 0.03
    (level,) = predicted.levels
    assert level.turns is not None
    assert level.turns[0].prefix_cache_hit_rate == 0.0
    assert all((t.prefix_cache_hit_rate or 0.0) > 0.3 for t in level.turns[1:])


def test_fast_forward_honours_a_ramp_up() -> None:
    config = _config(
        OFFLINE,
        DatasetSpec(kind="random", random_input_len=64, random_output_len=8),
        axis=Axis.REQUEST_RATE,
        levels=[math.inf],
        num_prompts=40,
        ramp_up_strategy="linear",
        ramp_up_start_rps=1.0,
        ramp_up_end_rps=20.0,
    )
    (level,) = fast_forward(TWIN, config).levels
    expected = arrival_times(40, math.inf, 1.0, 0, ramp_up=("linear", 1.0, 20.0))
    queued = [r.queued_at for r in sorted(level.records, key=lambda r: r.index)]
    assert queued == pytest.approx(expected)
    assert queued[-1] > 5.0  # a ramp from 1 req/s, not every request at t = 0
    assert level.metrics.completed == 40


def test_a_shared_prefix_pushed_out_of_the_sliding_window_is_still_hit_as_in_vllm() -> None:
    """Gemma 3's sliding-window layers free a block's pages once it leaves the window; vLLM keeps such blocks
    in its free queue with their hash, so the next request with the same prefix hits them (until evicted).
    10 prefixes of 256 tokens before 768-token suffixes (prompts longer than the 1024-token window), one at a
    time, each answering 128 tokens: every request after its prefix's first finds the prefix,
    (200 - 10) / 200 x 256 / 1024 ~ 24%."""
    config = _config(
        OFFLINE,
        DatasetSpec(
            kind="prefix_repetition", prefix_len=256, suffix_len=768, num_prefixes=10, prefix_output_len=128
        ),
        axis=Axis.CONCURRENCY,
        levels=[1],
        num_prompts=200,
        output_len=None,
    )
    (level,) = fast_forward(TWIN, config).levels
    rate = prefix_cache_hit_rate(level.server_snapshots)
    assert rate is not None and 0.2 < rate < 0.3, rate


@pytest.mark.parametrize(
    "dataset",
    [
        DatasetSpec(
            kind="prefix_repetition", prefix_len=128, suffix_len=384, num_prefixes=4, prefix_output_len=8
        ),
        DatasetSpec(kind="multi_turn", turns=3, max_context_len=1800),
    ],
)
def test_a_fast_forward_levels_hit_rate_counts_its_first_step(dataset: DatasetSpec) -> None:
    """The level's prefix-cache hit rate is the counters' increase from before its first step: the first
    step's queries (every request of a closed-loop level starts there, none hit yet) count too."""
    from backends.twin.engine import TwinEngine

    engine = TwinEngine(TWIN)
    config = _config(OFFLINE, dataset, axis=Axis.CONCURRENCY, levels=[8], num_prompts=24)
    (level,) = fast_forward(TWIN, config, engine=engine).levels
    rate = prefix_cache_hit_rate(level.server_snapshots)
    assert rate == pytest.approx(engine.prefix_hits_total / engine.prefix_queries_total)
