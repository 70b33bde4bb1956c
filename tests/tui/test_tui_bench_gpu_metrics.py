"""The Bench form's GPU metrics field: a dcgm-exporter URL for any target (the CLI's --gpu-metrics).

Pilot: a sweep of a fake OpenAI server with the field pointing at an exporter serving the recorded
8-GPU exposition shows the GPU columns; a bad URL is one line and no sweep. Blank on a port-forwarded
Kubernetes deployment: the registry finds its exporter (fake API server, exporter over real HTTP
behind the port-forward) and the sweep reads only its pod's GPU."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.bench.results import SweepConfig
from backends.target_registry import ManualTargetStore, TargetRegistry
from backends.target_types import Target
from backends.targets import discover_target
from backends.telemetry.dcgm import parse_dcgm, summarise
from backends.telemetry.scrape import DcgmState, read_once
from tests.fakes.dcgm_exporter import FakeDcgmExporter
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_objects import servedeck_objects
from tests.fakes.openai_like_server import FakeServer, FakeServerConfig, Flavor
from tests.fakes.sse_server import FakeSSEServer
from tests.integration.test_telemetry_dcgm import EKS
from tests.tui.test_tui_bench import (
    SIZE,
    BenchHarness,
    bench,
    fill,
    small_random_sweep,
    static_text,
    wait_until,
)
from tests.tui.test_tui_deployments_cluster_gpu import (
    GKE_NS,
    KEY,
    NAME,
    NS,
    body_for,
    exporter_pod,
    ready_rollout,
)
from tui.context import AppContext
from tui.services.bench_config import BenchFormValues, build_runs, values_from_config
from tui.services.bench_gpu import automatic_gpu_telemetry

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def fake_target() -> Iterator[Target]:
    server = FakeSSEServer(mode="tick")
    server.start_in_thread()
    try:
        yield asyncio.run(discover_target(f"http://127.0.0.1:{server.port}", name="fake"))
    finally:
        server.stop()


async def test_a_gpu_metrics_url_in_the_form_fills_the_gpu_columns(
    fake_target: Target, tmp_path: Path
) -> None:
    recorded = summarise(0.0, parse_dcgm(EKS).gpus)
    assert recorded.power_w is not None and recorded.utilisation is not None
    with FakeDcgmExporter(EKS) as exporter:
        app = BenchHarness(AppContext(data_dir=tmp_path, targets=[fake_target], selected_target="fake"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = bench(app)
            small_random_sweep(screen, levels="1", prompts="8", output_len="64")
            fill(screen, gpu_metrics=f"http://127.0.0.1:{exporter.port}")
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: not screen.running)
            table = screen.results.table
            assert table.get_cell("0:0", "gpu_util") == f"{recorded.utilisation:.0%}"
            power = float(table.get_cell("0:0", "gpu_power").replace(",", ""))
            assert power == pytest.approx(recorded.power_w, abs=1.0)  # all 8 GPUs: no pods given
            assert exporter.hits >= 2
        (run,) = screen._runs
        assert run.planned.config.gpu_metrics_url == f"http://127.0.0.1:{exporter.port}"


async def test_a_bad_gpu_metrics_url_is_one_line_and_no_sweep(fake_target: Target, tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[fake_target], selected_target="fake"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        fill(screen, gpu_metrics="127.0.0.1:9400")
        await pilot.press("ctrl+r")
        await pilot.pause()
        message = static_text(screen, "#bench-form-message")
        assert message.startswith("GPU metrics:") and "http://127.0.0.1:9400/metrics" in message
        assert "\n" not in message and not screen.running


def test_the_field_compiles_to_the_clis_setting_and_round_trips(fake_target: Target) -> None:
    def one(values: BenchFormValues) -> SweepConfig:
        (run,) = build_runs(values, [fake_target], lambda name: None)
        return run.config

    url = "http://127.0.0.1:9400/metrics,http://127.0.0.1:9401/metrics"
    config = one(BenchFormValues(targets=["fake"], gpu_metrics=f" {url} "))
    assert (config.gpu_metrics_url, config.gpu_metrics_pods) == (url, None)
    assert values_from_config(config, [fake_target]).gpu_metrics == url
    assert one(BenchFormValues(targets=["fake"])).gpu_metrics_url is None
    # A deployment's exporter was a port-forward of its session: a re-run finds it again.
    found = config.model_copy(update={"gpu_metrics_pods": ["pod-a"]})
    assert values_from_config(found, [fake_target]).gpu_metrics == ""
    rerun = build_runs(BenchFormValues(targets=["fake"]), [fake_target], lambda name: None, base=found)
    assert (rerun[0].config.gpu_metrics_url, rerun[0].config.gpu_metrics_pods) == (None, None)


def exporter_lists(api: FakeKubeApi) -> int:
    return sum(1 for r in api.requests if r.path == f"/api/v1/namespaces/{GKE_NS}/pods")


def test_blank_on_a_kubernetes_deployment_reads_its_pods_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeKubeApi() as api:
        for obj in servedeck_objects(NAME, NS):
            api.put(obj)
        api.create_namespace(GKE_NS)
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
        rollout = ready_rollout(api)
        api.put(exporter_pod(rollout.node))
        pod_server = FakeServer(FakeServerConfig(flavor=Flavor.VLLM, models=["google/gemma-3-27b-it"]))
        with pod_server, FakeDcgmExporter(body_for(rollout.pod_name)) as exporter:
            host, port = pod_server.url.removeprefix("http://").split(":")
            api.set_port_backend(NS, rollout.pod_name, 8000, (host, int(port)))
            api.set_port_backend(GKE_NS, "dcgm-exporter-aaaaa", 9400, ("127.0.0.1", exporter.port))
            registry = TargetRegistry(manual_store=ManualTargetStore(tmp_path), twin_specs=[])
            try:
                registry.refresh_cluster()
                registry.port_forward(KEY)
                row = registry.row(KEY)
                assert row is not None and row.target is not None
                (planned,) = build_runs(
                    BenchFormValues(targets=[row.target.name]), [row.target], lambda n: None
                )
                with automatic_gpu_telemetry(registry, [planned]) as (runs, notes):
                    config = runs[0].config
                    assert notes == [] and config.gpu_metrics_pods == [rollout.pod_name]
                    assert config.gpu_metrics_url is not None
                    reading = read_once(config.gpu_metrics_url, pods=config.gpu_metrics_pods)
                    assert reading.state is DcgmState.OK and [g.pod for g in reading.gpus] == [
                        rollout.pod_name
                    ]
                    assert reading.summary is not None and reading.summary.power_w == pytest.approx(113.611)
                    # The Deployments view's refresh leaves a sweep's forwards alone.
                    listed = exporter_lists(api)
                    assert registry.cluster_gpu_exporter(KEY, max_age_s=0.0).url == config.gpu_metrics_url
                    assert exporter_lists(api) == listed
                registry.cluster_gpu_exporter(KEY, max_age_s=0.0)
                assert exporter_lists(api) == listed + 1

                api.delete_object("Pod", "dcgm-exporter-aaaaa", GKE_NS)
                registry.stop_gpu_exporters()
                with automatic_gpu_telemetry(registry, [planned]) as (runs, notes):
                    assert runs[0].config.gpu_metrics_url is None
                    assert len(notes) == 1 and "--monitoring=SYSTEM,DCGM" in notes[0]
            finally:
                registry.close()
