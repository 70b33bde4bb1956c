"""`servedeck twin calibrate` and `--calibration NAME` on plan, plan --advise and twin serve.

The store is filled by real `servedeck bench` sweeps of a live twin whose constants the calibrator is not
told (host overhead x3, bandwidth x0.8, as in test_twin_calibration.py), and of a fake vLLM that does not
say what hardware it runs on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.bench.models import Axis
from backends.bench.results import SweepConfig
from backends.config import CONFIG_DIR_ENV, calibrations_dir
from backends.target_types import Target, TargetKind
from backends.twin import calibration
from backends.twin.engine_config import TwinConfig, TwinConstants
from backends.twin.fastforward import run_sweep, sample_dataset
from backends.twin.process import start_twin_process
from sessions.store import SessionStore
from tests.cli_runner import run_main
from tests.fakes.openai_like_server import FakeServer, FakeServerConfig, Flavor
from tui.cli import main

HIDDEN = TwinConstants(step_overhead_scale=3.0, bandwidth_scale=0.8)
SERVER = TwinConfig.build("gemma-3-27b-it", "a100-80gb", 1).model_copy(update={"constants": HIDDEN})
SMALL = ["--num-prompts", "32", "--output-len", "32", "--endpoint", "completions", "--plain"]


@dataclass
class Store:
    data_dir: Path
    rate_run: str
    concurrency_run: str
    no_hardware_run: str


def _bench(data_dir: Path, url: str, *argv: str) -> str:
    before = {s.id for s in SessionStore.open(data_dir).runs.list_runs()} if data_dir.exists() else set()
    assert main(["--data-dir", str(data_dir), "bench", "--target", url, *argv]) == 0
    with SessionStore.open(data_dir) as store:
        (new,) = [s.id for s in store.runs.list_runs() if s.id not in before]
    return new


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("calibrate")
    data_dir = root / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_DIR_ENV, str(root / "config"))
        server_cpu = 0 if len(os.sched_getaffinity(0)) > 1 else None
        with start_twin_process(SERVER, cpu=server_cpu, log_interval_s=3600.0) as twin:
            rate_run = _bench(data_dir, twin.base_url, "--request-rate", "4,16", "--seed", "1", *SMALL)
            concurrency_run = _bench(data_dir, twin.base_url, "--concurrency", "4,8", "--seed", "2", *SMALL)
        with FakeServer(FakeServerConfig(flavor=Flavor.VLLM)) as fake:
            no_hardware = _bench(
                data_dir, fake.url, "--concurrency", "1,2", "--num-prompts", "8", "--output-len", "8"
            )
        yield Store(data_dir, rate_run, concurrency_run, no_hardware)


def _one_line(err: str, needle: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("servedeck: error")]
    assert len(lines) == 1 and needle in lines[0], err


@pytest.mark.timeout(300)
def test_calibrate_saves_a_profile_and_plan_uses_it(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [store.rate_run, store.concurrency_run]
    code, out, err = run_main(
        capsys, "--data-dir", str(store.data_dir), "twin", "calibrate", *runs, "--name", "lab"
    )
    assert code == 0, err
    assert "Calibration 'lab': gemma-3-27b-it on 1xa100-80gb, 4 levels of 2 run(s)" in out
    for label in ("4 req/s", "16 req/s", "concurrency 4", "concurrency 8", "mean |error|", "expected error:"):
        assert label in out, out
    assert "TTFT p50" in out and "default" in out and "calibrated" in out
    saved = calibration.load_profile("lab")
    assert (calibrations_dir() / "lab.json").is_file() and saved.runs == runs
    assert saved.error_after["tpot_p50"] < saved.error_before["tpot_p50"]

    argv = ["plan", "--gpu", "a100-80gb", "--request-rate", "8", "--num-prompts", "32", "--output-len", "48"]
    code, plain, err = run_main(capsys, *argv)
    assert code == 0, err
    assert f"note: {calibration.UNCALIBRATED_NOTE}" in plain
    code, calibrated, err = run_main(capsys, *argv, "--calibration", "lab")
    assert code == 0, err
    assert "note: calibrated: profile 'lab' (1xa100-80gb" in calibrated and store.rate_run in calibrated
    assert "expected error throughput " in calibrated
    code, doc_text, err = run_main(capsys, *argv, "--calibration", "lab", "--json")
    assert code == 0, err
    doc = json.loads(doc_text)
    assert doc["calibration"]["calibrated"] is True and doc["calibration"]["runs"] == runs
    assert doc["calibration"]["expected_error"] == saved.error_after

    # The calibrated plan is closer to the hidden server's own prediction than the default one.
    config = TwinConfig.build("gemma-3-27b-it", "a100-80gb", 1)
    code, default_text, _ = run_main(capsys, *argv, "--json")
    default_tpot = json.loads(default_text)["levels"][0]["mean_tpot_ms"]
    calibrated_tpot = doc["levels"][0]["mean_tpot_ms"]
    sweep_doc = json.loads(default_text)
    assert sweep_doc["calibration"]["calibrated"] is False
    sweep = SweepConfig(
        target=Target(name="t", base_url="twin://t", model=config.model.hf_id, kind=TargetKind.TWIN),
        axis=Axis.REQUEST_RATE,
        levels=[8.0],
        num_prompts=32,
        output_len=48,
        seed=0,
    )
    truth = run_sweep(SERVER, sweep, dataset=sample_dataset(sweep)).levels[0].metrics.tpot.mean
    assert abs(calibrated_tpot - truth) < abs(default_tpot - truth), (calibrated_tpot, default_tpot, truth)

    code, advice, err = run_main(
        capsys,
        "plan",
        "--advise",
        "--rate",
        "2",
        "--slo",
        "p99_ttft:5000,p99_tpot:200",
        "--num-prompts",
        "32",
        "--max-gpus",
        "1",
        "--calibration",
        "lab",
    )
    assert code == 0, err
    assert "note: calibrated: profile 'lab'" in advice and "1xA100 80GB" in advice
    assert "H100" not in advice
    code, _, err = run_main(
        capsys, "plan", "--advise", "--rate", "2", "--slo", "p99_ttft:5000", "--gpus", "h100",
        "--calibration", "lab",
    )  # fmt: skip
    assert code == 1
    _one_line(err, "calibration 'lab' was fit on 1xa100-80gb; it cannot time h100")
    code, _, err = run_main(capsys, "plan", "--gpu", "h100", "--request-rate", "1", "--calibration", "lab")
    assert code == 1
    _one_line(err, "calibration 'lab' was fit on 1xa100-80gb")


@pytest.mark.timeout(120)
def test_twin_serve_states_its_calibration(store: Store) -> None:
    if "lab" not in calibration.list_profiles():  # run alone, without the test above
        code = main(["--data-dir", str(store.data_dir), "twin", "calibrate", store.rate_run,
                     store.concurrency_run, "--name", "lab"])  # fmt: skip
        assert code == 0
    cases: tuple[tuple[list[str], str], ...] = (
        (["--calibration", "lab"], "timing: calibrated: profile 'lab'"),
        ([], f"timing: {calibration.UNCALIBRATED_NOTE}"),
    )
    for extra, expected in cases:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tui.cli", "twin", "serve", "--gpu", "a100-80gb",
             "--model", "gemma-3-27b-it", "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
            env={**os.environ, CONFIG_DIR_ENV: os.environ[CONFIG_DIR_ENV]},
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if "twin ready at" in line or time.monotonic() > deadline:
                    break
            assert any(expected in line for line in lines), lines
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


def test_bad_input_is_one_line(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(store.data_dir), "twin", "calibrate"]
    cases = [
        ([*data, "nope-not-a-run"], "no run 'nope-not-a-run'"),
        ([*data, store.no_hardware_run], "has no known hardware"),
        ([*data, store.rate_run, store.no_hardware_run, "--hardware", "1xa100-80gb"], "different models"),
        ([*data, store.rate_run], "calibration needs at least 3"),
        ([*data, store.rate_run, "--hardware", "2xtpu"], "COUNTxGPU"),
        ([*data, store.rate_run, "--name", "../x"], "calibration name '../x'"),
        (["plan", "--gpu", "h100", "--request-rate", "1", "--calibration", "nope"], "no calibration 'nope'"),
        (
            ["plan", "--advise", "--rate", "1", "--slo", "p99_ttft:2000", "--calibration", "nope"],
            "no calibration 'nope'",
        ),
        (["twin", "serve", "--gpu", "h100", "--model", "gemma-3-27b-it", "--calibration", "nope"], "nope"),
    ]
    for argv, needle in cases:
        code, _, err = run_main(capsys, *argv)
        assert code == 1, (argv, err)
        _one_line(err, needle)


def test_the_uncalibrated_note_points_at_the_published_results_section() -> None:
    match = re.search(r"CALIBRATION\.md section (\d+)", calibration.UNCALIBRATED_NOTE)
    assert match is not None
    text = (Path(__file__).resolve().parents[2] / "CALIBRATION.md").read_text(encoding="utf-8")
    heading = re.search(rf"^## {match.group(1)}\. (.+)$", text, re.MULTILINE)
    assert heading is not None and "Published end-to-end vLLM results" in heading.group(1), heading
