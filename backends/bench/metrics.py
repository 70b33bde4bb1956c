"""Benchmark metrics with exactly the definitions of ``vllm bench serve`` (reference/bench_anchors.md §1a).

``compute_metrics`` mirrors ``calculate_metrics()`` of vLLM's ``vllm/benchmarks/serve.py``:

- Only successful requests with a first token enter TTFT, TPOT, ITL, E2EL, token totals, goodput, the
  per-second token peak and the concurrency peak. A request marked successful that never got a token chunk
  is counted as failed, as vLLM does ("Never received a valid chunk to calculate TTFT").
- Statistics use vLLM's ``np.mean(xs or 0)`` idiom: an empty list (no completed request, or no request
  longer than one token for TPOT) gives 0 for mean, median, std and every percentile.
- Output lengths not reported by the server are estimated and the estimate is named in
  ``BenchmarkMetrics.notes`` and ``output_len_sources``.
- ``total_input_tokens`` sums the dataset's prompt lengths, as vLLM's client does; what the server counted
  (``usage.prompt_tokens``, chat template included) is kept as ``server_input_tokens``.
- One deliberate refinement: the per-second token peak counts each chunk's real token count when the
  stream reports it (vLLM counts one token per chunk; both agree for one-token chunks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from backends.bench.models import RequestRecord
from backends.errors import ConfigError

SLO_KEYS: tuple[str, ...] = ("ttft", "tpot", "e2el")
LATENCY_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")

OutputLenSource = Literal["usage", "chunks", "tokenizer", "default"]


class Distribution(BaseModel):
    """mean/median/std (population) and requested percentiles, all in milliseconds."""

    mean: float = 0.0
    median: float = 0.0
    std: float = 0.0
    percentiles: dict[str, float] = Field(
        default_factory=dict, description="percentile_key(p) ('99', '99.9') -> value in ms"
    )


class BenchmarkMetrics(BaseModel):
    completed: int
    failed: int
    duration: float
    total_input_tokens: int = Field(description="sum of the dataset's prompt lengths (vLLM's client)")
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
    good_completed: int | None = Field(default=None, description="requests meeting every SLO; None w/o SLOs")
    output_len_sources: dict[str, int] = Field(
        default_factory=dict, description="completed requests per output-length source (usage, chunks, ...)"
    )
    notes: list[str] = Field(default_factory=list, description="where a number is estimated, and how")
    server_input_tokens: int | None = Field(
        default=None,
        description="prompt tokens the server counted (usage.prompt_tokens, chat template included) over "
        "the completed requests; None when any of them did not report it",
    )
    ttft_minus_server_prompt: Distribution | None = Field(
        default=None,
        description=(
            "client TTFT minus the server's own prompt time (llama.cpp `timings.prompt_ms`) per request: "
            "what the network, the first decode step and the client add; None when the server reports none"
        ),
    )


def percentile_key(p: float) -> str:
    """vLLM's ``p_word``: 99 -> '99', 99.9 -> '99.9' (used as ``p{p_word}_ttft_ms``)."""
    return str(int(p)) if int(p) == p else str(p)


def validate_percentiles(percentiles: Iterable[float]) -> list[float]:
    """Percentiles in (0, 100], order kept, duplicates dropped; anything else is a ConfigError."""
    valid: list[float] = []
    for p in percentiles:
        value = float(p)
        if math.isnan(value) or not 0.0 < value <= 100.0:
            raise ConfigError(
                f"percentile {p!r} is out of range: metric percentiles must be in (0, 100], e.g. 50,90,99"
            )
        if value not in valid:
            valid.append(value)
    return valid


def validate_goodput_slos(slos_ms: Mapping[str, float] | None) -> dict[str, float]:
    """SLO keys must be ttft/tpot/e2el (as vLLM's --goodput), values non-negative milliseconds."""
    if not slos_ms:
        return {}
    valid: dict[str, float] = {}
    for key, value in slos_ms.items():
        if key not in SLO_KEYS:
            raise ConfigError(
                f"unknown goodput SLO {key!r}: use one of {', '.join(SLO_KEYS)} "
                "with a value in milliseconds, e.g. ttft:500 tpot:50"
            )
        number = float(value)
        if math.isnan(number) or number < 0:
            raise ConfigError(f"goodput SLO {key}:{value} must be a non-negative number of milliseconds")
        valid[key] = number
    return valid


def summarize(values_s: Sequence[float], percentiles: Sequence[float]) -> Distribution:
    """Seconds in, milliseconds out; an empty list summarizes to zeros like vLLM's ``xs or 0``."""
    data: Sequence[float] | float = values_s if len(values_s) > 0 else 0.0
    return Distribution(
        mean=float(np.mean(data)) * 1000,
        median=float(np.median(data)) * 1000,
        std=float(np.std(data)) * 1000,
        percentiles={percentile_key(p): float(np.percentile(data, p)) * 1000 for p in percentiles},
    )


