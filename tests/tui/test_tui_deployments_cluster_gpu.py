"""Deployments view GPU columns for Kubernetes deployments (Pilot): the fake API server lists the
deployment, its pod and a GKE managed dcgm-exporter pod on the same node; the exporter is served over
real HTTP behind the API server's port-forward. The row shows only its pod's GPU (the recorded
exposition has 8), follows the exporter as it changes, and a deployment without an exporter shows a
dash with the reason (the GKE command) on its detail line, until one appears."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from backends.target_registry import DeploymentRow
from tests import tui_helpers
from tests.fakes.dcgm_exporter import FakeDcgmExporter
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_objects import servedeck_objects
from tests.fakes.kube_rollout import ScriptedRollout
from tests.fakes.openai_like_server import FakeServer, FakeServerConfig, Flavor
from tests.integration.test_telemetry_dcgm import EKS, VLLM_POD
from tests.tui.test_tui_bench import small_random_sweep
from tui.app import VIEWS, ServeDeckApp
from tui.screens.bench import BenchScreen
from tui.shell import View
from tui.widgets.deploy.table import DeploymentTable

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
SIZE = (160, 30)
NS = "servedeck"
NAME = "gemma-27b"
KEY = f"kube:{NS}/{NAME}"
GKE_NS = "gke-managed-system"
EXPORTER_POD = "dcgm-exporter-aaaaa"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_DATA_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))


@pytest.fixture
def kube_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        for obj in servedeck_objects(NAME, NS):
            api.put(obj)
        api.create_namespace(GKE_NS)
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
        yield api


def ready_rollout(api: FakeKubeApi) -> ScriptedRollout:
    rollout = ScriptedRollout(api, NS, NAME, ["pending", "scheduled", "running", "ready"])
    while rollout.advance():
        pass
    return rollout


def exporter_pod(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": EXPORTER_POD,
            "namespace": GKE_NS,
            "labels": {"app.kubernetes.io/name": "gke-managed-dcgm-exporter"},
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "exporter", "image": "x", "ports": [{"name": "metrics", "containerPort": 9400}]}
            ],
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def body_for(pod: str, power_w: float | None = None) -> str:
    """The recorded exposition with its held GPU (gpu 0) moved to ``pod`` in our namespace."""
    body = EKS.replace(VLLM_POD, pod).replace('namespace="dynamo-workload"', f'namespace="{NS}"')
    if power_w is not None:
        body = body.replace(f'pod="{pod}",pod_uid=""}} 113.611000', f'pod="{pod}",pod_uid=""}} {power_w}')
    return body


def make_app(views: tuple[View, ...] = VIEWS[:1]) -> ServeDeckApp:
    return ServeDeckApp(
        start_local_engine=False,
        show_welcome=False,
        check_health=False,
        discover_cluster=True,
        views=views,
    )


def _no_row() -> DeploymentRow:
    raise AssertionError(f"{KEY} is not listed")


wait_until = partial(tui_helpers.wait_until, timeout_s=30.0, poll_s=0.1)


def cell(app: ServeDeckApp, column: str) -> str:
    table = app.screen.query_one(DeploymentTable)
    if not table.with_gpu_columns or KEY not in table.rows:
        return ""
    return table.get_cell(KEY, column).plain


def detail_text(app: ServeDeckApp) -> str:
    return str(app.screen.query_one("#deployments-detail", Static).render())


async def highlight_row(pilot: Pilot[Any], app: ServeDeckApp) -> None:
    table = app.screen.query_one(DeploymentTable)
    await wait_until(pilot, lambda: KEY in table.rows)
    table.focus()
    table.move_cursor(row=table.get_row_index(KEY))
    await pilot.pause()


async def test_a_cluster_deployment_shows_its_own_pods_gpu_util_and_power(kube_api: FakeKubeApi) -> None:
    rollout = ready_rollout(kube_api)
    kube_api.put(exporter_pod(rollout.node))
    with FakeDcgmExporter(body_for(rollout.pod_name)) as exporter:
        kube_api.set_port_backend(GKE_NS, EXPORTER_POD, 9400, ("127.0.0.1", exporter.port))
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            # Only the deployment's GPU: the 8-GPU node's others draw ~70 W each and would add up.
            await wait_until(pilot, lambda: cell(app, "gpu_power") == "114")
            assert cell(app, "gpu_util") == "0%"
            exporter.body = body_for(rollout.pod_name, power_w=612.5)
            await wait_until(pilot, lambda: cell(app, "gpu_power") == "612")
            await highlight_row(pilot, app)
            assert "GPU metrics" not in detail_text(app)
            hits = exporter.hits
            assert hits >= 2
    forwards = [r for r in kube_api.requests if r.path.endswith(f"/pods/{EXPORTER_POD}/portforward")]
    assert forwards, "the exporter is read through the API server's port-forward"


async def test_no_exporter_is_a_dash_and_the_reason_until_one_appears(kube_api: FakeKubeApi) -> None:
    rollout = ready_rollout(kube_api)
    with FakeDcgmExporter(body_for(rollout.pod_name)) as exporter:
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: cell(app, "gpu_power") == "-")
            assert cell(app, "gpu_util") == "-"
            await highlight_row(pilot, app)
            await wait_until(pilot, lambda: "no dcgm-exporter found" in detail_text(app))
            assert "--monitoring=SYSTEM,DCGM" in detail_text(app)
            assert "Bench form's GPU metrics field" in detail_text(
                app
            ) and "--gpu-metrics" not in detail_text(app)
            assert "Traceback" not in detail_text(app)

            kube_api.set_port_backend(GKE_NS, EXPORTER_POD, 9400, ("127.0.0.1", exporter.port))
            kube_api.put(exporter_pod(rollout.node))
            await wait_until(pilot, lambda: cell(app, "gpu_power") == "114")
            await wait_until(pilot, lambda: "GPU metrics" not in detail_text(app))


async def test_an_exporter_that_times_out_is_a_dash_and_one_line(kube_api: FakeKubeApi) -> None:
    rollout = ready_rollout(kube_api)
    kube_api.put(exporter_pod(rollout.node))
    with FakeDcgmExporter(body_for(rollout.pod_name), delay_s=3.0) as exporter:
        kube_api.set_port_backend(GKE_NS, EXPORTER_POD, 9400, ("127.0.0.1", exporter.port))
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await highlight_row(pilot, app)
            await wait_until(pilot, lambda: "timed out" in detail_text(app))
            assert cell(app, "gpu_power") == cell(app, "gpu_util") == "-"
            assert "Traceback" not in detail_text(app)
            exporter.delay_s = 0.0  # it answers again: found again and read
            await wait_until(pilot, lambda: cell(app, "gpu_power") == "114")


async def test_a_bench_sweep_of_the_forwarded_deployment_reads_its_exporter(kube_api: FakeKubeApi) -> None:
    """End to end: port-forward the deployment in Deployments (f), use it (u), sweep it from the Bench
    form with GPU metrics left blank: the level table shows its pod's GPU, found in the cluster."""
    rollout = ready_rollout(kube_api)
    kube_api.put(exporter_pod(rollout.node))
    pod_server = FakeServer(FakeServerConfig(flavor=Flavor.VLLM, models=["google/gemma-3-27b-it"]))
    with pod_server, FakeDcgmExporter(body_for(rollout.pod_name)) as exporter:
        host, port = pod_server.url.removeprefix("http://").split(":")
        kube_api.set_port_backend(NS, rollout.pod_name, 8000, (host, int(port)))
        kube_api.set_port_backend(GKE_NS, EXPORTER_POD, 9400, ("127.0.0.1", exporter.port))
        app = make_app(views=(VIEWS[0], next(v for v in VIEWS if v.mode == "bench")))
        async with app.run_test(size=SIZE) as pilot:
            await highlight_row(pilot, app)
            await pilot.press("f")
            await wait_until(pilot, lambda: (app.registry.row(KEY) or _no_row()).target is not None)
            await highlight_row(pilot, app)
            await pilot.press("u")
            app.switch_mode("bench")
            await wait_until(pilot, lambda: isinstance(app.screen, BenchScreen))
            screen = app.screen
            assert isinstance(screen, BenchScreen)
            await wait_until(pilot, lambda: bool(screen.query("BenchForm")))
            await wait_until(pilot, lambda: bool(screen.form.values().targets))
            small_random_sweep(screen, levels="1", prompts="4", output_len="16")
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: screen.running)
            await wait_until(pilot, lambda: not screen.running, timeout_s=60)
            table = screen.results.table
            assert table.get_cell("0:0", "gpu_power") == "114"  # its pod's GPU only, of 8
            (run,) = screen._runs
            assert run.planned.config.gpu_metrics_url is None  # the form's; the sweep's was found
