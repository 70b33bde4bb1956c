"""vLLM deployments in a context, ours and foreign, as typed rows.

Deployments and LeaderWorkerSets (multi-node models; the leader's pod template serves the API) are read.

Ours carry ``app.kubernetes.io/managed-by=servedeck``. A foreign Deployment counts as vLLM when a
container image contains ``vllm`` or its command/args run ``vllm serve`` or
``vllm.entrypoints.openai.api_server`` (the GKE samples do the latter with their own image).
The model is read from ``--model`` / ``vllm serve MODEL`` (resolving ``$(VAR)`` from the container's
env), the accelerator from the GKE node selector, the GPU count from ``nvidia.com/gpu`` limits, and the
Service from the selectors of the namespace's Services.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from backends.kube.client import KubeClient
from backends.kube.errors import KubeForbiddenError
from backends.kube.resources import is_managed, labels_of
from backends.target_types import Target, TargetKind

GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GPU_RESOURCE = "nvidia.com/gpu"
VLLM_ENTRYPOINTS = ("vllm serve", "vllm.entrypoints.openai.api_server")
DEFAULT_VLLM_PORT = 8000
_ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class DeploymentStatus(StrEnum):
    READY = "ready"
    PROGRESSING = "progressing"
    DEGRADED = "degraded"
    FAILED = "failed"
    SCALED_TO_ZERO = "scaled to zero"


class VllmDeployment(BaseModel):
    """One vLLM Deployment as the Deployments table shows it."""

    model_config = ConfigDict(frozen=True)

    kind: str = "Deployment"
    """``Deployment`` or ``LeaderWorkerSet`` (a model spread over several nodes)."""
    name: str
    namespace: str
    managed: bool
    model: str | None
    image: str | None
    accelerator: str | None
    gpus_per_replica: int
    replicas_ready: int
    replicas_desired: int
    status: DeploymentStatus
    service: str | None = None
    port: int = DEFAULT_VLLM_PORT

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def in_cluster_url(self) -> str | None:
        """The Service's cluster DNS URL (reachable from pods, not from here)."""
        if self.service is None:
            return None
        return f"http://{self.service}.{self.namespace}.svc.cluster.local:{self.port}"

    def target(self, base_url: str) -> Target:
        """A bench/chat target for this deployment reached at ``base_url`` (a port-forward or the Service)."""
        return Target(name=self.key, base_url=base_url, model=self.model or "", kind=TargetKind.VLLM)


def _tokens(container: Mapping[str, Any]) -> list[str]:
    tokens: list[str] = []
    for part in list(container.get("command") or []) + list(container.get("args") or []):
        text = str(part)
        try:
            tokens.extend(shlex.split(text))
        except ValueError:
            tokens.extend(text.split())
    return tokens


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    return {
        str(item["name"]): str(item["value"])
        for item in container.get("env") or []
        if isinstance(item, Mapping) and "name" in item and isinstance(item.get("value"), str)
    }


def is_vllm_container(container: Mapping[str, Any]) -> bool:
    if "vllm" in str(container.get("image") or "").lower():
        return True
    command_line = " ".join(_tokens(container))
    return any(entrypoint in command_line for entrypoint in VLLM_ENTRYPOINTS)


def model_of(container: Mapping[str, Any]) -> str | None:
    """The served model named on the command line (``--model X``, ``--model=X`` or ``vllm serve X``)."""
    tokens = _tokens(container)
    env = _env(container)
    found: str | None = None
    for index, token in enumerate(tokens):
        if token.startswith("--model="):
            found = token.split("=", 1)[1]
        elif token == "--model" and index + 1 < len(tokens):
            found = tokens[index + 1]
        elif (
            token == "serve" and index > 0 and tokens[index - 1].endswith("vllm") and index + 1 < len(tokens)
        ):
            candidate = tokens[index + 1]
            if not candidate.startswith("-"):
                found = candidate
        if found:
            break
    if not found:
        return None
    return _ENV_REFERENCE.sub(lambda match: env.get(match.group(1), match.group(0)), found)


def _gpu_count(container: Mapping[str, Any]) -> int:
    resources = container.get("resources") or {}
    for section in ("limits", "requests"):
        value = (resources.get(section) or {}).get(GPU_RESOURCE)
        if value is not None:
            try:
                return int(str(value))
            except ValueError:
                return 0
    return 0


