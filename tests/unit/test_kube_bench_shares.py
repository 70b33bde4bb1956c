"""How a level is split across the pods of the distributed bench: exact sums, every request once."""

from __future__ import annotations

import math

import pytest

from backends.bench.loadgen.arrivals import arrival_times
from backends.bench.models import Axis, LoadLevel
from backends.errors import ConfigError
from backends.kube_bench.plan import WorkerPlan, encode_plan, parse_plan
from backends.kube_bench.shares import all_shares, pod_share, pods_for_level, split_evenly


@pytest.mark.parametrize("total", [0, 1, 2, 7, 10, 99, 100, 1000])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7, 16])
def test_split_evenly_sums_exactly_and_differs_by_at_most_one(total: int, parts: int) -> None:
    split = split_evenly(total, parts)
    assert len(split) == parts
    assert sum(split) == total
    assert max(split) - min(split) <= 1
    assert split == sorted(split, reverse=True)


def test_split_evenly_rejects_zero_parts() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        split_evenly(5, 0)


@pytest.mark.parametrize(
    ("concurrency", "requests", "pods"), [(10, 100, 3), (4, 10, 4), (7, 50, 2), (64, 1000, 5)]
)
def test_closed_loop_lanes_sum_to_the_level_and_requests_follow_lanes(
    concurrency: int, requests: int, pods: int
) -> None:
    level = LoadLevel(axis=Axis.CONCURRENCY, value=concurrency)
    shares = all_shares(level, requests, pods, seed=0)
    assert len(shares) == pods
    assert sum(share.concurrency or 0 for share in shares) == concurrency
    assert sorted(i for share in shares for i in share.indices) == list(range(requests))
    for share in shares:
        assert share.arrivals == [0.0] * len(share.indices)
        # Requests in proportion to lanes: all pods drain at the same pace.
        expected = requests * (share.concurrency or 0) / concurrency
        assert abs(len(share.indices) - expected) <= (share.concurrency or 0)


def test_closed_loop_with_fewer_lanes_than_pods_uses_only_as_many_pods() -> None:
    level = LoadLevel(axis=Axis.CONCURRENCY, value=2)
    assert pods_for_level(level, 100, 5) == 2
    shares = all_shares(level, 100, 5, seed=0)
    assert [share.concurrency for share in shares] == [1, 1]


def test_closed_loop_with_more_lanes_than_requests_gives_every_pod_work() -> None:
    level = LoadLevel(axis=Axis.CONCURRENCY, value=10)
    shares = all_shares(level, 4, 3, seed=0)
    assert all(share.indices for share in shares)
    assert sum(share.concurrency or 0 for share in shares) == 4


@pytest.mark.parametrize("burstiness", [1.0, 0.5, 4.0])
def test_open_loop_pods_take_every_nth_arrival_of_one_seeded_schedule(burstiness: float) -> None:
    level = LoadLevel(axis=Axis.REQUEST_RATE, value=20.0, burstiness=burstiness)
    shares = all_shares(level, 101, 3, seed=7)
    schedule = arrival_times(101, 20.0, burstiness, 7)
    merged = sorted((a, i) for share in shares for a, i in zip(share.arrivals, share.indices, strict=True))
    assert [i for _, i in sorted(merged, key=lambda pair: pair[1])] == list(range(101))
    for share in shares:
        assert share.indices == list(range(share.pod_index, 101, 3))
        assert share.arrivals == [schedule[i] for i in share.indices]
        assert share.concurrency is None


def test_open_loop_cap_is_split_like_lanes() -> None:
    level = LoadLevel(axis=Axis.REQUEST_RATE, value=5.0, max_concurrency=7)
    shares = all_shares(level, 30, 3, seed=0)
    assert [share.concurrency for share in shares] == [3, 2, 2]
    assert pods_for_level(LoadLevel(axis=Axis.REQUEST_RATE, value=5.0, max_concurrency=2), 30, 3) == 2


def test_preopen_never_exceeds_the_pods_requests_or_lanes() -> None:
    closed = pod_share(LoadLevel(axis=Axis.CONCURRENCY, value=8), 100, 2, 0, seed=0)
    assert closed.preopen == 4
    open_loop = pod_share(LoadLevel(axis=Axis.REQUEST_RATE, value=1.0), 3, 3, 0, seed=0)
    assert open_loop.preopen == 1


def test_a_pod_index_outside_the_job_is_a_clear_error() -> None:
    level = LoadLevel(axis=Axis.CONCURRENCY, value=4)
    with pytest.raises(ConfigError, match=r"outside 0\.\.1"):
        pod_share(level, 10, 2, 2, seed=0)
    with pytest.raises(ConfigError, match="--pods must be >= 1"):
        pods_for_level(level, 10, 0)


def test_an_infinite_rate_sends_every_request_at_zero_and_the_plan_carries_it() -> None:
    # vLLM's default (--request-rate inf) and a ramp-up's level both have rate inf.
    level = LoadLevel(axis=Axis.REQUEST_RATE, value=math.inf)
    shares = all_shares(level, 9, 2, seed=0)
    assert [len(s.indices) for s in shares] == [5, 4]
    assert all(a == 0.0 for s in shares for a in s.arrivals)
    assert [s.preopen for s in shares] == [5, 4]
    plan = WorkerPlan(
        run_id="r", level_index=0, level=level, pods=2, num_requests=9, base_url="http://x", model="m",
        start_at_epoch=1.0,
    )  # fmt: skip
    assert parse_plan(encode_plan(plan)).level.request_rate == math.inf


def test_a_trace_is_dealt_by_index_with_the_concurrency_cap_split_like_lanes() -> None:
    trace = [0.0, 0.1, 0.1, 0.5, 1.2, 1.3, 2.0]
    level = LoadLevel(axis=Axis.CONCURRENCY, value=3)
    shares = all_shares(level, len(trace), 2, seed=0, trace=trace)
    assert [s.indices for s in shares] == [[0, 2, 4, 6], [1, 3, 5]]
    assert [s.arrivals for s in shares] == [[0.0, 0.1, 1.2, 2.0], [0.1, 0.5, 1.3]]
    assert [s.concurrency for s in shares] == [2, 1]
    with pytest.raises(ConfigError, match="6 trace arrival times for 7 requests"):
        pod_share(level, 7, 2, 0, 0, trace[:6])
