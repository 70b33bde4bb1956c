"""Builders shared by the sessions tests and benchmark, and a writer process for the crash tests.

Run as ``python -m tests.sessions_helpers DATA_DIR RECORDS_PER_BATCH [BATCHES]`` it begins a run,
prints ``run <id>`` then ``stored <n>`` after every committed batch: forever (until killed), or
``BATCHES`` times, after which it finishes the run as complete.
"""

from __future__ import annotations

import math
import random
import sys
from datetime import UTC, datetime

from backends.bench.metrics import BenchmarkMetrics, Distribution
from backends.bench.models import Axis, ClientStats, RequestRecord
from backends.bench.results import DatasetSpec, LevelResult, RunStatus, SweepConfig
from backends.target_types import ServerSnapshot, Target, TargetCapabilities, TargetKind

API_KEY_ENV = "SERVEDECK_TEST_API_KEY"


def make_target(name: str = "twin-h100", model: str = "google/gemma-3-27b-it") -> Target:
    return Target(
        name=name,
        base_url="http://127.0.0.1:8000/v1",
        model=model,
        kind=TargetKind.TWIN,
        api_key_env=API_KEY_ENV,
        capabilities=TargetCapabilities(tokenize=True, metrics=True),
    )


def make_config(
    target: Target | None = None,
    levels: list[float] | None = None,
    axis: Axis = Axis.CONCURRENCY,
    label: str | None = None,
) -> SweepConfig:
    return SweepConfig(
        target=target or make_target(),
        dataset=DatasetSpec(kind="random", random_input_len=512, random_output_len=256),
        axis=axis,
        levels=levels if levels is not None else [1.0, 8.0, 32.0],
        num_prompts=50,
        output_len=256,
        ignore_eos=True,
        seed=7,
        goodput_slos_ms={"ttft": 500.0, "tpot": 50.0},
        label=label,
    )


def make_record(index: int, rng: random.Random, chunks: int = 256, success: bool = True) -> RequestRecord:
    queued = rng.uniform(0.0, 30.0)
    sent = queued + rng.uniform(0.0, 0.01)
    if not success:
        return RequestRecord(
            index=index,
            prompt_len=rng.randint(4, 1024),
            expected_output_len=chunks,
            queued_at=queued,
            sent_at=sent,
            http_status=503,
            error='HTTP 503: {"object":"error","message":"overloaded"}\nsecond line',
        )
    first = sent + rng.uniform(0.05, 1.5)
    times = [first]
    for _ in range(chunks - 1):
        times.append(times[-1] + rng.gammavariate(4.0, 0.005))
    return RequestRecord(
        index=index,
        prompt_len=rng.randint(4, 1024),
        expected_output_len=chunks,
        queued_at=queued,
        sent_at=sent,
        first_token_at=first,
        chunk_times=times,
        chunk_tokens=[1] * (chunks - 1) + [rng.randint(1, 3)],
        input_tokens=rng.randint(4, 1024),
        output_tokens=chunks,
        finish_reason="length",
        http_status=200,
        success=True,
        server_timings={"prompt_ms": rng.uniform(1, 50), "predicted_ms": rng.uniform(100, 5000)},
    )


def make_records(start: int, count: int, seed: int = 0, chunks: int = 256) -> list[RequestRecord]:
    rng = random.Random(seed * 1_000_003 + start)
    return [make_record(start + i, rng, chunks, success=(start + i) % 17 != 5) for i in range(count)]


def make_distribution(base: float) -> Distribution:
    return Distribution(
        mean=base, median=base * 0.9, std=base / 3, percentiles={"50": base * 0.9, "99": base * 2.5}
    )


def make_metrics(completed: int, scale: float = 1.0) -> BenchmarkMetrics:
    return BenchmarkMetrics(
        completed=completed,
        failed=1,
        duration=12.5 * scale,
        total_input_tokens=completed * 300,
        total_output_tokens=completed * 256,
        request_throughput=completed / 12.5,
        request_goodput=None,
        output_throughput=completed * 256 / 12.5 * scale,
        total_token_throughput=completed * 556 / 12.5,
        max_output_tokens_per_s=1234.5,
        max_concurrent_requests=8,
        ttft=make_distribution(120.0 * scale),
        tpot=make_distribution(22.0),
        itl=make_distribution(21.5),
        e2el=make_distribution(5800.0),
        client_queue_time=make_distribution(0.3),
    )


def make_snapshots(count: int, offset: float = 0.0) -> list[ServerSnapshot]:
    return [
        ServerSnapshot(
            t=offset + i * 1.0,
            source="twin",
            running=float(i % 8),
            waiting=float(i % 3),
            kv_cache_usage=min(1.0, i / 50),
            generation_tokens_total=1000.0 * i,
        )
        for i in range(count)
    ]


def make_level_result(
    config: SweepConfig,
    index: int,
    records: list[RequestRecord] | None = None,
    status: RunStatus = RunStatus.COMPLETE,
) -> LevelResult:
    records = records if records is not None else []
    return LevelResult(
        index=index,
        level=config.load_levels()[index],
        started_at=datetime(2025, 3, 4, 10, index, 5, 123456, tzinfo=UTC),
        status=status,
        metrics=make_metrics(max(1, len(records)), scale=1.0 + index),
        client=ClientStats(loop_lag_p50_ms=0.2, loop_lag_p99_ms=1.1, cpu_percent=23.0, workers=1),
        records=records,
        server_snapshots=make_snapshots(3, offset=100.0 * index),
        message=None if status is RunStatus.COMPLETE else "cut short",
    )


def infinite_rate_config() -> SweepConfig:
    return make_config(levels=[2.0, math.inf], axis=Axis.REQUEST_RATE)


def _write_batches(data_dir: str, batch: int, batches: int | None) -> None:
    """Write level 0 whole, then level 1 in batches: forever, or ``batches`` times and finish."""
    from sessions.store import SessionStore

    config = make_config(levels=[4.0, 16.0])
    with SessionStore.open(data_dir) as store:
        writer = store.runs.writer()
        run_id = writer.begin_run(config, gpu="twin 1x H100")
        print(f"run {run_id}", flush=True)
        writer.finish_level(make_level_result(config, 0, make_records(0, batch, chunks=16)))
        print(f"stored {batch}", flush=True)
        written = 0
        while batches is None or written < batches:
            writer.add_records(1, make_records(written * batch, batch, chunks=16))
            written += 1
            print(f"stored {batch * (written + 1)}", flush=True)
        writer.finish_level(make_level_result(config, 1))
        writer.finish_run(RunStatus.COMPLETE)


if __name__ == "__main__":
    _write_batches(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
