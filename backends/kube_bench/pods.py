"""Reading a load-generator pod's state: its completion index, fatal waits, scheduling, how it ended."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from backends.kube_bench.job import COMPLETION_INDEX_ANNOTATION

FATAL_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
"""Waits a pod never leaves by itself (not ErrImagePull: it turns into ImagePullBackOff if it lasts)."""
IMAGE_REASONS = frozenset({"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
LOG_PHASES = frozenset({"Running", "Succeeded", "Failed"})


class PodEnd(BaseModel):
    phase: str
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None


def _metadata(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = pod.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def pod_name(pod: Mapping[str, Any]) -> str:
    return str(_metadata(pod).get("name") or "")


def phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def completion_index(pod: Mapping[str, Any]) -> int | None:
    """The pod's index in its Indexed Job (annotation, or the label newer clusters also set)."""
    metadata = _metadata(pod)
    for source in (metadata.get("annotations"), metadata.get("labels")):
        if isinstance(source, Mapping):
            value = source.get(COMPLETION_INDEX_ANNOTATION)
            if isinstance(value, str) and value.isdigit():
                return int(value)
    return None


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return [status for status in statuses if isinstance(status, Mapping)]


def waiting_failure(pod: Mapping[str, Any], image: str) -> str | None:
    """One line when the container waits for something that will not come (a bad image, a bad config)."""
    for status in _container_statuses(pod):
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in FATAL_WAITING_REASONS:
            continue
        message = " ".join(str(waiting.get("message") or "").split())
        text = f"{reason}: {message}" if message else str(reason)
        if reason in IMAGE_REASONS:
            text += (
                f"; the cluster cannot pull the load-generator image {image}: check --loadgen-image "
                "(any image with Python >= 3.11; without egress, one with pydantic, numpy and httptools)"
            )
        return text
    return None


def unschedulable(pod: Mapping[str, Any]) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
        ):
            message = " ".join(str(condition.get("message") or "").split())
            return f"{condition.get('reason') or 'Unschedulable'}: {message}" if message else "Unschedulable"
    return None


def pod_end(pod: Mapping[str, Any]) -> PodEnd | None:
    """How the pod ended, or None while it has not."""
    current = phase(pod)
    if current not in TERMINAL_PHASES:
        return None
    for status in _container_statuses(pod):
        terminated = (status.get("state") or {}).get("terminated")
        if isinstance(terminated, Mapping):
            code = terminated.get("exitCode")
            return PodEnd(
                phase=current,
                exit_code=int(code) if isinstance(code, int) else None,
                reason=terminated.get("reason"),
                message=terminated.get("message"),
            )
    status = pod.get("status") or {}
    return PodEnd(phase=current, reason=status.get("reason"), message=status.get("message"))


def has_logs(pod: Mapping[str, Any]) -> bool:
    """Whether the container has started, so its log can be read (a waiting container has none)."""
    if phase(pod) not in LOG_PHASES:
        return False
    statuses = _container_statuses(pod)
    if not statuses:
        return phase(pod) == "Running"
    return any(
        (status.get("state") or {}).get("running") or (status.get("state") or {}).get("terminated")
        for status in statuses
    )
