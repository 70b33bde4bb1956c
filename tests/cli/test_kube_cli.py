"""`servedeck deploy ...` end to end against the fake Kubernetes API server."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli_runner import run_subcommand
from tests.fakes.kube_api import FakeKubeApi, wait_until
from tests.fakes.kube_objects import foreign_app, gke_tutorial_deployment
from tests.fakes.kube_rollout import ScriptedRollout
from tui.cli import deploy

pytestmark = pytest.mark.timeout(90)

NS = "servedeck"
NAME = "gemma-3-27b-it-1xh100"
TOKEN = "hf_CliTestToken0123456789abcdefXYZ"
SPEC_FLAGS = ["--model", "google/gemma-3-27b-it", "--gpu", "h100", "--count", "1", "--namespace", NS]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        yield api


@pytest.fixture
def kubeconfig(kube_api: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code, out, err = run_subcommand(deploy.add_parser, "deploy", argv, capsys)
    assert TOKEN not in out and TOKEN not in err
    return code, out, err


def _rollout_when_applied(kube_api: FakeKubeApi, steps: list[str]) -> threading.Thread:
    def drive() -> None:
        if not wait_until(lambda: kube_api.get("Deployment", NAME, NS) is not None, timeout_s=20):
            return
        script = ScriptedRollout(kube_api, NS, NAME, steps)
        for _ in steps:
            threading.Event().wait(0.05)
            script.advance()

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    return thread


def test_contexts(kube_api: FakeKubeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = kube_api.write_kubeconfig(tmp_path / "k", extra_contexts={"gke-prod": "https://34.1.2.3"})
    code, out, _ = run(["contexts", "--kubeconfig", str(path)], capsys)
    assert code == 0
    lines = [line.split() for line in out.splitlines()[1:]]
    assert lines == [
        ["*", "fake", "fake", kube_api.url, "default"],
        ["gke-prod", "gke-prod-cluster", "https://34.1.2.3", "default"],
    ]


def test_apply_renders_fills_the_token_and_watches_the_rollout(
    kube_api: FakeKubeApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    driver = _rollout_when_applied(kube_api, ["pending", "failed_scheduling", "running", "ready"])
    code, out, err = run(["apply", *SPEC_FLAGS, "--timeout", "30"], capsys)
    driver.join(10)

    assert (code, err) == (0, "")
    assert "StorageClass hyperdisk-ml created" in out
    assert f"Namespace {NS} created" in out
    assert f"Secret {NS}/{NAME}-hf-token created" in out
    assert f"Deployment {NS}/{NAME} created" in out
    assert "FailedScheduling: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in out
    assert out.rstrip().endswith(f"deployment/{NAME}: rollout complete: 1/1 ready")
    secret = kube_api.get("Secret", f"{NAME}-hf-token", NS)
    assert secret is not None and base64.b64decode(secret["data"]["token"]).decode() == TOKEN
    deployment = kube_api.get("Deployment", NAME, NS)
    assert deployment is not None and deployment["metadata"]["managedFields"][0]["manager"] == "servedeck"


def test_apply_of_a_rendered_file_fills_the_placeholder(
    kube_api: FakeKubeApi, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, rendered, _ = run(["render", *SPEC_FLAGS], capsys)
    assert code == 0 and "<YOUR HUGGING FACE TOKEN>" in rendered
    manifest = tmp_path / "gemma.yaml"
    manifest.write_text(rendered)

    code, out, err = run(["apply", "-f", str(manifest), "--no-watch"], capsys)

    assert (code, err) == (0, ""), err
    assert f"Deployment {NS}/{NAME} created" in out
    secret = kube_api.get("Secret", f"{NAME}-hf-token", NS)
    assert secret is not None and base64.b64decode(secret["data"]["token"]).decode() == TOKEN

    code, out, _ = run(["apply", "-f", str(manifest), "--no-watch"], capsys)
    assert (
        code == 0
        and f"Deployment {NS}/{NAME} unchanged" in out
        and f"Namespace {NS} exists, left as is" in out
    )


def test_apply_bad_inputs_are_one_line(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(["apply", "--no-watch"], capsys)
    assert (code, err.strip()) == (
        1,
        "servedeck: error: nothing to apply: give --model and --gpu (as for deploy render) or -f FILE",
    )
    monkeypatch.delenv("HF_TOKEN")
    code, _, err = run(["apply", *SPEC_FLAGS, "--no-watch"], capsys)
    assert code == 1 and err.count("\n") == 1 and "env var HF_TOKEN is not set or empty" in err
    assert kube_api.requests == []

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    kube_api.deny("patch", "secrets", NS)
    code, _, err = run(["apply", *SPEC_FLAGS, "--no-watch"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        f'servedeck: error: forbidden: patch secrets in {NS}: secrets "{NAME}-hf-token" is forbidden'
    )

    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    code, _, err = run(["apply", "-f", str(bad)], capsys)
    assert (code, err.strip()) == (1, f"servedeck: error: {bad} is not valid YAML/JSON at line 2")


def _applied_and_ready(kube_api: FakeKubeApi, capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = run(["apply", *SPEC_FLAGS, "--no-watch"], capsys)
    assert code == 0, err
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "running", "ready"])
    while script.advance():
        pass
    return script.pod_name


def test_status_logs_scale_list(
    kube_api: FakeKubeApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = _applied_and_ready(kube_api, capsys)
    kube_api.put(gke_tutorial_deployment("ml-team"))
    kube_api.append_log(
        NS,
        pod,
        "INFO 05-12 10:23:40 [api_server.py:1090] Starting vLLM API server 0 on http://0.0.0.0:8000",
        "INFO 05-12 10:23:45 [loggers.py:116] Engine 000: Avg prompt throughput: 1523.4 tokens/s, "
        "Avg generation throughput: 812.7 tokens/s, Running: 37 reqs, Waiting: 2 reqs, "
        "GPU KV cache usage: 43.1%, Prefix cache hit rate: 26.0%",
    )

    code, out, _ = run(["status", NAME], capsys)
    assert code == 0
    assert out.startswith(f"deployment {NS}/{NAME} (servedeck): ready, 1/1 ready\n")
    assert "  model google/gemma-3-27b-it on nvidia-h100-80gb x1, image vllm/vllm-openai:v0.11.2" in out
    assert f"service {NAME}:8000 (http://{NAME}.{NS}.svc.cluster.local:8000)" in out
    assert pod in out and "Started" in out

    code, out, _ = run(["logs", NAME, "--stats"], capsys)
    assert (code, out) == (
        0,
        f"{pod}  prompt 1523.4 tok/s  generation 812.7 tok/s  running 37  waiting 2  KV cache 43.1%  "
        "prefix hits 26.0%\n",
    )
    code, out, _ = run(["logs", NAME, "--tail", "1"], capsys)
    assert code == 0 and out.count("\n") == 1 and "Engine 000" in out

    code, out, _ = run(["scale", NAME, "--replicas", "2"], capsys)
    assert (code, out) == (0, f"scaled {NS}/{NAME} from 1 to 2 replicas\n")

    code, out, _ = run(["list"], capsys)
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["ml-team", "vllm-gemma-deployment"], [NS, NAME]]
    assert rows[1][2:8] == ["google/gemma-3-27b-it", "nvidia-h100-80gb", "1", "1/2", "degraded", "servedeck"]
    assert rows[0][7] == "foreign"

    code, out, _ = run(["list", "-n", NS, "-o", "json"], capsys)
    listed = json.loads(out)
    assert [(row["name"], row["replicas_desired"], row["managed"]) for row in listed] == [(NAME, 2, True)]


def test_delete_needs_confirmation_and_leaves_foreign_objects(
    kube_api: FakeKubeApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _applied_and_ready(kube_api, capsys)
    for obj in foreign_app("blog", NS):
        kube_api.put(obj)

    code, out, err = run(["delete", NAME, "-n", NS], capsys)
    assert code == 1 and f"Deployment {NS}/{NAME}" in out
    assert (
        err.strip()
        == "servedeck: error: refusing to delete without confirmation on a non-interactive input: pass --yes"
    )
    assert kube_api.get("Deployment", NAME, NS) is not None

    code, out, _ = run(["delete", NAME, "--yes", "--keep-cache"], capsys)
    assert code == 0
    assert out.rstrip().endswith(
        f"deleted 3 objects of {NAME} in {NS} (the HF cache volume is kept); the namespace is left as is"
    )
    assert kube_api.get("Deployment", NAME, NS) is None
    assert kube_api.get("PersistentVolumeClaim", f"{NAME}-hf-cache", NS) is not None
    for kind, name in (
        ("Deployment", "blog"),
        ("Service", "blog"),
        ("Secret", "blog-creds"),
        ("Namespace", NS),
    ):
        assert kube_api.get(kind, name, NS if kind != "Namespace" else None) is not None

    code, _, err = run(["delete", "blog", "-n", NS, "--yes"], capsys)
    assert code == 1 and "was not created by servedeck (no managed-by label)" in err
    assert kube_api.get("Deployment", "blog", NS) is not None


def test_cluster_bad_inputs_are_one_line(
    kube_api: FakeKubeApi, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none" / "config"
    code, _, err = run(["list", "--kubeconfig", str(missing)], capsys)
    assert (
        code == 1
        and err
        == f"servedeck: error: no kubeconfig found at {missing}; set KUBECONFIG or pass --kubeconfig PATH "
        "(for GKE: gcloud container clusters get-credentials CLUSTER --region REGION)\n"
    )

    code, _, err = run(["status", "ghost", "-n", "nowhere"], capsys)
    assert code == 1 and err.startswith(
        "servedeck: error: namespace 'nowhere' does not exist in context fake"
    )

    kube_api.create_namespace("empty")
    code, _, err = run(["scale", "ghost", "-n", "empty", "--replicas", "1"], capsys)
    assert (code, err) == (
        1,
        "servedeck: error: deployment 'ghost' not found in namespace empty; "
        "see servedeck deploy list -n empty\n",
    )

    kube_api.deny("list", "deployments", cluster_scope_only=True)
    code, out, err = run(["list"], capsys)
    assert code == 0 and err == "note: no right to list every namespace; listing default only\n"
    assert out == "no vLLM deployments in any namespace\n"

    code, _, err = run(["list", "--context", "staging"], capsys)
    assert code == 1 and err.startswith("servedeck: error: context 'staging' is not in ")


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"object":"list","data":[{"id":"google/gemma-3-27b-it"}]}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_forward_runs_until_interrupted(
    kube_api: FakeKubeApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = _applied_and_ready(kube_api, capsys)
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    kube_api.set_port_backend(NS, pod, 8000, backend.server_address[:2])  # type: ignore[arg-type]
    driver = "import sys; from tui.cli import main; sys.argv[0] = 'servedeck'; " + (
        "import argparse; from tui.cli import deploy; from backends.errors import ServeDeckError; "
        "p = argparse.ArgumentParser(); deploy.add_parser(p.add_subparsers()); "
        "a = p.parse_args(['deploy', 'forward', sys.argv[1], '--local-port', '0']); sys.exit(a.handler(a))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KUBECONFIG": str(kubeconfig)}
    process = subprocess.Popen(
        [sys.executable, "-c", driver, NAME],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert (
            first.startswith("forwarding http://127.0.0.1:")
            and f"-> {NS}/{NAME}:8000; ctrl-c to stop" in first
        )
        url = first.split()[1]
        response = httpx.get(f"{url}/v1/models", timeout=10)
        assert response.json()["data"][0]["id"] == "google/gemma-3-27b-it"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
        assert process.stderr is not None
        assert f"connected pod/{pod}" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
        backend.shutdown()
        backend.server_close()


def test_render_resolves_a_known_short_model_name_and_refuses_a_bare_unknown_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, rendered, err = run(["render", "--model", "gemma-3-27b-it", "--gpu", "h100"], capsys)
    assert (code, err) == (0, "")
    assert "MODEL_ID=gemma-3-27b-it" not in rendered
    assert "google/gemma-3-27b-it" in rendered
    assert "# fit: not checked" not in rendered and "# fit: " in rendered  # the fit check ran

    code, _, err = run(["render", "--model", "llama-3-8b", "--gpu", "h100"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "org/name" in err and "google/gemma-3-27b-it" in err


def test_reapply_after_kubectl_scale_is_one_line_and_force_conflicts_takes_the_field(
    kube_api: FakeKubeApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["apply", *SPEC_FLAGS, "--no-watch"], capsys)[0] == 0
    response = httpx.patch(
        f"{kube_api.url}/apis/apps/v1/namespaces/{NS}/deployments/{NAME}/scale",
        content=json.dumps({"spec": {"replicas": 3}}),
        headers={
            "Authorization": f"Bearer {kube_api.token}",
            "Content-Type": "application/merge-patch+json",
            "User-Agent": "kubectl/v1.28.7 (linux/amd64) kubernetes/c8dcb00",
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text

    code, _, err = run(["apply", *SPEC_FLAGS, "--no-watch"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "spec.replicas" in err and "kubectl" in err and "--force-conflicts" in err
    stored = kube_api.get("Deployment", NAME, NS)
    assert stored is not None and stored["spec"]["replicas"] == 3

    code, out, err = run(["apply", *SPEC_FLAGS, "--no-watch", "--force-conflicts"], capsys)
    assert (code, err) == (0, "")
    assert f"Deployment {NS}/{NAME} configured" in out
    stored = kube_api.get("Deployment", NAME, NS)
    assert stored is not None and stored["spec"]["replicas"] == 1
