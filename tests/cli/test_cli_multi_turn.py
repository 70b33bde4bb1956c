"""Multi-turn on the command line (issue 13): `servedeck bench --dataset multi_turn --turns ...` against a
live twin and the real local engine (a per-turn table, per-turn metrics in the --out JSON and the --csv),
`servedeck plan` (the twin's fast-forward) on the same workload, and the flags' bad input as one line."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.engines.local import LocalEngine
from backends.twin.engine_config import TwinConfig
from backends.twin.process import TwinProcess, start_twin_process
from tests.cli_runner import run_main

TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1)
WORKLOAD = ["--dataset", "multi_turn", "--turns", "3", "--max-context-len", "1800", "--output-len", "16"]


@pytest.fixture(scope="module")
def twin() -> Iterator[TwinProcess]:
    with start_twin_process(TWIN, log_interval_s=3600.0) as process:
        yield process


def _turns(level: dict[str, Any]) -> list[dict[str, Any]]:
    servedeck = level["servedeck"]
    assert isinstance(servedeck, dict)
    turns = servedeck["turns"]
    assert isinstance(turns, list)
    return turns


@pytest.mark.timeout(300)
def test_bench_multi_turn_prints_a_per_turn_table_and_exports_turns_to_json_and_csv(
    twin: TwinProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, table = tmp_path / "run.json", tmp_path / "run.csv"
    code, stdout, err = run_main(
        capsys,
        "bench",
        "--plain",
        "--no-save",
        "--target",
        twin.base_url,
        *WORKLOAD,
        "--concurrency",
        "2,3",
        "--num-prompts",
        "3",
        "--think-time",
        "0.01",
        "--out",
        str(out),
        "--csv",
        str(table),
    )
    assert code == 0, err
    assert "per turn (multi-turn, 3 turns a session, history with the model's own answers)" in stdout
    assert "prefix cache answered" not in stdout  # hits are what a multi-turn workload is for
    levels = json.loads(out.read_text())["levels"]
    assert len(levels) == 2
    for level in levels:
        assert level["completed"] == 9  # 3 sessions x 3 turns
        turns = _turns(level)
        assert [t["turn"] for t in turns] == [0, 1, 2]
        assert all(t["completed"] == 3 and t["median_ttft_ms"] > 0 for t in turns)
        lens = [t["mean_prompt_len"] for t in turns]
        assert lens == sorted(lens) and lens[2] > lens[0]  # each turn resends the history
        assert level["servedeck"]["server"]["prefix_cache_hit_rate"] > 0.3
        assert level["servedeck"]["prefix_cache_warning"] is None
    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert len(rows) == 2
    assert float(rows[0]["prefix_cache_hit_rate"]) > 0.3
    assert float(rows[1]["turn2_median_ttft_ms"]) > 0 and float(rows[1]["turn2_p99_ttft_ms"]) > 0


def test_plan_fast_forwards_the_same_multi_turn_workload_turn_by_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.json"
    code, _, err = run_main(
        capsys,
        "plan",
        "--gpu",
        "h100",
        "--model",
        "gemma-3-27b-it",
        *WORKLOAD,
        "--concurrency",
        "2",
        "--num-prompts",
        "3",
        "--json",
        "--out",
        str(out),
    )
    assert code == 0, err
    (level,) = json.loads(out.read_text())["levels"]
    assert level["completed"] == 9
    turns = _turns(level)
    assert [t["turn"] for t in turns] == [0, 1, 2]
    # The fast-forward knows each turn's cached share: the first turn's prompts are new, later ones not.
    assert turns[0]["prefix_cache_hit_rate"] == 0.0
    assert turns[2]["prefix_cache_hit_rate"] > 0.5
    assert level["twin"]["prefix_cache_hit_rate"] > 0.3


def test_plan_prints_the_per_turn_table_bench_prints(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run_main(
        capsys,
        "plan",
        "--gpu",
        "h100",
        "--model",
        "gemma-3-27b-it",
        *WORKLOAD,
        "--concurrency",
        "2",
        "--num-prompts",
        "3",
    )
    assert code == 0, err
    assert "per turn (multi-turn, 3 turns a session, history with the model's own answers)" in stdout
    header = next(line for line in stdout.splitlines() if "TTFT p50" in line)
    assert "turn hit" in header and "level prefix hit" in header
    # One row per turn, the level's value on the first: "2" then the turns 0, 1, 2 with ok/sent 3/3.
    rows = [line for line in stdout.splitlines() if "3/3" in line]
    assert len(rows) == 3, stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--think-time", "2"], "--think-time is a multi-turn flag: add --turns N or --dataset multi_turn"),
        (["--use-dataset-answers"], "--use-dataset-answers is a multi-turn flag"),
        (
            ["--turns", "3", "--dataset", "random"],
            "--turns replays ShareGPT conversations, not --dataset random",
        ),
        (["--turns", "0"], "expected a whole number >= 1"),
        (["--dataset", "multi_turn", "--think-time", "-1"], "expected a finite number >= 0"),
        (["--turns", "2", "--dataset", "/no/such/chats.json"], "--dataset: no such file"),
    ],
)
def test_bad_multi_turn_flags_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code, _, err = run_main(capsys, "bench", "--target", "http://127.0.0.1:9", "--no-save", *argv)
    except SystemExit as exit_:  # argparse's own type errors
        code, err = int(exit_.code or 0), capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.strip().splitlines() if not line.startswith("usage:")]
    assert len(lines) == 1 and message in lines[0], err


@pytest.mark.timeout(400)
def test_bench_multi_turn_on_the_local_engine_reads_each_turns_cache_share(
    local_engine: LocalEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    code, stdout, err = run_main(
        capsys,
        "bench",
        "--plain",
        "--no-save",
        "--target",
        local_engine.target().base_url,
        "--dataset",
        "multi_turn",
        "--turns",
        "2",
        "--max-context-len",
        "1500",
        "--output-len",
        "8",
        "--concurrency",
        "2",
        "--num-prompts",
        "2",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "per turn (multi-turn, 2 turns a session" in stdout
    (level,) = json.loads(out.read_text())["levels"]
    turns = _turns(level)
    assert [t["turn"] for t in turns] == [0, 1]
    assert all(t["completed"] == 2 and t["median_ttft_ms"] > 0 for t in turns)
    # llama.cpp's per-answer timings (cache_n, prompt_n) give every turn a cached share.
    assert all(t["prefix_cache_hit_rate"] is not None for t in turns)


ADVISE = [
    *("plan", "--advise", "--model", "gemma-3-4b-it", "--gpus", "l4,h100", "--max-gpus", "1"),
    *("--turns", "3", "--max-context-len", "1800", "--output-len", "32", "--num-prompts", "20"),
    *("--slo", "p99_ttft:500", "--rate", "2"),
]


def test_the_advisor_ranks_shapes_on_a_multi_turn_workload_with_their_hit_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, stdout, err = run_main(capsys, *ADVISE, "--json")
    assert code == 0, err
    advice = json.loads(stdout)
    assert advice["multi_turn"] is True and advice["num_prompts"] == 20
    shapes = advice["shapes"]
    assert [s["label"] for s in shapes] == ["1xL4 24GB", "1xH100 80GB"]  # cheapest per 1M tokens first
    assert all(s["verdict"] == "ok" for s in shapes)
    assert shapes[0]["usd_per_million"] < shapes[1]["usd_per_million"]
    for shape in shapes:
        knee = shape["knee"]
        assert 0 < knee["rate"] <= knee["saturation"]  # sessions/s
        at_knee = [t for t in knee["trials"] if t["passed"] and t["rate"] == knee["rate"]]
        assert at_knee and at_knee[0]["p99_ttft_ms"] <= 500  # the SLO over every turn's request
        # Each session resends its history: the twin's prefix cache answers much of it.
        assert at_knee[0]["prefix_cache_hit_rate"] > 0.3
    # A history resent each turn: a session carries more tokens than 3 first turns and answers.
    assert advice["tokens_per_request"] > 3 * 32
    code, stdout, err = run_main(capsys, *ADVISE)
    assert code == 0, err
    assert "at 2 sessions/s, SLO p99 TTFT <= 500 ms on every turn" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("#  shape"))
    assert "sessions/s per replica" in header and "prefix hit" in header
    row = next(line for line in stdout.splitlines() if line.startswith("1  1xL4"))
    assert "%" in row.split()[-2]  # the hit-rate column of the cheapest shape


def test_a_multi_turn_trial_stops_early_once_its_turns_miss_the_ttft_target() -> None:
    from backends.advisor.knee import Sessions, run_trial
    from backends.bench.datasets import sample_requests
    from backends.bench.results import DatasetSpec
    from backends.bench.slo import parse_slo
    from backends.bench.tokenizers import TiktokenCounter

    spec = DatasetSpec(kind="multi_turn", turns=3, max_context_len=1800)
    dataset = sample_requests(spec, 40, TiktokenCounter(), 0, 64)
    sessions = Sessions(conversations=tuple(dataset.level_conversations[0]), spec=spec)
    config = TwinConfig.build("gemma-3-4b-it", "l4", 1, max_model_len=4096)
    trial = run_trial(config, dataset.requests, 1000.0, parse_slo("p99_ttft:50"), sessions=sessions)
    assert not trial.passed and trial.stopped_early
    assert "TTFT" in trial.reasons[0]
