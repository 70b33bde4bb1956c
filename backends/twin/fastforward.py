"""Fast-forward: the twin's engine on a virtual clock, fed like the bench core feeds a live server.

Same prompts (``backends.bench.datasets``: each level its own unless ``same_prompts``), same arrival
schedule (``loadgen.arrivals.arrival_times`` with the sweep's seed), same closed-loop concurrency cap,
and the same result objects (``RequestRecord`` per request, ``compute_metrics``,
``LevelResult``/``SweepResult``), so a prediction reads like a measurement.
Times are what a client at zero network distance would see: a token is visible when its step ends.

One engine serves the whole sweep, as one server would: the prefix cache carries over between levels.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum

from backends.bench.datasets import (
    SampledDataset,
    bundled_sharegpt,
    load_sharegpt_file,
    same_prompts_note,
    sample_requests,
)
from backends.bench.loadgen.arrivals import arrival_times
from backends.bench.metrics import compute_metrics
from backends.bench.models import ClientStats, LoadLevel, RequestRecord, SampledRequest, TurnMetrics
from backends.bench.results import LevelResult, RunStatus, SweepConfig, SweepResult
from backends.bench.tokenizers import TiktokenCounter, TokenCounter, load_offline_encoding
from backends.bench.traces import check_trace_levels, trace_arrivals
from backends.errors import ConfigError
from backends.target_types import ServerSnapshot
from backends.twin.engine import TwinConfig, TwinEngine
from backends.twin.text import BOS_TOKEN_ID

SIMULATED_NOTE = "fast-forward prediction of the vLLM twin (simulated, no HTTP)"
_SNAPSHOT_INTERVAL_S = 1.0
_NO_LIMIT = 1 << 30

# Called about once a virtual second with (now, sent_at, requests admitted so far, first_token); a reason
# string ends the level there (PARTIAL, the reason as its message): an SLO search's early stop.
EarlyStop = Callable[[float, Sequence[float], int, Sequence[float | None]], str | None]


class OutputLengths(StrEnum):
    """How long answers are when the caller does not ignore EOS (the twin has no language model)."""

    MAX_TOKENS = "max"  # every answer runs to max_tokens, as with --ignore-eos
    DATASET = "dataset"  # an answer stops at its dataset completion's length (ShareGPT turn 1), capped


def completion_lengths(
    dataset: SampledDataset, sweep: SweepConfig, counter: TokenCounter, level: int = 0
) -> list[int] | None:
    """Token counts of each of a level's prompts' dataset completion (ShareGPT only; None otherwise)."""
    spec = sweep.dataset
    if spec.kind == "sharegpt":
        parsed = bundled_sharegpt()
    elif spec.kind == "file" and spec.path:
        parsed = load_sharegpt_file(spec.path)
    else:
        return None
    completions: dict[str, str] = {}
    for prompt, completion in parsed.pairs:
        completions.setdefault(prompt, completion)
    texts = [completions.get(r.prompt, "") for r in dataset.for_level(level)]
    return [max(1, n) for n in counter.count_many(texts)]


def run_level(
    engine: TwinEngine,
    level: LoadLevel,
    requests: Sequence[SampledRequest],
    *,
    index: int = 0,
    seed: int = 0,
    ignore_eos: bool = False,
    eos_after: Sequence[int] | None = None,
    percentiles: Sequence[float] = (99.0,),
    goodput_slos_ms: dict[str, float] | None = None,
    bursts: bool = True,
    early_stop: EarlyStop | None = None,
) -> LevelResult:
    """Play one level through ``engine`` on a virtual clock; the clock starts at 0 like a live level's.

    ``bursts`` lets stretches of pure decoding advance many steps at once (``TwinEngine.decode_burst``);
    False steps one iteration at a time, slower, with the same result.
    """
    started_at = datetime.now(UTC)
    total = len(requests)
    if eos_after is not None and len(eos_after) != total:
        raise ConfigError(f"{len(eos_after)} EOS lengths for {total} requests")
    arrivals = trace_arrivals(requests) or arrival_times(
        total, level.request_rate, level.burstiness, seed, ramp_up=level.ramp_up
    )
    cap = level.concurrency_cap
    sent_at: list[float] = [0.0] * total
    first_token: list[float | None] = [None] * total
    chunks: list[list[float]] = [[] for _ in range(total)]
    outputs = [0] * total
    reasons: list[str | None] = [None] * total
    position = {f"{index}-{i}": i for i in range(total)}
    # The level's baseline: the counters before its first step (one engine serves the whole sweep).
    snapshots: list[ServerSnapshot] = [snapshot(engine, 0.0)]
    next_snapshot = 0.0

    next_arrival = 0
    in_flight = 0
    done = 0
    now = 0.0
    idle_steps = 0
    previous_pass = -math.inf
    free_since_previous = _NO_LIMIT if cap is None else cap
    # A request sent because a slot freed at a step end reaches the server after the next step has
    # begun (the client needs the finishing chunk first), so it joins the step after that one.
    deferred: list[int] = []
    stopped: str | None = None
    while done < total:
        # Admit what has arrived. Slots free up only at step ends, so an arrival since the previous pass
        # was sent on arrival if a slot was free then, else it waited for this step end.
        free_now = _NO_LIMIT if cap is None else cap - in_flight
        while next_arrival < total and arrivals[next_arrival] <= now and free_now > 0:
            i = next_arrival
            if arrivals[i] > previous_pass and free_since_previous > 0:
                sent = arrivals[i]
                free_since_previous -= 1
            else:
                sent = now
            sent_at[i] = sent
            if sent == now and engine.has_work():
                deferred.append(i)
            else:
                _submit(engine, requests[i], f"{index}-{i}", sent, ignore_eos, eos_after, i)
            next_arrival += 1
            in_flight += 1
            free_now -= 1
        previous_pass = now
        free_since_previous = free_now
        if not engine.has_work():
            if next_arrival >= total:
                break
            now = max(now, arrivals[next_arrival])
            continue
        can_admit = next_arrival < total and (cap is None or in_flight < cap)
        until = arrivals[next_arrival] if can_admit else math.inf
        if until <= now:
            until = math.inf if not can_admit else now
        burst = (
            engine.decode_burst(now, until, _NO_LIMIT) if bursts and until > now and not deferred else None
        )
        if burst is not None:
            ends = burst.step_ends
            for request_id in burst.request_ids:
                chunks[position[request_id]].extend(ends)
            for out in burst.finished:
                i = position[out.request_id]
                outputs[i] = out.output_tokens
                reasons[i] = out.finish_reason.value if out.finish_reason else None
                in_flight -= 1
                done += 1
            now = ends[-1]
        else:
            step = engine.step(now)
            end = now + step.duration_s
            if step.num_scheduled == 0:
                idle_steps += 1
                if idle_steps > 2:
                    raise RuntimeError("the twin engine scheduled nothing twice with work queued")
            else:
                idle_steps = 0
            for out in step.outputs:
                i = position[out.request_id]
                if first_token[i] is None:
                    first_token[i] = end
                chunks[i].append(end)
                if out.finish_reason is not None:
                    outputs[i] = out.output_tokens
                    reasons[i] = out.finish_reason.value
                    in_flight -= 1
                    done += 1
            now = end
        for i in deferred:
            _submit(engine, requests[i], f"{index}-{i}", sent_at[i], ignore_eos, eos_after, i)
        deferred.clear()
        if now >= next_snapshot:
            snapshots.append(snapshot(engine, now))
            next_snapshot = math.floor(now / _SNAPSHOT_INTERVAL_S + 1) * _SNAPSHOT_INTERVAL_S
            if early_stop is not None:
                stopped = early_stop(now, sent_at, next_arrival, first_token)
                if stopped is not None:
                    break

    records = []
    for i, sample in enumerate(requests):
        first = first_token[i]
        if first is None and chunks[i]:
            first = chunks[i][0]
        records.append(
            RequestRecord(
                index=i,
                prompt_len=sample.prompt_len,
                expected_output_len=sample.expected_output_len,
                queued_at=arrivals[i],
                sent_at=sent_at[i],
                first_token_at=first,
                chunk_times=chunks[i],
                chunk_tokens=[1] * len(chunks[i]),
                input_tokens=sample.prompt_len,
                output_tokens=outputs[i],
                finish_reason=reasons[i],
                http_status=200,
                success=first is not None,
            )
        )
    duration = max((c[-1] for c in chunks if c), default=0.0)
    if stopped is not None:
        duration = now
    snapshots.append(snapshot(engine, now))
    return simulated_level(
        index, level, started_at, records, snapshots, duration, total, stopped, goodput_slos_ms, percentiles
    )


def simulated_level(
    index: int,
    level: LoadLevel,
    started_at: datetime,
    records: list[RequestRecord],
    snapshots: list[ServerSnapshot],
    duration: float,
    total: int,
    stopped: str | None,
    goodput_slos_ms: dict[str, float] | None,
    percentiles: Sequence[float],
    turns: list[TurnMetrics] | None = None,
) -> LevelResult:
    """A fast-forward level's result: complete when every request finished and nothing stopped it early."""
    metrics = compute_metrics(
        records, duration, goodput_slos_ms=goodput_slos_ms or None, percentiles=list(percentiles)
    )
    return LevelResult(
        index=index,
        level=level,
        started_at=started_at,
        status=RunStatus.COMPLETE if metrics.completed == total and stopped is None else RunStatus.PARTIAL,
        metrics=metrics,
        client=ClientStats(),
        records=records,
        server_snapshots=snapshots,
        message=SIMULATED_NOTE if stopped is None else f"{SIMULATED_NOTE}; stopped early: {stopped}",
        turns=turns,
    )


