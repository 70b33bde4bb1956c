"""The twin's prefill attention against causal chunks timed on an H200 (an H100's SMs and bf16 peak)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backends.twin.engine_config import TwinConfig
from backends.twin.roofline import Roofline, StepCost

MEASUREMENTS = Path(__file__).parents[1] / "benchmarks" / "twin_calibration" / "h200_measurements.json"
# Llama 3.1 8B: 32 heads of 128 like the timed shapes, and no sliding-window layers.
MODEL = "llama-3.1-8b-instruct"


def _chunks() -> list[dict[str, float]]:
    rows = json.loads(MEASUREMENTS.read_text())["runs"]["layer"]["rows"]
    return [r for r in rows if r["kind"] == "prefill_attention"]


def _layer_seconds(tp: int, tokens: int, context_before: int = 0) -> float:
    config = TwinConfig.build(MODEL, "h100", tp)
    roofline = Roofline(config)
    pairs = tokens * context_before + tokens * (tokens + 1) / 2
    cost = StepCost(
        tokens=tokens,
        sampled=1,
        sequences=1,
        kv_full_tokens=context_before + tokens,
        attn_full_pairs=pairs,
        prefill_tokens=tokens,
    )
    return roofline.breakdown(cost).attention_s / config.model.num_layers


@pytest.mark.parametrize(
    "chunk", [c for c in _chunks() if c["tokens"] >= 1024], ids=lambda c: f"tp{c['tp']}-{c['tokens']}"
)
def test_prefill_attention_is_within_16_percent_of_the_timed_chunks(chunk: dict[str, float]) -> None:
    predicted = _layer_seconds(int(chunk["tp"]), int(chunk["tokens"]))
    assert predicted == pytest.approx(chunk["seconds"], rel=0.16)


def test_all_eighteen_chunks_are_on_record() -> None:
    chunks = _chunks()
    assert {(int(c["tp"]), int(c["tokens"])) for c in chunks} == {
        (tp, m) for tp in (1, 2, 4) for m in (256, 512, 1024, 2048, 4096, 8192)
    }


def test_a_chunk_deep_in_a_long_prompt_runs_nearer_peak_than_a_fresh_one() -> None:
    """A 2048-token chunk after 30,000 tokens of context does ~16x the FLOPs of a fresh one per query row;
    the per-row and per-kernel times stay the same, so it reaches more of the peak (towards 0.62)."""
    fresh, deep = _layer_seconds(1, 2048), _layer_seconds(1, 2048, context_before=30_000)
    flops_ratio = (2048 * 30_000 + 2048 * 2049 / 2) / (2048 * 2049 / 2)
    assert flops_ratio / 2 < deep / fresh < flops_ratio * 0.8


def test_decode_steps_pay_no_prefill_row_or_kernel_time() -> None:
    roofline = Roofline(TwinConfig.build(MODEL, "h100", 1))
    # Eight short decodes: their attention sits at the kernel floor, below a prefill kernel's fixed time.
    decode = StepCost(tokens=8, sampled=8, sequences=8, kv_full_tokens=800, attn_full_pairs=800)
    with_prefill = StepCost(
        tokens=8, sampled=8, sequences=8, kv_full_tokens=800, attn_full_pairs=800, prefill_tokens=1
    )
    assert roofline.breakdown(decode).attention_s < roofline.breakdown(with_prefill).attention_s
    vectorised = roofline.decode_seconds(8, np.array([800.0]), np.array([0.0]))[0]
    assert vectorised == pytest.approx(roofline.step_seconds(decode))
