"""Render a ``DeploymentSpec`` into the article's Kubernetes objects (plain dicts, ready for SSA or YAML).

Objects, in apply order: StorageClass ``hyperdisk-ml`` (cluster-scoped, shared), Namespace (shared),
ClusterIP Service on 8000, PersistentVolumeClaim for the HF cache (single-pod deployments; more pods get
one ephemeral volume each, since a ReadWriteOnce disk attaches to one node), Secret with the HF token,
and a Deployment, or a LeaderWorkerSet when one replica spans several nodes.

Every object carries ``app.kubernetes.io/managed-by: servedeck``; the per-deployment ones also carry
``servedeck.io/deployment: <name>`` (the shared StorageClass and Namespace do not, so deleting one
deployment by that label never removes them). The Secret holds a placeholder unless the apply path asks
for ``include_secret_value=True`` and passes the token; such a Secret's ``repr`` is redacted.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml
from pydantic import SecretStr

from manifests.catalog import Catalog
from manifests.errors import SecretSourceError
from manifests.spec import DeploymentSpec, build_spec, model_short_name

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "servedeck"
DEPLOYMENT_LABEL = "servedeck.io/deployment"
ROLE_LABEL = "servedeck.io/role"
SPEC_ANNOTATION = "servedeck.io/spec"
SERVICE_PORT = 8000
SECRET_KEY = "token"
TOKEN_PLACEHOLDER = "<YOUR HUGGING FACE TOKEN>"
HF_CACHE_PATH = "/root/.cache/huggingface"
API_SERVER_COMMAND = ("python3", "-m", "vllm.entrypoints.openai.api_server")
MULTI_NODE_SCRIPT = "/vllm-workspace/examples/online_serving/multi-node-serving.sh"

Manifest = dict[str, Any]


class _RedactedMapping(dict[str, Any]):
    """A dict whose repr/str never show values: used for a Secret that carries the real token."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{key!r}: <redacted>" for key in self) + "}"

    __str__ = __repr__


class _SecretManifest(dict[str, Any]):
    def __repr__(self) -> str:
        shown = {key: value for key, value in self.items() if key != "stringData"}
        return f"{shown!r} + stringData: <redacted>"

    __str__ = __repr__


# --- names a client needs (kube backend, distributed bench) -------------------------------------------


def service_name(spec: DeploymentSpec) -> str:
    return spec.name


def service_dns_name(spec: DeploymentSpec) -> str:
    return f"{spec.name}.{spec.namespace}.svc.cluster.local"


def service_url(spec: DeploymentSpec) -> str:
    return f"http://{service_dns_name(spec)}:{SERVICE_PORT}"


def secret_name(spec: DeploymentSpec) -> str:
    return f"{spec.name}-hf-token"


def cache_claim_name(spec: DeploymentSpec) -> str:
    return f"{spec.name}-hf-cache"


def owned_labels(spec: DeploymentSpec) -> dict[str, str]:
    """Labels on every object that belongs to this deployment (what delete selects on)."""
    return {MANAGED_BY_LABEL: MANAGED_BY, DEPLOYMENT_LABEL: spec.name}


def selector_labels(spec: DeploymentSpec) -> dict[str, str]:
    """Pod selector of the Deployment (immutable once applied)."""
    return {DEPLOYMENT_LABEL: spec.name}


def label_selector(spec: DeploymentSpec) -> str:
    """``servedeck.io/deployment=<name>,app.kubernetes.io/managed-by=servedeck`` for list/delete calls."""
    return ",".join(f"{key}={value}" for key, value in owned_labels(spec).items())


# --- vLLM command line ----------------------------------------------------------------------------------


def _fraction(value: float) -> str:
    return f"{value:.2f}" if abs(round(value, 2) - value) < 1e-9 else repr(value)


