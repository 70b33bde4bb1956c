"""Plain Kubernetes object dicts shaped like ServeDeck's rendered manifests, and foreign ones.

``servedeck_objects`` mirrors what ``manifests.render.render_objects`` produces for one deployment
(Namespace, Secret with a placeholder, PVC, Service on 8000, vLLM Deployment), labelled
``app.kubernetes.io/managed-by: servedeck`` and ``servedeck.io/deployment: <name>``; the ``foreign_*``
helpers build objects someone else applied (the GKE tutorial's Deployment, an unrelated app).
"""

from __future__ import annotations

from typing import Any

MANAGED = {"app.kubernetes.io/managed-by": "servedeck"}
TOKEN_PLACEHOLDER = "<set from HF_TOKEN at apply time>"


def _labels(name: str) -> dict[str, str]:
    return {**MANAGED, "servedeck.io/deployment": name, "app.kubernetes.io/name": name}


def vllm_deployment(
    name: str,
    namespace: str,
    *,
    model: str = "google/gemma-3-27b-it",
    accelerator: str = "nvidia-h100-80gb",
    gpus: int = 1,
    replicas: int = 1,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    pod_labels = {"servedeck.io/deployment": name}
    secret_ref = {"name": f"{name}-hf-token", "key": "token"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels if labels is not None else _labels(name),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": pod_labels},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "nodeSelector": {"cloud.google.com/gke-accelerator": accelerator},
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.10.1",
                            "args": [
                                f"--model={model}",
                                f"--tensor-parallel-size={gpus}",
                                "--max-model-len=32768",
                                "--gpu-memory-utilization=0.9",
                            ],
                            "ports": [{"containerPort": 8000, "name": "http"}],
                            "env": [
                                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": secret_ref}},
                            ],
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                            "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}},
                        }
                    ],
                },
            },
        },
    }


def servedeck_objects(name: str = "gemma-27b", namespace: str = "servedeck") -> list[dict[str, Any]]:
    labels = _labels(name)
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": dict(MANAGED)}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-hf-token", "namespace": namespace, "labels": labels},
            "type": "Opaque",
            "stringData": {"token": TOKEN_PLACEHOLDER},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{name}-hf-cache", "namespace": namespace, "labels": labels},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "100Gi"}},
                "storageClassName": "hyperdisk-ml",
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "type": "ClusterIP",
                "selector": {"servedeck.io/deployment": name},
                "ports": [{"name": "http", "port": 8000, "targetPort": 8000}],
            },
        },
        vllm_deployment(name, namespace),
    ]


def gke_tutorial_deployment(namespace: str) -> dict[str, Any]:
    """The GKE "Serve Gemma with vLLM" sample (its own image, ``python3 -m vllm.entrypoints...``)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "vllm-gemma-deployment",
            "namespace": namespace,
            "labels": {"ai.gke.io/model": "gemma-3-27b-it", "ai.gke.io/inference-server": "vllm"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "gemma-server"}},
            "template": {
                "metadata": {"labels": {"app": "gemma-server"}},
                "spec": {
                    "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                    "containers": [
                        {
                            "name": "inference-server",
                            "image": "us-docker.pkg.dev/vertex-ai/vertex-vision-model-garden-dockers/"
                            "pytorch-vllm-serve:20250312_0916_RC01",
                            "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
                            "args": [
                                "--model=$(MODEL_ID)",
                                "--tensor-parallel-size=8",
                                "--host=0.0.0.0",
                                "--port=8000",
                            ],
                            "env": [{"name": "MODEL_ID", "value": "google/gemma-3-27b-it"}],
                            "resources": {"limits": {"nvidia.com/gpu": "8"}},
                        }
                    ],
                },
            },
        },
        "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1},
    }


def foreign_service(name: str, namespace: str, selector: dict[str, str], port: int = 8000) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector, "ports": [{"port": port, "targetPort": port}]},
    }


def foreign_app(name: str, namespace: str) -> list[dict[str, Any]]:
    """An unrelated web app (Deployment, Service, Secret, PVC) with no ServeDeck label."""
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "args": ["nginx"]}]},
                },
            },
        },
        foreign_service(name, namespace, {"app": name}, port=80),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-creds", "namespace": namespace},
            "data": {"password": "aHVudGVyMg=="},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{name}-data", "namespace": namespace, "labels": {"app": name}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    ]
