"""Benchmark metrics with exactly the definitions of ``vllm bench serve`` (see reference/bench_anchors.md §1a).

``compute_metrics`` is implemented in this module; the model below is the stable interface.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Distribution(BaseModel):
    """mean/median/std (population) and requested percentiles, all in milliseconds."""

    mean: float = 0.0
    median: float = 0.0
    std: float = 0.0
    percentiles: dict[str, float] = Field(default_factory=dict, description="'99' -> value in ms")


class BenchmarkMetrics(BaseModel):
    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    request_goodput: float | None
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    client_queue_time: Distribution
