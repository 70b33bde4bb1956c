"""`servedeck plan`: fit, KV capacity, cost and the predicted sweep (text, JSON); one line per bad input."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.cli_runner import run_subcommand
from tui.cli import plan

pytestmark = pytest.mark.timeout(120)

SMALL = [
    "--dataset",
    "random",
    "--random-input-len",
    "200",
    "--random-output-len",
    "32",
    "--num-prompts",
    "40",
]


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_subcommand(plan.add_parser, "plan", argv, capsys)


def test_text_report_has_fit_capacity_cost_and_the_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--gpu", "h100", "--count", "4", "--request-rate", "1,10", *SMALL], capsys)
    assert code == 0
    assert "vLLM twin plan (simulated): gemma-3-27b-it on 4x NVIDIA H100 80GB (TP 4)" in out
    assert "max-num-seqs 1024, max-num-batched-tokens 8192" in out
    assert "weights 12.8 GiB" in out and "-> KV cache 52.7 GiB" in out
    assert "KV capacity: 394,896 tokens" in out and "x at 2,048 tokens" in out
    assert "Cost: $" in out and "/h (a3-highgpu-4g" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "Total Token throughput (tok/s)" in line)
    assert "P99 TTFT (ms)" in lines[header] and "Request rate (req/s)" in lines[header]
    assert [line.split()[0] for line in lines[header + 1 :]] == ["1", "10"]


def test_json_document_uses_vllm_result_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "plan.json"
    argv = ["--gpu", "a100-80gb", "--concurrency", "4", "--json", "--out", str(out_file), *SMALL]
    code, out, _ = run(argv, capsys)
    assert code == 0
    document = json.loads(out)
    assert document == json.loads(out_file.read_text())
    assert document["simulated"] is True
    assert document["resolved"] == {
        "max_model_len": 131072,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 2048,
    }
    assert document["capacity"]["kv_cache_tokens"] > 0 and document["cost"]["usd_per_hour"] > 0
    (level,) = document["levels"]
    assert level["completed"] == 40 and level["max_concurrency"] == 4 and level["request_rate"] == "inf"
    for key in ("total_token_throughput", "output_throughput", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms"):
        assert level[key] > 0
    assert level["twin"]["running_max"] <= 4 and level["twin"]["usd_per_million_tokens"] > 0


def test_cost_is_omitted_with_the_reason_when_the_catalog_has_no_price(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["--gpu", "h100", "--spot", "--request-rate", "5", *SMALL], capsys)
    assert code == 0
    assert "Cost: not shown (no spot price for a3-highgpu-1g in the catalog" in out
    assert "Total Token throughput (tok/s)" in out


def test_a_price_file_sets_the_cost(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"machines": {"a3-highgpu-1g": {"spot_usd_per_hour": 3.0}}}))
    code, out, _ = run(
        ["--gpu", "h100", "--spot", "--price-file", str(prices), "--request-rate", "5", *SMALL], capsys
    )
    assert code == 0
    assert "/h (a3-highgpu-1g x1, spot" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu", "b200"], "unknown GPU type 'b200'; known: l4, a100-40gb"),
        (["--gpu", "h100", "--model", "llama-9"], "unknown model 'llama-9'; known: gemma-3-1b-it"),
        (
            ["--gpu", "h100", "--count", "3"],
            "tensor-parallel size 3 does not divide gemma-3-27b-it's 16 KV heads",
        ),
        (["--gpu", "l4"], "gemma-3-27b-it does not fit 1xNVIDIA L4 24GB: per GPU 51.2 GiB of weights"),
        (["--gpu", "h100", "--num-prompts", "0"], "--num-prompts must be at least 1, not 0"),
        (["--gpu", "h100", "--dataset", "/nonexistent.json"], "--dataset: no such file '/nonexistent.json'"),
        (["--gpu", "h100", "--max-model-len", "300000"], "max-model-len 300,000 is outside 16..131,072"),
        (["--gpu", "h100", "--price-file", "/nonexistent.yaml"], "nonexistent.yaml"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([*argv, "--request-rate", "1"], capsys)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_bad_flag_values_are_rejected_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(["--gpu", "h100", "--request-rate", "0,-1"], capsys)
    assert "expected numbers > 0" in capsys.readouterr().err
