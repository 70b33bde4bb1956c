"""A sweep: each concurrency level or request rate in order, each with its own sampled prompts (or the
same at every level with ``same_prompts``, as vLLM does).

``run_sweep`` emits typed events as it goes (``SweepEvent``); callers draw them (CLI, TUI) and
persist them (sessions). Cancelling keeps every finished level and the finished requests of the
current level, marked partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import BaseModel

from backends.bench.datasets import (
    MAX_TOTAL_LEN,
    MIN_SEQUENCE_LEN,
    SampledDataset,
    same_prompts_note,
    sample_requests,
)
from backends.bench.loadgen.requests import (
    RequestOptions,
    parse_endpoint,
    render_body,
    render_request,
)
from backends.bench.loadgen.runner import LevelOutcome, LevelPlan, LevelProgress, run_level
from backends.bench.loadgen.selfmon import judge_client
from backends.bench.metrics import compute_metrics, describe_failures, failure_causes, never_reached_server
from backends.bench.models import LoadLevel, ProgressSnapshot, RequestRecord
from backends.bench.multi_turn import per_turn_metrics
from backends.bench.results import DatasetSpec, LevelResult, RunStatus, SweepConfig, SweepResult
from backends.bench.tokenizers import pick_token_counter
from backends.bench.traces import check_trace_levels, trace_arrivals
from backends.errors import ConfigError, TargetError
from backends.prometheus import MetricsScraper
from backends.redaction import redact, remember_secret
from backends.target_types import ServerSnapshot, Target, TargetKind
from backends.telemetry.scrape import LevelGpuMonitor, telemetry_url

_SNAPSHOT_INTERVAL_S = 0.5  # live charts redraw at 2-4 Hz; twice a second keeps them moving
_RECENT_TTFTS = 64


class SweepStarted(BaseModel):
    run_id: str
    config: SweepConfig
    notes: list[str]


class LevelStarted(BaseModel):
    index: int
    level: LoadLevel
    total: int


class RecordsBatch(BaseModel):
    level_index: int
    records: list[RequestRecord]


class LevelFinished(BaseModel):
    result: LevelResult


class SweepFinished(BaseModel):
    result: SweepResult


SweepEvent = SweepStarted | LevelStarted | ProgressSnapshot | RecordsBatch | LevelFinished | SweepFinished


def validate_config(config: SweepConfig) -> None:
    """The config's own limits (again: ``model_copy`` does not validate), its endpoint, and what needs
    its dataset and target."""
    config.check_limits()
    if config.endpoint not in ("chat", "completions"):
        raise ConfigError(f"endpoint must be 'chat' or 'completions', got {config.endpoint!r}")
    if config.dataset.kind == "trace":
        check_trace_levels(config.axis, config.levels, config.ramp_up_strategy)
    check_output_len(config.dataset, config.output_len, config.target)


def check_output_len(dataset: DatasetSpec, output_len: int | None, target: Target | None = None) -> None:
    """ConfigError when no request could be as long as asked: vLLM's ShareGPT rules cap prompt + output
    at 2048 tokens, and the target's context caps every request (a llama.cpp server would silently stop
    at its slot's end, vLLM refuses each request)."""
    longest_sharegpt = MAX_TOTAL_LEN - MIN_SEQUENCE_LEN
    if output_len is not None and dataset.kind not in ("random", "trace") and output_len > longest_sharegpt:
        raise ConfigError(
            f"--output-len {output_len} cannot be sampled from ShareGPT: vLLM's rules keep prompt + output "
            f"<= {MAX_TOTAL_LEN} tokens with prompts of >= {MIN_SEQUENCE_LEN}, so at most "
            f"{longest_sharegpt}; use --dataset random for longer outputs"
        )
    if target is None or target.max_model_len is None:
        return
    limit = target.max_model_len
    source = "a slot's n_ctx in /props" if target.kind is TargetKind.LLAMACPP else "/v1/models"
    wanted = (
        output_len
        if output_len is not None
        else (dataset.random_output_len if dataset.kind == "random" else None)
    )
    if wanted is None:
        return
    prompt = dataset.random_input_len if dataset.kind == "random" else MIN_SEQUENCE_LEN
    if prompt + wanted > limit:
        flag = "--output-len" if output_len is not None else "--random-output-len"
        what = f"{flag} {wanted}" + (f" with --random-input-len {prompt}" if dataset.kind == "random" else "")
        raise ConfigError(
            f"{what} does not fit {target.model}: it takes at most {limit} tokens per request, prompt + "
            f"output ({source}); ask for fewer tokens"
        )