def resolve_output_len(
    record: RequestRecord, tokenizer_fallback: Callable[[RequestRecord], int] | None = None
) -> tuple[int, OutputLenSource]:
    """Output tokens of one request: server usage, else streamed chunk tokens, else tokenizer, else 1.

    vLLM treats a missing or zero ``completion_tokens`` as unknown (``if not output_len``), re-tokenizes
    the text when it has a tokenizer and otherwise takes 1. Chunk token counts are exact whenever the
    stream reports them, so they come before the tokenizer.
    """
    if record.output_tokens:
        return record.output_tokens, "usage"
    chunk_total = sum(record.chunk_tokens)
    if chunk_total > 0:
        return chunk_total, "chunks"
    if tokenizer_fallback is not None:
        return max(0, tokenizer_fallback(record)), "tokenizer"
    return 1, "default"


def is_completed(record: RequestRecord) -> bool:
    """vLLM's ``success``: the request succeeded and at least one token-bearing chunk arrived."""
    return record.success and record.sent_at is not None and record.first_token_at is not None


def _end_to_end(record: RequestRecord, sent_at: float, first_token_at: float) -> float:
    last_chunk = record.chunk_times[-1] if record.chunk_times else first_token_at
    return last_chunk - sent_at


def request_latency(record: RequestRecord) -> float | None:
    """E2EL of a completed request (send to last token-bearing chunk); None for a failed one."""
    if not is_completed(record):
        return None
    assert record.sent_at is not None and record.first_token_at is not None  # is_completed checked
    return _end_to_end(record, record.sent_at, record.first_token_at)


def _peak_tokens_per_second(completed: Sequence[RequestRecord]) -> float:
    """Largest count of output tokens in one 1-second bucket, buckets counted from the earliest send.

    Same buckets as vLLM (``int(t - min_start)`` over ``ceil(max_end - min_start) + 1`` seconds). vLLM
    rebuilds token times as start + ttft + cumulative ITL, i.e. the chunk times we store, and counts one
    token per chunk; we count each chunk's tokens when the stream reported them.
    """
    if not completed:
        return 0.0
    origin = min(r.sent_at for r in completed if r.sent_at is not None)
    ends = [r.chunk_times[-1] if r.chunk_times else r.first_token_at for r in completed]
    horizon = max(end for end in ends if end is not None)
    buckets = np.zeros(int(np.ceil(horizon - origin)) + 1)
    for record in completed:
        times = record.chunk_times or ([record.first_token_at] if record.first_token_at is not None else [])
        tokens: Sequence[int] = (
            record.chunk_tokens if len(record.chunk_tokens) == len(times) else [1] * len(times)
        )
        for t, n in zip(times, tokens, strict=True):
            bucket = int(t - origin)
            if 0 <= bucket < len(buckets):
                buckets[bucket] += n
    return float(np.max(buckets))


