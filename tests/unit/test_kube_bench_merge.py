"""Merging pods' records: percentiles come from the merged records (never averaged), times on one clock."""

from __future__ import annotations

import random

import numpy as np
import pytest

from backends.bench.metrics import compute_metrics
from backends.bench.models import ClientStats, RequestRecord
from backends.kube_bench.codec import PodStart, PodSummary, decode, encode
from backends.kube_bench.merge import PodOutcome, merge_pods, shifted

ZERO = 1_700_000_000.0


def _record(index: int, sent: float, ttft: float, itl: float, tokens: int = 16) -> RequestRecord:
    first = sent + ttft
    return RequestRecord(
        index=index,
        prompt_len=100,
        expected_output_len=tokens,
        queued_at=sent,
        sent_at=sent,
        first_token_at=first,
        chunk_times=[first + itl * k for k in range(tokens)],
        input_tokens=100,
        output_tokens=tokens,
        http_status=200,
        success=True,
    )


def _pods(late: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> list[PodOutcome]:
    """Three pods with different latency profiles (pod 2 is on a slow path), records as log lines."""
    rng = random.Random(5)
    profiles = [(0.05, 0.010), (0.08, 0.012), (0.40, 0.030)]
    pods = []
    for pod, (ttft, itl) in enumerate(profiles):
        records = [
            _record(
                index=pod + 3 * k,
                sent=0.02 * k,
                ttft=ttft * rng.uniform(0.5, 1.5),
                itl=itl * rng.uniform(0.8, 1.2),
            )
            for k in range(40)
        ]
        # What the driver holds went through the pod log: encode and decode every record.
        from_log = [decode(encode(record)) for record in records]
        duration = max(r.chunk_times[-1] for r in records)
        pods.append(
            PodOutcome(
                pod_index=pod,
                expected=len(records),
                records=[r for r in from_log if isinstance(r, RequestRecord)],
                start=PodStart(pod_index=pod, zero_epoch=ZERO + late[pod], late_s=late[pod]),
                summary=PodSummary(
                    pod_index=pod, records=len(records), duration_s=duration, client=ClientStats()
                ),
            )
        )
    return pods


def test_percentiles_of_the_merge_equal_those_of_all_records_not_the_average_of_pods() -> None:
    pods = _pods()
    merged = merge_pods(pods)
    everything = sorted((r for pod in pods for r in pod.records), key=lambda r: r.index)
    assert [r.index for r in merged.records] == list(range(120))
    duration = max(pod.summary.duration_s for pod in pods if pod.summary)
    assert merged.duration_s == duration

    from_merge = compute_metrics(
        merged.records, merged.duration_s, goodput_slos_ms=None, percentiles=[50, 90, 99]
    )
    direct = compute_metrics(everything, duration, goodput_slos_ms=None, percentiles=[50, 90, 99])
    assert from_merge.model_dump() == direct.model_dump()
    ttfts_ms = [r.ttft * 1000 for r in everything if r.ttft is not None]
    assert from_merge.ttft.percentiles["99"] == pytest.approx(float(np.percentile(ttfts_ms, 99)))

    per_pod = [
        compute_metrics(pod.records, pod.summary.duration_s, goodput_slos_ms=None, percentiles=[99])
        for pod in pods
        if pod.summary
    ]
    averaged_p99 = sum(m.ttft.percentiles["99"] for m in per_pod) / len(per_pod)
    assert abs(averaged_p99 - from_merge.ttft.percentiles["99"]) > 10.0  # averaging would be badly wrong
    assert from_merge.completed == 120 and merged.problems == []


def test_a_late_pod_is_shifted_onto_the_shared_clock() -> None:
    pods = _pods(late=(0.0, 0.0, 2.5))
    merged = merge_pods(pods)
    late_pod = pods[2]
    for original in late_pod.records:
        moved = next(r for r in merged.records if r.index == original.index)
        assert moved.sent_at == pytest.approx((original.sent_at or 0) + 2.5)
        assert moved.chunk_times == pytest.approx([t + 2.5 for t in original.chunk_times])
        assert moved.ttft == pytest.approx(original.ttft)  # latencies do not depend on the clock
    assert late_pod.summary is not None
    assert merged.duration_s == pytest.approx(2.5 + late_pod.summary.duration_s)
    assert merged.start_spread_s == pytest.approx(2.5)
    assert any("did not start together: pod 2 began 2.5s after" in p for p in merged.problems)


def test_the_clock_starts_at_the_earliest_pod_when_all_were_late() -> None:
    pods = _pods(late=(3.0, 4.0, 3.0))
    merged = merge_pods(pods)
    first = next(r for r in merged.records if r.index == 0)
    assert first.sent_at == pods[0].records[0].sent_at  # pod 0 is the clock's zero: untouched
    second = next(r for r in merged.records if r.index == 1)
    assert second.sent_at == pytest.approx((pods[1].records[0].sent_at or 0) + 1.0)


def test_shifting_by_zero_keeps_the_record() -> None:
    record = _record(0, 0.5, 0.1, 0.01)
    assert shifted(record, 0.0) is record


def test_a_failed_pod_keeps_what_it_sent_and_is_named() -> None:
    pods = _pods()
    broken = pods[1]
    broken.records = broken.records[:10]
    broken.summary = None
    broken.failure = "exited with code 137 (OOMKilled) while running"
    merged = merge_pods(pods)
    assert len(merged.records) == 90
    assert any(p.startswith("pod 1: exited with code 137 (OOMKilled)") for p in merged.problems)
    # Its end is its last record: the level lasted as long as the longest surviving pod.
    assert merged.duration_s == max(pod.summary.duration_s for pod in pods if pod.summary)


def test_records_lost_from_a_log_are_reported_and_duplicates_dropped() -> None:
    pods = _pods()
    pods[0].records = pods[0].records[:-2] + pods[0].records[:1]  # two lost, one line seen twice
    merged = merge_pods(pods)
    assert len(merged.records) == 118
    assert any("pod 0: 2 finished requests are missing from its log" in p for p in merged.problems)


def test_client_stats_are_those_of_the_busiest_pod_with_all_pods_counted() -> None:
    pods = _pods()
    for pod, cpu in zip(pods, (10.0, 95.0, 20.0), strict=True):
        assert pod.summary is not None
        pod.summary.client = ClientStats(cpu_percent=cpu, cpu_seconds=1.0, workers=1, client_limited=cpu > 90)
    merged = merge_pods(pods)
    assert merged.client.workers == 3
    assert merged.client.cpu_seconds == 3.0
    assert merged.client.client_limited
