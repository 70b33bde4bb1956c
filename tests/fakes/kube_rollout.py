"""A scripted rollout on the fake Kubernetes API: one pod of a Deployment, walked step by step.

Steps are method names of ``ScriptedRollout``, run in order by ``advance()`` (on demand) or by
``run_on_timer``: ``pending``, ``failed_scheduling``, ``scheduled``, ``image_pull_backoff``,
``running``, ``ready``, ``oom_killed``. Each step changes the pod (and the Deployment's status) the
way the scheduler, the kubelet and the deployment controller would, and records the Events they
would, so watchers see the real sequence of MODIFIED objects and Events.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from tests.fakes.kube_api import STOP_TIMEOUT_S, FakeKubeApi, now_rfc3339


class ScriptedRollout:
    """Walks one pod of a Deployment through the states a real rollout shows, a step at a time.

    ``steps`` are method names of this class, run in order by ``advance()`` (or by ``run_on_timer``):
    ``pending``, ``failed_scheduling``, ``scheduled``, ``image_pull_backoff``, ``running``, ``ready``,
    ``oom_killed``.
    """

    def __init__(
        self,
        api: FakeKubeApi,
        namespace: str,
        deployment: str,
        steps: Iterable[str],
        *,
        node: str = "gke-gpu-pool-1",
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.deployment = deployment
        self.steps = list(steps)
        self.node = node
        self.pod_name = f"{deployment}-7d9c6b5f4-{uuid.uuid4().hex[:5]}"
        self.done: list[str] = []
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()

    def advance(self) -> str | None:
        """Run the next step; its name, or None when the script is over."""
        if len(self.done) >= len(self.steps):
            return None
        step = self.steps[len(self.done)]
        getattr(self, step)()
        self.done.append(step)
        return step

    def run_on_timer(self, interval_s: float) -> None:
        def run() -> None:
            while not self._stop.wait(interval_s):
                if self.advance() is None:
                    return

        self._timer = threading.Thread(target=run, name="scripted-rollout", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(STOP_TIMEOUT_S)

    # --- state helpers --------------------------------------------------------------------------

    def _deployment(self) -> dict[str, Any]:
        found = self.api.get("Deployment", self.deployment, self.namespace)
        if found is None:
            raise AssertionError(
                f"scripted rollout: deployment {self.namespace}/{self.deployment} does not exist"
            )
        return found

    def _pod(self) -> dict[str, Any]:
        found = self.api.get("Pod", self.pod_name, self.namespace)
        if found is None:
            raise AssertionError(f"scripted rollout: pod {self.pod_name} does not exist")
        return found

    def _container_name(self) -> str:
        return str(self._pod()["spec"]["containers"][0]["name"])

    def _set_container(
        self, pod: dict[str, Any], state: dict[str, Any], *, ready: bool = False, **extra: Any
    ) -> None:
        container = pod["spec"]["containers"][0]
        previous = (pod["status"].get("containerStatuses") or [{}])[0]
        status = {
            "name": container["name"],
            "image": container.get("image", ""),
            "ready": ready,
            "restartCount": previous.get("restartCount", 0),
            "started": "running" in state,
            "state": state,
        }
        if "lastState" in previous:
            status["lastState"] = previous["lastState"]
        status.update(extra)
        pod["status"]["containerStatuses"] = [status]

    @staticmethod
    def _set_condition(
        pod: dict[str, Any], type_: str, status: str, reason: str | None = None, message: str | None = None
    ) -> None:
        conditions = [c for c in pod["status"].get("conditions", []) if c["type"] != type_]
        condition = {"type": type_, "status": status, "lastTransitionTime": now_rfc3339()}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        conditions.append(condition)
        pod["status"]["conditions"] = conditions

    def _set_deployment_ready(self, ready: int) -> None:
        deployment = self._deployment()
        desired = deployment["spec"].get("replicas", 1)
        deployment["status"] = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": max(desired, 1),
            "updatedReplicas": max(desired, 1),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(desired - ready, 0),
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if ready >= desired else "False",
                    "reason": "MinimumReplicasAvailable"
                    if ready >= desired
                    else "MinimumReplicasUnavailable",
                },
                {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
            ],
        }
        self.api.put(deployment)

    # --- steps ---------------------------------------------------------------------------------

    def pending(self) -> None:
        deployment = self._deployment()
        template = copy.deepcopy(deployment["spec"]["template"])
        metadata = template.get("metadata", {})
        self.api.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": self.pod_name,
                    "namespace": self.namespace,
                    "labels": dict(metadata.get("labels", {}), **{"pod-template-hash": "7d9c6b5f4"}),
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "ReplicaSet",
                            "name": f"{self.deployment}-7d9c6b5f4",
                            "uid": "rs-uid",
                        }
                    ],
                },
                "spec": template.get("spec", {}),
                "status": {"phase": "Pending", "qosClass": "Burstable"},
            }
        )
        self._set_deployment_ready(0)

    def failed_scheduling(self) -> None:
        pod = self._pod()
        message = (
            "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
            "3 No preemption victims found for incoming pod."
        )
        self._set_condition(pod, "PodScheduled", "False", "Unschedulable", message)
        stored = self.api.put(pod)
        self.api.add_event(
            self.namespace,
            stored,
            "FailedScheduling",
            message,
            type_="Warning",
            component="default-scheduler",
        )

    def scheduled(self) -> None:
        pod = self._pod()
        pod["spec"]["nodeName"] = self.node
        self._set_condition(pod, "PodScheduled", "True")
        self._set_condition(
            pod,
            "Ready",
            "False",
            "ContainersNotReady",
            f"containers with unready status: [{self._container_name()}]",
        )
        self._set_container(pod, {"waiting": {"reason": "ContainerCreating"}})
        stored = self.api.put(pod)
        self.api.add_event(
            self.namespace,
            stored,
            "Scheduled",
            f"Successfully assigned {self.namespace}/{self.pod_name} to {self.node}",
            component="default-scheduler",
        )

    def image_pull_backoff(self) -> None:
        pod = self._pod()
        image = pod["spec"]["containers"][0].get("image", "")
        self._set_container(
            pod, {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}}
        )
        stored = self.api.put(pod)
        self.api.add_event(self.namespace, stored, "Failed", "Error: ImagePullBackOff", type_="Warning")

    def running(self) -> None:
        pod = self._pod()
        pod["spec"].setdefault("nodeName", self.node)
        pod["status"]["phase"] = "Running"
        pod["status"]["podIP"] = "10.8.0.12"
        self._set_condition(pod, "PodScheduled", "True")
        self._set_condition(
            pod,
            "Ready",
            "False",
            "ContainersNotReady",
            f"containers with unready status: [{self._container_name()}]",
        )
        self._set_container(pod, {"running": {"startedAt": now_rfc3339()}})
        stored = self.api.put(pod)
        self.api.add_event(self.namespace, stored, "Started", f"Started container {self._container_name()}")

    def ready(self) -> None:
        pod = self._pod()
        self._set_condition(pod, "Ready", "True")
        self._set_condition(pod, "ContainersReady", "True")
        self._set_container(pod, {"running": {"startedAt": now_rfc3339()}}, ready=True)
        self.api.put(pod)
        self._set_deployment_ready(1)

    def oom_killed(self) -> None:
        pod = self._pod()
        previous = (pod["status"].get("containerStatuses") or [{}])[0]
        self._set_condition(
            pod,
            "Ready",
            "False",
            "ContainersNotReady",
            f"containers with unready status: [{self._container_name()}]",
        )
        self._set_container(
            pod,
            {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 10s restarting failed container",
                }
            },
            restartCount=previous.get("restartCount", 0) + 1,
            lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": now_rfc3339()}},
        )
        stored = self.api.put(pod)
        self.api.add_event(
            self.namespace, stored, "BackOff", "Back-off restarting failed container", type_="Warning"
        )
        self._set_deployment_ready(0)