def vllm_args(spec: DeploymentSpec) -> list[str]:
    """Arguments to ``python3 -m vllm.entrypoints.openai.api_server`` (the article's order)."""
    args = ["--model=$(MODEL_ID)", f"--tensor-parallel-size={spec.tensor_parallel_size}"]
    if spec.multi_node:
        args.append(f"--pipeline-parallel-size={spec.pipeline_parallel_size}")
    args += ["--host=0.0.0.0", f"--port={SERVICE_PORT}"]
    if not spec.is_cpu:
        args.append(f"--gpu-memory-utilization={_fraction(spec.gpu_memory_utilization)}")
    if spec.max_model_len is not None:
        args.append(f"--max-model-len={spec.max_model_len}")
    if spec.max_num_seqs is not None:
        args.append(f"--max-num-seqs={spec.max_num_seqs}")
    if spec.max_num_batched_tokens is not None:
        args.append(f"--max-num-batched-tokens={spec.max_num_batched_tokens}")
    if spec.trust_remote_code:
        args.append("--trust-remote-code")
    args.append("--enable-chunked-prefill" if spec.enable_chunked_prefill else "--no-enable-chunked-prefill")
    if spec.enable_prefix_caching is not None:
        args.append("--enable-prefix-caching" if spec.enable_prefix_caching else "--no-enable-prefix-caching")
    args.append(f"--dtype={spec.dtype}")
    if spec.quantization is not None:
        args.append(f"--quantization={spec.quantization}")
    if spec.kv_cache_dtype != "auto":
        args.append(f"--kv-cache-dtype={spec.kv_cache_dtype}")
    args += list(spec.extra_args)
    return args


# --- pod template pieces ------------------------------------------------------------------------------


def _cpu_quantity(cpu: float) -> str:
    return str(int(cpu)) if float(cpu).is_integer() else f"{round(cpu * 1000)}m"


def _resources(spec: DeploymentSpec, catalog: Catalog | None) -> dict[str, dict[str, str]]:
    pod = spec.pod_resources(catalog)
    amounts = {
        "cpu": _cpu_quantity(pod.cpu),
        "memory": f"{pod.memory_gib}Gi",
        "ephemeral-storage": f"{pod.ephemeral_storage_gib}Gi",
    }
    if pod.gpus:
        amounts["nvidia.com/gpu"] = str(pod.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _env(spec: DeploymentSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "MODEL_ID", "value": spec.model}]
    if spec.has_token_source:
        # The article's HUGGING_FACE_HUB_TOKEN, and HF_TOKEN which newer huggingface_hub reads first.
        for variable in ("HUGGING_FACE_HUB_TOKEN", "HF_TOKEN"):
            ref = {"secretKeyRef": {"name": secret_name(spec), "key": SECRET_KEY}}
            env.append({"name": variable, "valueFrom": ref})
    if spec.is_cpu:
        env += [
            {"name": "VLLM_CPU_KVCACHE_SPACE", "value": str(spec.cpu_kv_cache_gib)},
            {"name": "VLLM_CPU_OMP_THREADS_BIND", "value": spec.cpu_omp_threads_bind},
        ]
    return env


def _node_selector(spec: DeploymentSpec) -> dict[str, str]:
    selector: dict[str, str] = {}
    if spec.is_cpu:
        machine = spec.machine()
        selector["cloud.google.com/compute-class"] = "Performance"
        selector["cloud.google.com/machine-family"] = machine.family
    else:
        assert spec.accelerator.gke_accelerator is not None
        selector["cloud.google.com/gke-accelerator"] = spec.accelerator.gke_accelerator
        selector["cloud.google.com/gke-gpu-driver-version"] = "latest"
    if spec.machine_type is not None:
        selector["node.kubernetes.io/instance-type"] = spec.machine_type
    if spec.zone is not None:
        selector["topology.kubernetes.io/zone"] = spec.zone
    if spec.spot:
        selector["cloud.google.com/gke-spot"] = "true"
    return selector


def _shared_cache(spec: DeploymentSpec) -> bool:
    return spec.replicas <= 1 and not spec.multi_node


def _volumes(spec: DeploymentSpec) -> list[dict[str, Any]]:
    shm: dict[str, Any] = {"medium": "Memory"}
    if spec.shm_gib is not None:
        shm["sizeLimit"] = f"{spec.shm_gib}Gi"
    cache: dict[str, Any]
    if _shared_cache(spec):
        cache = {"name": "hf-cache", "persistentVolumeClaim": {"claimName": cache_claim_name(spec)}}
    else:
        cache = {
            "name": "hf-cache",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "metadata": {"labels": owned_labels(spec)},
                    "spec": _claim_spec(spec),
                }
            },
        }
    return [{"name": "dshm", "emptyDir": shm}, cache]


