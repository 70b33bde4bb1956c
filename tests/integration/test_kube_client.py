"""KubeClient over real HTTP against the fake API server: apply, errors, scale, delete, secrets."""

from __future__ import annotations

import base64
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.kube.client import ApplyAction, KubeClient, ObjectRef
from backends.kube.errors import (
    KubeConflictError,
    KubeError,
    KubeForbiddenError,
    KubeInvalidError,
    KubeNotFoundError,
    KubeUnauthorizedError,
    KubeUnreachableError,
    NamespaceMissingError,
)
from backends.kube.secrets import read_hf_token, with_hf_token
from tests.cli_runner import kube_client
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_objects import foreign_app, gke_tutorial_deployment, servedeck_objects, vllm_deployment

pytestmark = pytest.mark.timeout(60)

NS = "servedeck"


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        yield api


@pytest.fixture
def client(kube_api: FakeKubeApi, tmp_path: Path) -> Iterator[KubeClient]:
    with kube_client(kube_api, tmp_path, NS) as kube:
        yield kube


def _objects_without_secret() -> list[dict[str, object]]:
    return [obj for obj in servedeck_objects(namespace=NS) if obj["kind"] != "Secret"]


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text.strip() == text and text
    return text


# --- apply -----------------------------------------------------------------------------------------


def test_apply_is_server_side_apply_with_field_manager_servedeck(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    results = client.apply(_objects_without_secret())

    assert [(r.ref.kind, r.action) for r in results] == [
        ("Namespace", ApplyAction.CREATED),
        ("PersistentVolumeClaim", ApplyAction.CREATED),
        ("Service", ApplyAction.CREATED),
        ("Deployment", ApplyAction.CREATED),
    ]
    patches = [r for r in kube_api.requests if r.method == "PATCH"]
    writes = [r for r in patches if "dryRun" not in r.query]
    assert len(writes) == len(patches) == 4  # no dry run into a namespace this apply creates
    for request in patches:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query["fieldManager"] == "servedeck"
        assert request.query["force"] == "false"
    deployment = kube_api.get("Deployment", "gemma-27b", NS)
    assert deployment is not None
    assert [entry["manager"] for entry in deployment["metadata"]["managedFields"]] == ["servedeck"]
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "servedeck"


def test_reapply_is_unchanged_and_a_change_is_configured(kube_api: FakeKubeApi, client: KubeClient) -> None:
    objects = _objects_without_secret()
    client.apply(objects)
    again = client.apply(objects)
    assert [r.action for r in again] == [ApplyAction.KEPT] + [ApplyAction.UNCHANGED] * 3

    objects[-1]["spec"]["replicas"] = 2  # type: ignore[index]
    changed = client.apply(objects)
    actions = {r.ref.kind: r.action for r in changed}
    assert actions["Deployment"] is ApplyAction.CONFIGURED
    assert actions["Service"] is ApplyAction.UNCHANGED
    stored = kube_api.get("Deployment", "gemma-27b", NS)
    assert stored is not None and stored["spec"]["replicas"] == 2 and stored["metadata"]["generation"] == 2


def test_apply_takes_back_fields_another_manager_changed(kube_api: FakeKubeApi, client: KubeClient) -> None:
    client.apply(_objects_without_secret())
    edited = kube_api.get("Deployment", "gemma-27b", NS)
    assert edited is not None
    edited["spec"]["replicas"] = 5
    edited["metadata"]["managedFields"].append({"manager": "kubectl-edit", "operation": "Update"})
    kube_api.put(edited)

    results = client.apply(_objects_without_secret())

    assert {r.ref.kind: r.action for r in results}["Deployment"] is ApplyAction.CONFIGURED
    stored = kube_api.get("Deployment", "gemma-27b", NS)
    assert stored is not None and stored["spec"]["replicas"] == 1


def test_apply_uses_an_existing_foreign_namespace_without_touching_it(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    kube_api.create_namespace(NS, labels={"team": "ml"})
    results = client.apply(_objects_without_secret())
    assert results[0].ref == ObjectRef(kind="Namespace", name=NS)
    assert results[0].action is ApplyAction.KEPT
    namespace = kube_api.get("Namespace", NS)
    assert namespace is not None and namespace["metadata"]["labels"] == {"team": "ml"}


def test_an_existing_storage_class_is_used_as_it_is(kube_api: FakeKubeApi, client: KubeClient) -> None:
    existing = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "hyperdisk-ml", "labels": {"app.kubernetes.io/managed-by": "servedeck"}},
        "provisioner": "pd.csi.storage.gke.io",
        "parameters": {"type": "hyperdisk-ml", "provisioned-throughput-on-create": "2000Mi"},
    }
    kube_api.put(existing)
    wanted = {
        **existing,
        "parameters": {"type": "hyperdisk-ml", "provisioned-throughput-on-create": "4000Mi"},
    }

    results = client.apply([wanted])

    assert [(r.ref, r.action) for r in results] == [
        (ObjectRef(kind="StorageClass", name="hyperdisk-ml"), ApplyAction.KEPT)
    ]
    stored = kube_api.get("StorageClass", "hyperdisk-ml")
    assert stored is not None and stored["parameters"]["provisioned-throughput-on-create"] == "2000Mi"
    assert not [r for r in kube_api.requests if r.method == "PATCH"]


