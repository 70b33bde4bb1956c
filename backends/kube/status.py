"""One deployment's state at a glance: its row, its pods and its recent events, typed.

Also ``find_namespace``: where a deployment called NAME lives when the user gave no namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from backends.errors import ConfigError
from backends.kube.client import KubeClient
from backends.kube.errors import KubeForbiddenError, KubeNotFoundError
from backends.kube.inventory import DeploymentStatus, VllmDeployment, describe_deployment
from backends.kube.logs import deployment_pods

RECENT_EVENTS = 15


class PodSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    phase: str
    ready: bool
    restarts: int
    reason: str | None = None
    """Why it is not running or ready: a waiting reason (ImagePullBackOff...), the last termination
    (OOMKilled...), or the scheduler's (Unschedulable)."""
    node: str | None = None


class EventSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    time: str
    type: str
    reason: str
    object: str
    message: str

    @property
    def warning(self) -> bool:
        return self.type == "Warning"


class DeploymentReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    deployment: VllmDeployment
    pods: list[PodSummary]
    events: list[EventSummary]


def summarize_pod(pod: Mapping[str, Any]) -> PodSummary:
    status = pod.get("status") or {}
    containers = [c for c in status.get("containerStatuses") or [] if isinstance(c, Mapping)]
    reason: str | None = None
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        last = (container.get("lastState") or {}).get("terminated") or {}
        reason = reason or waiting.get("reason") or last.get("reason")
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, Mapping)}
    scheduled = conditions.get("PodScheduled") or {}
    if reason is None and scheduled.get("status") == "False":
        reason = scheduled.get("reason")
    return PodSummary(
        name=str((pod.get("metadata") or {}).get("name")),
        phase=str(status.get("phase") or "Unknown"),
        ready=(conditions.get("Ready") or {}).get("status") == "True",
        restarts=sum(int(c.get("restartCount") or 0) for c in containers),
        reason=str(reason) if reason else None,
        node=(pod.get("spec") or {}).get("nodeName"),
    )


def _event_summary(event: Mapping[str, Any]) -> EventSummary:
    involved = event.get("involvedObject") or {}
    return EventSummary(
        time=str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or ""),
        type=str(event.get("type") or "Normal"),
        reason=str(event.get("reason") or ""),
        object=f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        message=" ".join(str(event.get("message") or "").split()),
    )


def deployment_report(client: KubeClient, name: str, namespace: str) -> DeploymentReport:
    """Row, pods (ready first) and the latest events of the Deployment ``name`` in ``namespace``."""
    pods = deployment_pods(client, name, namespace)  # KubeNotFoundError when the deployment is missing
    deployment = client.get("Deployment", name, namespace)
    if deployment is None:
        raise KubeNotFoundError(f"deployment {name!r} disappeared from namespace {namespace}")
    services = client.list_objects("Service", namespace)
    row = describe_deployment(deployment, services) or _plain_row(deployment)
    pod_names = {str((pod.get("metadata") or {}).get("name")) for pod in pods}
    events = []
    for event in client.list_objects("Event", namespace):
        involved = str((event.get("involvedObject") or {}).get("name") or "")
        if involved == name or involved in pod_names or involved.startswith(f"{name}-"):
            events.append(_event_summary(event))
    events.sort(key=lambda event: event.time)
    return DeploymentReport(
        deployment=row, pods=[summarize_pod(pod) for pod in pods], events=events[-RECENT_EVENTS:]
    )


def _plain_row(deployment: Mapping[str, Any]) -> VllmDeployment:
    """A row for a Deployment that is not a vLLM server (status works on any Deployment)."""
    metadata = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    spec_replicas = (deployment.get("spec") or {}).get("replicas")
    desired = int(spec_replicas if spec_replicas is not None else 1)
    ready = int(status.get("readyReplicas") or 0)
    state = DeploymentStatus.READY if ready >= desired > 0 else DeploymentStatus.PROGRESSING
    return VllmDeployment(
        name=str(metadata.get("name")),
        namespace=str(metadata.get("namespace") or ""),
        managed=False,
        model=None,
        image=None,
        accelerator=None,
        gpus_per_replica=0,
        replicas_ready=ready,
        replicas_desired=desired,
        status=DeploymentStatus.SCALED_TO_ZERO if desired == 0 else state,
    )


def find_namespace(client: KubeClient, name: str, fallback: str) -> str:
    """The namespace of the one Deployment called ``name`` in the context; ``fallback`` when there is
    none or cluster-wide listing is forbidden; ConfigError when several namespaces have one."""
    try:
        found = client.list_objects("Deployment", all_namespaces=True, field_selector=f"metadata.name={name}")
    except KubeForbiddenError:
        return fallback
    namespaces = sorted({str((d.get("metadata") or {}).get("namespace")) for d in found})
    if len(namespaces) > 1:
        raise ConfigError(
            f"deployment {name!r} exists in namespaces {', '.join(namespaces)}; pass -n NAMESPACE"
        )
    return namespaces[0] if namespaces else fallback