def _api_key(config: SweepConfig) -> str | None:
    env = config.target.api_key_env
    return remember_secret(os.environ.get(env)) if env else None


class _LevelMonitor:
    """Folds worker progress and server scrapes into one snapshot a second."""

    def __init__(self, index: int, level: LoadLevel, total: int, emit: Callable[[SweepEvent], None]) -> None:
        self.index = index
        self.level = level
        self.total = total
        self.emit = emit
        self.progress = LevelProgress()
        self.tokens_since_snapshot = 0
        self.last_snapshot_t = 0.0
        self.recent_ttft_ms: deque[float] = deque(maxlen=_RECENT_TTFTS)
        self.server: ServerSnapshot | None = None
        self.server_snapshots: list[ServerSnapshot] = []
        self.started = time.perf_counter()
        self.gpu: LevelGpuMonitor | None = None
        # llama.cpp counts its prefix-cache reuse per answer (timings.cache_n, prompt_n), not in /metrics:
        # summed over the level's answers, they stand in for vLLM's hits/queries counters.
        self.cached_tokens = 0.0
        self.evaluated_tokens = 0.0
        self.timings_seen = False

    def on_progress(self, progress: LevelProgress) -> None:
        self.progress = progress
        self.tokens_since_snapshot += progress.new_tokens
        for record in progress.new_records:
            ttft = record.ttft
            if record.success and ttft is not None:
                self.recent_ttft_ms.append(ttft * 1000.0)
            timings = record.server_timings
            if record.success and timings is not None and "prompt_n" in timings:
                self.timings_seen = True
                self.cached_tokens += timings.get("cache_n", 0.0)
                self.evaluated_tokens += timings["prompt_n"]
        if progress.new_records:
            self.emit(RecordsBatch(level_index=self.index, records=progress.new_records))

    def on_server(self, snapshot: ServerSnapshot) -> None:
        if snapshot.source == "llamacpp" and snapshot.prefix_cache_hits_total is None:
            if not self.server_snapshots:
                # The level's own counts start at zero, whenever the first scrape comes.
                self.server_snapshots.append(
                    ServerSnapshot(
                        t=0.0, source="llamacpp", prefix_cache_hits_total=0.0, prefix_cache_queries_total=0.0
                    )
                )
            if self.timings_seen:
                snapshot = snapshot.model_copy(
                    update={
                        "prefix_cache_hits_total": self.cached_tokens,
                        "prefix_cache_queries_total": self.cached_tokens + self.evaluated_tokens,
                    }
                )
        self.server = snapshot
        self.server_snapshots.append(snapshot)

    def snapshot(self) -> ProgressSnapshot:
        now = time.perf_counter() - self.started
        interval = max(now - self.last_snapshot_t, 1e-6)
        rate = self.tokens_since_snapshot / interval
        self.tokens_since_snapshot = 0
        self.last_snapshot_t = now
        p = self.progress
        return ProgressSnapshot(
            level_index=self.index,
            level_label=self.level.label,
            t=now,
            total=self.total,
            sent=p.sent,
            completed=p.completed,
            failed=p.failed,
            in_flight=p.in_flight,
            output_tokens_per_s=rate,
            recent_ttft_ms=list(self.recent_ttft_ms),
            server=self.server,
            gpu=self.gpu.latest if self.gpu is not None else None,
        )


async def _tick_snapshots(monitor: _LevelMonitor) -> None:
    while True:
        await asyncio.sleep(_SNAPSHOT_INTERVAL_S)
        monitor.emit(monitor.snapshot())


