"""Pod logs of a deployment, followed as they come, with vLLM's periodic stats line parsed.

``LogStream`` reads ``pods/{name}/log`` (``follow=true`` keeps the chunked response open) line by
line; each ``LogLine`` carries the parsed ``VllmStatsLine`` when the line is one, and ``snapshot()``
gives it as the ``ServerSnapshot`` the bench charts use for /metrics.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import urllib3
from kubernetes.watch.watch import iter_resp_lines
from pydantic import BaseModel, ConfigDict

from backends.kube.client import KubeClient
from backends.kube.errors import KubeError, KubeNotFoundError, KubeRequestError
from backends.kube.vllm_log import VllmStatsLine, parse_vllm_stats_line
from backends.target_types import ServerSnapshot

FOLLOW_READ_TIMEOUT_S = 24 * 3600.0


class LogLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    pod: str
    text: str
    t: float
    """Seconds since the stream's time origin when the line arrived."""
    stats: VllmStatsLine | None = None

    def snapshot(self) -> ServerSnapshot | None:
        return self.stats.to_snapshot(self.t) if self.stats else None


def _is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def deployment_pods(client: KubeClient, name: str, namespace: str) -> list[dict[str, Any]]:
    """The Deployment's pods, ready ones first, then running, then the rest (by name within each)."""
    deployment = client.get("Deployment", name, namespace)
    if deployment is None:
        client.require_namespace(namespace)
        raise KubeNotFoundError(
            f"deployment {name!r} not found in namespace {namespace}; "
            f"see servedeck deploy list -n {namespace}"
        )
    match_labels = deployment.get("spec", {}).get("selector", {}).get("matchLabels") or {}
    selector = ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))
    pods = client.list_objects("Pod", namespace, label_selector=selector)
    live = [pod for pod in pods if not pod.get("metadata", {}).get("deletionTimestamp")]

    def rank(pod: Mapping[str, Any]) -> tuple[int, str]:
        running = pod.get("status", {}).get("phase") == "Running"
        return (0 if _is_ready(pod) else 1 if running else 2, str(pod.get("metadata", {}).get("name")))

    return sorted(live, key=rank)


def pick_pod(client: KubeClient, name: str, namespace: str, *, require_ready: bool = False) -> str:
    """The pod to read from (or forward to): a ready one when there is one."""
    pods = deployment_pods(client, name, namespace)
    if require_ready:
        pods = [pod for pod in pods if _is_ready(pod)]
    if not pods:
        state = "ready pods" if require_ready else "pods"
        raise KubeError(
            f"deployment {name!r} in {namespace} has no {state} yet; watch it with servedeck deploy status "
            f"{name} -n {namespace} --watch"
        )
    return str(pods[0]["metadata"]["name"])


class LogStream:
    """Lines of one pod's log; iterate it, and ``close()`` from any thread to stop a follow."""

    def __init__(
        self,
        client: KubeClient,
        pod: str,
        namespace: str | None = None,
        *,
        container: str | None = None,
        follow: bool = True,
        tail_lines: int | None = None,
        time_origin: float | None = None,
        deployment: str | None = None,
    ) -> None:
        self.client = client
        self.pod = pod
        self.deployment = deployment
        self.namespace = namespace or client.default_namespace
        self.container = container
        self.follow = follow
        self.tail_lines = tail_lines
        self.time_origin = time.perf_counter() if time_origin is None else time_origin
        self._response: Any = None
        self._closed = False

    def __enter__(self) -> LogStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        response = self._response
        if response is None:
            return
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _status_hint(self) -> str:
        if self.deployment:
            return f"servedeck deploy status {self.deployment} -n {self.namespace} --watch"
        return f"kubectl describe pod {self.pod} -n {self.namespace}"

    def _not_scheduled(self) -> KubeError:
        """Why a pod has no log yet: the scheduler's message (PodScheduled condition, else its events)."""
        pod = self.client.get("Pod", self.pod, self.namespace) or {}
        reason = ""
        for condition in pod.get("status", {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") != "True":
                reason = str(condition.get("message") or condition.get("reason") or "")
        if not reason:
            with contextlib.suppress(KubeError):
                events = self.client.list_objects(
                    "Event",
                    self.namespace,
                    field_selector=f"involvedObject.kind=Pod,involvedObject.name={self.pod}",
                )
                events.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
                warnings = [e for e in events if e.get("type") == "Warning"] or events
                if warnings:
                    reason = f"{warnings[-1].get('reason', '')}: {warnings[-1].get('message', '')}"
        reason = " ".join(reason.split()) or "no node has been chosen for it yet"
        return KubeError(
            f"pod {self.pod} is not scheduled yet: {reason}; watch it with {self._status_hint()}"
        )

    def _open(self) -> Any:
        kwargs: dict[str, Any] = {"name": self.pod, "namespace": self.namespace, "follow": self.follow}
        if self.container:
            kwargs["container"] = self.container
        if self.tail_lines is not None:
            kwargs["tail_lines"] = self.tail_lines
        # A followed log may stay quiet for long (vLLM logs stats only under load): no practical read limit.
        read_timeout = FOLLOW_READ_TIMEOUT_S if self.follow else self.client.timeout[1]
        try:
            with self.client.errors("get", "pods/log", self.namespace, self.pod):
                return self.client.core.read_namespaced_pod_log(
                    **kwargs, _preload_content=False, _request_timeout=(self.client.timeout[0], read_timeout)
                )
        except KubeRequestError as err:
            if "answered 400" not in str(err):
                raise
            message = str(err).split(": ", 1)[1] if ": " in str(err) else str(err)
            raise KubeRequestError(
                f"logs of pod {self.pod} are not available: {message}; if it is still starting, "
                f"watch it with {self._status_hint()}"
            ) from None

    def __iter__(self) -> Iterator[LogLine]:
        response = self._open()
        if getattr(response, "status", 200) == 204:
            # The API server answers 204 No Content for a pod no node runs yet (nothing to stream).
            with contextlib.suppress(OSError, urllib3.exceptions.HTTPError):
                response.drain_conn()
            response.release_conn()
            raise self._not_scheduled()
        self._response = response
        try:
            with self.client.errors("get", "pods/log", self.namespace, self.pod):
                for text in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                    if self._closed:
                        return
                    yield LogLine(
                        pod=self.pod,
                        text=text,
                        t=time.perf_counter() - self.time_origin,
                        stats=parse_vllm_stats_line(text),
                    )
        except KubeError:
            if self._closed:
                return
            raise
        finally:
            response.release_conn()
            self._response = None
