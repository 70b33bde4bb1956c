"""Any model from the command line: `servedeck models`, `plan` / `deploy render` / `twin serve` with a
built-in MoE or quantized model or --model-config PATH, and one line for each bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from backends.twin.engine_config import TwinConfig
from backends.twin.server import TwinServer
from tests.cli_runner import run_main

pytestmark = pytest.mark.timeout(120)

CONFIGS = Path(__file__).parent.parent / "data" / "hf_configs"
SMALL = [
    "--dataset",
    "random",
    "--random-input-len",
    "200",
    "--random-output-len",
    "32",
    "--num-prompts",
    "30",
]


def test_models_list_shows_the_catalog_with_sources(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "models", "list")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line and not line.startswith("KV ")}
    for name in ("gemma-3-27b-it", "llama-3.1-8b-instruct", "qwen3-32b", "deepseek-v2-lite-chat"):
        assert name in rows
    assert "MoE 8/128" in rows["qwen3-30b-a3b"] and "3.4" in rows["qwen3-30b-a3b"]
    assert "(gated)" in rows["llama-3.1-70b-instruct"] and "(gated)" not in rows["qwen3-32b"]
    assert "int4" in rows["qwen3-32b-awq"]
    code, out, _ = run_main(capsys, "models", "list", "--json")
    listing = json.loads(out)
    assert all(row["source"] for row in listing)


def test_models_show_reads_a_config_directory(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "models", "show", str(CONFIGS / "deepseek-v2-lite-chat"))
    assert code == 0
    assert "MoE 6/64, MLA" in out and "15.7" in out
    code, _, err = run_main(capsys, "models", "show", "llama-9")
    assert code == 1 and err.startswith("servedeck: error: unknown model 'llama-9'")


def test_plan_runs_for_a_moe_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "Qwen/Qwen3-30B-A3B", "--gpu", "h100", "--max-model-len", "8192"]
    code, out, err = run_main(capsys, *argv, "--concurrency", "1,8", *SMALL)
    assert code == 0, err
    assert "vLLM twin plan (simulated): qwen3-30b-a3b on 1x NVIDIA H100 80GB" in out
    assert "weights 56.9 GiB" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "Total Token throughput" in line)
    assert [line.split()[0] for line in lines[header + 1 :]] == ["1", "8"]


def test_plan_runs_for_a_quantized_model_from_its_config(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model-config", str(CONFIGS / "qwen3-32b-awq"), "--gpu", "l4", "--count", "2"]
    code, out, err = run_main(
        capsys,
        *argv,
        "--max-model-len",
        "4096",
        "--kv-cache-dtype",
        "fp8",
        "--json",
        "--concurrency",
        "4",
        *SMALL,
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["twin"]["model"]["weight_format"] == "int4"
    assert document["twin"]["kv_cache_dtype"] == "fp8"
    assert document["fit"]["weight_bytes"] < 10 * 1024**3
    assert document["levels"][0]["output_throughput"] > 0


def _not_json(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


ADVISE = ["plan", "--advise", "--slo", "p99_ttft:2000,p99_tpot:100", "--max-gpus", "2", "--json", *SMALL]


def test_the_advisor_ranks_shapes_for_a_moe_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(
        capsys, *ADVISE, "--model", "Qwen/Qwen3-30B-A3B", "--rate", "5", "--gpus", "l4,h100"
    )
    assert code == 0, err
    document = json.loads(out, parse_constant=_not_json)
    trials = document["shapes"][0]["knee"]["trials"]
    assert any(trial["rate"] == "inf" for trial in trials), "every request at once is written as vLLM does"
    passing = [row for row in document["shapes"] if row["verdict"] == "ok"]
    assert [(row["gpu"], row["gpu_count"]) for row in passing] == [("h100", 1), ("h100", 2)]
    assert (
        passing[0]["knee"]["rate"] > 5 and 0 < passing[0]["usd_per_million"] < passing[1]["usd_per_million"]
    )
    unfit = {row["label"]: row["why"] for row in document["skipped"]}
    assert set(unfit) == {"1xL4 24GB", "2xL4 24GB"} and all("does not fit" in why for why in unfit.values())


def test_the_advisor_ranks_shapes_for_a_quantized_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model-config", str(CONFIGS / "qwen3-32b-awq"), "--rate", "2", "--gpus", "l4,a100-80gb"]
    code, out, err = run_main(capsys, *ADVISE, *argv, "--kv-cache-dtype", "fp8")
    assert code == 0, err
    document = json.loads(out)
    passing = [row for row in document["shapes"] if row["verdict"] == "ok"]
    assert [(row["gpu"], row["gpu_count"]) for row in passing] == [("l4", 2)]
    reasons = {row["label"]: row["why"] for row in document["skipped"]}
    assert "needs fp8 support, which NVIDIA A100 80GB lacks" in reasons["2xA100 80GB"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "qwen3-32b-awq", "--gpu", "a100-80gb", "--kv-cache-dtype", "fp8"],
            "--kv-cache-dtype fp8 needs fp8 support, which NVIDIA A100 80GB lacks",
        ),
        (["--model", "mixtral-8x7b-instruct-v0.1", "--gpu", "l4"], "does not fit 1xNVIDIA L4 24GB"),
        (["--model-config", "/nonexistent/config.json", "--gpu", "h100"], "does not exist"),
        (["--generic-profile", "--gpu", "h100"], "--generic-profile needs --model-config PATH"),
    ],
)
def test_plan_bad_input_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "plan", *argv, "--request-rate", "1", *SMALL)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_plan_rejects_a_config_without_head_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads((CONFIGS / "llama-3.1-8b-instruct" / "config.json").read_text())
    del data["num_attention_heads"], data["num_key_value_heads"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    code, _, err = run_main(
        capsys, "plan", "--model-config", str(tmp_path), "--gpu", "h100", "--request-rate", "1"
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "lacks num_attention_heads; servedeck needs them" in err


def test_plan_names_a_model_too_large_for_eight_gpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Llama 3.1 405B's config.json shape: 126 layers, hidden 16384, 128/8 heads, intermediate 53248.
    data = json.loads((CONFIGS / "llama-3.1-8b-instruct" / "config.json").read_text())
    data.update(
        hidden_size=16384,
        intermediate_size=53248,
        num_hidden_layers=126,
        num_attention_heads=128,
        num_key_value_heads=8,
    )
    (tmp_path / "config.json").write_text(json.dumps(data))
    argv = ["plan", "--model-config", str(tmp_path), "--gpu", "h100", "--count", "8", "--request-rate", "1"]
    code, _, err = run_main(capsys, *argv)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "more than 8 GPUs of any type hold" in err


def test_deploy_render_sizes_a_model_from_its_config(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["deploy", "render", "--model", "Qwen/Qwen3-32B", "--model-config", str(CONFIGS / "qwen3-32b")]
    code, out, err = run_main(capsys, *argv, "--gpu", "l4", "--count", "auto", "--kv-cache-dtype", "fp8")
    assert code == 0, err
    assert "# sized: gpu count 4: the fewest L4 the weights fit" in out
    documents = list(yaml.safe_load_all(out))
    kinds = [d["kind"] for d in documents]
    assert "Secret" not in kinds  # Qwen/Qwen3-32B is not gated: no token
    container = documents[-1]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--tensor-parallel-size=4" in args and "--kv-cache-dtype=fp8" in args
    assert not any(env["name"] == "HF_TOKEN" for env in container["env"])


def test_deploy_render_lowers_max_model_len_to_what_fits(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "deploy",
        "render",
        "--model",
        "meta-llama/Llama-3.1-70B-Instruct",
        "--gpu",
        "h100",
        "--count",
        "2",
    ]
    code, out, err = run_main(capsys, *argv)
    assert code == 0, err
    match = re.search(r"# sized: max-model-len ([\d,]+): one request's KV cache holds ([\d,]+) tokens", out)
    assert match is not None, out
    length = int(match.group(1).replace(",", ""))
    documents = list(yaml.safe_load_all(out))
    assert "Secret" in [d["kind"] for d in documents]  # Llama is gated
    assert f"--max-model-len={length}" in documents[-1]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_deploy_render_refuses_fp8_kv_on_a100(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["deploy", "render", "--model", "Qwen/Qwen3-32B", "--gpu", "a100-80gb", "--kv-cache-dtype", "fp8"]
    code, _, err = run_main(capsys, *argv)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "needs fp8 support, which NVIDIA A100 80GB lacks" in err


@pytest.fixture
def quantized_twin() -> Iterator[TwinServer]:
    server = TwinServer(TwinConfig.build("qwen3-30b-a3b-fp8", "l4", 2, max_model_len=2048), log_interval_s=60)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop()


def test_the_twin_serves_a_quantized_moe_live(quantized_twin: TwinServer) -> None:
    with httpx.Client(base_url=quantized_twin.base_url, timeout=30) as http:
        models = http.get("/v1/models").json()
        assert models["data"][0]["id"] == "qwen3-30b-a3b-fp8-twin"
        response = http.post(
            "/v1/completions",
            json={"model": models["data"][0]["id"], "prompt": "Hello", "max_tokens": 8, "ignore_eos": True},
        )
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 8


def test_twin_serve_cli_serves_a_moe_from_its_config() -> None:
    command = [sys.executable, "-m", "tui.cli", "twin", "serve", "--gpu", "h100", "--port", "0"]
    command += ["--model-config", str(CONFIGS / "deepseek-v2-lite-chat"), "--max-model-len", "4096"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url, lines = None, []
        for line in process.stdout:
            lines.append(line)
            if match := re.search(r"twin ready at (http://\S+)/v1", line):
                url = match.group(1)
                break
        assert url is not None, lines
        assert any("serving deepseek-v2-lite-chat" in line for line in lines)
        body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        body["model"] = models["data"][0]["id"]
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        assert answer.status_code == 200 and answer.headers["x-servedeck-simulated"] == "1"
        process.send_signal(2)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_plan_sizes_an_unknown_architecture_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads((CONFIGS / "llama-3.1-8b-instruct" / "config.json").read_text())
    data["architectures"] = ["FancyNewForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    argv = ["plan", "--model-config", str(tmp_path), "--gpu", "h100", "--max-model-len", "4096"]
    code, _, err = run_main(capsys, *argv, "--concurrency", "2", *SMALL)
    assert code == 1 and "architecture FancyNewForCausalLM is not one servedeck knows" in err
    code, out, err = run_main(capsys, *argv, "--generic-profile", "--concurrency", "2", *SMALL)
    assert code == 0, err
    assert "note: model profile: FancyNewForCausalLM sized as a generic dense decoder" in out
