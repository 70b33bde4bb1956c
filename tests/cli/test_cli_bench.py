"""`servedeck bench` as a user runs it: a real process, a real server, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from backends.bench.models import Axis
from backends.bench.results import SweepConfig
from backends.bench.sweep import SweepStarted
from backends.target_types import Target, TargetKind
from manifests.cost import usd_per_million_tokens
from sessions.database import DB_FILENAME
from sessions.run_recorder import HistoryRecorder
from sessions.store import SessionStore
from tests.fakes.sse_server import FakeSSEServer
from tests.tui.test_tui_bench import fixed_sweep
from tui.cli.bench_display import results_table

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSSEServer]:
    srv = FakeSSEServer(mode="tick")
    srv.start_in_thread()
    yield srv
    srv.stop()


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "SERVEDECK_DATA_DIR": str(data_dir), "COLUMNS": "160"}


def _bench(args: list[str], data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "bench", "--plain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(data_dir),
        stdin=subprocess.DEVNULL,
    )


def _url(srv: FakeSSEServer) -> str:
    return f"http://127.0.0.1:{srv.port}"


SMALL = ["--dataset", "random", "--random-input-len", "24", "--output-len", "8", "--num-prompts", "8"]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def test_bench_writes_vllm_json_csv_and_history(server: FakeSSEServer, tmp_path: Path) -> None:
    out, csv = tmp_path / "run.json", tmp_path / "run.csv"
    done = _bench(
        [
            "--target",
            _url(server),
            "--concurrency",
            "1,4",
            *SMALL,
            "--goodput",
            "ttft:5000",
            "--out",
            str(out),
            "--csv",
            str(csv),
            "--label",
            "cli-test",
        ],
        tmp_path / "data",
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    saved = json.loads(out.read_text())
    assert saved["servedeck_sweep"]["status"] == "complete"
    assert [lvl["max_concurrency"] for lvl in saved["levels"]] == [1, 4]
    for level in saved["levels"]:
        assert level["request_rate"] == "inf"
        assert level["completed"] == 8
        for key in ("mean_ttft_ms", "median_tpot_ms", "p99_itl_ms", "request_goodput", "output_throughput"):
            assert key in level
        assert level["servedeck"]["axis"] == "concurrency"
    rows = csv.read_text().strip().splitlines()
    assert rows[0].startswith("axis,value,status") and len(rows) == 3
    listed = subprocess.run(
        [sys.executable, "-m", "tui.cli", "runs", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(tmp_path / "data"),
    )
    assert listed.returncode == 0, listed.stderr
    assert "cli-test" in listed.stdout


def test_request_rate_with_burstiness(server: FakeSSEServer, tmp_path: Path) -> None:
    out = tmp_path / "rate.json"
    done = _bench(
        [
            "--target",
            _url(server),
            "--request-rate",
            "20",
            "--burstiness",
            "0.5",
            *SMALL,
            "--out",
            str(out),
            "--no-save",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    level = json.loads(out.read_text())["levels"][0]
    assert level["request_rate"] == 20.0 and level["burstiness"] == 0.5
    assert level["servedeck"]["axis"] == "request-rate"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "1", "--request-rate", "2"], "not allowed with argument"),
        (["--concurrency", "two"], "expected comma-separated numbers"),
        (["--concurrency", "1.5"], "whole numbers"),
        (["--concurrency", "1", "--endpoint", "bogus"], "invalid choice"),
        (["--concurrency", "1", "--usd-per-hour", "-3"], "expected one number > 0"),
        (["--concurrency", "1", "--temperature", "nan"], "--temperature: expected a finite number >= 0"),
        (["--concurrency", "1", "--temperature", "-1"], "--temperature: expected a finite number >= 0"),
        (["--concurrency", "1", "--request-timeout", "0"], "--request-timeout: expected one number > 0"),
        (["--concurrency", "1", "--idle-timeout", "-1"], "--idle-timeout: expected one number > 0"),
        (
            ["--request-rate", "1", "--max-concurrency", "0"],
            "--max-concurrency: expected a whole number >= 1",
        ),
    ],
)
def test_nonsense_flags_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = _bench(["--target", "http://127.0.0.1:9", *args], tmp_path)
    assert done.returncode == 2
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "cannot connect"),
        (["--goodput", "latency:5"], "bad --goodput item"),
        (["--dataset", "/no/such/file.json"], "no such file"),
        (["--out", "/no/such/dir/x.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line(extra: list[str], message: str, tmp_path: Path) -> None:
    done = _bench(["--target", f"http://127.0.0.1:{_free_port()}", "--concurrency", "1", *extra], tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("servedeck: error:"), done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_empty_and_truncated_dataset_files(server: FakeSSEServer, tmp_path: Path) -> None:
    empty = _bench(
        ["--target", _url(server), "--concurrency", "1", "--dataset", str(DATA / "empty.json"), "--no-save"],
        tmp_path,
    )
    assert empty.returncode == 1 and "servedeck: error:" in empty.stderr and "Traceback" not in empty.stderr
    truncated = _bench(
        [
            "--target",
            _url(server),
            "--concurrency",
            "2",
            "--dataset",
            str(DATA / "sharegpt_truncated.json"),
            "--num-prompts",
            "4",
            "--output-len",
            "4",
            "--no-save",
        ],
        tmp_path,
    )
    assert truncated.returncode == 0, truncated.stderr
    assert "truncated" in truncated.stderr


def test_unwritable_data_dir_is_one_clear_line(server: FakeSSEServer, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = _bench(["--target", _url(server), "--concurrency", "1", *SMALL], blocker / "data")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("servedeck: error:")
    assert "Traceback" not in done.stderr


def _start_long_bench(url: str, data_dir: Path, extra: list[str], label: str) -> subprocess.Popen[str]:
    """A bench that runs for minutes, returned once requests are finishing (a progress line with a rate)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "bench", "--plain", "--target", url, "--concurrency", "2,4",
         "--dataset", "random", "--random-input-len", "24", "--output-len", "64", "--num-prompts", "400",
         "--label", label, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(data_dir),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if "tok/s" in line and not line.startswith(("concurrency 2: 0 tok/s",)):
            break
        assert time.monotonic() < deadline, "no progress line within 60 s"
    return proc


