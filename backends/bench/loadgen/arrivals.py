"""Request arrival schedules, after ``vllm bench serve`` (reference/bench_anchors.md §1e).

Open loop: gamma inter-arrival gaps with shape ``burstiness`` and mean ``1/rate`` (burstiness 1 is
Poisson), precomputed, cumulated, and rescaled so the last arrival lands at ``N / rate`` — the
generator then sleeps to absolute deadlines, so the achieved rate matches the asked one.
Closed loop (rate = inf): every request is released at t = 0 and the concurrency cap queues them.
"""

from __future__ import annotations

import math

import numpy as np

from backends.errors import ConfigError


def arrival_times(num_requests: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    if num_requests <= 0:
        return []
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