def test_a_tenant_without_rights_on_shared_kinds_can_still_apply(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    kube_api.create_namespace(NS)
    kube_api.deny("get", "namespaces")
    kube_api.deny("get", "storageclasses")
    storage_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "hyperdisk-ml"},
        "provisioner": "pd.csi.storage.gke.io",
    }

    results = client.apply([storage_class, *_objects_without_secret()])

    assert [(r.ref.kind, r.action) for r in results] == [
        ("StorageClass", ApplyAction.UNCHECKED),
        ("Namespace", ApplyAction.UNCHECKED),
        ("PersistentVolumeClaim", ApplyAction.CREATED),
        ("Service", ApplyAction.CREATED),
        ("Deployment", ApplyAction.CREATED),
    ]
    assert kube_api.get("StorageClass", "hyperdisk-ml") is None


def test_apply_refuses_to_take_over_a_foreign_object(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.create_namespace(NS)
    foreign = vllm_deployment("gemma-27b", NS, labels={"app": "theirs"})
    kube_api.put(foreign)

    with pytest.raises(KubeConflictError) as caught:
        client.apply([vllm_deployment("gemma-27b", NS)])

    assert "Deployment servedeck/gemma-27b already exists and is not managed by servedeck" in _one_line(
        caught.value
    )
    stored = kube_api.get("Deployment", "gemma-27b", NS)
    assert stored is not None and stored["metadata"]["labels"] == {"app": "theirs"}


def test_missing_namespace_is_one_clear_line(kube_api: FakeKubeApi, client: KubeClient) -> None:
    with pytest.raises(NamespaceMissingError) as caught:
        client.apply([vllm_deployment("gemma-27b", "nowhere")])
    assert _one_line(caught.value) == (
        "namespace 'nowhere' does not exist in context fake; create it (kubectl create namespace nowhere) "
        "or pass --namespace with an existing one"
    )
    assert not [r for r in kube_api.requests if r.method == "PATCH"]


def test_a_leaderworkerset_on_a_cluster_without_the_crd(tmp_path: Path) -> None:
    lws = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {
            "name": "llama-405b",
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "servedeck"},
        },
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 2}},
    }
    with FakeKubeApi(serve_lws=False) as api:
        api.create_namespace(NS)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        with KubeClient.connect(str(kubeconfig)) as kube:
            with pytest.raises(KubeError) as caught:
                kube.apply([lws])
            assert _one_line(caught.value) == (
                "the cluster of context fake does not serve LeaderWorkerSet (leaderworkerset.x-k8s.io/v1); "
                "install its controller first (LeaderWorkerSet: https://lws.sigs.k8s.io/docs/installation/); "
                "nothing was applied"
            )
            assert kube.managed_objects(NS) == []  # listing skips the kind the cluster lacks

    with FakeKubeApi() as api:
        api.create_namespace(NS)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        with KubeClient.connect(str(kubeconfig)) as kube:
            assert [r.action for r in kube.apply([lws])] == [ApplyAction.CREATED]
            assert kube.managed_objects(NS) == [
                ObjectRef(kind="LeaderWorkerSet", name="llama-405b", namespace=NS)
            ]
            assert kube.delete(kube.managed_objects(NS)) == [
                ObjectRef(kind="LeaderWorkerSet", name="llama-405b", namespace=NS)
            ]
            assert api.get("LeaderWorkerSet", "llama-405b", NS) is None


