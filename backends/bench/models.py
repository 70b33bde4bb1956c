"""Typed data that crosses the bench core's boundaries.

Times inside one level are seconds on the load generator's monotonic clock
(``time.perf_counter``) measured from the level's start, so records from a worker process can
be merged without wall-clock skew.
"""

from __future__ import annotations

import itertools
import math
from enum import StrEnum

from pydantic import BaseModel, Field

from backends.target_types import ServerSnapshot
from backends.telemetry.models import GpuSummary


class SampledRequest(BaseModel):
    """One prompt drawn from a dataset, with its token counts and asked output length."""

    prompt: str
    prompt_len: int
    expected_output_len: int
    arrival_s: float | None = Field(
        default=None, description="trace replay: seconds from the level start (scaled); None: the level's"
    )


class SampledTurn(BaseModel):
    """One user turn of a conversation, with the dataset's answer to it."""

    user: str
    answer: str
    user_len: int
    answer_len: int
    expected_output_len: int


class SampledConversation(BaseModel):
    """A conversation replayed turn by turn by one simulated user (a session)."""

    turns: list[SampledTurn]


class Axis(StrEnum):
    CONCURRENCY = "concurrency"
    REQUEST_RATE = "request-rate"


class LoadLevel(BaseModel):
    """One point of a sweep.

    Closed loop: ``max_concurrency`` requests in flight, all released at t=0 (rate = inf).
    Open loop: Poisson (burstiness 1) or gamma arrivals at ``request_rate`` req/s.
    """

    axis: Axis
    value: float
    burstiness: float = 1.0
    max_concurrency: int | None = None
    ramp_up_strategy: str | None = Field(
        default=None, description="linear | exponential: the rate ramps within the level (vLLM's ramp-up)"
    )
    ramp_up_start_rps: float | None = None
    ramp_up_end_rps: float | None = None

    @property
    def request_rate(self) -> float:
        return self.value if self.axis is Axis.REQUEST_RATE else math.inf

    @property
    def ramp_up(self) -> tuple[str, float, float] | None:
        if self.ramp_up_strategy is None or self.ramp_up_start_rps is None or self.ramp_up_end_rps is None:
            return None
        return self.ramp_up_strategy, self.ramp_up_start_rps, self.ramp_up_end_rps

    @property
    def concurrency_cap(self) -> int | None:
        if self.axis is Axis.CONCURRENCY:
            return int(self.value)
        return self.max_concurrency

    @property
    def label(self) -> str:
        if self.axis is Axis.CONCURRENCY:
            return f"concurrency {int(self.value)}"
        if self.ramp_up is not None:
            strategy, start, end = self.ramp_up
            return f"{start:g}->{end:g} req/s {strategy}"
        return f"{self.value:g} req/s"


class RequestRecord(BaseModel):
    """Everything measured about one request. Times are seconds from the level's start."""

    index: int
    prompt_len: int
    expected_output_len: int
    queued_at: float
    sent_at: float | None = None
    first_token_at: float | None = None
    chunk_times: list[float] = Field(default_factory=list)
    chunk_tokens: list[int] = Field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None
    success: bool = False
    server_timings: dict[str, float] | None = None
    session: int | None = Field(default=None, description="multi-turn: the session (user) it belongs to")
    turn: int | None = Field(default=None, description="multi-turn: its turn index in the session, from 0")
    probe_emit_arrival_ns: list[int] | None = Field(
        default=None,
        description="calibration only: server emit_ns, client arrival time_ns, flat pairs, per chunk "
        "(flat: a list of ints is one object for the garbage collector, a list of pairs is one per chunk)",
    )

    @property
    def ttft(self) -> float | None:
        if self.sent_at is None or self.first_token_at is None:
            return None
        return self.first_token_at - self.sent_at

    @property
    def latency(self) -> float | None:
        if self.sent_at is None or not self.chunk_times:
            return None
        return self.chunk_times[-1] - self.sent_at

    @property
    def queue_time(self) -> float | None:
        if self.sent_at is None:
            return None
        return self.sent_at - self.queued_at

    @property
    def itls(self) -> list[float]:
        times = self.chunk_times
        return [b - a for a, b in itertools.pairwise(times)]


class TurnMetrics(BaseModel):
    """Multi-turn: the requests of one turn index across a level's sessions."""

    turn: int = Field(description="from 0")
    requests: int
    completed: int
    mean_prompt_len: float = Field(description="tokens, history included")
    mean_ttft_ms: float | None = None
    median_ttft_ms: float | None = None
    p99_ttft_ms: float | None = None
    prefix_cache_hit_rate: float | None = Field(
        default=None, description="0..1, from the server's per-request counts (llama.cpp timings.cache_n)"
    )


class ClientStats(BaseModel):
    """How hard the load generator itself worked during one level."""

    loop_lag_p50_ms: float = 0.0
    loop_lag_p99_ms: float = 0.0
    loop_lag_max_ms: float = 0.0
    cpu_percent: float = 0.0
    cpu_seconds: float = 0.0
    workers: int = 1
    client_limited: bool = False
    reason: str | None = Field(default=None, description="why the client distorted the numbers")
    note: str | None = Field(default=None, description="host contention that did not distort them")


class ProgressSnapshot(BaseModel):
    """Emitted about once a second while a level runs."""

    level_index: int
    level_label: str
    t: float
    total: int
    sent: int
    completed: int
    failed: int
    in_flight: int
    output_tokens_per_s: float
    recent_ttft_ms: list[float] = Field(default_factory=list)
    server: ServerSnapshot | None = None
    gpu: GpuSummary | None = Field(default=None, description="the target's GPUs (dcgm-exporter), when read")
