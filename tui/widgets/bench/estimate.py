"""A rough duration of a planned sweep, shown before it starts, and the form's defaults per target.

The local engine (Gemma 3 270M on llama.cpp, on this machine's CPU) decodes a few tens of tokens a
second in all, so the GPU-sized defaults (1,4,16 x 100 prompts x 256 tokens) would run for many
minutes; it gets smaller defaults. The estimate is deliberately simple: closed loop, every request
generating the output length, a per-stream decode rate per kind of target, capped where the engine
is compute-bound. It says "about", and how it was reckoned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from backends.bench.models import Axis
from backends.target_types import TargetKind


@dataclass(frozen=True)
class LoadDefaults:
    levels: str
    num_prompts: str
    output_len: str


GPU_DEFAULTS = LoadDefaults(levels="1,4,16", num_prompts="100", output_len="256")
LOCAL_DEFAULTS = LoadDefaults(levels="1,2,4", num_prompts="16", output_len="64")

# Per-stream decode tokens/s, and the aggregate a target cannot exceed (None: scales with load).
# Local engine: measured order of magnitude on 2 shared cores; others: a GPU server's ~20 ms TPOT.
STREAM_TOKENS_PER_S: dict[TargetKind, float] = {
    TargetKind.LLAMACPP: 30.0,
    TargetKind.TWIN: 50.0,
    TargetKind.VLLM: 50.0,
    TargetKind.OPENAI: 50.0,
}
AGGREGATE_CAP_TOKENS_PER_S: dict[TargetKind, float | None] = {
    TargetKind.LLAMACPP: 60.0,
    TargetKind.TWIN: None,
    TargetKind.VLLM: None,
    TargetKind.OPENAI: None,
}
DEFAULT_OUTPUT_TOKENS = 200  # a ShareGPT answer, when the output length is left blank


def defaults_for(kinds: Sequence[TargetKind]) -> LoadDefaults:
    """Smaller defaults when the local CPU engine is among the targets."""
    return LOCAL_DEFAULTS if TargetKind.LLAMACPP in kinds else GPU_DEFAULTS


def level_seconds(kind: TargetKind, axis: Axis, level: float, num_prompts: int, output_len: int) -> float:
    stream = STREAM_TOKENS_PER_S[kind]
    cap = AGGREGATE_CAP_TOKENS_PER_S[kind]
    tokens = num_prompts * output_len
    if axis is Axis.CONCURRENCY:
        lanes = max(1.0, min(level, num_prompts))
        aggregate = lanes * stream if cap is None else min(lanes * stream, cap)
        return tokens / aggregate
    # Open loop: arrivals take num_prompts / rate; the last answer still has to be generated.
    arrivals = num_prompts / level if level > 0 else math.inf
    generation = tokens / cap if cap is not None else 0.0
    return max(arrivals, generation) + output_len / stream


def sweep_seconds(
    kinds: Sequence[TargetKind], axis: Axis, levels: Sequence[float], num_prompts: int, output_len: int | None
) -> float:
    """Seconds for every target's sweep, one after another."""
    out = output_len if output_len else DEFAULT_OUTPUT_TOKENS
    return sum(level_seconds(kind, axis, level, num_prompts, out) for kind in kinds for level in levels)


def format_estimate(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "cannot estimate"
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    return f"about {seconds / 60:.0f} min"
