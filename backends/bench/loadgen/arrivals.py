"""Request arrival schedules, after ``vllm bench serve`` (reference/bench_anchors.md §1e).

Open loop: gamma inter-arrival gaps with shape ``burstiness`` and mean ``1/rate`` (burstiness 1 is
Poisson), precomputed, cumulated, and rescaled so the last arrival lands at ``N / rate`` — the
generator then sleeps to absolute deadlines, so the achieved rate matches the asked one.
Closed loop (rate = inf): every request is released at t = 0 and the concurrency cap queues them.

Ramp-up (vLLM's ``--ramp-up-strategy``): request i is drawn at its own rate, ``start + (end - start) * p``
(linear) or ``start * (end / start) ** p`` (exponential) with ``p = i / (N - 1)``, and the schedule is not
rescaled, as in vLLM. Request i's gap (from request i - 1) is drawn at request i's rate.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from backends.errors import ConfigError

RampUpStrategy = Literal["linear", "exponential"]
RAMP_UP_STRATEGIES: tuple[RampUpStrategy, ...] = ("linear", "exponential")


def ramp_up_rates(num_requests: int, strategy: str, start_rps: float, end_rps: float) -> list[float]:
    """vLLM's ``_get_current_request_rate`` for every request index."""
    check_ramp_up(strategy, start_rps, end_rps)
    span = max(num_requests - 1, 1)
    if strategy == "linear":
        return [start_rps + (end_rps - start_rps) * i / span for i in range(num_requests)]
    ratio = end_rps / start_rps
    return [start_rps * ratio ** (i / span) for i in range(num_requests)]


def check_ramp_up(strategy: str, start_rps: float, end_rps: float) -> None:
    """vLLM's checks of the ramp-up flags, as ConfigErrors."""
    if strategy not in RAMP_UP_STRATEGIES:
        raise ConfigError(f"unknown ramp-up strategy {strategy!r}: use linear or exponential")
    if not (math.isfinite(start_rps) and math.isfinite(end_rps)) or start_rps < 0 or end_rps < 0:
        raise ConfigError(
            f"ramp-up start and end rates must be finite and >= 0 req/s, got {start_rps:g} and {end_rps:g}"
        )
    if start_rps > end_rps:
        raise ConfigError(f"ramp-up start rate {start_rps:g} must not exceed the end rate {end_rps:g}")
    if strategy == "exponential" and start_rps == 0:
        raise ConfigError("an exponential ramp-up cannot start at 0 req/s; give --ramp-up-start-rps > 0")
    if strategy == "linear" and end_rps == 0:
        raise ConfigError("a linear ramp-up from 0 to 0 req/s never sends; give --ramp-up-end-rps > 0")


def arrival_times(
    num_requests: int,
    request_rate: float,
    burstiness: float,
    seed: int,
    *,
    ramp_up: tuple[str, float, float] | None = None,
) -> list[float]:
    """Seconds from the level start at which each request is released.

    ``ramp_up``: (strategy, start req/s, end req/s); ``request_rate`` is then ignored, as in vLLM.
    """
    if num_requests <= 0:
        return []
    if ramp_up is not None:
        return _ramp_up_times(num_requests, burstiness, seed, *ramp_up)
    if math.isinf(request_rate):
        return [0.0] * num_requests
    if not request_rate > 0:
        raise ConfigError(f"request rate must be > 0 req/s, got {request_rate}")
    if not burstiness > 0:
        raise ConfigError(f"burstiness must be > 0 (1 = Poisson), got {burstiness}")
    rng = np.random.default_rng(seed)
    if math.isinf(burstiness):
        gaps = np.full(num_requests, 1.0 / request_rate)
    else:
        theta = 1.0 / (request_rate * burstiness)
        gaps = rng.gamma(shape=burstiness, scale=theta, size=num_requests)
    # The first request goes at t=0, like vLLM's generator which yields before its first sleep.
    times = np.concatenate(([0.0], np.cumsum(gaps[:-1])))
    if num_requests > 1 and times[-1] > 0:
        times *= ((num_requests - 1) / request_rate) / times[-1]
    return [float(t) for t in times]


def _ramp_up_times(
    num_requests: int, burstiness: float, seed: int, strategy: str, start_rps: float, end_rps: float
) -> list[float]:
    if not burstiness > 0:
        raise ConfigError(f"burstiness must be > 0 (1 = Poisson), got {burstiness}")
    rates = np.array(ramp_up_rates(num_requests, strategy, start_rps, end_rps)[1:], dtype=float)
    if math.isinf(burstiness):
        gaps = 1.0 / rates
    else:
        rng = np.random.default_rng(seed)
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rates * burstiness))
    times = np.concatenate(([0.0], np.cumsum(gaps)))
    return [float(t) for t in times]


def busiest_second(arrivals: list[float]) -> int:
    """The most arrivals (sorted send times, s) within any one second."""
    busiest, first = 0, 0
    for last, t in enumerate(arrivals):
        while t - arrivals[first] >= 1.0:
            first += 1
        busiest = max(busiest, last - first + 1)
    return busiest
