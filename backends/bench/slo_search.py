"""SLO search on a real target: the highest request rate (or concurrency) whose level meets an SLO.

Real levels, bounded (``max_levels``, default 8): from a start (the twin's prediction when the hardware
is known, else a probe level at 1) the search brackets (x1.5 from a prediction, x4 from the probe, /2
down) and bisects geometrically until the bracket is within ``tolerance`` (for concurrency: whole
numbers, a bracket of one). Every level sends the same prompts.

A level stops early once it cannot meet the SLO, and says which signal stopped it:
- more finished requests over a percentile or per-request target than that target allows;
- the server's waiting queue grew at every one of the last 5 scrapes (open loop);
- the KV cache at >= 99% while the server preempts requests;
- the achieved rate under 70% of the offered one once the finished requests show how long one takes.
A client-limited level (the load generator, not the server, was the bottleneck) is neither a pass nor
a fail of the server: the search stops below it and says so.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel

from backends.bench.models import Axis, ProgressSnapshot, RequestRecord
from backends.bench.results import LevelResult, RunStatus, SweepConfig, SweepResult
from backends.bench.search_record import SearchLevel, SearchRecord
from backends.bench.slo import Slo, SloTarget
from backends.bench.sweep import RecordsBatch, SweepEvent, _run_one_level, prepare_dataset, validate_config

DEFAULT_MAX_LEVELS = 8
DEFAULT_TOLERANCE = 0.1
_GROWING_SCRAPES = 5
_GROWTH_FROM_PREDICTION = 1.5
_GROWTH_FROM_PROBE = 4.0


class SearchResult(BaseModel):
    axis: Axis
    slo: str
    start: float
    start_source: str
    knee: float | None
    levels: list[SearchLevel]
    run: SweepResult  # every level tried, in the order tried, as one run
    note: str | None = None


def _limit_s(target: SloTarget) -> float:
    return target.limit_ms / 1000.0


def _record_value(record: RequestRecord, metric: str) -> float | None:
    ttft = record.ttft
    if not record.success or ttft is None:
        return None
    if metric == "ttft":
        return ttft
    latency = record.latency
    if latency is None:
        return None
    if metric == "e2el":
        return latency
    tokens = record.output_tokens or len(record.chunk_times)
    if metric == "tpot":
        return (latency - ttft) / (tokens - 1) if tokens > 1 else None
    return None


class LevelWatch:
    """Decides, while a level runs, that it cannot meet the SLO; ``reason`` names the signal."""

    def __init__(self, slo: Slo, axis: Axis, value: float, total: int) -> None:
        self.slo = slo
        self.axis = axis
        self.value = value
        self.total = total
        self.targets = [t for t in slo.targets if t.stat not in ("mean", "median") and t.metric != "itl"]
        self.late = dict.fromkeys(range(len(self.targets)), 0)
        self.latencies: list[float] = []
        self.completed = 0
        self.waiting: list[float] = []
        self.first_preemptions: float | None = None
        self.started = time.perf_counter()
        self.reason: str | None = None

    def on_records(self, records: list[RequestRecord]) -> None:
        for record in records:
            if not record.success:
                continue
            self.completed += 1
            if record.latency is not None:
                self.latencies.append(record.latency)
            for i, target in enumerate(self.targets):
                measured = _record_value(record, target.metric)
                if measured is not None and measured > _limit_s(target):
                    self.late[i] += 1
        if self.reason is None:
            for i, target in enumerate(self.targets):
                allowed = self.slo.allowed_violations(target, self.total)
                if self.late[i] > allowed:
                    self.reason = (
                        f"SLO: {target.label} over {target.limit_ms:,.0f} ms on {self.late[i]} of "
                        f"{self.total} requests already"
                    )
                    break

    def on_progress(self, snapshot: ProgressSnapshot) -> None:
        if self.reason is not None:
            return
        server = snapshot.server
        if server is not None:
            if server.preemptions_total is not None and self.first_preemptions is None:
                self.first_preemptions = server.preemptions_total
            if (
                server.kv_cache_usage is not None
                and server.kv_cache_usage >= 0.99
                and server.preemptions_total is not None
                and self.first_preemptions is not None
                and server.preemptions_total > self.first_preemptions
            ):
                self.reason = (
                    f"KV cache at {server.kv_cache_usage:.0%} with "
                    f"{server.preemptions_total - self.first_preemptions:.0f} preemptions"
                )
                return
            if self.axis is Axis.REQUEST_RATE and server.waiting is not None:
                self.waiting.append(server.waiting)
                last = self.waiting[-(_GROWING_SCRAPES + 1) :]
                if (
                    len(last) == _GROWING_SCRAPES + 1
                    and all(b > a for a, b in itertools.pairwise(last))
                    and last[-1] >= 8
                ):
                    self.reason = (
                        f"waiting queue growing ({last[0]:.0f} -> {last[-1]:.0f} over {_GROWING_SCRAPES} s)"
                    )
                    return
        if self.axis is Axis.REQUEST_RATE and len(self.latencies) >= 10 and snapshot.sent < snapshot.total:
            typical = sorted(self.latencies)[len(self.latencies) // 2]
            elapsed = time.perf_counter() - self.started
            window = elapsed - typical
            if window > 3 * typical and window > 5.0:
                achieved = self.completed / window
                if achieved < 0.7 * self.value:
                    self.reason = f"achieved {achieved:.2f} req/s, under the offered {self.value:g} req/s"


async def find_max(
    base: SweepConfig,
    slo: Slo,
    *,
    axis: Axis,
    start: float | None = None,
    start_source: str = "probe",
    max_levels: int = DEFAULT_MAX_LEVELS,
    tolerance: float = DEFAULT_TOLERANCE,
    emit: Callable[[SweepEvent], None] | None = None,
    cancel: asyncio.Event | None = None,
    on_level: Callable[[SearchLevel], None] | None = None,
) -> SearchResult:
    """Bracket and bisect real levels of ``base`` (its target, dataset, prompts) on ``axis``."""
    cancel = cancel or asyncio.Event()
    emit = emit or (lambda _event: None)
    integer = axis is Axis.CONCURRENCY
    probe = start is None
    first = 1.0 if start is None else max(1.0, round(start)) if integer else start
    config = base.model_copy(
        update={
            "axis": axis,
            "levels": [first],
            "same_prompts": True,
            "percentiles": sorted({*base.percentiles, *slo.percentiles}),
            "goodput_slos_ms": slo.per_request_ms or base.goodput_slos_ms,
        }
    )
    validate_config(config)
    dataset = await prepare_dataset(config)
    run = SweepResult(run_id=uuid.uuid4().hex[:12], config=config, started_at=datetime.now(UTC))
    tried: list[SearchLevel] = []
    values: list[float] = []

    async def level(value: float) -> SearchLevel:
        index = len(tried)
        level_config = config.model_copy(update={"levels": [value]})
        watch = LevelWatch(slo, axis, value, len(dataset.for_level(0)))
        level_cancel = asyncio.Event()

        def watch_emit(event: SweepEvent) -> None:
            if isinstance(event, RecordsBatch):
                watch.on_records(event.records)
            elif isinstance(event, ProgressSnapshot):
                watch.on_progress(event)
            if watch.reason is not None or cancel.is_set():
                level_cancel.set()
            if isinstance(event, RecordsBatch | ProgressSnapshot):
                emit(event.model_copy(update={"level_index": index}))

        (load_level,) = level_config.load_levels()
        result, _ = await _run_one_level(0, load_level, level_config, dataset, watch_emit, level_cancel)
        result = result.model_copy(update={"index": index})
        outcome = _judge(result, watch, slo, value)
        result.message = "; ".join(
            part for part in (result.message if watch.reason is None else None, *outcome.reasons) if part
        )
        run.levels.append(result)
        values.append(value)
        tried.append(outcome)
        if on_level is not None:
            on_level(outcome)
        return outcome

    def step(value: float, factor: float) -> float:
        nxt = value * factor
        return float(max(1, round(nxt))) if integer else nxt

    lo: float | None = None
    hi: float | None = None
    note: str | None = None
    value = first
    growth = _GROWTH_FROM_PROBE if probe else _GROWTH_FROM_PREDICTION
    while len(tried) < max_levels and not cancel.is_set():
        outcome = await level(value)
        if outcome.verdict == "client-limited":
            hi = value
            note = f"the client limited {outcome.value:g}: not the server's verdict; searched below it"
            if lo is not None:
                break
            value = step(value, 0.5)
            if value in values:
                break
            continue
        if outcome.verdict == "pass":
            lo = value
            if hi is not None:
                break
            value = step(value, growth)
        else:
            hi = value
            if lo is not None:
                break
            if value <= 1.0 and (integer or value <= 0.01):
                break
            value = step(value, 0.5)
            if value in values:
                break
    while (
        lo is not None
        and hi is not None
        and not _narrow(lo, hi, tolerance, integer)
        and len(tried) < max_levels
        and not cancel.is_set()
    ):
        mid = math.sqrt(lo * hi)
        if integer:
            mid = float(min(max(round(mid), lo + 1), hi - 1))
        outcome = await level(mid)
        if outcome.verdict == "pass":
            lo = mid
        else:
            hi = mid
            if outcome.verdict == "client-limited":
                note = f"the client limited {outcome.value:g}: not the server's verdict; searched below it"
    record = SearchRecord(
        slo=slo.text, start=first, start_source=start_source, knee=lo, levels=tuple(tried), note=note
    )
    run.config = config.model_copy(
        update={"levels": values, "label": base.label or _label(axis, slo, lo), "search": record}
    )
    run.finished_at = datetime.now(UTC)
    run.status = RunStatus.PARTIAL if cancel.is_set() else RunStatus.COMPLETE
    run.message = (
        "cancelled: the levels tried were kept"
        if cancel.is_set()
        else f"SLO search: knee {'none' if lo is None else f'{lo:g}'} ({slo.text})"
    )
    return SearchResult(
        axis=axis,
        slo=slo.text,
        start=first,
        start_source=start_source,
        knee=lo,
        levels=tried,
        run=run,
        note=note,
    )


def _label(axis: Axis, slo: Slo, knee: float | None) -> str:
    found = "none" if knee is None else f"{knee:g}"
    return f"search: max {axis.value} within {slo.text} = {found}"


def _narrow(lo: float, hi: float, tolerance: float, integer: bool) -> bool:
    if integer:
        return hi - lo <= 1 or hi / lo <= 1.0 + tolerance
    return hi / lo <= 1.0 + tolerance


def _judge(result: LevelResult, watch: LevelWatch, slo: Slo, value: float) -> SearchLevel:
    metrics = result.metrics
    common = {
        "value": value,
        "p99_ttft_ms": metrics.ttft.percentiles.get("99", 0.0),
        "p99_tpot_ms": metrics.tpot.percentiles.get("99", 0.0),
        "request_throughput": metrics.request_throughput,
    }
    if watch.reason is not None:
        return SearchLevel(**common, verdict="fail", reasons=(watch.reason,), stopped_by=watch.reason)
    if result.client.client_limited:
        return SearchLevel(
            **common,
            verdict="client-limited",
            reasons=("client-limited: the load generator was the bottleneck",),
        )
    if result.status is not RunStatus.COMPLETE:
        return SearchLevel(**common, verdict="fail", reasons=(result.message or result.status.value,))
    check = slo.check(metrics)
    return SearchLevel(**common, verdict="pass" if check.passed else "fail", reasons=check.failures)
