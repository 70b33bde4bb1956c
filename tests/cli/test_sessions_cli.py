"""`servedeck runs ...` through the real CLI entry point."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends.bench.results import RunStatus
from sessions import SessionStore
from tests.cli_runner import run_main as run_cli
from tests.sessions_helpers import make_config, make_level_result, make_records, make_target
from tui.cli import main

# Key names of vLLM's --save-result JSON (reference/bench_anchors.md §1d).
VLLM_KEYS = {
    "date",
    "endpoint_type",
    "backend",
    "label",
    "model_id",
    "tokenizer_id",
    "num_prompts",
    "request_rate",
    "burstiness",
    "max_concurrency",
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "latencies",
    "queue_times",
    *(
        f"{stat}_{metric}_ms"
        for stat in ("mean", "median", "std", "p99")
        for metric in ("ttft", "tpot", "itl", "e2el")
    ),
}
VLLM_DETAILED_KEYS = {"input_lens", "output_lens", "ttfts", "itls", "start_times", "errors"}


def make_run(data_dir: Path, *, gpu: str, label: str, target_name: str = "gke-l4", levels: int = 2) -> str:
    config = make_config(target=make_target(name=target_name), label=label, levels=[1.0, 8.0][:levels])
    with SessionStore.open(data_dir) as store:
        writer = store.runs.writer()
        run_id = writer.begin_run(config, gpu=gpu)
        for index in range(levels):
            writer.finish_level(make_level_result(config, index, make_records(0, 6, seed=index, chunks=8)))
        writer.finish_run(RunStatus.COMPLETE)
    return run_id


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_list_shows_runs_and_filters(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    l4 = make_run(data_dir, gpu="4x L4", label="baseline")
    h100 = make_run(data_dir, gpu="1x H100", label="tuned", target_name="gke-h100")

    code, out, _ = run_cli(capsys, "runs", "list", "--data-dir", str(data_dir))
    assert code == 0
    assert "baseline" in out and "tuned" in out and "4x L4" in out

    code, out, _ = run_cli(capsys, "runs", "list", "--json", "--gpu", "h100", "--data-dir", str(data_dir))
    assert code == 0
    assert [run["id"] for run in json.loads(out)] == [h100]

    code, out, _ = run_cli(capsys, "runs", "list", "--json", "--target", "l4", "--data-dir", str(data_dir))
    assert [run["id"] for run in json.loads(out)] == [l4]

    code, out, _ = run_cli(capsys, "runs", "list", "--since", "2999-01-01", "--data-dir", str(data_dir))
    assert (code, out.strip()) == (0, "no saved runs match")


def test_show_prints_levels_by_id_prefix(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = make_run(data_dir, gpu="4x L4", label="baseline")
    code, out, _ = run_cli(capsys, "runs", "show", run_id[:-1], "--data-dir", str(data_dir))
    assert code == 0
    assert f"run {run_id}" in out
    assert "concurrency 8" in out and "baseline" in out

    code, out, _ = run_cli(capsys, "runs", "show", run_id, "--json", "--data-dir", str(data_dir))
    detail = json.loads(out)
    assert [level["index"] for level in detail["levels"]] == [0, 1]
    assert detail["summary"]["gpu"] == "4x L4"


def test_bundle_export_then_import_elsewhere(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = make_run(data_dir, gpu="4x L4", label="baseline")
    bundle = tmp_path / "run.json"
    code, _, err = run_cli(capsys, "runs", "export", run_id, "-o", str(bundle), "--data-dir", str(data_dir))
    assert code == 0 and str(bundle) in err

    other = tmp_path / "other"
    code, out, _ = run_cli(capsys, "runs", "import", str(bundle), "--data-dir", str(other))
    assert (code, out.strip()) == (0, f"imported run {run_id}: 2 levels, 12 requests")
    again = tmp_path / "again.json"
    run_cli(
        capsys, "runs", "export", run_id, "--format", "bundle", "-o", str(again), "--data-dir", str(other)
    )
    assert again.read_bytes() == bundle.read_bytes()

    code, _, err = run_cli(capsys, "runs", "import", str(bundle), "--data-dir", str(other))
    assert code == 1 and "--new-id" in err
    code, out, _ = run_cli(capsys, "runs", "import", str(bundle), "--new-id", "--data-dir", str(other))
    assert code == 0 and run_id not in out


def test_vllm_export_has_vllm_key_names(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = make_run(data_dir, gpu="4x L4", label="baseline")
    out_dir = tmp_path / "vllm"
    code, out, _ = run_cli(
        capsys, "runs", "export", run_id, "--format", "vllm", "-o", str(out_dir), "--data-dir", str(data_dir)
    )
    assert code == 0
    paths = sorted(out_dir.iterdir())
    assert [path.name.split("-gemma")[0] for path in paths] == [
        "baseline-infqps-concurrency1",
        "baseline-infqps-concurrency8",
    ]
    assert out.split() == [
        str(path) for path in sorted(out_dir.iterdir(), key=lambda p: "concurrency8" in p.name)
    ]
    result = json.loads(paths[0].read_text())
    assert set(result) >= VLLM_KEYS
    assert not VLLM_DETAILED_KEYS & set(result)
    assert result["request_rate"] == "inf"
    assert result["max_concurrency"] == 1
    assert len(result["latencies"]) == 6  # per-request lists come from the stored records

    detailed_dir = tmp_path / "detailed"
    run_cli(
        capsys,
        "runs",
        "export",
        run_id,
        "--format",
        "vllm",
        "--detailed",
        "-o",
        str(detailed_dir),
        "--data-dir",
        str(data_dir),
    )
    detailed = json.loads(sorted(detailed_dir.iterdir())[0].read_text())
    assert set(detailed) >= VLLM_KEYS | VLLM_DETAILED_KEYS
    assert len(detailed["itls"]) == 6


def test_csv_and_sweep_exports(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = make_run(data_dir, gpu="4x L4", label="baseline")
    code, out, _ = run_cli(capsys, "runs", "export", run_id, "--format", "csv", "--data-dir", str(data_dir))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["axis"], row["value"]) for row in rows] == [("concurrency", "1"), ("concurrency", "8")]
    assert "p99_ttft_ms" in rows[0]

    sweep_file = tmp_path / "sweep.json"
    code, _, _ = run_cli(
        capsys,
        "runs",
        "export",
        run_id,
        "--format",
        "sweep",
        "-o",
        str(sweep_file),
        "--data-dir",
        str(data_dir),
    )
    content = json.loads(sweep_file.read_text())
    assert content["servedeck_sweep"]["run_id"] == run_id
    assert len(content["levels"]) == 2


def test_label_and_delete(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keep = make_run(data_dir, gpu="4x L4", label="baseline")
    drop = make_run(data_dir, gpu="1x H100", label="tuned")

    assert run_cli(capsys, "runs", "label", keep, "H100 vs L4", "--data-dir", str(data_dir))[0] == 0
    assert run_cli(capsys, "runs", "label", drop, "--clear", "--data-dir", str(data_dir))[0] == 0
    code, _, err = run_cli(capsys, "runs", "label", keep, "--data-dir", str(data_dir))
    assert code == 1 and "give either a new LABEL or --clear" in err

    code, _, err = run_cli(capsys, "runs", "delete", drop, "--data-dir", str(data_dir))
    assert code == 1 and "pass --yes" in err
    code, out, _ = run_cli(capsys, "runs", "delete", drop, "--yes", "--data-dir", str(data_dir))
    assert (code, out.strip()) == (0, f"deleted run {drop}")

    code, out, _ = run_cli(capsys, "runs", "list", "--json", "--data-dir", str(data_dir))
    assert [(run["id"], run["label"]) for run in json.loads(out)] == [(keep, "H100 vs L4")]


def test_user_errors_are_one_line(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(data_dir, gpu="4x L4", label="baseline")
    for argv, expected in [
        (["runs", "show", "nope"], "no run 'nope'"),
        (["runs", "import", str(tmp_path / "missing.json")], "cannot read"),
    ]:
        code, out, err = run_cli(capsys, *argv, "--data-dir", str(data_dir))
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and expected in err and err.startswith("servedeck: error: ")

    with pytest.raises(SystemExit) as exited:
        main(["runs", "list", "--since", "yesterday", "--data-dir", str(data_dir)])
    assert exited.value.code == 2
    assert "expected a date like 2025-03-04" in capsys.readouterr().err

    assert run_cli(capsys, "runs")[0] == 2  # bare `runs` prints its help


def test_unfinished_run_cannot_be_exported_as_csv(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with SessionStore.open(data_dir) as store:
        writer = store.runs.writer()
        run_id = writer.begin_run(make_config())
        writer.add_records(0, make_records(0, 2, chunks=4))
        writer.finish_run(RunStatus.PARTIAL)
    code, _, err = run_cli(capsys, "runs", "export", run_id, "--format", "csv", "--data-dir", str(data_dir))
    assert code == 1 and "no finished level" in err and "--format bundle" in err


def test_run_of_a_dead_writer_is_reported_once_as_partial(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(finished.stdout)
    with SessionStore.open(data_dir) as store:
        run_id = store.runs.writer().begin_run(make_config())
        with store.db.write() as conn:  # as if that (now gone) process had been writing it
            conn.execute(
                "UPDATE runs SET writer_pid = ?, writer_start = NULL WHERE id = ?", (dead_pid, run_id)
            )

    code, out, err = run_cli(capsys, "runs", "list", "--json", "--data-dir", str(data_dir))
    assert code == 0
    assert f"marked as partial (their writing process had stopped): {run_id}" in err
    assert json.loads(out)[0]["status"] == "partial"
    assert run_cli(capsys, "runs", "list", "--data-dir", str(data_dir))[2] == ""