def _runs_list(data_dir: Path) -> str:
    listed = subprocess.run(
        [sys.executable, "-m", "tui.cli", "runs", "list"],
        capture_output=True, text=True, timeout=60, env=_env(data_dir),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


@pytest.mark.parametrize(
    ("sig", "exit_code", "said"),
    [
        (signal.SIGINT, 130, "interrupted: finished levels and requests were kept"),
        (signal.SIGTERM, 143, "stopped by SIGTERM: finished levels and requests were kept"),
        (signal.SIGHUP, 129, "stopped by SIGHUP: finished levels and requests were kept"),
    ],
)
def test_a_signal_keeps_finished_requests_in_the_files_and_history(
    sig: signal.Signals, exit_code: int, said: str, server: FakeSSEServer, tmp_path: Path
) -> None:
    """ctrl-c, a service manager's or CI's SIGTERM (`timeout`) and a closed terminal's SIGHUP all stop the
    sweep the same way: message, finished requests kept, --out and --csv written, the run partial at once."""
    out, csv = tmp_path / "partial.json", tmp_path / "partial.csv"
    data_dir = tmp_path / "data"
    proc = _start_long_bench(_url(server), data_dir, ["--out", str(out), "--csv", str(csv)], "signalled")
    time.sleep(1.0)
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == exit_code, rest
    assert said in rest
    assert "Traceback" not in rest
    saved = json.loads(out.read_text())
    assert saved["servedeck_sweep"]["status"] == "partial"
    level = saved["levels"][0]
    assert level["servedeck"]["status"] == "partial"
    assert 0 < level["completed"] < 400
    rows = csv.read_text().strip().splitlines()
    assert rows[0].startswith("axis,value,status") and len(rows) == 2 and ",partial," in rows[1]
    # The store itself, read before any other command could repair an abandoned run.
    with sqlite3.connect(f"file:{data_dir / DB_FILENAME}?mode=ro", uri=True) as db:
        ((status, message),) = db.execute("SELECT status, message FROM runs").fetchall()
    assert status == "partial" and "stopped before it finished" not in (message or ""), message
    listed = _runs_list(data_dir)
    run_line = next(line for line in listed.splitlines() if "signalled" in line)
    assert "partial" in run_line


@pytest.mark.parametrize("levels", ["inf", "nan", "1,inf"])
def test_non_finite_levels_are_one_clear_line(levels: str, tmp_path: Path) -> None:
    done = _bench(["--target", "http://127.0.0.1:9", "--concurrency", levels], tmp_path)
    assert done.returncode == 2
    assert "expected finite numbers" in done.stderr and "Traceback" not in done.stderr


def test_top_level_data_dir_reaches_the_subcommand(server: FakeSSEServer, tmp_path: Path) -> None:
    data_dir = tmp_path / "top-level"
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", "--data-dir", str(data_dir), "bench", "--plain",
         "--target", _url(server), "--concurrency", "1", *SMALL, "--label", "top-level-dir"],
        capture_output=True, text=True, timeout=120, env=_env(tmp_path / "env-dir"), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "tui.cli", "--data-dir", str(data_dir), "runs", "list"],
        capture_output=True, text=True, timeout=60, env=_env(tmp_path / "env-dir"),
    )  # fmt: skip
    assert "top-level-dir" in listed.stdout
    assert not (tmp_path / "env-dir").exists()