def _claim_spec(spec: DeploymentSpec) -> dict[str, Any]:
    return {
        "storageClassName": spec.storage_class,
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": f"{spec.storage_gib}Gi"}},
    }


def _container(
    spec: DeploymentSpec,
    catalog: Catalog | None,
    *,
    name: str,
    command: list[str],
    args: list[str] | None,
    ready_probe: bool,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": spec.effective_image,
        "command": command,
    }
    if args is not None:
        container["args"] = args
    container["env"] = _env(spec)
    container["ports"] = [{"name": "http", "containerPort": SERVICE_PORT, "protocol": "TCP"}]
    container["resources"] = _resources(spec, catalog)
    if ready_probe:
        container["readinessProbe"] = {
            "httpGet": {"path": "/health", "port": SERVICE_PORT},
            "initialDelaySeconds": 60,
            "periodSeconds": 5,
        }
    container["volumeMounts"] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "hf-cache", "mountPath": HF_CACHE_PATH},
    ]
    return container


def _pod_spec(spec: DeploymentSpec, containers: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": containers,
        "volumes": _volumes(spec),
        "nodeSelector": _node_selector(spec),
        "terminationGracePeriodSeconds": 15,
    }
    if spec.spot:
        # Standard clusters taint Spot nodes; Autopilot adds this toleration itself.
        pod["tolerations"] = [
            {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ]
    return pod


def _pod_labels(spec: DeploymentSpec, role: str | None = None) -> dict[str, str]:
    labels = {
        **owned_labels(spec),
        "app.kubernetes.io/name": "vllm",
        "ai.gke.io/model": model_short_name(spec.model)[:63].rstrip("-"),
        "ai.gke.io/inference-server": "vllm",
    }
    if role is not None:
        labels[ROLE_LABEL] = role
    return labels


def _metadata(spec: DeploymentSpec, name: str, *, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespaced:
        meta["namespace"] = spec.namespace
    meta["labels"] = owned_labels(spec)
    return meta


def spec_annotation(spec: DeploymentSpec) -> str:
    """The spec as compact JSON: stored on the workload so a client can read back what it applied."""
    return spec.model_dump_json()


def spec_from_annotation(workload: Manifest) -> DeploymentSpec | None:
    """The spec a Deployment/LeaderWorkerSet was rendered from, or None for workloads not rendered by us."""
    annotations = workload.get("metadata", {}).get("annotations") or {}
    text = annotations.get(SPEC_ANNOTATION)
    if not isinstance(text, str):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return build_spec(data) if isinstance(data, dict) else None


# --- objects ----------------------------------------------------------------------------------------------


def _storage_class(spec: DeploymentSpec) -> Manifest:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": spec.storage_class, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "parameters": {
            "type": "hyperdisk-ml",
            "provisioned-throughput-on-create": f"{spec.storage_throughput_mib_s}Mi",
        },
        "provisioner": "pd.csi.storage.gke.io",
        "allowVolumeExpansion": False,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "mountOptions": ["read_ahead_kb=4096"],
    }


def _namespace(spec: DeploymentSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": spec.namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
    }


def _service(spec: DeploymentSpec) -> Manifest:
    selector = selector_labels(spec)
    if spec.multi_node:
        selector = {**selector, ROLE_LABEL: "leader"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, service_name(spec)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT, "targetPort": SERVICE_PORT}],
        },
    }


def _claim(spec: DeploymentSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(spec, cache_claim_name(spec)),
        "spec": _claim_spec(spec),
    }


def _secret(spec: DeploymentSpec, token: SecretStr | None) -> Manifest:
    source = f"env {spec.hf_token_env}" if spec.hf_token_env else f"file {spec.hf_token_file}"
    metadata = _metadata(spec, secret_name(spec))
    metadata["annotations"] = {"servedeck.io/token-source": source}
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque"}
    if token is None:
        secret["stringData"] = {SECRET_KEY: TOKEN_PLACEHOLDER}
        return secret
    redacted = _SecretManifest(secret)
    redacted["stringData"] = _RedactedMapping({SECRET_KEY: token.get_secret_value()})
    return redacted