def _peak_concurrency(intervals: Sequence[tuple[float, float]]) -> int:
    """Exact peak of overlapping half-open [start, end) intervals (vLLM's sweep-line)."""
    events = [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals]
    # At equal times the departure (-1) sorts before the arrival (+1): half-open intervals.
    events.sort()
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def compute_metrics(
    records: Sequence[RequestRecord],
    duration_s: float,
    *,
    goodput_slos_ms: Mapping[str, float] | None,
    percentiles: Sequence[float],
    tokenizer_fallback: Callable[[RequestRecord], int] | None = None,
) -> BenchmarkMetrics:
    """The numbers ``vllm bench serve`` prints and saves, from one level's request records.

    ``duration_s`` is vLLM's ``benchmark_duration``: from just before the first dispatch to after the
    last request finished. Rates are 0 when it is 0 (a level stopped before anything was sent).
    """
    if math.isnan(duration_s) or math.isinf(duration_s) or duration_s < 0:
        raise ConfigError(f"benchmark duration must be a finite number of seconds >= 0, got {duration_s}")
    slos = validate_goodput_slos(goodput_slos_ms)
    selected = validate_percentiles(percentiles)

    completed_records: list[RequestRecord] = []
    ttfts: list[float] = []
    e2els: list[float] = []
    tpots: list[float] = []
    all_tpots: list[float] = []  # with 0 for output_len <= 1, for goodput only
    itls: list[float] = []
    queue_times: list[float] = []
    intervals: list[tuple[float, float]] = []
    total_input = 0
    server_input: int | None = 0
    total_output = 0
    sources: dict[str, int] = {}

    for record in records:
        if not is_completed(record):
            continue
        assert record.sent_at is not None and record.first_token_at is not None  # is_completed checked
        completed_records.append(record)
        output_len, source = resolve_output_len(record, tokenizer_fallback)
        sources[source] = sources.get(source, 0) + 1
        total_output += output_len
        total_input += record.prompt_len
        if record.input_tokens is None:
            server_input = None
        elif server_input is not None:
            server_input += record.input_tokens

        ttft = record.first_token_at - record.sent_at
        e2el = _end_to_end(record, record.sent_at, record.first_token_at)
        tpot = 0.0
        if output_len > 1:
            tpot = (e2el - ttft) / (output_len - 1)
            tpots.append(tpot)
        all_tpots.append(tpot)
        ttfts.append(ttft)
        e2els.append(e2el)
        itls.extend(record.itls)
        queue_times.append(record.sent_at - record.queued_at)
        intervals.append((record.sent_at, record.sent_at + e2el))

    completed = len(completed_records)
    server_gaps = [
        ttft - record.server_timings["prompt_ms"] / 1000.0
        for record, ttft in zip(completed_records, ttfts, strict=True)
        if record.server_timings and "prompt_ms" in record.server_timings
    ]
    good_completed: int | None = None
    if slos:
        measured = {"ttft": ttfts, "tpot": all_tpots, "e2el": e2els}
        good_completed = sum(
            1
            for i in range(completed)
            if all(slo_ms / 1000 >= measured[key][i] for key, slo_ms in slos.items())
        )

    def rate(count: float) -> float:
        return count / duration_s if duration_s > 0 else 0.0

    return BenchmarkMetrics(
        completed=completed,
        failed=len(records) - completed,
        duration=duration_s,
        total_input_tokens=total_input,
        total_output_tokens=total_output,
        request_throughput=rate(completed),
        request_goodput=rate(good_completed) if good_completed is not None else None,
        output_throughput=rate(total_output),
        total_token_throughput=rate(total_input + total_output),
        max_output_tokens_per_s=_peak_tokens_per_second(completed_records),
        max_concurrent_requests=_peak_concurrency(intervals),
        ttft=summarize(ttfts, selected),
        tpot=summarize(tpots, selected),
        itl=summarize(itls, selected),
        e2el=summarize(e2els, selected),
        client_queue_time=summarize(queue_times, selected),
        good_completed=good_completed,
        output_len_sources=sources,
        notes=_notes(completed, sources),
        server_input_tokens=server_input if completed else None,
        ttft_minus_server_prompt=summarize(server_gaps, selected) if server_gaps else None,
    )


def _notes(completed: int, sources: Mapping[str, int]) -> list[str]:
    notes: list[str] = []
    estimated = completed - sources.get("usage", 0)
    if estimated:
        how = {
            "chunks": "counted from streamed chunks",
            "tokenizer": "re-tokenized from the text",
            "default": "taken as 1 token (vLLM's rule without a tokenizer)",
        }
        parts = [f"{sources[k]} {how[k]}" for k in ("chunks", "tokenizer", "default") if sources.get(k)]
        notes.append(
            f"{estimated} of {completed} completed requests had no usage.completion_tokens; "
            f"their output lengths: {', '.join(parts)}"
        )
    return notes


# Errors the load generator gives a request that never got a byte from the server (worker.py's
# connect failure, stream_protocol.py's close before any response).
_UNREACHED_PREFIXES = ("cannot connect to ", "connection closed by server before any response")


def never_reached_server(record: RequestRecord) -> bool:
    """The request failed before the server answered anything: refused, reset or closed on connect."""
    error = record.error
    return (
        not record.success
        and error is not None
        and record.http_status is None
        and not record.chunk_times
        and error.startswith(_UNREACHED_PREFIXES)
    )


_CAUSE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("connection refused", "connection refused"),
    ("connection reset", "connection reset"),
    ("connection closed by server before any response", "connection closed before any response"),
    ("connection closed by server mid-stream", "connection closed mid-stream"),
    ("timed out", "timed out"),
    ("server stalled", "server stalled"),
    ("malformed", "malformed SSE"),
    ("stream ended without [done]", "stream ended without [DONE]"),
    ("no tokens received", "no tokens received"),
)


def failure_cause(error: str) -> str:
    """A short cause that groups errors which differ only in detail ("HTTP 500", "connection refused")."""
    if error.startswith("HTTP "):
        return error.split(":", 1)[0]
    lowered = error.lower()
    for needle, cause in _CAUSE_PATTERNS:
        if needle in lowered:
            return cause
    return error if len(error) <= 60 else error[:57] + "..."


def failure_causes(records: Iterable[RequestRecord]) -> list[tuple[str, int]]:
    """(cause, count) of the failed requests, most frequent first."""
    counts: dict[str, int] = {}
    for record in records:
        if not is_completed(record):
            cause = failure_cause(record.error or "no tokens received")
            counts[cause] = counts.get(cause, 0) + 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def describe_failures(records: Iterable[RequestRecord]) -> str | None:
    """ "12 failed: 8 HTTP 500, 4 connection refused"; None when nothing failed."""
    causes = failure_causes(records)
    if not causes:
        return None
    total = sum(n for _, n in causes)
    return f"{total} failed: " + ", ".join(f"{n} {cause}" for cause, n in causes)
