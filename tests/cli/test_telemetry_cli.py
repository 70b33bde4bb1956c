"""`servedeck bench` with GPU telemetry: a twin's own GPUs, an exporter found for a cluster deployment
(the fake API server, an exporter over real HTTP behind its port-forward), and no exporter at all."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.twin.engine_config import TwinConfig
from backends.twin.server import TwinServer
from tests.cli_runner import run_main
from tests.fakes.dcgm_exporter import FakeDcgmExporter
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_objects import vllm_deployment
from tests.fakes.sse_server import FakeSSEServer
from tests.integration.test_telemetry_cluster import GKE_NS, NAME, NS, _exporter_pod, _target_pod
from tests.integration.test_telemetry_dcgm import EKS, VLLM_POD

pytestmark = pytest.mark.timeout(180)

SMALL = ["--dataset", "random", "--random-input-len", "64", "--output-len", "8", "--num-prompts", "8"]


@pytest.fixture
def kube_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        for namespace in (NS, GKE_NS):
            api.create_namespace(namespace)
        api.put(vllm_deployment(NAME, NS))
        api.put(_target_pod(VLLM_POD, "gpu-node-1"))
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
        yield api


def test_bench_against_a_twin_prints_and_exports_gpu_telemetry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out, table = tmp_path / "run.json", tmp_path / "run.csv"
    config = TwinConfig.build("gemma-3-4b-it", "h100", 1, max_model_len=4096)
    with TwinServer(config, log_sink=lambda line: None) as twin:
        code, stdout, stderr = run_main(
            capsys,
            "bench",
            "--plain",
            "--no-save",
            "--target",
            twin.base_url,
            "--concurrency",
            "1,8",
            *SMALL,
            "--usd-per-hour",
            "11.06",
            "--out",
            str(out),
            "--csv",
            str(table),
        )
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "GPU telemetry (1 GPU, simulated by the twin)" in stdout
    for header in ("GPU util", "DRAM active", "GPU W", "kJ/1M out", "$/1M out"):
        assert header in stdout
    assert "| GPU: 1 GPU" in stderr  # the live line beside running/waiting/KV
    levels = json.loads(out.read_text())["levels"]
    gpus = [level["servedeck"]["gpu"] for level in levels]
    assert all(g["state"] == "ok" and g["simulated"] and g["kj_per_1m_output_tokens"] > 0 for g in gpus)
    assert gpus[0]["kj_per_1m_output_tokens"] > gpus[1]["kj_per_1m_output_tokens"]
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [row["gpu_state"] for row in rows] == ["ok", "ok"]
    assert float(rows[0]["kj_per_1m_output_tokens"]) == pytest.approx(gpus[0]["kj_per_1m_output_tokens"])
    assert float(rows[1]["usd_per_1m_output_tokens"]) < float(rows[0]["usd_per_1m_output_tokens"])


def test_bench_finds_the_deployments_exporter_in_the_cluster(
    capsys: pytest.CaptureFixture[str], kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    kube_api.put(_exporter_pod("dcgm-exporter-aaaaa", "gpu-node-1"))
    out = tmp_path / "run.json"
    with FakeSSEServer(mode="tick") as server, FakeDcgmExporter(EKS) as exporter:
        kube_api.set_port_backend(GKE_NS, "dcgm-exporter-aaaaa", 9400, ("127.0.0.1", exporter.port))
        code, stdout, stderr = run_main(
            capsys,
            "bench",
            "--plain",
            "--no-save",
            "--target",
            f"http://127.0.0.1:{server.port}",
            "--concurrency",
            "2",
            *SMALL,
            "--gpu-deployment",
            f"{NS}/{NAME}",
            "--out",
            str(out),
        )
        assert exporter.hits >= 2
    assert code == 0, stderr
    assert (
        "GPU metrics: GKE managed DCGM exporter gke-managed-system/dcgm-exporter-aaaaa (gpu-node-1)" in stderr
    )
    gpu = json.loads(out.read_text())["levels"][0]["servedeck"]["gpu"]
    assert gpu["state"] == "ok" and gpu["gpus"] == 1  # the deployment's GPU, not the node's 8
    assert gpu["power_w_mean"] == pytest.approx(113.611)
    assert "GPU W" in stdout and "114" in stdout


def test_bench_without_an_exporter_says_how_to_enable_it_and_runs(
    capsys: pytest.CaptureFixture[str], kube_api: FakeKubeApi
) -> None:
    with FakeSSEServer(mode="tick") as server:
        code, stdout, stderr = run_main(
            capsys,
            "bench",
            "--plain",
            "--no-save",
            "--target",
            f"http://127.0.0.1:{server.port}",
            "--concurrency",
            "2",
            *SMALL,
            "--gpu-deployment",
            NAME,
        )
    assert code == 0, stderr
    notes = [line for line in stderr.splitlines() if "dcgm-exporter" in line]
    assert len(notes) == 1 and "--monitoring=SYSTEM,DCGM" in notes[0]
    assert "Traceback" not in stderr and "GPU W" not in stdout


def test_bench_with_a_hung_exporter_url_reports_the_timeout_once(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeSSEServer(mode="tick") as server, FakeDcgmExporter(EKS, delay_s=5.0) as exporter:
        code, stdout, stderr = run_main(
            capsys,
            "bench",
            "--plain",
            "--no-save",
            "--target",
            f"http://127.0.0.1:{server.port}",
            "--concurrency",
            "2",
            *SMALL,
            "--gpu-metrics",
            exporter.url,
        )
    assert code == 0, stderr
    assert "Traceback" not in stderr + stdout
    assert stdout.count("timed out") == 1 and "GPU W" not in stdout


def test_bad_gpu_flags_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run_main(capsys, "bench", "--target", "http://127.0.0.1:9", "--gpu-metrics", "ftp://x")
    assert code != 0 and "not an http(s) URL" in stderr and "Traceback" not in stderr
    code, _, stderr = run_main(
        capsys,
        "bench",
        "--target",
        "http://127.0.0.1:9",
        "--gpu-metrics",
        "http://a",
        "--gpu-deployment",
        "b",
    )
    assert code != 0 and "not both" in stderr
