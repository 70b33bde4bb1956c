"""How fast one chat answer arrived, with vLLM's definitions of the timing metrics.

Times are seconds on the client's monotonic clock (``time.perf_counter``), measured from just before
the request is sent. A *token chunk* is a streamed chunk that carries answer text; the role-only
chunk that opens a stream and the empty chunk that closes it (llama.cpp sends both) carry none, so
they move no timing.

- TTFT: arrival of the first token chunk.
- ITL: the gaps between consecutive token chunks (per chunk, like vLLM's benchmark).
- E2E: arrival of the last token chunk (vLLM: "only token chunks advance the request end").
- TPOT: ``(e2e - ttft) / (output_tokens - 1)`` when more than one token came back.
- Output tokens: the server's ``usage.completion_tokens`` when it sent usage, else the chunk count.
- Tokens/s: ``output_tokens / e2e``, what the user felt for the whole answer.
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel, Field, computed_field


class AnswerStats(BaseModel):
    """The timing of one answer so far (``partial``) or in full."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = Field(default_factory=list)
    output_tokens: int = 0
    output_tokens_source: Literal["usage", "chunks"] = "chunks"
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    partial: bool = True
    server_timings: dict[str, float] | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tokens_per_s(self) -> float | None:
        if not self.output_tokens or not self.e2e_s:
            return None
        return self.output_tokens / self.e2e_s


class StatsAccumulator:
    """Collects chunk arrival times for one answer and turns them into ``AnswerStats``."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.chunk_times: list[float] = []
        self.usage_completion_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.finish_reason: str | None = None
        self.server_timings: dict[str, float] | None = None

    def on_token_chunk(self, arrived_at: float) -> float:
        """Record a token chunk; returns its time since the request was sent."""
        self.chunk_times.append(arrived_at)
        return arrived_at - self.started_at

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_times)

    def snapshot(self, *, partial: bool = True) -> AnswerStats:
        output_tokens = self.chunk_count
        source: Literal["usage", "chunks"] = "chunks"
        if self.usage_completion_tokens is not None:
            output_tokens = self.usage_completion_tokens
            source = "usage"
        return _timing(self.started_at, self.chunk_times, output_tokens).model_copy(
            update={
                "output_tokens_source": source,
                "prompt_tokens": self.prompt_tokens,
                "finish_reason": self.finish_reason,
                "partial": partial,
                "server_timings": self.server_timings,
            }
        )

    def running(self, chunks: int) -> AnswerStats:
        """The stats as they stood when token chunk number ``chunks`` arrived: the chunks' timing only
        (usage, finish reason and server timings come with the end of the stream)."""
        return _timing(self.started_at, self.chunk_times[:chunks], chunks)


def _timing(started_at: float, times: list[float], output_tokens: int) -> AnswerStats:
    ttft = times[0] - started_at if times else None
    e2e = times[-1] - started_at if times else None
    tpot = None
    if ttft is not None and e2e is not None and output_tokens > 1:
        tpot = (e2e - ttft) / (output_tokens - 1)
    return AnswerStats(
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=e2e,
        itl_s=[later - earlier for earlier, later in itertools.pairwise(times)],
        output_tokens=output_tokens,
    )


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation, as numpy's default (vLLM's ITL p99)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
