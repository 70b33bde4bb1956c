"""How one level's load is split across the N pods of an Indexed Job.

Closed loop (``--concurrency C``): the C lanes are split as evenly as possible (the first ``C % N``
pods get one more), and request ``p`` goes to the pod that owns lane ``p % C``, so every pod gets a
number of requests proportional to its lanes and all pods drain at the same pace. Fewer lanes than
pods: only C pods run.

Open loop (``--request-rate R``, or a ramp-up): ONE seeded arrival schedule of the whole level is drawn
(exactly the one a local run with the same seed sends, ramped as it ramps) and pod ``k`` takes every
N-th arrival (``k, k+N, ...``).
We do not give each pod rate R/N with its own seed because (1) the merged arrivals would then differ
from a local run of the same seed, so in-cluster and local results of one config would not be
comparable request for request; (2) superposing N independent gamma processes of shape ``b != 1`` is
not a gamma process of shape ``b``, so ``--burstiness`` would silently change meaning with N; and (3)
per-pod rescaling would make the level's total duration depend on N. The price: a pod's own sub-schedule
is a thinned process, which no measurement depends on. A ``--max-concurrency`` cap is split like lanes.

Trace replay: the trace's (scaled) timestamps are the schedule, dealt by index as above; a
``--concurrency`` cap is split like ``--max-concurrency``, so the pods together release what a local
run's workers release.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from backends.bench.loadgen.arrivals import arrival_times, busiest_second
from backends.bench.models import Axis, LoadLevel
from backends.errors import ConfigError

MAX_PREOPEN = 1024


class PodShare(BaseModel):
    """What one pod sends: request positions of the level (into the sampled dataset) and their arrivals."""

    pod_index: int
    indices: list[int]
    arrivals: list[float]
    concurrency: int | None
    preopen: int


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers that differ by at most one and sum to ``total``."""
    if parts < 1:
        raise ConfigError(f"cannot split into {parts} parts; need at least one")
    if total < 0:
        raise ConfigError(f"cannot split a negative amount ({total})")
    return [total // parts + (1 if part < total % parts else 0) for part in range(parts)]


def pods_for_level(level: LoadLevel, num_requests: int, pods: int) -> int:
    """How many pods actually run this level: never more than lanes, cap or requests."""
    if pods < 1:
        raise ConfigError(f"--pods must be >= 1, got {pods}")
    limit = min(pods, max(num_requests, 1))
    cap = level.concurrency_cap
    if cap is not None:
        limit = min(limit, max(cap, 1))
    return limit


def _lane_owner(lanes_per_pod: list[int]) -> list[int]:
    owner: list[int] = []
    for pod, lanes in enumerate(lanes_per_pod):
        owner.extend([pod] * lanes)
    return owner


def pod_share(
    level: LoadLevel,
    num_requests: int,
    pods: int,
    pod_index: int,
    seed: int,
    trace: list[float] | None = None,
) -> PodShare:
    """The share of pod ``pod_index`` when ``pods`` pods run ``level`` over ``num_requests`` requests.

    ``pods`` must already be ``pods_for_level(...)``; every pod computes its own share with this
    function, and the driver computes all of them to know what to expect. ``trace``: a replayed trace's
    (scaled) arrival times, one per request; pod ``k`` takes every N-th, capped by its part of
    ``--concurrency`` as a local run's worker is.
    """
    if num_requests < 1:
        raise ConfigError("a level needs at least one request")
    if not 0 <= pod_index < pods:
        raise ConfigError(f"pod index {pod_index} is outside 0..{pods - 1}")
    if pods != pods_for_level(level, num_requests, pods):
        raise ConfigError(
            f"{pods} pods is more than level {level.label} can use with {num_requests} requests"
        )
    cap = level.concurrency_cap
    concurrency: int | None
    if trace is not None:
        if len(trace) != num_requests:
            raise ConfigError(f"{len(trace)} trace arrival times for {num_requests} requests")
        indices = list(range(pod_index, num_requests, pods))
        arrivals = [trace[p] for p in indices]
        concurrency = None if cap is None else split_evenly(cap, pods)[pod_index]
        busiest = busiest_second(arrivals)
        preopen = min(len(indices), concurrency if concurrency is not None else max(8, 2 * busiest))
    elif level.axis is Axis.CONCURRENCY:
        assert cap is not None
        # More lanes than requests cannot be in flight: only min(C, requests) lanes are split.
        total_lanes = min(cap, num_requests)
        lanes = split_evenly(total_lanes, pods)
        owner = _lane_owner(lanes)
        indices = [p for p in range(num_requests) if owner[p % total_lanes] == pod_index]
        concurrency = lanes[pod_index]
        arrivals = [0.0] * len(indices)
        preopen = min(lanes[pod_index], len(indices))
    else:
        schedule = arrival_times(
            num_requests, level.request_rate, level.burstiness, seed, ramp_up=level.ramp_up
        )
        indices = list(range(pod_index, num_requests, pods))
        arrivals = [schedule[p] for p in indices]
        concurrency = None if cap is None else split_evenly(cap, pods)[pod_index]
        # Two seconds of this pod's arrivals at the level's top rate (a ramp's end), all of them at inf.
        rate = level.ramp_up[2] if level.ramp_up is not None else level.request_rate
        if concurrency is not None:
            preopen = min(concurrency, len(indices))
        elif math.isinf(rate):
            preopen = len(indices)
        else:
            preopen = min(len(indices), max(8, math.ceil(rate / pods * 2)))
    return PodShare(
        pod_index=pod_index,
        indices=indices,
        arrivals=arrivals,
        concurrency=concurrency,
        preopen=min(preopen, MAX_PREOPEN),
    )


def all_shares(
    level: LoadLevel, num_requests: int, pods: int, seed: int, trace: list[float] | None = None
) -> list[PodShare]:
    used = pods_for_level(level, num_requests, pods)
    return [pod_share(level, num_requests, used, k, seed, trace) for k in range(used)]