async def _run_one_level(
    index: int,
    level: LoadLevel,
    config: SweepConfig,
    dataset: SampledDataset,
    emit: Callable[[SweepEvent], None],
    cancel: asyncio.Event,
) -> tuple[LevelResult, bool]:
    target = config.target
    endpoint = parse_endpoint(target.base_url)
    options = RequestOptions(
        model=target.model,
        endpoint=config.endpoint,
        temperature=config.temperature,
        ignore_eos=config.ignore_eos,
        continuous_usage=target.capabilities.continuous_usage,
        api_key=_api_key(config),
    )
    samples = dataset.for_level(index)
    conversations = dataset.conversations_for_level(index)
    spec = config.dataset
    plan = LevelPlan(
        level=level,
        requests=(
            []
            if conversations is not None
            else [render_request(endpoint, render_body(s, options), options) for s in samples]
        ),
        prompt_lens=[s.prompt_len for s in samples],
        output_lens=[s.expected_output_len for s in samples],
        seed=config.seed,
        workers=config.workers,
        request_timeout_s=config.request_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
        conversations=conversations,
        options=options,
        dataset_answers=spec.dataset_answers,
        think_time_s=spec.think_time_s,
        think_time_dist=spec.think_time_dist,
        arrivals=trace_arrivals(samples),
    )
    emit(LevelStarted(index=index, level=level, total=plan.total))
    monitor = _LevelMonitor(index, level, plan.total, emit)
    started_at = datetime.now(UTC)
    stop_scraper = asyncio.Event()
    background: list[asyncio.Task[None]] = [asyncio.create_task(_tick_snapshots(monitor))]
    scraper: MetricsScraper | None = None
    if target.capabilities.metrics or target.capabilities.slots:
        scraper = MetricsScraper(
            target.base_url, api_key=options.api_key, fetch_slots=True if target.capabilities.slots else None
        )
        background.append(asyncio.create_task(scraper.run(monitor.on_server, stop_scraper)))
    gpu_url = telemetry_url(config.gpu_metrics_url, target.kind.value, target.base_url)
    if gpu_url is not None:
        monitor.gpu = LevelGpuMonitor(
            gpu_url, config.gpu_metrics_pods, lambda: time.perf_counter() - monitor.started
        )
        background.append(monitor.gpu.start(stop_scraper))
    try:
        outcome: LevelOutcome = await run_level(plan, endpoint, monitor.on_progress, cancel)
        if scraper is not None and not outcome.cancelled:
            # The level's counters end here, not at the last ~1 s tick (prefix-cache hit rate per level).
            final = await scraper.scrape(time.perf_counter() - monitor.started)
            if final is not None:
                monitor.on_server(final)
    finally:
        stop_scraper.set()
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if scraper is not None:
            await scraper.aclose()
        if monitor.gpu is not None:
            await monitor.gpu.finish()
    emit(monitor.snapshot())
    # Requests a dead (or refusing) server never answered finish at once: left in the rates they would
    # inflate them, so they are kept in the records but measured apart, over the time the server answered.
    reached = [r for r in outcome.records if not never_reached_server(r)]
    unreached = len(outcome.records) - len(reached)
    duration = outcome.duration_s
    if unreached:
        answered = [r.chunk_times[-1] if r.chunk_times else r.first_token_at for r in reached]
        last_answer = max((t for t in answered if t is not None), default=None)
        if last_answer is not None:
            duration = min(duration, last_answer)
    metrics = compute_metrics(
        reached,
        duration,
        goodput_slos_ms=config.goodput_slos_ms or None,
        percentiles=config.percentiles,
    )
    if outcome.cancelled:
        status, message = RunStatus.PARTIAL, "cancelled: finished requests of this level were kept"
    elif outcome.error:
        status, message = RunStatus.PARTIAL, outcome.error
    elif metrics.completed == 0:
        status, message = (
            RunStatus.FAILED,
            f"no request completed: {_failure_note(outcome.records, count=False)}",
        )
    elif unreached:
        status = RunStatus.PARTIAL
        message = (
            f"the server went away after {duration:.1f} s: {_unreached_note(outcome.records, unreached)}"
        )
    else:
        status, message = RunStatus.COMPLETE, None
    if status is not RunStatus.FAILED and metrics.failed:
        note = _failure_note(reached)
        message = f"{message}; {note}" if message else note
    result = LevelResult(
        index=index,
        level=level,
        started_at=started_at,
        status=status,
        metrics=metrics,
        client=judge_client(outcome.client, metrics),
        records=outcome.records,
        server_snapshots=monitor.server_snapshots,
        message=redact(message),
        prompt_sampling=dataset.sampling,
        turns=per_turn_metrics(outcome.records) if conversations is not None else None,
        gpu=(
            monitor.gpu.result(
                metrics.total_output_tokens,
                duration,
                config.usd_per_hour,
                outcome.start_at - monitor.started if outcome.start_at is not None else None,
            )
            if monitor.gpu is not None
            else None
        ),
    )
    emit(LevelFinished(result=result))
    return result, outcome.cancelled