def _submit(
    engine: TwinEngine,
    sample: SampledRequest,
    request_id: str,
    sent: float,
    ignore_eos: bool,
    eos_after: Sequence[int] | None,
    i: int,
) -> None:
    prefix_key = hashlib.blake2b(sample.prompt.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    engine.add_request(
        request_id,
        sample.prompt_len,
        sample.expected_output_len,
        ignore_eos,
        sent,
        prefix_key,
        eos_after=None if eos_after is None else eos_after[i],
        # The twin's stand-in tokenizer: prompts sharing leading token blocks share cached blocks (vLLM's
        # block hashes), not only prompts that repeat whole.
        token_ids=_prompt_token_ids(sample.prompt) if engine.pool.enable_caching else None,
    )


def _prompt_token_ids(prompt: str) -> list[int]:
    return [BOS_TOKEN_ID, *load_offline_encoding().encode_ordinary(prompt)]


def snapshot(engine: TwinEngine, now: float) -> ServerSnapshot:
    return ServerSnapshot(
        t=now,
        source="twin",
        running=float(len(engine.running)),
        waiting=float(len(engine.waiting)),
        kv_cache_usage=engine.pool.usage,
        prompt_tokens_total=float(engine.prompt_tokens_total),
        generation_tokens_total=float(engine.generation_tokens_total),
        preemptions_total=float(engine.preemptions_total),
        prefix_cache_hits_total=float(engine.prefix_hits_total),
        prefix_cache_queries_total=float(engine.prefix_queries_total),
    )


def sample_dataset(sweep: SweepConfig, counter: TokenCounter | None = None) -> SampledDataset:
    """The sweep's prompts, counted with tiktoken (the twin has no tokenizer of its own to ask)."""
    counter = counter or TiktokenCounter()
    dataset = sample_requests(
        sweep.dataset,
        sweep.num_prompts,
        counter,
        sweep.seed,
        sweep.output_len,
        levels=None if sweep.same_prompts else len(sweep.levels),
    )
    notes = [*dataset.notes, f"token counts: {counter.name}"]
    if sweep.same_prompts and len(sweep.levels) > 1:
        notes.append(same_prompts_note(sweep.num_prompts))
    return dataset.model_copy(update={"notes": notes})


def run_sweep(
    config: TwinConfig,
    sweep: SweepConfig,
    *,
    dataset: SampledDataset | None = None,
    output_lengths: OutputLengths = OutputLengths.MAX_TOKENS,
    counter: TokenCounter | None = None,
    engine: TwinEngine | None = None,
) -> SweepResult:
    """Every level of ``sweep`` through one twin engine; returns what ``run_sweep`` of the bench returns."""
    if sweep.dataset.kind == "trace":
        check_trace_levels(sweep.axis, sweep.levels, sweep.ramp_up_strategy)
    counter = counter or TiktokenCounter()
    dataset = dataset or sample_dataset(sweep, counter)
    use_dataset_lengths = (
        output_lengths is OutputLengths.DATASET and not sweep.ignore_eos and sweep.output_len is not None
    )
    engine = engine or TwinEngine(config)
    result = SweepResult(
        run_id=uuid.uuid4().hex[:12], config=sweep, started_at=datetime.now(UTC), message=SIMULATED_NOTE
    )
    for index, level in enumerate(sweep.load_levels()):
        conversations = dataset.conversations_for_level(index)
        if conversations is not None:
            from backends.twin.fastforward_sessions import run_sessions_level

            level_result = run_sessions_level(
                engine,
                level,
                conversations,
                sweep.dataset,
                index=index,
                seed=sweep.seed,
                ignore_eos=sweep.ignore_eos,
                chat=sweep.endpoint == "chat",
                percentiles=sweep.percentiles,
                goodput_slos_ms=sweep.goodput_slos_ms,
            )
            level_result.prompt_sampling = dataset.sampling
            result.levels.append(level_result)
            continue
        eos_after = completion_lengths(dataset, sweep, counter, index) if use_dataset_lengths else None
        level_result = run_level(
            engine,
            level,
            dataset.for_level(index),
            index=index,
            seed=sweep.seed,
            ignore_eos=sweep.ignore_eos,
            eos_after=eos_after,
            percentiles=sweep.percentiles,
            goodput_slos_ms=sweep.goodput_slos_ms,
        )
        level_result.prompt_sampling = dataset.sampling
        result.levels.append(level_result)
    result.finished_at = datetime.now(UTC)
    result.status = RunStatus.COMPLETE
    return result