def _status(deployment: Mapping[str, Any], ready: int, desired: int) -> DeploymentStatus:
    conditions = {
        str(c.get("type")): c
        for c in (deployment.get("status") or {}).get("conditions") or []
        if isinstance(c, Mapping)
    }
    if conditions.get("Progressing", {}).get("reason") == "ProgressDeadlineExceeded":
        return DeploymentStatus.FAILED
    if desired == 0:
        return DeploymentStatus.SCALED_TO_ZERO
    if ready >= desired:
        return DeploymentStatus.READY
    if conditions.get("Progressing", {}).get("status", "True") == "True" and ready == 0:
        return DeploymentStatus.PROGRESSING
    return DeploymentStatus.DEGRADED if ready > 0 else DeploymentStatus.PROGRESSING


def _service_for(
    services: Iterable[Mapping[str, Any]], namespace: str, pod_labels: Mapping[str, str], container_port: int
) -> tuple[str | None, int]:
    for service in services:
        metadata = service.get("metadata") or {}
        if metadata.get("namespace") != namespace:
            continue
        selector = (service.get("spec") or {}).get("selector") or {}
        if not selector or any(pod_labels.get(key) != value for key, value in selector.items()):
            continue
        ports = (service.get("spec") or {}).get("ports") or []
        for port in ports:
            if port.get("targetPort") in (container_port, str(container_port)):
                return str(metadata.get("name")), int(port.get("port", container_port))
        if ports:
            return str(metadata.get("name")), int(ports[0].get("port", container_port))
    return None, container_port


def _pod_template(workload: Mapping[str, Any]) -> tuple[Mapping[str, Any], int]:
    """The pod template serving the API (an LWS's leader) and the pods per replica."""
    spec = workload.get("spec") or {}
    if workload.get("kind") == "LeaderWorkerSet":
        group = spec.get("leaderWorkerTemplate") or {}
        template = group.get("leaderTemplate") or group.get("workerTemplate") or {}
        return template, int(group.get("size") or 1)
    return spec.get("template") or {}, 1


def describe_deployment(
    deployment: Mapping[str, Any], services: Iterable[Mapping[str, Any]] = ()
) -> VllmDeployment | None:
    """The row for one Deployment (or LeaderWorkerSet), or None when it is not a vLLM server."""
    metadata = deployment.get("metadata") or {}
    template, pods_per_replica = _pod_template(deployment)
    pod_spec = template.get("spec") or {}
    containers = [c for c in pod_spec.get("containers") or [] if isinstance(c, Mapping)]
    managed = is_managed(deployment)
    vllm = [c for c in containers if is_vllm_container(c)]
    if not vllm and not managed:
        return None
    main = (vllm or containers or [{}])[0]
    ports = [
        p.get("containerPort") for p in main.get("ports") or [] if isinstance(p.get("containerPort"), int)
    ]
    container_port = int(ports[0]) if ports else DEFAULT_VLLM_PORT
    namespace = str(metadata.get("namespace") or "")
    pod_labels = labels_of(template)
    service, port = _service_for(services, namespace, pod_labels, container_port)
    spec_replicas = (deployment.get("spec") or {}).get("replicas")
    desired = int(spec_replicas if spec_replicas is not None else 1)
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    gpus = _gpu_count(main) * pods_per_replica
    accelerator = (pod_spec.get("nodeSelector") or {}).get(GKE_ACCELERATOR_LABEL)
    return VllmDeployment(
        kind=str(deployment.get("kind") or "Deployment"),
        name=str(metadata.get("name")),
        namespace=namespace,
        managed=managed,
        model=model_of(main) or labels_of(deployment).get("ai.gke.io/model"),
        image=main.get("image"),
        accelerator=str(accelerator) if accelerator else ("gpu" if gpus else "cpu"),
        gpus_per_replica=gpus,
        replicas_ready=ready,
        replicas_desired=desired,
        status=_status(deployment, ready, desired),
        service=service,
        port=port,
    )


def list_vllm_deployments(client: KubeClient, namespace: str | None = None) -> list[VllmDeployment]:
    """vLLM Deployments and LeaderWorkerSets in ``namespace`` (every namespace when None), sorted."""
    everywhere = namespace is None
    deployments = client.list_objects("Deployment", namespace, all_namespaces=everywhere)
    with contextlib.suppress(KubeForbiddenError):  # no rights on the LWS CRD: list what we may see
        deployments += client.list_objects(
            "LeaderWorkerSet", namespace, all_namespaces=everywhere, missing_kind_ok=True
        )
    services = client.list_objects("Service", namespace, all_namespaces=everywhere)
    rows = [describe_deployment(deployment, services) for deployment in deployments]
    return sorted((row for row in rows if row is not None), key=lambda row: (row.namespace, row.name))
