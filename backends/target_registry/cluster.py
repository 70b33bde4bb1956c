"""Kubernetes vLLM deployments in the kubeconfig's current context: their rows, pods and events, and
the actions on them (apply, scale, port-forward, logs, delete).

The Kubernetes client is imported where it is used: the app's first frame does not need it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from backends.errors import ConfigError
from backends.kube.kubeconfig_paths import missing_kubeconfig
from backends.target_registry.core import RegistryCore
from backends.target_registry.logs import LOG_TAIL_LINES, LineQueueReader
from backends.target_registry.rows import DeploymentRow, TargetSource, TargetStatus
from manifests.catalog import default_catalog
from manifests.cost import estimate_cost
from manifests.errors import ManifestError
from manifests.gpus import ACCELERATORS, GpuType
from manifests.spec import DeploymentSpec, model_short_name, short_gpu_name

if TYPE_CHECKING:
    from backends.kube.client import KubeClient
    from backends.kube.inventory import VllmDeployment
    from backends.kube.portforward import PortForwarder

CLUSTER_KEY = "kube"


class ClusterPod(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    phase: str
    ready: str
    restarts: int = 0
    node: str | None = None


class ClusterEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: str
    message: str
    warning: bool = False


class ClusterState(BaseModel):
    """Pods and recent events of one Kubernetes deployment, for the details view."""

    model_config = ConfigDict(frozen=True)

    pods: list[ClusterPod] = Field(default_factory=list)
    events: list[ClusterEvent] = Field(default_factory=list)


class ClusterConnection:
    """The kubeconfig context, the deployments last listed in it, and the port-forwards ServeDeck holds."""

    def __init__(self) -> None:
        self.checked = False
        self.context: str | None = None
        self.error: str | None = None
        self.deployments: dict[str, VllmDeployment] = {}
        self.forwards: dict[str, PortForwarder] = {}
        self.forward_clients: dict[str, KubeClient] = {}
        self.gpu_exporters: dict[str, HeldGpuExporter] = {}


class ClusterGpuExporter(BaseModel):
    """Where a Kubernetes deployment's GPU telemetry is read: its nodes' dcgm-exporters forwarded to
    127.0.0.1 (``url``, comma-separated, read keeping only ``pods``' GPUs), or why not (``message``)."""

    model_config = ConfigDict(frozen=True)

    url: str | None = None
    pods: list[str] = Field(default_factory=list)
    namespace: str = ""
    message: str | None = None


class HeldGpuExporter:
    """One deployment's exporter discovery and the port-forwards it holds open."""

    def __init__(self, found: ClusterGpuExporter, stack: contextlib.ExitStack) -> None:
        self.found = found
        self.stack = stack
        self.at = time.monotonic()
        self.pins = 0  # sweeps reading through these forwards: kept as they are until unpinned


def cluster_key(namespace: str, name: str) -> str:
    return f"kube:{namespace}/{name}"


def _cluster_ref(key: str) -> tuple[str, str]:
    namespace, _, name = key.removeprefix("kube:").partition("/")
    if not key.startswith("kube:") or not namespace or not name:
        raise ConfigError(f"{key} is not a Kubernetes deployment")
    return namespace, name


def _current_context() -> str:
    from backends.kube.kubeconfig import load_kubeconfig

    return load_kubeconfig().context(None).name


_CLUSTER_STATUS: dict[str, TargetStatus] = {
    "ready": TargetStatus.READY,
    "progressing": TargetStatus.ROLLING_OUT,
    "degraded": TargetStatus.ROLLING_OUT,
    "failed": TargetStatus.FAILED,
    "scaled to zero": TargetStatus.SCALED_TO_ZERO,
}


def _gpu_for_label(label: str | None) -> GpuType | None:
    return next((gpu for gpu, profile in ACCELERATORS.items() if profile.gke_accelerator == label), None)


def _cluster_row(deployment: VllmDeployment, forward_url: str | None) -> DeploymentRow:
    gpu = _gpu_for_label(deployment.accelerator)
    if gpu is not None:
        accelerator = f"{short_gpu_name(gpu)} x{deployment.gpus_per_replica}"
    else:
        accelerator = deployment.accelerator or "-"
    price: float | None = None
    if gpu is not None and deployment.gpus_per_replica:
        try:
            price = estimate_cost(
                default_catalog(),
                gpu,
                deployment.gpus_per_replica,
                replicas=deployment.replicas_desired,
                storage_volumes=0,
            ).total_usd_per_hour
        except ManifestError:
            price = None
    status = _CLUSTER_STATUS.get(deployment.status.value, TargetStatus.NOT_CHECKED)
    owner = "ServeDeck's" if deployment.managed else "not ServeDeck's (read-only)"
    detail = f"{owner}; image {deployment.image or '?'}"
    if forward_url is None:
        where = deployment.in_cluster_url or "no Service"
        detail += f"; in-cluster {where}; press f to port-forward it here"
    return DeploymentRow(
        key=cluster_key(deployment.namespace, deployment.name),
        name=deployment.key,
        source=TargetSource.KUBERNETES,
        engine="vLLM",
        model=model_short_name(deployment.model) if deployment.model else "?",
        accelerator=accelerator,
        replicas=f"{deployment.replicas_ready}/{deployment.replicas_desired}",
        status=status,
        price_per_hour=price,
        endpoint=f"{forward_url}/v1" if forward_url else None,
        detail=detail,
        target=deployment.target(forward_url) if forward_url else None,
    )


def _pod_summary(pod: dict[str, object]) -> ClusterPod:
    metadata = pod.get("metadata")
    status = pod.get("status")
    spec = pod.get("spec")
    meta = metadata if isinstance(metadata, dict) else {}
    state = status if isinstance(status, dict) else {}
    pod_spec = spec if isinstance(spec, dict) else {}
    containers = [c for c in state.get("containerStatuses") or [] if isinstance(c, dict)]
    ready = sum(1 for c in containers if c.get("ready"))
    waiting = [
        str(((c.get("state") or {}).get("waiting") or {}).get("reason"))
        for c in containers
        if ((c.get("state") or {}).get("waiting") or {}).get("reason")
    ]
    return ClusterPod(
        name=str(meta.get("name", "?")),
        phase=waiting[0] if waiting else str(state.get("phase", "?")),
        ready=f"{ready}/{len(containers) or len(pod_spec.get('containers') or [])}",
        restarts=sum(int(c.get("restartCount") or 0) for c in containers),
        node=str(pod_spec["nodeName"]) if pod_spec.get("nodeName") else None,
    )


def _event_summary(event: dict[str, object]) -> tuple[str, ClusterEvent]:
    stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
    return str(stamp), ClusterEvent(
        reason=str(event.get("reason") or "?"),
        message=" ".join(str(event.get("message") or "").split()),
        warning=event.get("type") == "Warning",
    )


class ClusterTargets(RegistryCore):
    """The Kubernetes deployments of ``TargetRegistry``."""

    _cluster: ClusterConnection

    @property
    def cluster_context(self) -> str | None:
        return self._cluster.context

    def _no_cluster_row(self) -> DeploymentRow:
        cluster = self._cluster
        if not cluster.checked:
            status, detail = TargetStatus.NOT_CHECKED, "the kubeconfig has not been read yet"
        elif cluster.context is None:
            status, detail = TargetStatus.NO_CLUSTER, cluster.error or "no kubeconfig"
        elif cluster.error is not None:
            status, detail = TargetStatus.UNREACHABLE, cluster.error
        else:
            status = TargetStatus.NO_CLUSTER
            detail = f"no vLLM deployments in context {cluster.context}; press n to create one"
        return DeploymentRow(
            key=CLUSTER_KEY,
            name="kubernetes",
            source=TargetSource.KUBERNETES,
            engine="vLLM",
            model="-",
            accelerator="-",
            status=status,
            detail=detail,
        )

    def _cluster_rows(self) -> list[DeploymentRow]:
        cluster = self._cluster
        rows = []
        for key, deployment in cluster.deployments.items():
            forward = cluster.forwards.get(key)
            rows.append(_cluster_row(deployment, forward.url if forward is not None else None))
        return rows or [self._no_cluster_row()]

    def _client(self) -> KubeClient:
        from backends.kube.client import KubeClient

        return KubeClient.connect(context=self._require_cluster())

    def refresh_cluster(self) -> None:
        """Read the kubeconfig and list the context's vLLM deployments (blocking; from a worker thread)."""
        missing = missing_kubeconfig()
        if missing is not None:
            self._no_cluster(missing)
            return
        from backends.kube.client import KubeClient
        from backends.kube.errors import KubeconfigError, KubeError
        from backends.kube.inventory import list_vllm_deployments

        try:
            context = _current_context()
        except KubeconfigError as err:
            self._no_cluster(str(err))
            return
        error: str | None = None
        found: dict[str, VllmDeployment] = {}
        try:
            with KubeClient.connect(context=context) as client:
                for deployment in list_vllm_deployments(client):
                    found[cluster_key(deployment.namespace, deployment.name)] = deployment
        except KubeError as err:
            error = str(err)
        with self._lock:
            self._cluster.checked = True
            self._cluster.context = context
            self._cluster.error = error
            if error is None:
                self._cluster.deployments = found
        self._changed()

    def _no_cluster(self, reason: str) -> None:
        with self._lock:
            self._cluster.checked = True
            self._cluster.context = None
            self._cluster.error = reason
            self._cluster.deployments = {}
        self._changed()

    def cluster_problem(self) -> str | None:
        """Why nothing can be applied now (no kubeconfig, not read yet), or None when a context is set."""
        with self._lock:
            context, error = self._cluster.context, self._cluster.error
        if context is not None:
            return None
        return (
            f"no Kubernetes cluster: {error or 'the kubeconfig has not been read yet'}; "
            "start the spec as a twin instead (ctrl+t)"
        )

    def _require_cluster(self) -> str:
        problem = self.cluster_problem()
        with self._lock:
            context = self._cluster.context
        if problem is not None or context is None:
            raise ConfigError(problem or "no Kubernetes cluster")
        return context

    def apply_spec(self, spec: DeploymentSpec) -> str:
        """Render ``spec`` with the HF token from its source and server-side apply it; a one-line summary."""
        from manifests.render import render_objects
        from manifests.secrets import read_hf_token

        context = self._require_cluster()
        try:
            token = read_hf_token(spec, os.environ) if spec.has_token_source else None
            objects = render_objects(spec, include_secret_value=token is not None, hf_token=token)
        except ManifestError as err:
            raise ConfigError(str(err)) from None
        secrets = [token.get_secret_value()] if token is not None else []
        with self._client() as client:
            applied = client.apply(objects, namespace=spec.namespace, secrets=secrets)
        changed = sum(1 for item in applied if item.action.value in ("created", "configured"))
        self.refresh_cluster()
        return f"applied {spec.name} to {context}: {changed} of {len(applied)} objects created or changed"

    def scale(self, key: str, replicas: int) -> str:
        namespace, name = _cluster_ref(key)
        with self._client() as client:
            result = client.scale(name, replicas, namespace)
        self.refresh_cluster()
        return f"scaled {name} from {result.previous_replicas} to {result.replicas} replicas"

    def port_forward(self, key: str) -> str:
        """Forward 127.0.0.1:<free port> to a ready pod of the deployment; its URL (kept until close)."""
        from backends.kube.inventory import DEFAULT_VLLM_PORT
        from backends.kube.portforward import PortForwarder

        namespace, name = _cluster_ref(key)
        with self._lock:
            existing = self._cluster.forwards.get(key)
        if existing is not None:
            return existing.url
        client = self._client()
        forwarder = PortForwarder(client, namespace, deployment=name, remote_port=DEFAULT_VLLM_PORT)
        try:
            forwarder.start()
        except BaseException:
            client.close()
            raise
        with self._lock:
            self._cluster.forwards[key] = forwarder
            self._cluster.forward_clients[key] = client
        self._changed()
        return forwarder.url

    def _stop_forward(self, key: str) -> None:
        with self._lock:
            forwarder = self._cluster.forwards.pop(key, None)
            client = self._cluster.forward_clients.pop(key, None)
        if forwarder is not None:
            forwarder.close()
        if client is not None:
            client.close()

    def cluster_gpu_exporter(
        self, key: str, max_age_s: float = 30.0, retry_s: float = 10.0
    ) -> ClusterGpuExporter:
        """The dcgm-exporters on the nodes of deployment ``key``'s pods, port-forwarded (blocking; from a
        worker thread). Kept open and found again after ``max_age_s`` (pods move, scale; 0: now); none
        found is looked for again after ``retry_s``."""
        from backends.kube.errors import KubeError
        from backends.telemetry.cluster import discover_exporters, forward_exporters

        namespace, name = _cluster_ref(key)
        with self._lock:
            held = self._cluster.gpu_exporters.get(key)
        if held is not None:
            age = time.monotonic() - held.at
            if held.pins or age < (max_age_s if held.found.url is not None else min(max_age_s, retry_s)):
                return held.found
        self._stop_gpu_exporter(key)
        stack = contextlib.ExitStack()
        try:
            client = stack.enter_context(self._client())
            discovery = discover_exporters(client, name, namespace)
            if discovery.found:
                url = stack.enter_context(forward_exporters(client, discovery))
                found = ClusterGpuExporter(
                    url=url,
                    pods=discovery.target_pods,
                    namespace=discovery.target_namespace,
                    message=discovery.message,
                )
            else:
                stack.close()
                found = ClusterGpuExporter(message=discovery.message)
        except (KubeError, ConfigError) as err:
            stack.close()
            found = ClusterGpuExporter(message=f"GPU metrics: {err}")
        except BaseException:
            stack.close()
            raise
        with self._lock:
            closing = self._closing
            if not closing:
                self._cluster.gpu_exporters[key] = HeldGpuExporter(found, stack)
        if closing:  # the app is shutting down: nothing may stay forwarded
            stack.close()
        return found

    def keep_gpu_exporters(self, keys: list[str]) -> None:
        """Close the exporter forwards of deployments no longer listed (a sweep's pinned ones stay)."""
        with self._lock:
            gone = [k for k, held in self._cluster.gpu_exporters.items() if k not in keys and not held.pins]
        for key in gone:
            self._stop_gpu_exporter(key)

    @contextlib.contextmanager
    def pinned_gpu_exporter(self, key: str) -> Iterator[ClusterGpuExporter]:
        """``cluster_gpu_exporter`` for a sweep: its forwards stay as they are until the block ends."""
        found = self.cluster_gpu_exporter(key)
        with self._lock:
            held = self._cluster.gpu_exporters.get(key)
            if held is not None:
                held.pins += 1
        try:
            yield found
        finally:
            with self._lock:
                if held is not None:
                    held.pins -= 1

    def _stop_gpu_exporter(self, key: str) -> None:
        with self._lock:
            held = self._cluster.gpu_exporters.pop(key, None)
        if held is not None:
            held.stack.close()

    def stop_gpu_exporters(self) -> None:
        """Close every exporter port-forward (the Deployments view is no longer reading them)."""
        with self._lock:
            keys = list(self._cluster.gpu_exporters)
        for key in keys:
            self._stop_gpu_exporter(key)

    def cluster_state(self, key: str) -> ClusterState:
        """Pods and the latest events of a Kubernetes deployment (blocking)."""
        from backends.kube.logs import deployment_pods

        namespace, name = _cluster_ref(key)
        with self._client() as client:
            pods = deployment_pods(client, name, namespace)
            pod_names = {str(pod.get("metadata", {}).get("name")) for pod in pods}
            events = []
            for event in client.list_objects("Event", namespace):
                involved = str((event.get("involvedObject") or {}).get("name") or "")
                if involved == name or involved in pod_names or involved.startswith(f"{name}-"):
                    events.append(_event_summary(event))
        events.sort(key=lambda pair: pair[0])
        return ClusterState(pods=[_pod_summary(pod) for pod in pods], events=[event for _, event in events])

    def _follow_cluster_logs(self, key: str, cancelled: Callable[[], bool]) -> Iterator[list[str]]:
        from backends.kube.logs import LogStream, pick_pod

        namespace, name = _cluster_ref(key)
        client = self._client()
        try:
            pod = pick_pod(client, name, namespace)
            stream = LogStream(client, pod, namespace, follow=True, tail_lines=LOG_TAIL_LINES)
        except BaseException:
            client.close()
            raise

        def close() -> None:
            stream.close()
            client.close()

        reader = LineQueueReader((line.text for line in stream), close)
        return reader.batches(cancelled)

    def _delete_cluster_deployment(self, key: str) -> str:
        namespace, name = _cluster_ref(key)
        self._stop_forward(key)
        self._stop_gpu_exporter(key)
        with self._client() as client:
            refs = client.managed_objects(namespace, name)
            if not refs:
                raise ConfigError(
                    f"{name} in {namespace} has no objects labelled as ServeDeck's; "
                    "ServeDeck deletes only what it created (use kubectl for the rest)"
                )
            deleted = client.delete(refs)
        self.refresh_cluster()
        return f"deleted {name}: {len(deleted)} objects in namespace {namespace}"
