"""The twin's ``/metrics``: vLLM V1's Prometheus names, labels, buckets and text layout.

Names, help strings and histogram buckets follow ``vllm/v1/metrics/loggers.py`` (v0.11/0.12 era,
reference/vllm_k8s_facts.md §1a): every engine metric carries ``engine`` and ``model_name`` labels,
label names appear sorted (prometheus_client's exposition order), counters are exposed with ``_total``.
``servedeck:simulated 1`` marks the server as a twin: ServeDeck's scraper labels it "twin" from that.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISH_REASONS = ("stop", "length", "abort")


class Histogram:
    """Cumulative-bucket histogram with prometheus semantics (a value lands in every ``le >= value``)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds: tuple[float, ...] = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.count += times
        self.total += value * times

    def cumulative(self) -> list[tuple[float, int]]:
        running = 0
        out: list[tuple[float, int]] = []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class RequestHistograms:
    """Per-request latencies the server observes in real time (vLLM measures them in the engine)."""

    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(REQUEST_LATENCY_BUCKETS))
    success: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))


@dataclass(frozen=True)
class EngineGauges:
    """The engine's state and counters at scrape time."""

    running: int
    waiting: int
    kv_cache_usage: float
    prompt_tokens_total: int
    generation_tokens_total: int
    preemptions_total: int
    prefix_cache_queries_total: int
    prefix_cache_hits_total: int


def format_value(value: float) -> str:
    """prometheus_client's float rendering: ``1.0``, ``0.25``, ``+Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(labels[key])}"' for key in sorted(labels))
    return "{" + inner + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {format_value(value)}")

    def histogram(self, name: str, help_text: str, labels: Mapping[str, str], histogram: Histogram) -> None:
        self.family(name, "histogram", help_text)
        for bound, count in histogram.cumulative():
            self.sample(f"{name}_bucket", {**labels, "le": format_value(bound)}, count)
        self.sample(f"{name}_count", labels, histogram.count)
        self.sample(f"{name}_sum", labels, histogram.total)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(
    model_name: str,
    gauges: EngineGauges,
    histograms: RequestHistograms,
    cache_config: Mapping[str, str],
    twin_info: Mapping[str, str],
) -> str:
    """The full exposition text of one scrape."""
    labels = {"engine": "0", "model_name": model_name}
    out = _Writer()
    out.family("servedeck:simulated", "gauge", "1: this server is a ServeDeck twin (simulated vLLM, no GPU).")
    out.sample("servedeck:simulated", {}, 1)
    out.family("servedeck:twin_info", "gauge", "The hardware and model profile the twin simulates.")
    out.sample("servedeck:twin_info", twin_info, 1)

    out.family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
    out.sample("vllm:num_requests_running", labels, gauges.running)
    out.family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
    out.sample("vllm:num_requests_waiting", labels, gauges.waiting)
    out.family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.")
    out.sample("vllm:kv_cache_usage_perc", labels, gauges.kv_cache_usage)

    counters = (
        (
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            gauges.prefix_cache_queries_total,
        ),
        (
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
            gauges.prefix_cache_hits_total,
        ),
        (
            "vllm:num_preemptions_total",
            "Cumulative number of preemption from the engine.",
            gauges.preemptions_total,
        ),
        ("vllm:prompt_tokens_total", "Number of prefill tokens processed.", gauges.prompt_tokens_total),
        (
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            gauges.generation_tokens_total,
        ),
    )
    for name, help_text, value in counters:
        out.family(name, "counter", help_text)
        out.sample(name, labels, value)
    out.family("vllm:request_success_total", "counter", "Count of successfully processed requests.")
    for reason in FINISH_REASONS:
        out.sample(
            "vllm:request_success_total", {**labels, "finished_reason": reason}, histograms.success[reason]
        )

    out.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        labels,
        histograms.ttft,
    )
    out.histogram(
        "vllm:inter_token_latency_seconds",
        "Histogram of inter-token latency in seconds.",
        labels,
        histograms.itl,
    )
    out.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        labels,
        histograms.e2e,
    )
    out.family("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
    out.sample("vllm:cache_config_info", {**cache_config, "engine": "0"}, 1)
    return out.text()