def test_rbac_denial_is_forbidden_verb_resource_namespace_and_server_message(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    kube_api.create_namespace(NS)
    kube_api.deny("patch", "deployments", NS)

    with pytest.raises(KubeForbiddenError) as caught:
        client.apply([vllm_deployment("gemma-27b", NS)])

    assert _one_line(caught.value) == (
        'forbidden: patch deployments.apps in servedeck: deployments.apps "gemma-27b" is forbidden: '
        'User "system:serviceaccount:ci:servedeck" cannot patch resource "deployments" in API group "apps" '
        'in the namespace "servedeck"; nothing was applied'
    )


def test_rbac_denial_on_list_at_cluster_scope(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.deny("list", "deployments")
    with pytest.raises(KubeForbiddenError) as caught:
        client.list_objects("Deployment", all_namespaces=True)
    assert _one_line(caught.value).startswith("forbidden: list deployments.apps (cluster scope): ")
    assert "at the cluster scope" in str(caught.value)


def test_invalid_spec_422_is_one_line_with_the_field(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.create_namespace(NS)
    broken = vllm_deployment("gemma-27b", NS)
    broken["spec"]["template"]["spec"]["containers"][0]["image"] = ""
    broken["spec"]["selector"]["matchLabels"] = {"app": "other"}

    with pytest.raises(KubeInvalidError) as caught:
        client.apply([broken])

    line = _one_line(caught.value)
    assert line.startswith(
        'invalid: patch deployments.apps/gemma-27b in servedeck: Deployment.apps "gemma-27b" is'
    )
    assert "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`" in line
    assert "spec.template.spec.containers[0].image: Required value" in line
    assert kube_api.get("Deployment", "gemma-27b", NS) is None


def test_invalid_name_422(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.create_namespace(NS)
    with pytest.raises(KubeInvalidError) as caught:
        client.apply([vllm_deployment("Gemma_27B", NS)])
    assert 'metadata.name: Invalid value: "Gemma_27B": a lowercase RFC 1123 subdomain' in _one_line(
        caught.value
    )


def test_write_conflict_409_is_one_line(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.create_namespace(NS)
    kube_api.inject_error(
        "patch",
        "deployments",
        409,
        "Conflict",
        'Operation cannot be fulfilled on deployments.apps "gemma-27b": the object has been modified; '
        "please apply your changes to the latest version and try again",
    )
    with pytest.raises(KubeConflictError) as caught:
        client.apply([vllm_deployment("gemma-27b", NS)])
    assert _one_line(caught.value).startswith(
        "conflict: patch deployments.apps/gemma-27b in servedeck: "
        "Operation cannot be fulfilled on deployments.apps"
    )


def test_get_of_a_missing_object_is_none_and_scale_of_one_is_not_found(
    client: KubeClient, kube_api: FakeKubeApi
) -> None:
    kube_api.create_namespace(NS)
    assert client.get("Deployment", "ghost", NS) is None
    with pytest.raises(KubeNotFoundError) as caught:
        client.scale("ghost", 2, NS)
    assert _one_line(caught.value) == (
        "deployment 'ghost' not found in namespace servedeck; see servedeck deploy list -n servedeck"
    )


def test_wrong_credentials_are_unauthorized(kube_api: FakeKubeApi, tmp_path: Path) -> None:
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig", token="expired")
    with KubeClient.connect(str(kubeconfig)) as kube, pytest.raises(KubeUnauthorizedError) as caught:
        kube.list_objects("Deployment", "default")
    assert _one_line(caught.value).startswith(
        "authentication failed: the API server rejected the token (or client certificate) of the kubeconfig "
        "user (list deployments.apps in default: Unauthorized);"
    )


def test_unreachable_api_server_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with FakeKubeApi() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    text = kubeconfig.read_text().replace(f"127.0.0.1:{api.port}", f"127.0.0.1:{closed_port}")
    kubeconfig.write_text(text)

    with KubeClient.connect(str(kubeconfig)) as kube, pytest.raises(KubeUnreachableError) as caught:
        kube.apply([vllm_deployment("gemma-27b", NS)])

    assert _one_line(caught.value) == (
        f"cannot reach the Kubernetes API server at http://127.0.0.1:{closed_port} (context fake): "
        "connection refused; check that the cluster is up and the context is right "
        "(servedeck deploy contexts)"
    )


# --- scale -----------------------------------------------------------------------------------------


def test_scale_patches_the_scale_subresource(kube_api: FakeKubeApi, client: KubeClient) -> None:
    client.apply(_objects_without_secret())
    result = client.scale("gemma-27b", 3)
    assert (result.previous_replicas, result.replicas) == (1, 3)
    stored = kube_api.get("Deployment", "gemma-27b", NS)
    assert stored is not None and stored["spec"]["replicas"] == 3
    assert any(
        r.method == "PATCH" and r.path.endswith("/deployments/gemma-27b/scale") for r in kube_api.requests
    )


def test_scale_rejects_negative_replicas_before_any_request(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    with pytest.raises(Exception, match="replicas must be 0 or more, got -1"):
        client.scale("gemma-27b", -1)
    assert kube_api.requests == []


# --- delete ----------------------------------------------------------------------------------------


def test_delete_removes_only_our_objects(kube_api: FakeKubeApi, client: KubeClient) -> None:
    client.apply(_objects_without_secret())
    for obj in [*foreign_app("blog", NS), gke_tutorial_deployment(NS)]:
        kube_api.put(obj)

    refs = client.managed_objects(NS)
    assert {(ref.kind, ref.name) for ref in refs} == {
        ("Deployment", "gemma-27b"),
        ("Service", "gemma-27b"),
        ("PersistentVolumeClaim", "gemma-27b-hf-cache"),
    }
    deleted = client.delete(refs)

    assert set(deleted) == set(refs)
    assert kube_api.get("Deployment", "gemma-27b", NS) is None
    left = {
        (obj["kind"], obj["metadata"]["name"])
        for kind in ("Deployment", "Service", "Secret", "PersistentVolumeClaim")
        for obj in kube_api.list_objects(kind, NS)
    }
    assert left == {
        ("Deployment", "blog"),
        ("Deployment", "vllm-gemma-deployment"),
        ("Service", "blog"),
        ("Secret", "blog-creds"),
        ("PersistentVolumeClaim", "blog-data"),
    }
    assert kube_api.get("Namespace", NS) is not None
    assert all(
        r.path.rsplit("/", 1)[-1] in ("gemma-27b", "gemma-27b-hf-cache")
        for r in kube_api.requests
        if r.method == "DELETE"
    )


def test_delete_of_one_deployment_keeps_another_of_ours_and_can_keep_the_cache(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    client.apply(_objects_without_secret())
    client.apply(
        [obj for obj in servedeck_objects("gemma-4b", NS) if obj["kind"] not in ("Secret", "Namespace")]
    )

    refs = client.managed_objects(NS, "gemma-27b", keep_cache=True)
    client.delete(refs)

    assert kube_api.get("Deployment", "gemma-27b", NS) is None
    assert kube_api.get("PersistentVolumeClaim", "gemma-27b-hf-cache", NS) is not None
    assert kube_api.get("Deployment", "gemma-4b", NS) is not None


def test_delete_refuses_an_object_that_is_not_ours(kube_api: FakeKubeApi, client: KubeClient) -> None:
    kube_api.create_namespace(NS)
    kube_api.put(gke_tutorial_deployment(NS))
    with pytest.raises(KubeConflictError, match="is not managed by servedeck"):
        client.delete([ObjectRef(kind="Deployment", name="vllm-gemma-deployment", namespace=NS)])
    assert kube_api.get("Deployment", "vllm-gemma-deployment", NS) is not None
    with pytest.raises(Exception, match="never deletes Namespace"):
        client.delete([ObjectRef(kind="Namespace", name=NS)])


def test_delete_in_a_missing_namespace(client: KubeClient) -> None:
    with pytest.raises(NamespaceMissingError):
        client.managed_objects("nowhere")


# --- the HF token ----------------------------------------------------------------------------------

TOKEN = "hf_TestTokenValue0123456789abcdef"


def test_hf_token_reaches_the_secret_but_no_log_error_or_repr(
    kube_api: FakeKubeApi,
    client: KubeClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    token = read_hf_token()
    assert TOKEN not in repr(token) and TOKEN not in str(token)
    objects = with_hf_token(servedeck_objects(namespace=NS), token)

    results = client.apply(objects, secrets=[token.get_secret_value()])

    secret = kube_api.get("Secret", "gemma-27b-hf-token", NS)
    assert secret is not None
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN
    assert TOKEN not in repr(results)

    kube_api.reject("Secret", "gemma-27b-hf-token", "data[token]", f'Invalid value: "{TOKEN}": too long')
    with pytest.raises(KubeInvalidError) as caught:
        client.apply(objects, secrets=[token.get_secret_value()])
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)
    assert 'data[token]: Invalid value: "***": too long' in str(caught.value)

    captured = capsys.readouterr()
    assert TOKEN not in caplog.text and TOKEN not in captured.out and TOKEN not in captured.err
    sent = [
        r for r in kube_api.requests if r.method == "PATCH" and r.path.endswith("/secrets/gemma-27b-hf-token")
    ]
    assert sent and json.loads(sent[0].body)["stringData"] == {"token": TOKEN}


def test_hf_token_from_a_file_and_its_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    path = tmp_path / "hf-token"
    path.write_text(f"  {TOKEN}\n")
    assert read_hf_token(file=path).get_secret_value() == TOKEN

    with pytest.raises(
        Exception, match=r"no Hugging Face token: set HF_TOKEN or HUGGING_FACE_HUB_TOKEN or pass"
    ):
        read_hf_token()
    with pytest.raises(Exception, match=r"cannot read the HF token file .*missing: No such file"):
        read_hf_token(file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(Exception, match="is empty"):
        read_hf_token(file=tmp_path / "empty")
