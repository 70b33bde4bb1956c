"""A sweep reads GPU telemetry beside the load: the twin's own /dcgm, or an exporter given by URL."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from backends.bench.models import Axis, ProgressSnapshot
from backends.bench.results import DatasetSpec, SweepConfig, SweepResult
from backends.bench.sweep import SweepEvent, run_sweep
from backends.target_types import Target
from backends.targets import discover_target
from backends.twin.dcgm import POWER_MODELS
from backends.twin.engine_config import TwinConfig
from backends.twin.roofline import Roofline
from backends.twin.server import TwinServer
from tests.fakes.dcgm_exporter import FakeDcgmExporter
from tests.fakes.sse_server import FakeSSEServer
from tests.integration.test_telemetry_dcgm import EKS, VLLM_POD

PROMPT_LEN = 512
OUTPUT_LEN = 24


def _sweep(config: SweepConfig) -> tuple[SweepResult, list[SweepEvent]]:
    events: list[SweepEvent] = []

    async def main() -> SweepResult:
        return await asyncio.wait_for(run_sweep(config, events.append), timeout=240)

    return asyncio.run(main()), events


def _decode_kj_per_1m(config: TwinConfig, batch: int) -> float:
    """The twin's own step model: a pure decode step of ``batch`` sequences at PROMPT_LEN context."""
    from backends.twin.capacity import plan_memory
    from backends.twin.dcgm import GpuActivity
    from backends.twin.roofline import StepCost

    roofline = Roofline(config)
    activity = GpuActivity(config, plan_memory(config), roofline, 0.0)
    context = PROMPT_LEN + OUTPUT_LEN // 2
    step = float(roofline.decode_seconds(batch, np.array([batch * context]), np.array([0.0]))[0])
    cost = StepCost(
        tokens=batch,
        sampled=batch,
        sequences=batch,
        kv_full_tokens=batch * context,
        attn_full_pairs=batch * context,
    )
    _, dram, flops = activity.step_activity(cost, step)
    power = POWER_MODELS[config.gpu]
    watts = power.watts(dram / (activity.peak_bw * step), flops / (activity.peak_flops * step))
    return watts * step / batch * 1e6 / 1000.0


def test_sweep_against_a_live_twin_shows_power_rising_and_energy_per_token_falling() -> None:
    twin_config = TwinConfig.build("gemma-3-4b-it", "h100", 1, max_model_len=4096)
    with TwinServer(twin_config, log_sink=lambda line: None) as twin:
        target = asyncio.run(discover_target(twin.base_url))
        config = SweepConfig(
            target=target,
            dataset=DatasetSpec(kind="random", random_input_len=PROMPT_LEN, random_output_len=OUTPUT_LEN),
            axis=Axis.CONCURRENCY,
            levels=[1, 8, 32],
            num_prompts=32,
            output_len=OUTPUT_LEN,
            ignore_eos=True,
            usd_per_hour=11.06,
        )
        result, events = _sweep(config)
    gpus = [level.gpu for level in result.levels]
    assert all(g is not None and g.state == "ok" and g.simulated for g in gpus), gpus
    levels = [g for g in gpus if g is not None]
    durations = [level.metrics.duration for level in result.levels]
    mean_power = [
        g.energy_j / d for g, d in zip(levels, durations, strict=True) if g.energy_j is not None and d > 0
    ]
    assert len(mean_power) == 3 and all(g.energy_source == "counter" for g in levels)
    assert mean_power[0] < mean_power[1] < mean_power[2]
    idle = POWER_MODELS[twin_config.gpu].idle_w
    assert idle < mean_power[0] and mean_power[2] <= POWER_MODELS[twin_config.gpu].tdp_w
    per_1m = [g.kj_per_1m_output_tokens for g in levels]
    assert all(v is not None for v in per_1m)
    assert per_1m[0] > per_1m[1] > per_1m[2]  # type: ignore[operator]
    # One stream is almost all decode steps of batch 1: the measured energy per token is the model's
    # decode figure plus prefills, gaps between requests and any step this busy host ran late.
    model_1 = _decode_kj_per_1m(twin_config, 1)
    assert per_1m[0] == pytest.approx(model_1, rel=0.6)
    assert per_1m[0] >= 0.9 * model_1  # type: ignore[operator]
    usd = [g.usd_per_1m_output_tokens for g in levels]
    assert all(u is not None for u in usd) and usd[0] > usd[2]  # type: ignore[operator]
    # The live snapshots carry the GPUs beside the server's KV cache.
    live = [e for e in events if isinstance(e, ProgressSnapshot) and e.gpu is not None]
    assert live and all(e.gpu is not None and e.gpu.gpus == 1 for e in live)


def test_sweep_reads_a_given_exporter_and_keeps_only_the_target_pods_gpus() -> None:
    with FakeSSEServer(mode="tick") as server, FakeDcgmExporter(EKS) as exporter:
        target: Target = asyncio.run(discover_target(f"http://127.0.0.1:{server.port}"))
        base = SweepConfig(
            target=target,
            dataset=DatasetSpec(kind="random", random_input_len=16, random_output_len=8),
            axis=Axis.CONCURRENCY,
            levels=[4],
            num_prompts=8,
            output_len=8,
            gpu_metrics_url=exporter.url,
        )
        mine, _ = _sweep(base.model_copy(update={"gpu_metrics_pods": [VLLM_POD]}))
        everyone, _ = _sweep(base)
        nobody, _ = _sweep(base.model_copy(update={"gpu_metrics_pods": ["vllm-gemma-0"]}))
        assert exporter.hits >= 6
    gpu = mine.levels[0].gpu
    assert gpu is not None and gpu.state == "ok" and gpu.gpus == 1
    assert gpu.power_w_mean == pytest.approx(113.611)
    assert gpu.energy_source == "power x time"  # the recorded exposition has no energy counter
    all_gpus = everyone.levels[0].gpu
    assert all_gpus is not None and all_gpus.gpus == 8
    none = nobody.levels[0].gpu
    assert none is not None and none.state == "no-matching-gpu" and none.gpu_util_mean is None
    assert VLLM_POD in (none.message or "")
