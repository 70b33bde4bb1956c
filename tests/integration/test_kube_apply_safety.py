"""Apply checks the whole set before creating anything, rolls back on a later failure, and never takes
fields other managers own (kubectl scale, kubectl edit, an HPA) unless asked to."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.kube.client import ApplyAction, KubeClient
from backends.kube.errors import KubeConflictError, KubeError
from tests.cli_runner import kube_client
from tests.fakes.kube_api import DEFAULT_TOKEN, FakeKubeApi
from tests.fakes.kube_objects import servedeck_objects, vllm_deployment

pytestmark = pytest.mark.timeout(60)

NS = "servedeck"
NAME = "gemma-27b"
LWS: dict[str, Any] = {
    "apiVersion": "leaderworkerset.x-k8s.io/v1",
    "kind": "LeaderWorkerSet",
    "metadata": {"name": NAME, "namespace": NS, "labels": {"app.kubernetes.io/managed-by": "servedeck"}},
    "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2}},
}


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        api.create_namespace(NS)
        yield api


@pytest.fixture
def client(kube_api: FakeKubeApi, tmp_path: Path) -> Iterator[KubeClient]:
    with kube_client(kube_api, tmp_path, NS) as kube:
        yield kube


def _objects() -> list[dict[str, Any]]:
    return [obj for obj in servedeck_objects(NAME, NS) if obj["kind"] != "Namespace"]


def _left_behind(api: FakeKubeApi) -> list[str]:
    return [
        f"{kind}/{obj['metadata']['name']}"
        for kind in ("Secret", "PersistentVolumeClaim", "Service", "LeaderWorkerSet")
        for obj in api.list_objects(kind, NS)
    ]


def _kubectl(api: FakeKubeApi, path: str, patch: dict[str, Any], manager: str | None = None) -> None:
    """A write as kubectl sends it: a merge patch, the manager taken from its User-Agent."""
    params = {"fieldManager": manager} if manager else {}
    response = httpx.patch(
        f"{api.url}{path}",
        params=params,
        content=json.dumps(patch),
        headers={
            "Authorization": f"Bearer {DEFAULT_TOKEN}",
            "Content-Type": "application/merge-patch+json",
            "User-Agent": "kubectl/v1.28.7 (linux/amd64) kubernetes/c8dcb00",
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text


def _scale(api: FakeKubeApi, replicas: int) -> None:
    _kubectl(api, f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}/scale", {"spec": {"replicas": replicas}})


# --- 10: check everything first, roll back on a later failure ----------------------------------


def test_a_deployment_name_owned_by_someone_else_creates_nothing(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    kube_api.put(vllm_deployment(NAME, NS, labels={"app": "theirs"}))

    with pytest.raises(KubeConflictError) as caught:
        client.apply(_objects())

    text = str(caught.value)
    assert "\n" not in text
    assert f"Deployment {NS}/{NAME} already exists and is not managed by servedeck" in text
    assert "nothing was applied" in text
    assert _left_behind(kube_api) == []
    assert not [r for r in kube_api.requests if r.method == "PATCH" and "dryRun" not in r.query]


def test_a_kind_the_cluster_does_not_serve_creates_nothing(tmp_path: Path) -> None:
    with FakeKubeApi(serve_lws=False) as api:
        api.create_namespace(NS)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        objects = [*_objects()[:3], LWS]  # Secret, PVC, Service, then the LeaderWorkerSet
        with KubeClient.connect(str(kubeconfig)) as kube, pytest.raises(KubeError) as caught:
            kube.apply(objects)
        assert "does not serve LeaderWorkerSet" in str(caught.value)
        assert "nothing was applied" in str(caught.value)
        assert _left_behind(api) == []
        dry_runs = [r for r in api.requests if r.method == "PATCH" and r.query.get("dryRun") == "All"]
        assert len(dry_runs) >= 3  # the whole set went through a server-side dry run


def test_a_failure_after_the_dry_run_rolls_back_what_this_apply_created(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    kube_api.inject_error(
        "patch",
        "deployments",
        403,
        "Forbidden",
        'admission webhook "quota.example.com" denied the request: exceeded quota: gpu',
        skip_dry_run=True,
    )

    with pytest.raises(KubeError) as caught:
        client.apply(_objects())

    text = str(caught.value)
    assert "exceeded quota" in text and "\n" not in text
    assert "rolled back" in text and f"Secret {NS}/{NAME}-hf-token" in text
    assert _left_behind(kube_api) == []
    assert kube_api.get("Deployment", NAME, NS) is None


def test_rollback_keeps_objects_that_existed_before(kube_api: FakeKubeApi, client: KubeClient) -> None:
    client.apply(_objects()[:1])  # the Secret from an earlier apply
    kube_api.inject_error("patch", "services", 500, "InternalError", "etcd timeout", skip_dry_run=True)

    with pytest.raises(KubeError):
        client.apply(_objects())

    assert _left_behind(kube_api) == [f"Secret/{NAME}-hf-token"]


# --- 11: no silent take-over of other managers' fields -----------------------------------------


def test_reapply_after_kubectl_scale_shows_the_conflict_and_keeps_the_scale(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    client.apply(_objects())
    _scale(kube_api, 3)

    with pytest.raises(KubeConflictError) as caught:
        client.apply(_objects())

    text = str(caught.value)
    assert "\n" not in text
    assert f"Deployment {NS}/{NAME}" in text
    assert '.spec.replicas (owned by "kubectl" with subresource "scale")' in text
    assert "--force-conflicts" in text
    stored = kube_api.get("Deployment", NAME, NS)
    assert stored is not None and stored["spec"]["replicas"] == 3
    assert all(r.query.get("force") != "true" for r in kube_api.requests if r.method == "PATCH")

    results = client.apply(_objects(), force_conflicts=True)
    assert {r.ref.kind: r.action for r in results}["Deployment"] is ApplyAction.CONFIGURED
    stored = kube_api.get("Deployment", NAME, NS)
    assert stored is not None and stored["spec"]["replicas"] == 1


def test_manual_args_and_grace_period_are_conflicts_with_their_manager(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    client.apply(_objects())
    deployment = kube_api.get("Deployment", NAME, NS)
    assert deployment is not None
    template = deployment["spec"]["template"]
    args = [*template["spec"]["containers"][0]["args"], "--max-num-seqs=64"]
    _kubectl(
        kube_api,
        f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}",
        {
            "spec": {
                "template": {
                    "spec": {
                        "terminationGracePeriodSeconds": 600,
                        "containers": [{**template["spec"]["containers"][0], "args": args}],
                    }
                }
            }
        },
        manager="kubectl-edit",
    )

    with pytest.raises(KubeConflictError) as caught:
        client.apply(_objects())

    text = str(caught.value)
    assert '.spec.template.spec.containers[name="vllm"].args (owned by "kubectl-edit")' in text
    assert ".spec.template.spec.terminationGracePeriodSeconds" not in text  # servedeck never set it
    stored = kube_api.get("Deployment", NAME, NS)
    assert (
        stored is not None
        and "--max-num-seqs=64" in stored["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_replicas_an_hpa_owns_are_left_alone_even_when_forcing(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    client.apply(_objects())
    kube_api.put(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
                "minReplicas": 1,
                "maxReplicas": 8,
            },
        }
    )
    _kubectl(
        kube_api,
        f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}/scale",
        {"spec": {"replicas": 4}},
        manager="kube-controller-manager",
    )
    objects = _objects()
    objects[-1]["spec"]["template"]["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.10.2"

    for force in (False, True):
        results = client.apply(objects, force_conflicts=force)
        deployment_result = next(r for r in results if r.ref.kind == "Deployment")
        assert deployment_result.note is not None and "HorizontalPodAutoscaler" in deployment_result.note
        stored = kube_api.get("Deployment", NAME, NS)
        assert stored is not None and stored["spec"]["replicas"] == 4
        assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v0.10.2"


def test_replicas_scaled_by_an_autoscaler_controller_without_an_hpa_object_are_left_alone(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    client.apply(_objects())
    _kubectl(
        kube_api,
        f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}/scale",
        {"spec": {"replicas": 2}},
        manager="kube-controller-manager",
    )
    results = client.apply(_objects())
    assert {r.ref.kind: r.action for r in results}["Deployment"] is ApplyAction.UNCHANGED
    stored = kube_api.get("Deployment", NAME, NS)
    assert stored is not None and stored["spec"]["replicas"] == 2
