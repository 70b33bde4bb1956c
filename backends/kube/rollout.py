"""Rollout watch: typed events from the watch streams of a Deployment, its pods and their events.

Three watch streams (``watch=true``, chunked JSON lines) run in background threads: the Deployment
(by name), its pods (by the Deployment's selector) and the namespace's Events (kept when they concern
the Deployment, its ReplicaSets or its pods). Pod objects are diffed against their last state, so a
caller sees what changed: phase, unschedulable, a container waiting (ContainerCreating,
ImagePullBackOff, CrashLoopBackOff), a container killed (OOMKilled), readiness. The stream ends with
``ROLLOUT_COMPLETE`` (all replicas updated and ready), ``ROLLOUT_FAILED`` (progress deadline
exceeded) or ``TIMED_OUT``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from enum import StrEnum
from http import HTTPStatus
from typing import Any

from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict

from backends.kube.client import KubeClient
from backends.kube.errors import KubeError, KubeNotFoundError

WATCH_WINDOW_S = 60
"""Each watch request asks the server to end after this long; the stream is then resumed from the last
resourceVersion seen (or relisted when the server answers 410 Gone)."""
STOP_JOIN_S = 2.0
PROBLEM_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "InvalidImageName",
        "RunContainerError",
    }
)


class RolloutEventKind(StrEnum):
    POD_CREATED = "pod-created"
    POD_PHASE = "pod-phase"
    POD_UNSCHEDULABLE = "pod-unschedulable"
    CONTAINER_WAITING = "container-waiting"
    CONTAINER_TERMINATED = "container-terminated"
    POD_READY = "pod-ready"
    POD_NOT_READY = "pod-not-ready"
    POD_DELETED = "pod-deleted"
    CLUSTER_EVENT = "event"
    REPLICAS = "replicas"
    ROLLOUT_COMPLETE = "rollout-complete"
    ROLLOUT_FAILED = "rollout-failed"
    TIMED_OUT = "timed-out"


FINAL_KINDS = frozenset(
    {RolloutEventKind.ROLLOUT_COMPLETE, RolloutEventKind.ROLLOUT_FAILED, RolloutEventKind.TIMED_OUT}
)


class RolloutEvent(BaseModel):
    """One thing that happened during a rollout."""

    model_config = ConfigDict(frozen=True)

    kind: RolloutEventKind
    object: str
    """``pod/NAME``, ``deployment/NAME`` or the involved object of a cluster event."""
    reason: str | None = None
    message: str | None = None
    phase: str | None = None
    container: str | None = None
    exit_code: int | None = None
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    warning: bool = False

    @property
    def is_final(self) -> bool:
        return self.kind in FINAL_KINDS

    def describe(self) -> str:
        """One human line."""
        subject = self.object
        if self.container:
            subject += f" [{self.container}]"
        detail = {
            RolloutEventKind.POD_CREATED: f"created ({self.phase})",
            RolloutEventKind.POD_PHASE: f"phase {self.phase}",
            RolloutEventKind.POD_UNSCHEDULABLE: "unschedulable",
            RolloutEventKind.CONTAINER_WAITING: f"waiting: {self.reason}",
            RolloutEventKind.CONTAINER_TERMINATED: f"terminated: {self.reason} (exit code {self.exit_code})",
            RolloutEventKind.POD_READY: "ready",
            RolloutEventKind.POD_NOT_READY: "not ready",
            RolloutEventKind.POD_DELETED: "deleted",
            RolloutEventKind.CLUSTER_EVENT: f"{self.reason}",
            RolloutEventKind.REPLICAS: f"{self.ready_replicas}/{self.desired_replicas} replicas ready",
            RolloutEventKind.ROLLOUT_COMPLETE: (
                f"rollout complete: {self.ready_replicas}/{self.desired_replicas} ready"
            ),
            RolloutEventKind.ROLLOUT_FAILED: f"rollout failed: {self.reason}",
            RolloutEventKind.TIMED_OUT: "gave up waiting for the rollout",
        }[self.kind]
        line = f"{'WARNING ' if self.warning else ''}{subject}: {detail}"
        if self.message and self.kind is not RolloutEventKind.REPLICAS:
            line += f": {' '.join(self.message.split())}"
        return line


class _PodState(BaseModel):
    model_config = ConfigDict(frozen=True)

    phase: str | None
    unschedulable: str | None
    ready: bool
    waiting: dict[str, str]
    restarts: dict[str, int]


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    found = obj.get("status", {}).get("conditions") or []
    return {str(c.get("type")): c for c in found if isinstance(c, Mapping)}


def _pod_state(pod: Mapping[str, Any]) -> _PodState:
    conditions = _conditions(pod)
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = None
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = str(scheduled.get("message") or "")
    statuses = pod.get("status", {}).get("containerStatuses") or []
    waiting = {}
    restarts = {}
    for status in statuses:
        name = str(status.get("name"))
        reason = ((status.get("state") or {}).get("waiting") or {}).get("reason")
        if reason:
            waiting[name] = str(reason)
        restarts[name] = int(status.get("restartCount") or 0)
    return _PodState(
        phase=pod.get("status", {}).get("phase"),
        unschedulable=unschedulable,
        ready=conditions.get("Ready", {}).get("status") == "True",
        waiting=waiting,
        restarts=restarts,
    )


def pod_changes(previous: _PodState | None, pod: Mapping[str, Any]) -> tuple[_PodState, list[RolloutEvent]]:
    """The new state of ``pod`` and the events that lead there from ``previous``."""
    name = f"pod/{pod.get('metadata', {}).get('name')}"
    state = _pod_state(pod)
    events: list[RolloutEvent] = []
    if previous is None:
        events.append(RolloutEvent(kind=RolloutEventKind.POD_CREATED, object=name, phase=state.phase))
    elif state.phase != previous.phase:
        failed = state.phase == "Failed"
        events.append(
            RolloutEvent(kind=RolloutEventKind.POD_PHASE, object=name, phase=state.phase, warning=failed)
        )
    if state.unschedulable is not None and (previous is None or previous.unschedulable is None):
        events.append(
            RolloutEvent(
                kind=RolloutEventKind.POD_UNSCHEDULABLE,
                object=name,
                reason="Unschedulable",
                message=state.unschedulable,
                warning=True,
            )
        )
    statuses = {str(s.get("name")): s for s in pod.get("status", {}).get("containerStatuses") or []}
    for container, restarts in state.restarts.items():
        if previous is not None and restarts > previous.restarts.get(container, 0):
            terminated = (statuses[container].get("lastState") or {}).get("terminated") or {}
            reason = str(terminated.get("reason") or "Error")
            events.append(
                RolloutEvent(
                    kind=RolloutEventKind.CONTAINER_TERMINATED,
                    object=name,
                    container=container,
                    reason=reason,
                    exit_code=terminated.get("exitCode"),
                    message=terminated.get("message"),
                    warning=True,
                )
            )
    for container, reason in state.waiting.items():
        if previous is None or previous.waiting.get(container) != reason:
            waiting = ((statuses[container].get("state") or {}).get("waiting")) or {}
            events.append(
                RolloutEvent(
                    kind=RolloutEventKind.CONTAINER_WAITING,
                    object=name,
                    container=container,
                    reason=reason,
                    message=waiting.get("message"),
                    warning=reason in PROBLEM_WAITING_REASONS,
                )
            )
    if previous is not None and state.ready != previous.ready:
        kind = RolloutEventKind.POD_READY if state.ready else RolloutEventKind.POD_NOT_READY
        events.append(RolloutEvent(kind=kind, object=name))
    elif previous is None and state.ready:
        events.append(RolloutEvent(kind=RolloutEventKind.POD_READY, object=name))
    return state, events


def deployment_progress(deployment: Mapping[str, Any]) -> RolloutEvent | None:
    """ROLLOUT_COMPLETE / ROLLOUT_FAILED when the Deployment says so (like kubectl rollout status)."""
    name = f"deployment/{deployment.get('metadata', {}).get('name')}"
    spec = deployment.get("spec", {})
    status = deployment.get("status", {}) or {}
    desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    ready = int(status.get("readyReplicas") or 0)
    progressing = _conditions(deployment).get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return RolloutEvent(
            kind=RolloutEventKind.ROLLOUT_FAILED,
            object=name,
            reason="ProgressDeadlineExceeded",
            message=progressing.get("message"),
            ready_replicas=ready,
            desired_replicas=desired,
            warning=True,
        )
    generation = int(deployment.get("metadata", {}).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    if observed >= generation and updated >= desired and available >= desired and total <= desired:
        return RolloutEvent(
            kind=RolloutEventKind.ROLLOUT_COMPLETE,
            object=name,
            ready_replicas=ready,
            desired_replicas=desired,
        )
    return None


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        value = event.get(key)
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


class RolloutWatch:
    """Typed events of one Deployment's rollout; iterate it, ``close()`` it (or use ``with``)."""

    def __init__(
        self,
        client: KubeClient,
        name: str,
        namespace: str | None = None,
        *,
        timeout_s: float = 900.0,
        since: datetime | None = None,
        watch_window_s: int = WATCH_WINDOW_S,
    ) -> None:
        self.client = client
        self.name = name
        self.namespace = namespace or client.default_namespace
        self.timeout_s = timeout_s
        self.since = since
        self.watch_window_s = watch_window_s
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | BaseException] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[k8s_watch.Watch] = []
        self._pods: dict[str, _PodState] = {}
        self._seen_events: dict[str, int] = {}
        self._last_replicas: tuple[int, int] | None = None

    def __enter__(self) -> RolloutWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        for watch in self._watches:
            watch.stop()  # type: ignore[no-untyped-call]
        for thread in self._threads:
            thread.join(STOP_JOIN_S)

    def _start(self, stream: str, operation: Any, **kwargs: Any) -> None:
        # return_type "object" keeps objects as plain dicts (the client's deserialize=False option
        # breaks on ERROR events, such as 410 Gone).
        watch = k8s_watch.Watch(return_type="object")  # type: ignore[no-untyped-call]
        self._watches.append(watch)
        thread = threading.Thread(
            target=self._pump,
            args=(stream, watch, operation, kwargs),
            name=f"rollout-watch-{stream}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _pump(self, stream: str, watch: k8s_watch.Watch, operation: Any, kwargs: dict[str, Any]) -> None:
        resource_version: str | None = None
        resource = {"deployment": "deployments.apps", "pods": "pods", "events": "events"}[stream]
        try:
            while not self._stop.is_set():
                window = max(1, min(self.watch_window_s, int(self.timeout_s) + 1))
                call_kwargs = dict(kwargs, timeout_seconds=window, allow_watch_bookmarks=True)
                call_kwargs["_request_timeout"] = (self.client.timeout[0], window + self.client.timeout[1])
                if resource_version:
                    call_kwargs["resource_version"] = resource_version
                with self.client.errors("watch", resource, self.namespace):
                    try:
                        for event in watch.stream(operation, **call_kwargs):  # type: ignore[no-untyped-call]
                            if self._stop.is_set():
                                return
                            obj = event.get("object") if isinstance(event, dict) else None
                            if not isinstance(obj, dict):
                                continue
                            resource_version = (
                                obj.get("metadata", {}).get("resourceVersion") or resource_version
                            )
                            if event.get("type") != "BOOKMARK":  # a bookmark only moves resource_version
                                self._queue.put((f"{stream}:{event.get('type')}", obj))
                    except ApiException as err:
                        if err.status != HTTPStatus.GONE:
                            raise
                        # Our resourceVersion was compacted away: start over from the current state
                        # (the replayed ADDED events change nothing the consumer has already seen).
                        resource_version = None
        except BaseException as err:  # handed to the consuming thread
            if not self._stop.is_set():
                self._queue.put(err)

    def __iter__(self) -> Iterator[RolloutEvent]:
        deployment = self.client.get("Deployment", self.name, self.namespace)
        if deployment is None:
            self.client.require_namespace(self.namespace)
            raise KubeNotFoundError(
                f"deployment {self.name!r} not found in namespace {self.namespace}; "
                f"see servedeck deploy list -n {self.namespace}"
            )
        match_labels = deployment.get("spec", {}).get("selector", {}).get("matchLabels") or {}
        selector = ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))
        core, apps = self.client.core, self.client.apps
        self._start(
            "deployment",
            apps.list_namespaced_deployment,
            namespace=self.namespace,
            field_selector=f"metadata.name={self.name}",
        )
        self._start("pods", core.list_namespaced_pod, namespace=self.namespace, label_selector=selector)
        self._start("events", core.list_namespaced_event, namespace=self.namespace)
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    yield RolloutEvent(
                        kind=RolloutEventKind.TIMED_OUT,
                        object=f"deployment/{self.name}",
                        message=f"not ready after {self.timeout_s:g} s",
                        warning=True,
                    )
                    return
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    continue
                if isinstance(item, KubeError):
                    raise item
                if isinstance(item, BaseException):
                    raise self.client.unreachable(item)
                stream, obj = item
                for event in self._translate(stream, obj):
                    if event.kind is RolloutEventKind.ROLLOUT_COMPLETE:
                        # The pod streams may lag the Deployment's: report what the pods show now first.
                        yield from self._resync_pods(selector)
                    yield event
                    if event.is_final:
                        return
        finally:
            self.close()

    def _resync_pods(self, selector: str) -> list[RolloutEvent]:
        events: list[RolloutEvent] = []
        for pod in self.client.list_objects("Pod", self.namespace, label_selector=selector):
            name = str(pod.get("metadata", {}).get("name"))
            state, changes = pod_changes(self._pods.get(name), pod)
            self._pods[name] = state
            events.extend(changes)
        return events

    def _translate(self, stream: str, obj: dict[str, Any]) -> list[RolloutEvent]:
        kind, _, event_type = stream.partition(":")
        if kind == "pods":
            name = str(obj.get("metadata", {}).get("name"))
            if event_type == "DELETED":
                self._pods.pop(name, None)
                return [RolloutEvent(kind=RolloutEventKind.POD_DELETED, object=f"pod/{name}")]
            state, events = pod_changes(self._pods.get(name), obj)
            self._pods[name] = state
            return events
        if kind == "events":
            return self._cluster_event(obj)
        if kind == "deployment" and event_type != "DELETED":
            return self._deployment_events(obj)
        if kind == "deployment":
            return [
                RolloutEvent(
                    kind=RolloutEventKind.ROLLOUT_FAILED,
                    object=f"deployment/{self.name}",
                    reason="Deleted",
                    message="the deployment was deleted",
                    warning=True,
                )
            ]
        return []

    def _deployment_events(self, deployment: dict[str, Any]) -> list[RolloutEvent]:
        events: list[RolloutEvent] = []
        spec_replicas = deployment.get("spec", {}).get("replicas")
        desired = int(spec_replicas if spec_replicas is not None else 1)
        ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
        if self._last_replicas != (ready, desired):
            self._last_replicas = (ready, desired)
            events.append(
                RolloutEvent(
                    kind=RolloutEventKind.REPLICAS,
                    object=f"deployment/{self.name}",
                    ready_replicas=ready,
                    desired_replicas=desired,
                )
            )
        final = deployment_progress(deployment)
        if final is not None:
            events.append(final)
        return events

    def _concerns_us(self, involved: Mapping[str, Any]) -> bool:
        name = str(involved.get("name") or "")
        kind = involved.get("kind")
        if kind == "Pod":
            return name in self._pods or name.startswith(f"{self.name}-")
        if kind == "ReplicaSet":
            return name.startswith(f"{self.name}-")
        return kind == "Deployment" and name == self.name

    def _cluster_event(self, event: dict[str, Any]) -> list[RolloutEvent]:
        involved = event.get("involvedObject") or event.get("regarding") or {}
        if not isinstance(involved, Mapping) or not self._concerns_us(involved):
            return []
        if self.since is not None:
            happened = _event_time(event)
            if happened is not None and happened < self.since:
                return []
        uid = str(event.get("metadata", {}).get("uid") or event.get("metadata", {}).get("name"))
        count = int(event.get("count") or 1)
        if self._seen_events.get(uid, 0) >= count:
            return []
        self._seen_events[uid] = count
        return [
            RolloutEvent(
                kind=RolloutEventKind.CLUSTER_EVENT,
                object=f"{str(involved.get('kind', '')).lower()}/{involved.get('name')}",
                reason=str(event.get("reason") or ""),
                message=event.get("message") or event.get("note"),
                warning=event.get("type") == "Warning",
            )
        ]
