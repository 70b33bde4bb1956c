"""`servedeck deploy render` and `servedeck cost` through their argparse entry points (a throwaway `deploy`
group stands in for tui/cli/deploy.py, which registers the real one)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from backends.errors import ConfigError
from tui.cli import cost, deploy_render


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servedeck")
    commands = parser.add_subparsers(dest="command")
    cost.add_parser(commands)
    deploy = commands.add_parser("deploy")
    deploy_render.add_render_parser(deploy.add_subparsers(dest="deploy_command"))
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    result: int = args.handler(args)
    return result


def test_render_yaml_for_one_h100(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        _run(["deploy", "render", "--model", "google/gemma-3-27b-it", "--gpu", "h100", "--count", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("# fit: Gemma 3 27B bf16 fits 1xH100")
    assert "# cost: $11." in out
    documents = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in documents][-1] == "Deployment"
    args = documents[-1]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--tensor-parallel-size=1" in args and "--gpu-memory-utilization=0.90" in args


def test_render_json_with_flags(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["deploy", "render", "--model", "google/gemma-3-27b-it", "--gpu", "l4", "--count", "4", "--spot"]
    argv += ["-o", "json", "--max-model-len", "8192", "--no-prefix-caching", "--extra-arg=--swap-space=4"]
    assert _run(argv) == 0
    captured = capsys.readouterr()
    listing = json.loads(captured.out)
    deployment = listing["items"][-1]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    args = pod["containers"][0]["args"]
    assert {"--max-model-len=8192", "--no-enable-prefix-caching", "--swap-space=4"} <= set(args)
    assert "fit: Gemma 3 27B bf16 fits 4xL4" in captured.err
    assert "cost: unknown (no spot price" in captured.err


def test_render_refuses_a_shape_that_does_not_fit_unless_told() -> None:
    argv = ["deploy", "render", "--model", "google/gemma-3-27b-it", "--gpu", "l4"]
    with pytest.raises(ConfigError) as caught:
        _run(argv)
    assert str(caught.value).startswith("Gemma 3 27B bf16 does not fit 1xL4: weights 51.2 GiB > 19.8 GiB")
    assert _run([*argv, "--skip-fit-check"]) == 0


def test_render_reports_an_invalid_spec_as_one_line() -> None:
    with pytest.raises(ConfigError, match="invalid deployment spec: gpu_count 3"):
        _run(["deploy", "render", "--model", "google/gemma-3-27b-it", "--gpu", "h100", "--count", "3"])
    with pytest.raises(ConfigError, match="--model and --gpu required"):
        _run(["deploy", "render"])


def test_render_from_a_spec_file_with_flag_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "model: google/gemma-3-12b-it\ngpu: h100\nname: twelve\nreplicas: 2\n", encoding="utf-8"
    )
    assert (
        _run(["deploy", "render", "--spec", str(spec_file), "--replicas", "1", "--namespace", "team-a"]) == 0
    )
    deployment = list(yaml.safe_load_all(capsys.readouterr().out))[-1]
    assert deployment["metadata"] == deployment["metadata"] | {"name": "twelve", "namespace": "team-a"}
    assert deployment["spec"]["replicas"] == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not valid YAML/JSON at line 2"):
        _run(["deploy", "render", "--spec", str(bad)])


def test_cost_reproduces_the_article(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["cost", "--gpu", "l4", "--count", "4", "--tokens-per-s", "411.81"]) == 0
    out = capsys.readouterr().out
    for figure in ("$2,921.21", "$73.00", "$82.40", "$0.001171", "$2.84 per 1M tokens", "g2-standard-48"):
        assert figure in out


def test_cost_json_and_article_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["cost", "--gpu", "h100", "--count", "4", "--tokens-per-s", "22000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["machine"] == "a3-highgpu-4g" and data["usd_per_million_tokens"] == pytest.approx(
        0.557, abs=0.01
    )
    assert _run(["cost", "--article"]) == 0
    out = capsys.readouterr().out
    assert "ours $2.84  article $2.84" in out and "article $0.55" in out


def test_cost_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "prices.yaml"
    bad.write_text("machines: {g2-standard-48: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        _run(["cost", "--gpu", "l4", "--count", "4", "--price-file", str(bad)])
    with pytest.raises(ConfigError, match="no machine type carries 3x"):
        _run(["cost", "--gpu", "l4", "--count", "3"])
    with pytest.raises(ConfigError, match="--gpu is required"):
        _run(["cost"])
