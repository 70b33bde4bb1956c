"""Merge what N pods measured into one level: exact records on one clock, never averaged statistics.

Each pod's record times are seconds from that pod's time zero, which it reports as a wall-clock epoch
(``PodStart.zero_epoch``). The merged clock starts at the earliest pod zero; a pod's records are shifted
by ``its zero - earliest zero`` (0 for pods that started together, in which case times are untouched).
Percentiles, throughput, peak concurrency are then computed by ``compute_metrics`` over the merged list,
exactly as for a local run.

Clock skew: the shift uses the pods' wall clocks, so it is only as right as the nodes' clock sync
(NTP on cloud nodes: typically well under a millisecond to a few ms). Skew moves a pod's whole timeline
against the others; it does not touch per-request latencies (TTFT, TPOT, ITL, E2EL are differences of
one pod's monotonic clock), but it can shift the level duration, throughput and the concurrency and
tokens-per-second peaks by about the skew.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from backends.bench.loadgen.selfmon import merge_client_stats
from backends.bench.models import ClientStats, RequestRecord
from backends.kube_bench.codec import PodReady, PodStart, PodSummary

LATE_START_MIN_S = 1.0
LATE_START_FRACTION = 0.05


class PodOutcome(BaseModel):
    """Everything the driver collected about one completion index."""

    pod_index: int
    pod_name: str | None = None
    expected: int = Field(description="requests in this pod's share")
    records: list[RequestRecord] = Field(default_factory=list)
    ready: PodReady | None = None
    start: PodStart | None = None
    summary: PodSummary | None = None
    failure: str | None = None


class MergedLevel(BaseModel):
    records: list[RequestRecord]
    duration_s: float
    client: ClientStats
    start_spread_s: float = 0.0
    problems: list[str] = Field(default_factory=list)


def shifted(record: RequestRecord, shift: float) -> RequestRecord:
    """``record`` with every time moved by ``shift`` seconds (the same object when the shift is 0)."""
    if shift == 0.0:
        return record
    return record.model_copy(
        update={
            "queued_at": record.queued_at + shift,
            "sent_at": None if record.sent_at is None else record.sent_at + shift,
            "first_token_at": None if record.first_token_at is None else record.first_token_at + shift,
            "chunk_times": [t + shift for t in record.chunk_times],
        }
    )


def _last_time(records: list[RequestRecord]) -> float:
    ends = [
        r.chunk_times[-1] if r.chunk_times else (r.sent_at if r.sent_at is not None else r.queued_at)
        for r in records
    ]
    return max(ends, default=0.0)


def merge_pods(pods: list[PodOutcome]) -> MergedLevel:
    started = [pod.start.zero_epoch for pod in pods if pod.start is not None]
    base = min(started, default=0.0)
    spread = (max(started) - base) if started else 0.0
    seen: set[int] = set()
    records: list[RequestRecord] = []
    ends: list[float] = []
    problems: list[str] = []
    for pod in sorted(pods, key=lambda p: p.pod_index):
        shift = (pod.start.zero_epoch - base) if pod.start is not None else 0.0
        own: list[RequestRecord] = []
        for record in pod.records:
            if record.index in seen:
                continue
            seen.add(record.index)
            own.append(shifted(record, shift))
        records.extend(own)
        if pod.summary is not None:
            ends.append(shift + pod.summary.duration_s)
        elif own:
            ends.append(_last_time(own))
        name = f"pod {pod.pod_index}" + (f" ({pod.pod_name})" if pod.pod_name else "")
        if pod.failure:
            problems.append(f"{name}: {pod.failure}")
        if pod.summary is not None and pod.summary.records > len(own):
            lost = pod.summary.records - len(own)
            problems.append(f"{name}: {lost} finished requests are missing from its log")
        elif pod.start is not None and len(own) < pod.expected and not pod.failure:
            problems.append(f"{name}: {len(own)} of its {pod.expected} requests finished")
    duration = max(ends, default=0.0)
    if spread > max(LATE_START_MIN_S, LATE_START_FRACTION * duration):
        late = max(
            (p for p in pods if p.start is not None), key=lambda p: p.start.zero_epoch if p.start else 0.0
        )
        problems.append(
            f"pods did not start together: pod {late.pod_index} began {spread:.1f}s after the first "
            "(it was not ready at the shared start; raise --start-delay)"
        )
    client = merge_client_stats([pod.summary.client for pod in pods if pod.summary is not None])
    records.sort(key=lambda r: r.index)
    return MergedLevel(
        records=records, duration_s=duration, client=client, start_spread_s=spread, problems=problems
    )
