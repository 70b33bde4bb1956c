"""dcgm-exporter in a cluster: discovery against the fake API server, exporters served over real HTTP
reached through the API server's port-forward, the target's GPUs kept by pod."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.kube.client import KubeClient
from backends.kube.errors import KubeError
from backends.telemetry.cluster import (
    discover_exporters,
    forward_exporters,
    parse_source,
)
from backends.telemetry.scrape import DcgmReading, DcgmScraper, DcgmState
from tests.cli_runner import kube_client
from tests.fakes.dcgm_exporter import FakeDcgmExporter
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_objects import vllm_deployment
from tests.integration.test_telemetry_dcgm import EKS, VLLM_POD

pytestmark = pytest.mark.timeout(60)

NS = "dynamo-workload"
NAME = "vllm-agg"
GKE_NS = "gke-managed-system"
GKE_LABELS = {"app.kubernetes.io/name": "gke-managed-dcgm-exporter"}
SECOND_POD = "vllm-agg-0-vllmdecodeworker-b7k2q"


def _pod(
    name: str,
    namespace: str,
    node: str,
    labels: dict[str, str],
    *,
    ready: bool = True,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x", "ports": ports or []}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _target_pod(name: str, node: str) -> dict[str, Any]:
    return _pod(name, NS, node, {"servedeck.io/deployment": NAME})


def _exporter_pod(name: str, node: str, namespace: str = GKE_NS, **kwargs: Any) -> dict[str, Any]:
    labels = kwargs.pop("labels", GKE_LABELS)
    ports = kwargs.pop("ports", [{"name": "metrics", "containerPort": 9400}])
    return _pod(name, namespace, node, labels, ports=ports, **kwargs)


def _second_node_body() -> str:
    """The recorded exposition as another node would print it: its own GPUs, held by the second pod."""
    return (
        EKS.replace(VLLM_POD, SECOND_POD)
        .replace("gpu-node-1", "gpu-node-2")
        .replace("GPU-c4529c8d", "GPU-d4529c8d")
    )


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        for namespace in (NS, GKE_NS, "gpu-operator", "monitoring"):
            api.create_namespace(namespace)
        api.put(vllm_deployment(NAME, NS))
        api.put(_target_pod(VLLM_POD, "gpu-node-1"))
        yield api


@pytest.fixture
def client(kube_api: FakeKubeApi, tmp_path: Path) -> Iterator[KubeClient]:
    with kube_client(kube_api, tmp_path, NS) as kube:
        yield kube


def _read(url: str, pods: list[str], timeout_s: float = 5.0) -> DcgmReading:
    async def go() -> DcgmReading:
        async with DcgmScraper(url, pods=pods, timeout_s=timeout_s) as scraper:
            return await scraper.read(0.0)

    return asyncio.run(go())


def test_gke_managed_exporter_on_the_pods_node_is_forwarded_and_filtered(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    kube_api.put(_exporter_pod("dcgm-exporter-aaaaa", "gpu-node-1"))
    kube_api.put(_exporter_pod("dcgm-exporter-bbbbb", "gpu-node-9"))  # another node: not read
    with FakeDcgmExporter(EKS) as exporter:
        kube_api.set_port_backend(GKE_NS, "dcgm-exporter-aaaaa", 9400, ("127.0.0.1", exporter.port))
        discovery = discover_exporters(client, NAME, NS)
        assert discovery.state is DcgmState.OK and discovery.message is None
        assert [(e.source, e.pod, e.node, e.port) for e in discovery.exporters] == [
            ("GKE managed DCGM", "dcgm-exporter-aaaaa", "gpu-node-1", 9400)
        ]
        assert discovery.target_pods == [VLLM_POD]
        with forward_exporters(client, discovery) as url:
            assert url.startswith("http://127.0.0.1:")
            reading = _read(url, discovery.target_pods)
        assert exporter.hits == 1
    assert reading.state is DcgmState.OK
    assert [(g.gpu, g.pod) for g in reading.gpus] == [("0", VLLM_POD)]  # 7 free GPUs left out
    assert reading.summary is not None and reading.summary.power_w == pytest.approx(113.611)
    upgrades = [r for r in kube_api.requests if r.path.endswith("/pods/dcgm-exporter-aaaaa/portforward")]
    assert upgrades and all(r.query == {"ports": "9400"} for r in upgrades)


def test_two_nodes_two_exporters_read_as_one(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.put(_target_pod(SECOND_POD, "gpu-node-2"))
    kube_api.put(_exporter_pod("dcgm-exporter-aaaaa", "gpu-node-1"))
    kube_api.put(_exporter_pod("dcgm-exporter-ccccc", "gpu-node-2"))
    with FakeDcgmExporter(EKS) as first, FakeDcgmExporter(_second_node_body()) as second:
        kube_api.set_port_backend(GKE_NS, "dcgm-exporter-aaaaa", 9400, ("127.0.0.1", first.port))
        kube_api.set_port_backend(GKE_NS, "dcgm-exporter-ccccc", 9400, ("127.0.0.1", second.port))
        discovery = discover_exporters(client, NAME, NS)
        assert discovery.nodes == ["gpu-node-1", "gpu-node-2"]
        with forward_exporters(client, discovery) as url:
            assert url.count(",") == 1
            reading = _read(url, discovery.target_pods)
    assert reading.state is DcgmState.OK
    assert sorted((g.hostname, g.pod) for g in reading.gpus) == [
        ("gpu-node-1", VLLM_POD),
        ("gpu-node-2", SECOND_POD),
    ]
    assert reading.summary is not None and reading.summary.gpus == 2


def test_gpu_operator_exporter_with_its_port_name(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.put(
        _exporter_pod(
            "nvidia-dcgm-exporter-x1",
            "gpu-node-1",
            "gpu-operator",
            labels={"app": "nvidia-dcgm-exporter"},
            ports=[{"name": "other", "containerPort": 8080}, {"name": "gpu-metrics", "containerPort": 9401}],
        )
    )
    discovery = discover_exporters(client, NAME, NS)
    assert [(e.source, e.namespace, e.port) for e in discovery.exporters] == [
        ("NVIDIA GPU operator", "gpu-operator", 9401)
    ]


def test_a_user_given_namespace_and_label(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.put(_exporter_pod("my-dcgm-0", "gpu-node-1", "monitoring", labels={"team": "gpu-metrics"}))
    source = parse_source("monitoring/team=gpu-metrics")
    assert (source.namespace, source.label_selector) == ("monitoring", "team=gpu-metrics")
    discovery = discover_exporters(client, NAME, NS, (source,))
    assert [e.pod for e in discovery.exporters] == ["my-dcgm-0"]
    assert discover_exporters(client, NAME, NS).state is DcgmState.NOT_FOUND  # not a known label
    anywhere = parse_source("app.kubernetes.io/name=dcgm-exporter")
    assert (anywhere.namespace, anywhere.label_selector) == (None, "app.kubernetes.io/name=dcgm-exporter")
    with pytest.raises(KubeError, match="NAMESPACE/LABEL=VALUE"):
        parse_source("monitoring")


def test_no_exporter_anywhere_is_one_clear_state_with_the_gke_command(client: KubeClient) -> None:
    discovery = discover_exporters(client, NAME, NS)
    assert discovery.state is DcgmState.NOT_FOUND and not discovery.exporters
    assert discovery.message is not None and "--monitoring=SYSTEM,DCGM" in discovery.message
    with pytest.raises(KubeError, match="no dcgm-exporter"), forward_exporters(client, discovery):
        pass


def test_exporters_only_on_other_nodes_or_not_ready_say_so(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.put(_exporter_pod("dcgm-exporter-zzzzz", "gpu-node-3"))
    kube_api.put(_exporter_pod("dcgm-exporter-aaaaa", "gpu-node-1", ready=False))
    discovery = discover_exporters(client, NAME, NS)
    assert discovery.state is DcgmState.NOT_FOUND
    assert discovery.message is not None
    assert "gpu-node-1" in discovery.message and "runs on gpu-node-3" in discovery.message


def test_rbac_denied_on_one_namespace_falls_through_and_is_named(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    kube_api.deny("list", "pods", GKE_NS)
    kube_api.put(_exporter_pod("dcgm-exporter-aaaaa", "gpu-node-1"))
    discovery = discover_exporters(client, NAME, NS)
    assert discovery.state is DcgmState.NOT_FOUND
    assert (
        discovery.message is not None
        and "not allowed to list pods in gke-managed-system" in discovery.message
    )
    kube_api.put(
        _exporter_pod(
            "nvidia-dcgm-exporter-x1", "gpu-node-1", "gpu-operator", labels={"app": "nvidia-dcgm-exporter"}
        )
    )
    assert discover_exporters(client, NAME, NS).exporters[0].source == "NVIDIA GPU operator"


def test_a_deployment_without_running_pods(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.delete_object("Pod", VLLM_POD, NS)
    discovery = discover_exporters(client, NAME, NS)
    assert discovery.state is DcgmState.NOT_FOUND and "no running pods" in (discovery.message or "")


def test_a_hung_exporter_behind_the_forward_times_out(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.put(_exporter_pod("dcgm-exporter-aaaaa", "gpu-node-1"))
    with FakeDcgmExporter(EKS, delay_s=3.0) as exporter:
        kube_api.set_port_backend(GKE_NS, "dcgm-exporter-aaaaa", 9400, ("127.0.0.1", exporter.port))
        discovery = discover_exporters(client, NAME, NS)
        with forward_exporters(client, discovery) as url:
            reading = _read(url, discovery.target_pods, timeout_s=0.3)
    assert reading.state is DcgmState.TIMEOUT and "timed out" in (reading.message or "")


def test_exporter_with_unknown_labels_only_is_no_matching_gpu(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    body = 'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-x",exported_job="x",weird="y"} 12\n'
    kube_api.put(_exporter_pod("dcgm-exporter-aaaaa", "gpu-node-1"))
    with FakeDcgmExporter(body) as exporter:
        kube_api.set_port_backend(GKE_NS, "dcgm-exporter-aaaaa", 9400, ("127.0.0.1", exporter.port))
        discovery = discover_exporters(client, NAME, NS)
        with forward_exporters(client, discovery) as url:
            reading = _read(url, discovery.target_pods)
    assert reading.state is DcgmState.NO_MATCHING_GPU
    assert "pod mapping" in (reading.message or "")