def _failure_note(records: list[RequestRecord], *, count: bool = True) -> str:
    """Failures counted by cause ("12 failed: 8 HTTP 500, 4 connection refused"); with one cause, its
    first message in full."""
    causes = failure_causes(records)
    if not causes:
        return "no request was sent"
    first = next((r.error for r in records if r.error), None)
    if len(causes) == 1 and first is not None:
        return f"{causes[0][1]} failed: {first}" if count else first
    return describe_failures(records) or ""


def _unreached_note(records: list[RequestRecord], unreached: int) -> str:
    causes = failure_causes(r for r in records if never_reached_server(r))
    how = ", ".join(f"{n} {cause}" for cause, n in causes)
    return f"{unreached} requests never reached the server ({how}) and are left out of the rates"


def sample_for(config: SweepConfig, stop: threading.Event | None = None) -> SampledDataset:
    """Sample the sweep's prompts, counting tokens with the target's own tokenizer when it has one;
    ``stop`` set ends the counting with CountingStopped."""
    counter = pick_token_counter(
        config.target.base_url,
        config.target.model,
        has_tokenize=config.target.capabilities.tokenize,
        api_key=_api_key(config),
        stop=stop,
    )
    try:
        dataset = sample_requests(
            config.dataset,
            config.num_prompts,
            counter,
            config.seed,
            config.output_len,
            levels=None if config.same_prompts else len(config.levels),
        )
    finally:
        close = getattr(counter, "close", None)
        if close is not None:
            close()
    notes = [*dataset.notes, f"token counts: {counter.name}"]
    if config.same_prompts and len(config.levels) > 1:
        notes.append(same_prompts_note(config.num_prompts))
    return dataset.model_copy(update={"notes": notes})


async def prepare_dataset(config: SweepConfig) -> SampledDataset:
    return await asyncio.to_thread(sample_for, config)


async def prepare_dataset_unless_cancelled(
    config: SweepConfig, cancel: asyncio.Event
) -> SampledDataset | None:
    """The sweep's prompts, or None when ``cancel`` is set first: counting then stops sending
    requests, and only those already in flight are waited for."""
    stop = threading.Event()
    work = asyncio.ensure_future(asyncio.to_thread(sample_for, config, stop))
    cancelled = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait((work, cancelled), return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
    if not cancel.is_set():
        return await work
    stop.set()
    with contextlib.suppress(Exception):  # stopped: whatever counting raised no longer matters
        await work
    return None


async def run_sweep(
    config: SweepConfig,
    emit: Callable[[SweepEvent], None],
    cancel: asyncio.Event | None = None,
    dataset: SampledDataset | None = None,
) -> SweepResult:
    validate_config(config)
    cancel = cancel or asyncio.Event()
    if dataset is None:
        dataset = await prepare_dataset(config)
    result = SweepResult(run_id=uuid.uuid4().hex[:12], config=config, started_at=datetime.now(UTC))
    emit(SweepStarted(run_id=result.run_id, config=config, notes=dataset.notes))
    stopped: str | None = None
    try:
        for index, level in enumerate(config.load_levels()):
            if cancel.is_set():
                break
            try:
                level_result, was_cancelled = await _run_one_level(
                    index, level, config, dataset, emit, cancel
                )
            except TargetError as err:
                if not result.levels:
                    raise
                stopped = (
                    f"the server went away: {level.label} could not start ({err}); "
                    "the finished levels were kept"
                )
                break
            result.levels.append(level_result)
            if was_cancelled:
                break
    finally:
        result.finished_at = datetime.now(UTC)
        if cancel.is_set():
            result.status = RunStatus.PARTIAL if result.levels else RunStatus.FAILED
            result.message = "cancelled: finished levels and requests were kept"
        elif stopped is not None:
            result.status = RunStatus.PARTIAL
            result.message = stopped
        elif len(result.levels) < len(config.levels):
            result.status = RunStatus.PARTIAL if result.levels else RunStatus.FAILED
            result.message = "stopped by an error before every level ran; finished levels were kept"
        else:
            set_status_from_levels(result)
        emit(SweepFinished(result=result))
    return result


def set_status_from_levels(result: SweepResult) -> None:
    """The status of a run whose every level ran: FAILED (with the last level's message) when all failed,
    PARTIAL when any did not complete, else COMPLETE."""
    statuses = [lvl.status for lvl in result.levels]
    if all(s is RunStatus.FAILED for s in statuses):
        result.status = RunStatus.FAILED
        result.message = result.levels[-1].message if result.levels else None
    elif any(s is not RunStatus.COMPLETE for s in statuses):
        result.status = RunStatus.PARTIAL
    else:
        result.status = RunStatus.COMPLETE
