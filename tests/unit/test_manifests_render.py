"""Rendered manifests: schema-valid (kubernetes-validate, strict) on Kubernetes 1.31 and the newest schema it
ships, the article's H100 arguments reproduced, labels, selectors, CPU and LeaderWorkerSet variants."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kube_validate  # type: ignore[import-untyped]

from manifests.render import (
    DEPLOYMENT_LABEL,
    MANAGED_BY_LABEL,
    TOKEN_PLACEHOLDER,
    label_selector,
    render_json,
    render_objects,
    render_yaml,
    service_dns_name,
    spec_from_annotation,
    vllm_args,
)
from manifests.spec import DeploymentSpec, build_spec

GEMMA_27B = "google/gemma-3-27b-it"
KUBERNETES_VERSIONS = ("1.31", kube_validate.latest_version())

SPECS: dict[str, DeploymentSpec] = {
    "h100": build_spec(model=GEMMA_27B, gpu="h100", zone="us-central1-a"),
    "4xl4-spot": build_spec(model=GEMMA_27B, gpu="l4", gpu_count=4, spot=True, max_model_len=32768),
    "2xa100-replicas": build_spec(
        model=GEMMA_27B,
        gpu="a100-40gb",
        gpu_count=2,
        replicas=3,
        max_num_seqs=64,
        enable_prefix_caching=False,
    ),
    "cpu-c4d": build_spec(model="google/gemma-3-1b-it", gpu="cpu-c4d", cpu_kv_cache_gib=16, shm_gib=8),
    "token-file": build_spec(model=GEMMA_27B, gpu="h100", gpu_count=2, hf_token_file="/secrets/hf"),
    "public-model": build_spec(
        model="Qwen/Qwen2.5-0.5B-Instruct", gpu="l4", hf_token_env=None, machine_type="g2-standard-4"
    ),
    "multi-node": build_spec(model="meta-llama/Llama-3.1-405B-Instruct", gpu="h100", gpu_count=16),
}

# The article's Deployment (vLLM v0.8.3 on one H100), args verbatim.
ARTICLE_H100_ARGS = [
    "--model=$(MODEL_ID)",
    "--tensor-parallel-size=1",
    "--host=0.0.0.0",
    "--port=8000",
    "--gpu-memory-utilization=0.90",
    "--trust-remote-code",
    "--enable-chunked-prefill",
    "--dtype=bfloat16",
    "--swap-space=16",
]


def _validatable(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """LeaderWorkerSet is a CRD with no schema in kubernetes-validate: its pod templates are validated as
    core v1 PodTemplates instead (the rest of a LeaderWorkerSet is four scalar fields we set literally)."""
    if obj["kind"] != "LeaderWorkerSet":
        return [obj]
    template = obj["spec"]["leaderWorkerTemplate"]
    return [
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {
                "name": f"{obj['metadata']['name']}-{role}",
                "namespace": obj["metadata"]["namespace"],
            },
            "template": template[f"{role}Template"],
        }
        for role in ("leader", "worker")
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", sorted(SPECS))
def test_every_rendered_object_is_schema_valid(case: str, version: str) -> None:
    for obj in render_objects(SPECS[case]):
        for document in _validatable(obj):
            kube_validate.validate(document, version, strict=True)


def test_the_validator_rejects_a_broken_deployment() -> None:
    deployment = copy.deepcopy(render_objects(SPECS["h100"])[-1])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kube_validate.ValidationError):
        kube_validate.validate(deployment, "1.31", strict=True)
    deployment = copy.deepcopy(render_objects(SPECS["h100"])[-1])
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kube_validate.ValidationError):
        kube_validate.validate(deployment, "1.31", strict=True)


def test_golden_article_h100_deployment_arguments() -> None:
    spec = build_spec(
        model=GEMMA_27B,
        gpu="h100",
        gpu_memory_utilization=0.90,
        trust_remote_code=True,
        image="vllm/vllm-openai:v0.8.3",
        extra_args=("--swap-space=16",),
    )
    deployment = render_objects(spec)[-1]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container["args"] == ARTICLE_H100_ARGS
    assert container["image"] == "vllm/vllm-openai:v0.8.3"
    assert {"name": "MODEL_ID", "value": GEMMA_27B} in container["env"]
    assert container["resources"]["limits"] == {
        "cpu": "8",
        "memory": "128Gi",
        "ephemeral-storage": "120Gi",
        "nvidia.com/gpu": "1",
    }
    assert container["readinessProbe"] == {
        "httpGet": {"path": "/health", "port": 8000},
        "initialDelaySeconds": 60,
        "periodSeconds": 5,
    }


def test_article_objects_and_node_selectors() -> None:
    objects = render_objects(SPECS["h100"])
    assert [o["kind"] for o in objects] == [
        "StorageClass",
        "Namespace",
        "Service",
        "PersistentVolumeClaim",
        "Secret",
        "Deployment",
    ]
    storage_class = objects[0]
    assert storage_class["parameters"] == {
        "type": "hyperdisk-ml",
        "provisioned-throughput-on-create": "2000Mi",
    }
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
    service = objects[2]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 8000
    pod = objects[-1]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
        "cloud.google.com/gke-gpu-driver-version": "latest",
        "topology.kubernetes.io/zone": "us-central1-a",
    }
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"/dev/shm", "/root/.cache/huggingface"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert objects[-1]["spec"]["strategy"] == {"type": "Recreate"}
    assert service_dns_name(SPECS["h100"]) == "gemma-3-27b-it-1xh100.vllm.svc.cluster.local"


def test_every_object_is_labelled_and_only_owned_ones_carry_the_deployment_label() -> None:
    spec = SPECS["4xl4-spot"]
    for obj in render_objects(spec):
        labels = obj["metadata"]["labels"]
        assert labels[MANAGED_BY_LABEL] == "servedeck"
        shared = obj["kind"] in ("StorageClass", "Namespace")
        assert (DEPLOYMENT_LABEL in labels) is not shared
    assert label_selector(spec) == (
        "app.kubernetes.io/managed-by=servedeck,servedeck.io/deployment=gemma-3-27b-it-4xl4"
    )


def test_spot_adds_the_selector_and_the_toleration() -> None:
    pod = render_objects(SPECS["4xl4-spot"])[-1]["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert pod["tolerations"][0]["key"] == "cloud.google.com/gke-spot"
    container = pod["containers"][0]
    assert "--tensor-parallel-size=4" in container["args"]
    assert "--max-model-len=32768" in container["args"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"


def test_several_replicas_get_a_cache_volume_each_and_no_shared_claim() -> None:
    objects = render_objects(SPECS["2xa100-replicas"])
    assert "PersistentVolumeClaim" not in [o["kind"] for o in objects]
    deployment = objects[-1]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    cache = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "hf-cache")
    claim = cache["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == "hyperdisk-ml"
    args = vllm_args(SPECS["2xa100-replicas"])
    assert "--max-num-seqs=64" in args and "--no-enable-prefix-caching" in args


def test_cpu_variant_uses_the_cpu_image_env_and_machine_family() -> None:
    deployment = render_objects(SPECS["cpu-c4d"])[-1]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].startswith("public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "16"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert not any(a.startswith("--gpu-memory-utilization") for a in container["args"])
    assert pod["nodeSelector"] == {
        "cloud.google.com/compute-class": "Performance",
        "cloud.google.com/machine-family": "c4d",
    }
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]


def test_public_model_renders_no_secret_and_no_token_env() -> None:
    objects = render_objects(SPECS["public-model"])
    assert "Secret" not in [o["kind"] for o in objects]
    container = objects[-1]["spec"]["template"]["spec"]["containers"][0]
    assert [e["name"] for e in container["env"]] == ["MODEL_ID"]
    assert objects[-1]["spec"]["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == (
        "g2-standard-4"
    )


def test_multi_node_model_renders_a_leader_worker_set() -> None:
    spec = SPECS["multi-node"]
    objects = render_objects(spec)
    lws = objects[-1]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["kind"] == "LeaderWorkerSet"
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2
    leader = template["leaderTemplate"]["spec"]["containers"][0]
    worker = template["workerTemplate"]["spec"]["containers"][0]
    assert "--ray_cluster_size=$(LWS_GROUP_SIZE)" in leader["command"][2]
    assert "--tensor-parallel-size=8" in leader["command"][2]
    assert "--pipeline-parallel-size=2" in leader["command"][2]
    assert "--ray_address=$(LWS_LEADER_ADDRESS)" in worker["command"][2]
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "readinessProbe" in leader and "readinessProbe" not in worker
    service = next(o for o in objects if o["kind"] == "Service")
    assert service["spec"]["selector"]["servedeck.io/role"] == "leader"


def test_yaml_and_json_exports_carry_the_same_objects_with_the_placeholder() -> None:
    spec = SPECS["h100"]
    text = render_yaml(spec)
    assert text.startswith("# gemma-3-27b-it-1xh100: ")
    documents = list(yaml.safe_load_all(text))
    assert documents == render_objects(spec)
    listing = json.loads(render_json(spec))
    assert listing["kind"] == "List" and listing["items"] == documents
    secret = next(d for d in documents if d["kind"] == "Secret")
    assert secret["stringData"] == {"token": TOKEN_PLACEHOLDER}


def test_spec_round_trips_through_the_workload_annotation() -> None:
    for case in ("h100", "token-file", "multi-node"):
        workload = render_objects(SPECS[case])[-1]
        assert spec_from_annotation(workload) == SPECS[case]
    assert spec_from_annotation({"metadata": {"annotations": {}}}) is None