def test_results_table_shows_cost_per_million_tokens_at_the_saved_price() -> None:
    sweep = fixed_sweep("priced", "run-priced", 1.0)
    sweep.config.usd_per_hour = 3.6
    console = Console(record=True, width=300)
    console.print(results_table(sweep))
    text = console.export_text()
    assert "$/1M tok at $3.6/h" in text
    for level in sweep.levels:
        cost = usd_per_million_tokens(3.6, level.metrics.total_token_throughput)
        assert cost is not None and f"{cost:.3f}" in text

    sweep.config.usd_per_hour = None
    console = Console(record=True, width=300)
    console.print(results_table(sweep))
    assert "$/1M" not in console.export_text()


@pytest.mark.parametrize(
    ("kind", "hardware", "filed_as"),
    [
        (TargetKind.TWIN, "2xh100 (twin)", "2xh100 (twin)"),
        (TargetKind.TWIN, None, "twin"),
        (TargetKind.LLAMACPP, None, "CPU (llama.cpp)"),
        (TargetKind.OPENAI, None, None),
    ],
)
def test_history_files_a_run_under_the_hardware_its_target_reported(
    kind: TargetKind, hardware: str | None, filed_as: str | None, tmp_path: Path
) -> None:
    target = Target(name="t", base_url="http://h:1", model="m", kind=kind, hardware=hardware)
    config = SweepConfig(target=target, axis=Axis.CONCURRENCY, levels=[1])
    recorder = HistoryRecorder(tmp_path)
    recorder.handle(SweepStarted(run_id="run-1", config=config, notes=[]))
    recorder.close()
    with SessionStore.open(tmp_path) as store:
        (summary,) = store.runs.list_runs()
    assert summary.gpu == filed_as


@pytest.mark.parametrize("levels", ["2", "2,4"])
def test_a_dead_server_is_a_partial_run_with_a_nonzero_exit_and_files(levels: str, tmp_path: Path) -> None:
    """The server dies in the last level ("2") or with a level still to come ("2,4")."""
    srv = FakeSSEServer(mode="tick")
    srv.start_in_thread()
    out, data_dir = tmp_path / "dead.json", tmp_path / "data"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tui.cli", "bench", "--plain", "--target", _url(srv), "--concurrency",
             levels, "--dataset", "random", "--random-input-len", "24", "--output-len", "64",
             "--num-prompts", "400", "--label", "dead-server", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(data_dir),
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        for line in proc.stderr:
            if "tok/s" in line and not line.startswith("concurrency 2: 0 tok/s"):
                break
            assert time.monotonic() < deadline, "no progress line within 60 s"
        time.sleep(0.5)
    finally:
        srv.stop()
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 1, rest
    assert "Traceback" not in rest
    assert "server went away" in rest
    saved = json.loads(out.read_text())
    assert saved["servedeck_sweep"]["status"] == "partial"
    assert "cancel" not in (saved["servedeck_sweep"].get("message") or "")
    (level,) = saved["levels"]
    assert level["servedeck"]["status"] == "partial"
    assert "partial" in next(line for line in _runs_list(data_dir).splitlines() if "dead-server" in line)


def test_an_output_length_sharegpt_cannot_hold_is_refused_before_connecting(tmp_path: Path) -> None:
    done = _bench(
        ["--target", f"http://127.0.0.1:{_free_port()}", "--concurrency", "1", "--output-len", "100000"],
        tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "cannot connect" not in done.stderr
    assert "--output-len 100000" in done.stderr and "ShareGPT" in done.stderr and "2044" in done.stderr


def test_an_output_length_beyond_the_targets_context_is_refused_before_sending(tmp_path: Path) -> None:
    with FakeSSEServer(mode="tick") as srv:
        done = _bench(
            ["--target", _url(srv), "--concurrency", "1", "--dataset", "random", "--random-input-len", "24",
             "--output-len", "3000", "--no-save"],
            tmp_path,
        )  # fmt: skip
        sent = srv.stats().generation_requests
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("servedeck: error:"), done.stderr
    assert "--output-len 3000" in done.stderr and "2048" in done.stderr
    assert sent <= 1  # discovery's one stream-usage probe; no level was started
