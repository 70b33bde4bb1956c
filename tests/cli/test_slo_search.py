"""SLO search on a real target (`servedeck bench --find-max`): a live twin; the local engine end to end."""

from __future__ import annotations

import asyncio
import os

import pytest

from backends.bench.models import Axis
from backends.bench.results import SweepConfig
from backends.bench.slo import parse_slo
from backends.bench.slo_search import LevelWatch, find_max
from backends.bench.sweep import run_sweep, sample_for
from backends.engines.local import LocalEngine
from backends.target_types import Target
from backends.targets import discover_target
from backends.twin.engine_config import TwinConfig
from backends.twin.process import start_twin_process
from tests.cli_runner import run_main

# A decode step of ~25 ms, 8 sequences at most: past concurrency 8 a request waits for a slot, a whole
# answer (16 tokens), so its TTFT jumps past the 300 ms target.
TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1, max_num_seqs=8)
SLO = "p99_ttft:300"


def _base(target: Target) -> SweepConfig:
    return SweepConfig(
        target=target,
        axis=Axis.CONCURRENCY,
        levels=[1.0],
        num_prompts=16,
        output_len=16,
        endpoint="completions",
        same_prompts=True,
    )


@pytest.mark.timeout(300)
def test_search_on_a_live_twin_finds_the_knee_of_a_dense_sweep() -> None:
    server_cpu = 0 if len(os.sched_getaffinity(0)) > 1 else None
    slo = parse_slo(SLO)
    with start_twin_process(TWIN, cpu=server_cpu, log_interval_s=3600.0) as twin:
        target = asyncio.run(discover_target(twin.base_url))
        base = _base(target)
        result = asyncio.run(find_max(base, slo, axis=Axis.CONCURRENCY, max_levels=8, tolerance=0.1))
        dense_config = base.model_copy(update={"levels": [float(c) for c in range(1, 13)]})
        dense = asyncio.run(run_sweep(dense_config, lambda _: None, dataset=sample_for(dense_config)))
    passing = [lvl.level.value for lvl in dense.levels if slo.check(lvl.metrics).passed]
    assert passing, "the dense sweep passes at concurrency 1"
    dense_knee = max(passing)
    assert 4 <= dense_knee < 12, dense_knee
    assert len(result.levels) <= 8 and len(result.run.levels) == len(result.levels)
    assert result.knee is not None and abs(result.knee - dense_knee) <= 1, (result.knee, dense_knee)
    assert [lvl.value for lvl in result.levels][:2] == [1.0, 4.0]  # the probe, then x4
    failed = [lvl for lvl in result.levels if lvl.verdict == "fail"]
    assert failed and all(lvl.reasons for lvl in failed)
    assert result.run.config.levels == [lvl.value for lvl in result.levels]
    assert result.run.config.label is not None and result.run.config.label.startswith("search: ")


def test_a_level_over_its_ttft_target_stops_with_the_signal_named() -> None:
    from backends.bench.models import ProgressSnapshot, RequestRecord
    from backends.target_types import ServerSnapshot

    slo = parse_slo("p99_ttft:100")
    watch = LevelWatch(slo, Axis.REQUEST_RATE, 10.0, total=100)
    late = [
        RequestRecord(
            index=i,
            prompt_len=10,
            expected_output_len=2,
            queued_at=0.0,
            sent_at=0.0,
            first_token_at=0.5,
            chunk_times=[0.5, 0.6],
            chunk_tokens=[1, 1],
            output_tokens=2,
            success=True,
        )
        for i in range(2)
    ]
    watch.on_records(late[:1])
    assert watch.reason is None  # one of 100 may be over a p99 target
    watch.on_records(late[1:])
    assert watch.reason is not None and "p99 TTFT over 100 ms on 2 of 100" in watch.reason
    kv = LevelWatch(slo, Axis.REQUEST_RATE, 10.0, total=100)
    for t, preempted in ((1.0, 0.0), (2.0, 3.0)):
        server = ServerSnapshot(t=t, kv_cache_usage=1.0, preemptions_total=preempted, waiting=1.0)
        kv.on_progress(
            ProgressSnapshot(
                level_index=0,
                level_label="10 req/s",
                t=t,
                total=100,
                sent=10,
                completed=0,
                failed=0,
                in_flight=10,
                output_tokens_per_s=0.0,
                server=server,
            )
        )
    assert kv.reason == "KV cache at 100% with 3 preemptions"
    queue = LevelWatch(slo, Axis.REQUEST_RATE, 10.0, total=100)
    for t in range(7):
        server = ServerSnapshot(t=float(t), waiting=float(2 + 3 * t), kv_cache_usage=0.5)
        queue.on_progress(
            ProgressSnapshot(
                level_index=0,
                level_label="10 req/s",
                t=float(t),
                total=100,
                sent=10,
                completed=0,
                failed=0,
                in_flight=10,
                output_tokens_per_s=0.0,
                server=server,
            )
        )
    assert queue.reason is not None and queue.reason.startswith("waiting queue growing")


