"""Listing vLLM deployments of a context: ours by label, foreign ones by image and command line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.kube.client import KubeClient
from backends.kube.inventory import DeploymentStatus, list_vllm_deployments, model_of
from backends.target_types import TargetKind
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_objects import foreign_app, foreign_service, gke_tutorial_deployment, servedeck_objects
from tests.fakes.kube_rollout import ScriptedRollout

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        for namespace in ("servedeck", "ml", "web"):
            api.create_namespace(namespace)
        yield api


@pytest.fixture
def client(kube_api: FakeKubeApi, tmp_path: Path) -> Iterator[KubeClient]:
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig", namespace="servedeck")
    with KubeClient.connect(str(kubeconfig)) as kube:
        yield kube


def _vllm_serve_deployment(namespace: str) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "qwen", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "qwen"}},
            "template": {
                "metadata": {"labels": {"app": "qwen"}},
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "registry.example.com/inference/server:1.2",
                            "command": ["/bin/sh", "-c"],
                            "args": [
                                "exec vllm serve Qwen/Qwen2.5-7B-Instruct --port 8080 --max-model-len 8192"
                            ],
                            "ports": [{"containerPort": 8080}],
                        }
                    ]
                },
            },
        },
        "status": {"replicas": 2, "readyReplicas": 1},
    }


def test_ours_and_foreign_vllm_deployments_are_listed_and_others_are_not(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    client.apply([obj for obj in servedeck_objects() if obj["kind"] != "Secret"])
    ScriptedRollout(kube_api, "servedeck", "gemma-27b", ["pending"]).advance()
    kube_api.put(gke_tutorial_deployment("ml"))
    kube_api.put(foreign_service("llm-service", "ml", {"app": "gemma-server"}))
    kube_api.put(_vllm_serve_deployment("ml"))
    for obj in foreign_app("blog", "web"):
        kube_api.put(obj)

    rows = list_vllm_deployments(client)

    assert [(row.namespace, row.name) for row in rows] == [
        ("ml", "qwen"),
        ("ml", "vllm-gemma-deployment"),
        ("servedeck", "gemma-27b"),
    ]
    qwen, gke, ours = rows
    assert (qwen.managed, qwen.model, qwen.accelerator, qwen.gpus_per_replica) == (
        False,
        "Qwen/Qwen2.5-7B-Instruct",
        "cpu",
        0,
    )
    assert (qwen.replicas_ready, qwen.replicas_desired, qwen.status) == (1, 2, DeploymentStatus.DEGRADED)
    assert (qwen.service, qwen.port) == (None, 8080)

    assert (gke.managed, gke.model, gke.accelerator, gke.gpus_per_replica) == (
        False,
        "google/gemma-3-27b-it",
        "nvidia-l4",
        8,
    )
    assert gke.status is DeploymentStatus.READY
    assert gke.in_cluster_url == "http://llm-service.ml.svc.cluster.local:8000"

    assert (ours.managed, ours.model, ours.accelerator, ours.gpus_per_replica) == (
        True,
        "google/gemma-3-27b-it",
        "nvidia-h100-80gb",
        1,
    )
    assert (ours.replicas_ready, ours.replicas_desired, ours.status) == (0, 1, DeploymentStatus.PROGRESSING)
    assert ours.service == "gemma-27b"
    target = ours.target("http://127.0.0.1:18000/v1")
    assert (target.name, target.base_url, target.model, target.kind) == (
        "servedeck/gemma-27b",
        "http://127.0.0.1:18000",
        "google/gemma-3-27b-it",
        TargetKind.VLLM,
    )


def test_one_namespace_and_scaled_to_zero(kube_api: FakeKubeApi, client: KubeClient) -> None:
    client.apply([obj for obj in servedeck_objects() if obj["kind"] != "Secret"])
    kube_api.put(gke_tutorial_deployment("ml"))
    client.scale("gemma-27b", 0)
    rows = list_vllm_deployments(client, "servedeck")
    assert [(row.name, row.status) for row in rows] == [("gemma-27b", DeploymentStatus.SCALED_TO_ZERO)]


@pytest.mark.parametrize(
    ("container", "model"),
    [
        ({"args": ["--model", "meta-llama/Llama-3.1-8B-Instruct"]}, "meta-llama/Llama-3.1-8B-Instruct"),
        ({"command": ["vllm", "serve", "google/gemma-3-1b-it", "--port=8000"]}, "google/gemma-3-1b-it"),
        ({"command": ["vllm", "serve", "--port=8000"]}, None),
        (
            {"args": ["--model=$(MODEL_ID)"], "env": [{"name": "OTHER", "value": "x"}]},
            "$(MODEL_ID)",
        ),
    ],
)
def test_model_from_the_command_line(container: dict[str, object], model: str | None) -> None:
    assert model_of(container) == model
