"""`servedeck bench` takes `vllm bench serve` / benchmark_serving.py flags (issue 13, items 3 and 4).

The article's command (the seed's benchmark pod) runs as written against a live twin, only pointed at it
with --host/--port and cut to --num-prompts 50, and writes a result file with every key vLLM writes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.bench.loadgen.arrivals import arrival_times
from backends.bench.metrics import compute_metrics
from backends.bench.models import RequestRecord
from backends.engines.local import LocalEngine
from backends.twin.engine_config import TwinConfig
from backends.twin.process import TwinProcess, start_twin_process
from tui.cli import build_parser
from tui.cli.bench_vllm import normalize

TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1)

# vllm/benchmarks/serve.py (main_async + benchmark()) without --save-detailed, with the default
# --percentile-metrics ttft,tpot,itl and --metric-percentiles 99.
VLLM_RESULT_KEYS = [
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
    "latencies",
    "queue_times",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
    "rtfx",
    *(
        f"{stat}_{metric}_ms"
        for metric in ("ttft", "tpot", "itl")
        for stat in ("mean", "median", "std", "p99")
    ),
]
DETAILED_KEYS = ["input_lens", "output_lens", "ttfts", "itls", "start_times", "generated_texts", "errors"]


def article_command(port: int) -> list[str]:
    """The seed's benchmark_serving.py flags, as its shell passes them (${DATASET_FILE} expanded)."""
    return [
        "--host=127.0.0.1",
        f"--port={port}",
        "--dataset-name=sharegpt",
        "--dataset-path=/data/ShareGPT_V3_unfiltered_cleaned_split.json",
        "--tokenizer=google/gemma-3-27b-it",
        "--request-rate=500",
        "--backend=openai",
        "--num-prompts=50",
        "--sharegpt-output-len",
        "256",
        "--save-result",
        "--model=google/gemma-3-27b-it",
    ]


