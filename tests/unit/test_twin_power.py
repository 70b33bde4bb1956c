"""The twin's H100 power model against the power measured on a lent H100 (scripts/gpu_power.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backends.twin.capacity import plan_memory
from backends.twin.dcgm import POWER_MODELS, GpuActivity
from backends.twin.engine_config import TwinConfig
from backends.twin.roofline import Roofline, StepCost

MEASURED = Path(__file__).parent.parent / "benchmarks" / "twin_calibration" / "h100_power.json"
CONTEXT = 128  # the measured phases were the layer matmuls alone: a short context keeps attention small


def _phases() -> dict[int, float]:
    data = json.loads(MEASURED.read_text())
    assert data["device"].startswith("NVIDIA H100")
    return {int(p["m"]): float(p["power_w"]) for p in data["phases"] if p["m"] > 0}


def _twin() -> tuple[TwinConfig, Roofline, GpuActivity]:
    config = TwinConfig.build("llama-3.1-8b-instruct", "h100", 1, max_model_len=4096)
    roofline = Roofline(config)
    return config, roofline, GpuActivity(config, plan_memory(config), roofline, 0.0)


def _decode(batch: int) -> StepCost:
    return StepCost(
        tokens=batch,
        sampled=batch,
        sequences=batch,
        kv_full_tokens=batch * CONTEXT,
        attn_full_pairs=float(batch * CONTEXT),
    )


def _linear_watts(batch: int) -> float:
    """The twin's power over the linear layers of a decode step of ``batch`` sequences of Llama-3.1-8B:
    what the script ran (those layers' matmuls back to back, no attention, no host gaps)."""
    config, roofline, activity = _twin()
    linear_s = roofline.breakdown(_decode(batch)).linear_s
    flops = roofline.linear_flops_per_token * batch + roofline.lm_head_flops_per_row * batch
    return POWER_MODELS[config.gpu].watts(
        roofline.weight_bytes / (activity.peak_bw * linear_s), flops / (activity.peak_flops * linear_s)
    )


def _busy_watts(batch: int) -> float:
    """The twin's power over the busy part of a whole decode step (attention and small kernels too)."""
    config, roofline, activity = _twin()
    kv = np.array([float(batch * CONTEXT)])
    step = float(roofline.decode_seconds(batch, kv, np.array([0.0]))[0])
    busy, dram, flops = activity.step_activity(_decode(batch), step)
    assert 0 < busy < step
    return POWER_MODELS[config.gpu].watts(
        dram / (activity.peak_bw * busy), flops / (activity.peak_flops * busy)
    )


@pytest.mark.parametrize("batch", [1, 16, 64, 256])
def test_twin_decode_power_is_within_ten_percent_of_the_h100_measurement(batch: int) -> None:
    measured = _phases()[batch]
    assert _linear_watts(batch) == pytest.approx(measured, rel=0.10)


def test_whole_decode_steps_rise_with_batch_to_the_cap_above_the_measured_idle() -> None:
    power = POWER_MODELS[_twin()[0].gpu]
    watts = [_busy_watts(m) for m in (1, 16, 64, 256, 1024)]
    assert watts == sorted(watts) and watts[-1] == power.tdp_w == 700.0
    # Attention and the small kernels stream less than the weights do: a whole step draws less.
    assert power.idle_w < watts[0] < _linear_watts(1)
    idle = [float(p["power_w"]) for p in json.loads(MEASURED.read_text())["phases"] if p["m"] == 0]
    assert power.watts(0.0, 0.0) == pytest.approx(np.mean(idle), rel=0.05)
