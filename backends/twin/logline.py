"""vLLM's periodic stats line (``LoggingStatLogger``), written by the twin every interval.

Format of the v0.11+/0.12-era ``vllm/v1/metrics/loggers.py`` (reference/vllm_k8s_facts.md §2)::

    INFO 05-14 10:22:33 [loggers.py:0] Engine 000: Avg prompt throughput: 1523.4 tokens/s,
    Avg generation throughput: 812.7 tokens/s, Running: 37 reqs, Waiting: 0 reqs,
    GPU KV cache usage: 43.1%, Prefix cache hit rate: 26.0%

(one line), with ``Preemptions: N`` before the KV usage when the interval had any. Like vLLM, a line is
written only when this or the previous interval had throughput (an idle server stays quiet), and the
default interval is ``VLLM_LOG_STATS_INTERVAL``'s 10 s. The prefix cache hit rate is over the interval's
queried tokens (vLLM keeps a window of recent requests; over a 10 s interval the two agree closely).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 10.0
# vLLM's logging format: "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s", "%m-%d %H:%M:%S".
# The twin has no vLLM source line: it names the module that writes the line in vLLM, with line 0.
_SOURCE_TAG = "[loggers.py:0]"


@dataclass(frozen=True)
class StatsCounters:
    """Cumulative engine counters (and gauges) at one moment."""

    prompt_tokens: int
    generation_tokens: int
    preemptions: int
    prefix_queries: int
    prefix_hits: int
    running: int
    waiting: int
    kv_cache_usage: float


def format_stats_message(
    engine_index: int,
    prompt_throughput: float,
    generation_throughput: float,
    running: int,
    waiting: int,
    preemptions: int,
    kv_cache_usage: float,
    prefix_hit_rate: float,
) -> str:
    """The message part of vLLM's line (everything after the ``[file:line]`` tag)."""
    parts = [
        f"Avg prompt throughput: {prompt_throughput:.1f} tokens/s",
        f"Avg generation throughput: {generation_throughput:.1f} tokens/s",
        f"Running: {running} reqs",
        f"Waiting: {waiting} reqs",
    ]
    if preemptions > 0:
        parts.append(f"Preemptions: {preemptions}")
    parts.append(f"GPU KV cache usage: {kv_cache_usage * 100:.1f}%")
    parts.append(f"Prefix cache hit rate: {prefix_hit_rate * 100:.1f}%")
    return f"Engine {engine_index:03d}: " + ", ".join(parts)


def format_log_line(message: str, wall_time: float | None = None, level: str = "INFO") -> str:
    stamp = time.strftime("%m-%d %H:%M:%S", time.localtime(time.time() if wall_time is None else wall_time))
    return f"{level} {stamp} {_SOURCE_TAG} {message}"


class StatsLogger:
    """Turns cumulative counters sampled every interval into vLLM's periodic line."""

    def __init__(self, engine_index: int = 0) -> None:
        self.engine_index = engine_index
        self._last: StatsCounters | None = None
        self._last_t = 0.0
        self._last_had_throughput = False

    def start(self, counters: StatsCounters, t: float) -> None:
        self._last = counters
        self._last_t = t

    def line(self, counters: StatsCounters, t: float, wall_time: float | None = None) -> str | None:
        """The line for the interval ending at ``t``, or None when it and the previous one were idle."""
        previous, previous_t = self._last, self._last_t
        self._last, self._last_t = counters, t
        if previous is None:
            return None
        elapsed = max(t - previous_t, 1e-9)
        prompt_tps = (counters.prompt_tokens - previous.prompt_tokens) / elapsed
        generation_tps = (counters.generation_tokens - previous.generation_tokens) / elapsed
        queries = counters.prefix_queries - previous.prefix_queries
        hits = counters.prefix_hits - previous.prefix_hits
        has_throughput = prompt_tps > 0 or generation_tps > 0
        log_it = has_throughput or self._last_had_throughput
        self._last_had_throughput = has_throughput
        if not log_it:
            return None
        message = format_stats_message(
            self.engine_index,
            prompt_tps,
            generation_tps,
            counters.running,
            counters.waiting,
            counters.preemptions - previous.preemptions,
            counters.kv_cache_usage,
            hits / queries if queries > 0 else 0.0,
        )
        return format_log_line(message, wall_time)