@pytest.mark.timeout(600)
def test_find_max_runs_end_to_end_against_the_local_engine(
    local_engine: LocalEngine, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    code, out, err = run_main(
        capsys,
        "bench",
        "--target",
        local_engine.base_url,
        "--find-max",
        "concurrency",
        "--slo",
        "p99_ttft:60000,p99_tpot:5000",
        "--num-prompts",
        "4",
        "--output-len",
        "8",
        "--max-levels",
        "3",
        "--data-dir",
        str(tmp_path),
    )
    assert "SLO search on " in out and "start: probe" in out, (out, err)
    if code == 1:
        # On a loaded host every level may be client-limited: no verdict of the server's, so no knee.
        assert "Knee: none" in out and "client-limited" in out, (out, err)
    else:
        assert code == 0 and "Knee: " in out and "concurrency 1" in out, (out, err)
    assert "search saved as run " in err
    code, listing, _ = run_main(capsys, "--data-dir", str(tmp_path), "runs", "list")
    assert code == 0 and "search: max concurrency" in listing


def test_bad_search_input_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in (
        (["--find-max", "concurrency"], "--find-max needs --slo"),
        (["--find-max", "concurrency", "--slo", "p99_ttfx:5"], "unknown --slo key 'p99_ttfx'"),
        (
            ["--find-max", "request-rate", "--slo", "p99_ttft:5", "--concurrency", "4"],
            "leave out --concurrency",
        ),
    ):
        with start_twin_process(TWIN, log_interval_s=3600.0) as twin:
            code, out, err = run_main(capsys, "bench", "--target", twin.base_url, "--no-save", *argv)
        assert code == 1, (argv, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, err)


@pytest.mark.timeout(300)
def test_request_rate_search_starts_from_the_twin_prediction(
    capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    from tui.cli.bench_search import predicted_start

    slo = parse_slo("p99_ttft:2000,p99_tpot:100")
    with start_twin_process(TWIN, log_interval_s=3600.0) as twin:
        target = asyncio.run(discover_target(twin.base_url))
        assert target.hardware == "1xh100 (twin)"
        start, source = predicted_start(target, None, Axis.REQUEST_RATE, slo)
        assert start is not None and start > 0 and source.startswith("twin prediction for 1xh100: ")
        none, why = predicted_start(target, None, Axis.CONCURRENCY, slo)
        assert none is None and "request rates only" in why
        code, out, err = run_main(
            capsys,
            "bench",
            "--target",
            twin.base_url,
            "--find-max",
            "request-rate",
            "--slo",
            "p99_ttft:2000,p99_tpot:100",
            "--num-prompts",
            "24",
            "--output-len",
            "8",
            "--max-levels",
            "3",
            "--data-dir",
            str(tmp_path),
        )
    assert "start: twin prediction for 1xh100" in out, (out, err)
    assert out.count(" req/s  ") >= 1 and "Knee: " in out
    assert code in (0, 1) and "search saved as run " in err