def _bench(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVEDECK_DATA_DIR": str(cwd / "data"), "COLUMNS": "160"}
    root = Path(__file__).resolve().parent.parent.parent
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "bench", "--plain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def twin() -> Iterator[TwinProcess]:
    with start_twin_process(TWIN, log_interval_s=3600.0) as process:
        yield process


@pytest.mark.timeout(300)
def test_the_articles_command_runs_verbatim_and_saves_every_vllm_key(
    twin: TwinProcess, tmp_path: Path
) -> None:
    done = _bench(article_command(twin.port), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    (saved,) = list(tmp_path.glob("*.json"))
    # vLLM's name: {label or backend}-{request_rate}qps-{base model id}-{date}.json
    assert saved.name.startswith("openai-500.0qps-gemma-3-27b-it"), saved.name
    result = json.loads(saved.read_text())
    missing = [key for key in VLLM_RESULT_KEYS if key not in result]
    assert not missing, missing
    assert not [key for key in DETAILED_KEYS if key in result]  # only with --save-detailed, as vLLM
    assert result["backend"] == result["endpoint_type"] == "openai"
    assert result["tokenizer_id"] == "google/gemma-3-27b-it"
    assert result["request_rate"] == 500.0 and result["num_prompts"] == 50
    assert result["completed"] == 50 and result["failed"] == 0
    assert len(result["latencies"]) == 50
    assert result["rtfx"] == 0.0


@pytest.mark.timeout(300)
def test_request_rate_inf_sends_everything_at_once_and_save_detailed_names_the_file(
    twin: TwinProcess, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    done = _bench(
        [
            f"--base-url=http://127.0.0.1:{twin.port}",
            "--endpoint=/v1/chat/completions",
            "--backend=openai-chat",
            "--dataset-name=random",
            "--random-input-len=32",
            "--random-output-len=8",
            "--random-prefix-len=16",
            "--num-prompts=12",
            "--request-rate=inf",
            "--max-concurrency=4",
            "--percentile-metrics=ttft,tpot,itl,e2el",
            "--metric-percentiles=50,90",
            "--goodput",
            "ttft:60000",
            "e2el:60000",
            "--save-result",
            "--save-detailed",
            f"--result-dir={results}",
            "--result-filename=run.json",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((results / "run.json").read_text())
    assert result["backend"] == "openai-chat" and result["request_rate"] == "inf"
    assert result["max_concurrency"] == 4
    assert result["completed"] == 12
    assert result["request_goodput"] is not None and result["request_goodput"] > 0
    for key in ("p50_ttft_ms", "p90_itl_ms", "p50_e2el_ms", "mean_e2el_ms"):
        assert key in result
    assert "p99_ttft_ms" not in result  # only the asked percentiles
    for key in DETAILED_KEYS:
        assert len(result[key]) == 12, key
    # the dataset's prompt lengths: 16 shared prefix tokens + 32 drawn ones each
    assert result["input_lens"] == [48] * 12
    assert result["total_input_tokens"] == 48 * 12


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--use-beam-search"], 2, "--use-beam-search is a vllm bench serve flag ServeDeck does not support"),
        (["--lora-modules", "a"], 2, "--lora-modules is a vllm bench serve flag ServeDeck does not support"),
        (["--backend", "tgi"], 2, "invalid choice: 'tgi'"),
        (["--dataset-name", "sonnet"], 2, "invalid choice: 'sonnet'"),
        (["--endpoint", "/v1/embeddings"], 2, "invalid choice: '/v1/embeddings'"),
        (["--definitely-not-a-flag"], 2, "unrecognized arguments: --definitely-not-a-flag"),
        (["--ramp-up-strategy", "linear"], 1, "--ramp-up-start-rps and --ramp-up-end-rps"),
        (["--dataset-name", "random", "--dataset-path", "x.json"], 1, "takes no --dataset-path"),
        (["--backend", "openai-chat", "--endpoint", "/v1/completions"], 1, "not the --endpoint given"),
        (
            [
                "--request-rate",
                "5",
                "--ramp-up-strategy",
                "linear",
                "--ramp-up-start-rps",
                "1",
                "--ramp-up-end-rps",
                "4",
            ],
            1,
            "give no --request-rate",
        ),
        (
            ["--ramp-up-strategy", "exponential", "--ramp-up-start-rps", "0", "--ramp-up-end-rps", "4"],
            1,
            "cannot start at 0",
        ),
        (["--percentile-metrics", "ttft,latency"], 1, "unknown percentile metric 'latency'"),
        (["--dataset-name", "sharegpt", "--dataset-path", "/no/such/sharegpt.json"], 1, "no such file"),
        (["--target", "http://127.0.0.1:9"], 1, "give the server once"),
    ],
)
def test_unsupported_and_unknown_vllm_flags_are_one_line(
    args: list[str], code: int, message: str, tmp_path: Path
) -> None:
    done = _bench(["--host", "127.0.0.1", "--port", "9", *args], tmp_path, timeout=60)
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def _record(index: int, prompt_len: int, input_tokens: int | None) -> RequestRecord:
    return RequestRecord(
        index=index,
        prompt_len=prompt_len,
        expected_output_len=4,
        queued_at=0.0,
        sent_at=0.0,
        first_token_at=0.1,
        chunk_times=[0.1, 0.2],
        chunk_tokens=[1, 1],
        input_tokens=input_tokens,
        output_tokens=2,
        success=True,
    )


def test_input_tokens_are_the_datasets_prompt_lengths_and_the_servers_count_is_kept() -> None:
    # The server counts the chat template too (12 and 25 tokens for prompts of 10 and 20).
    m = compute_metrics([_record(0, 10, 12), _record(1, 20, 25)], 2.0, goodput_slos_ms=None, percentiles=[99])
    assert m.total_input_tokens == 30  # vLLM's client: sum of the dataset's prompt_len
    assert m.total_token_throughput == pytest.approx((30 + 4) / 2.0)
    assert m.server_input_tokens == 37
    unknown = compute_metrics([_record(0, 10, None)], 1.0, goodput_slos_ms=None, percentiles=[99])
    assert unknown.server_input_tokens is None


def test_linear_and_exponential_ramp_up_follow_vllms_per_request_rates() -> None:
    linear = arrival_times(101, float("inf"), float("inf"), 0, ramp_up=("linear", 1.0, 11.0))
    gaps = [b - a for a, b in itertools.pairwise(linear)]
    # request i waits 1/rate_i with rate_i = 1 + 10 * i / 100 (burstiness inf: constant gaps)
    assert gaps[0] == pytest.approx(1 / 1.1)
    assert gaps[-1] == pytest.approx(1 / 11.0)
    exponential = arrival_times(3, float("inf"), float("inf"), 0, ramp_up=("exponential", 1.0, 4.0))
    assert [b - a for a, b in itertools.pairwise(exponential)] == pytest.approx([0.5, 0.25])
    poisson = arrival_times(2000, float("inf"), 1.0, 3, ramp_up=("linear", 10.0, 10.0))
    assert poisson[-1] == pytest.approx(200.0, rel=0.1)  # no rescaling with ramp-up, as vLLM


# --- the real local engine ----------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_the_articles_command_runs_verbatim_against_the_local_engine(
    local_engine: LocalEngine, tmp_path: Path
) -> None:
    args = [
        arg if arg != "--num-prompts=50" else "--num-prompts=8" for arg in article_command(local_engine.port)
    ]
    done = _bench(args, tmp_path, timeout=380)
    assert done.returncode == 0, done.stderr
    assert "llama.cpp serves one model" in done.stderr
    (saved,) = list(tmp_path.glob("*.json"))
    assert saved.name.startswith("openai-500.0qps-gemma-3-27b-it-"), saved.name
    result = json.loads(saved.read_text())
    assert not [key for key in VLLM_RESULT_KEYS if key not in result]
    assert result["completed"] == 8 and result["total_output_tokens"] > 0


@pytest.mark.timeout(400)
def test_chat_prompt_tokens_the_server_counts_are_kept_beside_vllms_count(
    local_engine: LocalEngine, tmp_path: Path
) -> None:
    done = _bench(
        [
            f"--base-url={local_engine.base_url}",
            "--backend=openai-chat",
            "--dataset-name=sharegpt",
            "--num-prompts=8",
            "--sharegpt-output-len=4",
            "--max-concurrency=4",
            "--save-result",
            "--save-detailed",
            "--result-filename=chat.json",
        ],
        tmp_path,
        timeout=380,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "chat.json").read_text())
    assert result["total_input_tokens"] == sum(result["input_lens"])  # the dataset's prompt lengths
    server = result["servedeck"]["server_input_tokens"]
    assert server is not None and server > result["total_input_tokens"]  # the chat template's tokens
    duration = result["duration"]
    assert result["total_token_throughput"] == pytest.approx(
        (result["total_input_tokens"] + result["total_output_tokens"]) / duration
    )
    assert f"the server counted {server:,}" in done.stdout + done.stderr


@pytest.mark.timeout(300)
def test_a_ramp_up_runs_against_the_twin_and_is_named_and_saved_as_vllm_does(
    twin: TwinProcess, tmp_path: Path
) -> None:
    done = _bench(
        [
            f"--base-url=http://127.0.0.1:{twin.port}",
            "--backend=openai",
            "--dataset-name=random",
            "--random-input-len=16",
            "--random-output-len=4",
            "--num-prompts=20",
            "--ramp-up-strategy=linear",
            "--ramp-up-start-rps=20",
            "--ramp-up-end-rps=200",
            "--burstiness=inf",
            "--percentile-metrics=ttft,client_queue_time",
            "--save-result",
            "--save-detailed",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (saved,) = list(tmp_path.glob("*.json"))
    assert saved.name.startswith("openai-ramp-up-linear-20qps-200qps-gemma-3-27b-it-twin-"), saved.name
    result = json.loads(saved.read_text())
    assert (result["ramp_up_strategy"], result["ramp_up_start_rps"], result["ramp_up_end_rps"]) == (
        "linear",
        20.0,
        200.0,
    )
    assert result["request_rate"] == "inf" and result["completed"] == 20
    assert "p99_client_queue_time_ms" in result and "mean_tpot_ms" not in result
    starts = sorted(result["start_times"])
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # burstiness inf: request i waits 1/rate_i, rate_i from 20 up to 200 req/s (a fixed rate: equal gaps)
    assert sum(gaps[:5]) > 3 * sum(gaps[-5:])


def _normalized(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(["bench", *argv])
    normalize(args)
    return args


def test_vllm_defaults_and_general_lengths_map_onto_servedecks_arguments() -> None:
    args = _normalized(["--host", "gpu-box", "--input-len", "77", "--dataset-name", "random"])
    assert args.target == "http://gpu-box:8000"  # vLLM's default port
    assert args.endpoint == "completions"  # vLLM's default --backend openai
    assert args.request_rate == [float("inf")] and args.concurrency is None  # vLLM's default rate
    assert args.random_input_len == 77 and args.ignore_eos  # random forces ignore_eos, as vLLM's client
    chat = _normalized(["--port", "9000", "--backend", "openai-chat", "--goodput", "ttft:5", "tpot:1"])
    assert (chat.target, chat.endpoint, chat.goodput) == ("http://127.0.0.1:9000", "chat", "ttft:5,tpot:1")
    own = _normalized(["--target", "http://x:1", "--concurrency", "2"])
    assert own.endpoint == "chat" and own.request_rate is None  # ServeDeck's own flags keep its defaults