def _deployment(spec: DeploymentSpec, catalog: Catalog | None) -> Manifest:
    container = _container(
        spec, catalog, name="vllm", command=list(API_SERVER_COMMAND), args=vllm_args(spec), ready_probe=True
    )
    metadata = _metadata(spec, spec.name)
    metadata["annotations"] = {SPEC_ANNOTATION: spec_annotation(spec)}
    strategy: dict[str, Any] = (
        {"type": "Recreate"}  # one pod on a ReadWriteOnce cache disk: the old pod must let go first
        if _shared_cache(spec)
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(spec)},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": _pod_labels(spec)},
                "spec": _pod_spec(spec, [container]),
            },
        },
    }


def _leader_worker_set(spec: DeploymentSpec, catalog: Catalog | None) -> Manifest:
    serve = " ".join(shlex.quote(part) for part in [*API_SERVER_COMMAND, *vllm_args(spec)])
    leader_script = f"bash {MULTI_NODE_SCRIPT} leader --ray_cluster_size=$(LWS_GROUP_SIZE); exec {serve}"
    worker_script = f"bash {MULTI_NODE_SCRIPT} worker --ray_address=$(LWS_LEADER_ADDRESS)"
    leader = _container(
        spec, catalog, name="vllm-leader", command=["sh", "-c", leader_script], args=None, ready_probe=True
    )
    worker = _container(
        spec, catalog, name="vllm-worker", command=["sh", "-c", worker_script], args=None, ready_probe=False
    )
    metadata = _metadata(spec, spec.name)
    metadata["annotations"] = {SPEC_ANNOTATION: spec_annotation(spec)}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": metadata,
        "spec": {
            "replicas": spec.replicas,
            "leaderWorkerTemplate": {
                "size": spec.nodes_per_replica,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {"labels": _pod_labels(spec, "leader")},
                    "spec": _pod_spec(spec, [leader]),
                },
                "workerTemplate": {
                    "metadata": {"labels": _pod_labels(spec, "worker")},
                    "spec": _pod_spec(spec, [worker]),
                },
            },
        },
    }


def render_objects(
    spec: DeploymentSpec,
    *,
    include_secret_value: bool = False,
    hf_token: SecretStr | None = None,
    catalog: Catalog | None = None,
) -> list[Manifest]:
    """The objects for ``spec`` in apply order. Only ``include_secret_value=True`` with ``hf_token`` puts
    the real token in the Secret (for the apply path); everything else gets the placeholder."""
    if include_secret_value and hf_token is None:
        raise SecretSourceError("include_secret_value=True needs the token: pass hf_token=read_hf_token(...)")
    if hf_token is not None and not include_secret_value:
        raise SecretSourceError("hf_token given without include_secret_value=True; refusing to guess")
    if include_secret_value and not spec.has_token_source:
        raise SecretSourceError(f"{spec.name} has no hf_token_env or hf_token_file, so it renders no Secret")
    objects: list[Manifest] = [_storage_class(spec), _namespace(spec), _service(spec)]
    if _shared_cache(spec):
        objects.append(_claim(spec))
    if spec.has_token_source:
        objects.append(_secret(spec, hf_token if include_secret_value else None))
    objects.append(_leader_worker_set(spec, catalog) if spec.multi_node else _deployment(spec, catalog))
    return objects


def _header(spec: DeploymentSpec) -> str:
    what = f"{spec.model} on {spec.hardware_label} ({spec.effective_image})"
    lines = [f"# {spec.name}: {what}, rendered by servedeck"]
    if spec.has_token_source:
        source = f"${spec.hf_token_env}" if spec.hf_token_env else str(spec.hf_token_file)
        lines.append(f"# The Secret holds a placeholder; `servedeck deploy apply` fills it from {source}.")
    if spec.multi_node:
        lines.append("# LeaderWorkerSet needs the LWS controller: https://lws.sigs.k8s.io/docs/installation/")
    return "\n".join(lines) + "\n"


def render_yaml(spec: DeploymentSpec, *, catalog: Catalog | None = None) -> str:
    """Multi-document YAML for export or ``kubectl apply -f``; the Secret always carries the placeholder."""
    body = yaml.safe_dump_all(
        render_objects(spec, catalog=catalog), sort_keys=False, explicit_start=True, width=1000
    )
    return _header(spec) + body


def render_json(spec: DeploymentSpec, *, catalog: Catalog | None = None) -> str:
    """A ``v1/List`` of the objects (``kubectl apply -f`` accepts it); the Secret carries the placeholder."""
    items = render_objects(spec, catalog=catalog)
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2) + "\n"
