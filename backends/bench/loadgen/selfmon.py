"""The load generator watches itself: event-loop lag and CPU share per level.

Lag is the time a callback made ready waits before it runs (``call_soon`` from a 10 ms timer), which
is exactly the delay a socket read suffers before it is timestamped, plus how late the timer itself
fired beyond uvloop's 1 ms timer rounding and wake-up slack (a long callback delays the timer, not only
the queue).

Whether the client limited a level is judged against what the lag distorts (``judge_client``): a p99 lag
above a tenth of the level's median ITL (or TTFT) moves the percentiles the bench reports, and a client
near CPU saturation sends late. Lag that is small against those is host contention, reported as a note.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from backends.bench.metrics import BenchmarkMetrics
from backends.bench.models import ClientStats

LAG_LIMIT_MS = 1.0  # above this, lag is worth a note (the host is busy) even when it distorts nothing
LAG_SHARE_LIMIT = 0.10  # lag p99 above this share of the median ITL / TTFT distorts them
CPU_LIMIT_PERCENT = 70.0
_SAMPLE_INTERVAL_S = 0.01
# uvloop rounds timers to 1 ms and a VM adds wake-up latency; a timer later than this was held up by a
# callback (what matters), not by the clock.
_TIMER_SLACK_S = 0.002


class LoopLagSampler:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.lags: list[float] = []

    def start(self) -> None:
        self._due = time.perf_counter() + _SAMPLE_INTERVAL_S
        self._handle = self._loop.call_later(_SAMPLE_INTERVAL_S, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        queued = time.perf_counter()
        timer_late = max(0.0, queued - self._due - _TIMER_SLACK_S)
        self._loop.call_soon(self._measure, queued, timer_late)
        self._due = queued + _SAMPLE_INTERVAL_S
        self._handle = self._loop.call_later(_SAMPLE_INTERVAL_S, self._tick)

    def _measure(self, queued: float, timer_late: float) -> None:
        self.lags.append(time.perf_counter() - queued + timer_late)


def client_stats(lags_s: list[float], cpu_seconds: float, wall_seconds: float) -> ClientStats:
    """What a worker measured of itself; only CPU saturation is judged here, lag by ``judge_client``."""
    if lags_s:
        lags_ms = np.asarray(lags_s) * 1000.0
        p50, p99 = (float(x) for x in np.percentile(lags_ms, [50, 99]))
        worst = float(lags_ms.max())
    else:
        p50 = p99 = worst = 0.0
    cpu_percent = 100.0 * cpu_seconds / wall_seconds if wall_seconds > 0 else 0.0
    stats = ClientStats(
        loop_lag_p50_ms=p50,
        loop_lag_p99_ms=p99,
        loop_lag_max_ms=worst,
        cpu_percent=cpu_percent,
        cpu_seconds=cpu_seconds,
    )
    return judge_client(stats, None)


def _timing_scale(metrics: BenchmarkMetrics | None) -> tuple[str, float] | None:
    """The finest latency the level measured: its median ITL, else its median TTFT (ms)."""
    if metrics is None or metrics.completed == 0:
        return None
    for name, value in (("ITL", metrics.itl.median), ("TTFT", metrics.ttft.median)):
        if value > 0:
            return name, value
    return None


def judge_client(stats: ClientStats, metrics: BenchmarkMetrics | None) -> ClientStats:
    """Client-limited when the client distorted the level's numbers: lag p99 above ``LAG_SHARE_LIMIT`` of
    the median ITL (TTFT when there is no ITL), or client CPU above ``CPU_LIMIT_PERCENT``. Lag above
    ``LAG_LIMIT_MS`` that distorts nothing is host contention: a note, not a mark."""
    p99, cpu = stats.loop_lag_p99_ms, stats.cpu_percent
    reasons = []
    note = None
    scale = _timing_scale(metrics)
    if scale is not None and p99 > LAG_SHARE_LIMIT * scale[1]:
        name, value = scale
        lag = f"event-loop lag p99 {p99:.2f} ms > {LAG_SHARE_LIMIT:.0%} of the median {name} {value:.1f} ms"
        if cpu < CPU_LIMIT_PERCENT / 2:
            lag += f" (client CPU only {cpu:.0f}%: other processes hold the cores)"
        reasons.append(lag)
    elif p99 > LAG_LIMIT_MS:
        against = "" if scale is None else f", small next to the median {scale[0]} {scale[1]:.1f} ms"
        note = (
            f"busy host: event-loop lag p99 {p99:.2f} ms with client CPU {cpu:.0f}%{against}; "
            "not client-limited"
        )
    if cpu > CPU_LIMIT_PERCENT:
        reasons.append(f"client CPU {cpu:.0f}% > {CPU_LIMIT_PERCENT:g}%: the load generator was saturated")
    return stats.model_copy(
        update={"client_limited": bool(reasons), "reason": "; ".join(reasons) or None, "note": note}
    )


def merge_client_stats(stats: list[ClientStats]) -> ClientStats:
    """Several workers: the worst lag and the busiest worker decide whether the client limited the level."""
    if not stats:
        return ClientStats()
    worst = max(stats, key=lambda s: (s.client_limited, s.loop_lag_p99_ms, s.cpu_percent))
    merged = worst.model_copy()
    merged.cpu_seconds = sum(s.cpu_seconds for s in stats)
    merged.cpu_percent = max(s.cpu_percent for s in stats)
    merged.workers = len(stats)
    return merged
