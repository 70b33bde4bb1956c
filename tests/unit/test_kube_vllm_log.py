"""vLLM's periodic stats log line -> VllmStatsLine -> ServerSnapshot, across vLLM versions."""

from __future__ import annotations

import pytest

from backends.kube.vllm_log import parse_vllm_stats_line

V1_V0_10 = (
    "INFO 05-12 10:23:45 [loggers.py:116] Engine 000: Avg prompt throughput: 1523.4 tokens/s, "
    "Avg generation throughput: 812.7 tokens/s, Running: 37 reqs, Waiting: 0 reqs, "
    "GPU KV cache usage: 43.1%, Prefix cache hit rate: 26.0%"
)
V1_V0_11_PREEMPT = (
    "(APIServer pid=1) INFO 10-01 12:00:05 [loggers.py:123] Engine 001: Avg prompt throughput: 0.0 tokens/s, "
    "Avg generation throughput: 2987.5 tokens/s, Running: 256 reqs, Waiting: 12 reqs, Preemptions: 3, "
    "GPU KV cache usage: 99.8%, Prefix cache hit rate: 0.0%"
)
V1_AGGREGATED_EXTRAS = (
    "INFO 11-20 08:00:00 [loggers.py:150] 4 Engines Aggregated: Avg prompt throughput: 10.5 tokens/s, "
    "Avg generation throughput: 20.25 tokens/s, Running: 5 reqs, Waiting: 1 reqs, Corrupted: 0 reqs, "
    "GPU KV cache usage: 5.5%, Prefix cache hit rate: 50.0%, External prefix cache hit rate: 12.5%, "
    "MM cache hit rate: 80.0%"
)
V1_EARLY = (
    "INFO 02-20 11:02:03 [loggers.py:72] Avg prompt throughput: 120.0 tokens/s, "
    "Avg generation throughput: 45.3 tokens/s, Running: 2 reqs, Waiting: 0 reqs "
)
V0 = (
    "INFO 08-07 12:01:02 metrics.py:351] Avg prompt throughput: 411.8 tokens/s, Avg generation throughput: "
    "230.4 tokens/s, Running: 8 reqs, Swapped: 1 reqs, Pending: 4 reqs, GPU KV cache usage: 93.5%, "
    "CPU KV cache usage: 2.0%."
)


def test_v1_engine_line_of_vllm_0_8_to_0_10() -> None:
    stats = parse_vllm_stats_line(V1_V0_10)
    assert stats is not None
    assert stats.source == "vllm-v1"
    assert stats.engine == 0
    assert stats.prompt_tokens_per_s == pytest.approx(1523.4)
    assert stats.generation_tokens_per_s == pytest.approx(812.7)
    assert (stats.running, stats.waiting) == (37, 0)
    assert stats.gpu_kv_cache_usage == pytest.approx(0.431)
    assert stats.prefix_cache_hit_rate == pytest.approx(0.26)
    assert stats.preemptions is None and stats.swapped is None


def test_v1_line_of_vllm_0_11_with_process_prefix_and_preemptions() -> None:
    stats = parse_vllm_stats_line(V1_V0_11_PREEMPT)
    assert stats is not None
    assert stats.engine == 1
    assert (stats.running, stats.waiting, stats.preemptions) == (256, 12, 3)
    assert stats.gpu_kv_cache_usage == pytest.approx(0.998)
    assert stats.prefix_cache_hit_rate == 0.0


def test_v1_aggregated_line_with_optional_parts() -> None:
    stats = parse_vllm_stats_line(V1_AGGREGATED_EXTRAS)
    assert stats is not None
    assert stats.engine is None and stats.engines_aggregated == 4
    assert stats.generation_tokens_per_s == pytest.approx(20.25)
    assert stats.corrupted == 0
    assert stats.external_prefix_cache_hit_rate == pytest.approx(0.125)
    assert stats.mm_cache_hit_rate == pytest.approx(0.8)


def test_early_v1_line_without_kv_usage() -> None:
    stats = parse_vllm_stats_line(V1_EARLY)
    assert stats is not None
    assert stats.source == "vllm-v1"
    assert (stats.running, stats.waiting) == (2, 0)
    assert stats.gpu_kv_cache_usage is None


def test_v0_line_reads_pending_as_waiting() -> None:
    stats = parse_vllm_stats_line(V0)
    assert stats is not None
    assert stats.source == "vllm-v0"
    assert (stats.running, stats.waiting, stats.swapped) == (8, 4, 1)
    assert stats.gpu_kv_cache_usage == pytest.approx(0.935)
    assert stats.cpu_kv_cache_usage == pytest.approx(0.02)


def test_snapshot_matches_the_metrics_snapshot_shape() -> None:
    stats = parse_vllm_stats_line(V1_V0_10)
    assert stats is not None
    snapshot = stats.to_snapshot(12.5)
    assert snapshot.t == 12.5
    assert snapshot.source == "vllm-v1"
    assert (snapshot.running, snapshot.waiting) == (37.0, 0.0)
    assert snapshot.kv_cache_usage == pytest.approx(0.431)
    assert snapshot.prompt_tokens_total is None  # the log line has rates, not counters


@pytest.mark.parametrize(
    "line",
    [
        "INFO 05-12 10:23:40 [api_server.py:1090] Starting vLLM API server 0 on http://0.0.0.0:8000",
        'INFO:     10.8.0.1:53422 - "GET /health HTTP/1.1" 200 OK',
        "INFO 05-12 10:23:45 [loggers.py:116] Engine 000: Avg prompt throughput: lots tokens/s",
        "Avg prompt throughput: 1.0 tokens/s, Avg generation throughput: 2.0 tokens/s",  # no running/waiting
        "INFO 08-07 12:01:02 metrics.py:367] Prefix cache hit rate: GPU: 12.50%, CPU: 0.00%",
        "",
    ],
)
def test_other_lines_are_not_stats(line: str) -> None:
    assert parse_vllm_stats_line(line) is None
