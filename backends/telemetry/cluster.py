"""dcgm-exporter in a cluster: find the exporter pods on the target deployment's nodes and port-forward them.

dcgm-exporter runs as a DaemonSet, one pod per GPU node, and each pod reports only its own node's GPUs;
with Kubernetes pod mapping on it labels each GPU with the pod that holds it. So the target's GPUs are
read from the exporter pods on the nodes its pods run on, each forwarded to 127.0.0.1, and filtered to
its pods (``DcgmScraper(pods=...)``). Known exporters, tried in order unless one is given:

- GKE managed DCGM (``--monitoring=SYSTEM,DCGM``): ``gke-managed-system``,
  ``app.kubernetes.io/name=gke-managed-dcgm-exporter``, port ``metrics`` (9400);
- the NVIDIA GPU operator's: ``gpu-operator``, ``app=nvidia-dcgm-exporter``, port ``gpu-metrics``;
- dcgm-exporter's own Helm chart or manifest, in any namespace: ``app.kubernetes.io/name=dcgm-exporter``.

Discovery never raises for a missing exporter: ``ExporterDiscovery.state`` says what was found and
``message`` what to do (the GKE command among others).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backends.kube.client import KubeClient
from backends.kube.errors import KubeError, KubeForbiddenError
from backends.kube.logs import deployment_pods
from backends.kube.portforward import PortForwarder
from backends.telemetry.scrape import GKE_HINT, DcgmState

DEFAULT_PORT = 9400
PORT_NAMES = ("metrics", "gpu-metrics", "http-metrics")


class ExporterSource(BaseModel):
    """Where one packaging of dcgm-exporter runs; ``namespace`` None: any namespace."""

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str | None
    label_selector: str


KNOWN_SOURCES: tuple[ExporterSource, ...] = (
    ExporterSource(
        name="GKE managed DCGM",
        namespace="gke-managed-system",
        label_selector="app.kubernetes.io/name=gke-managed-dcgm-exporter",
    ),
    ExporterSource(
        name="NVIDIA GPU operator", namespace="gpu-operator", label_selector="app=nvidia-dcgm-exporter"
    ),
    ExporterSource(
        name="dcgm-exporter", namespace=None, label_selector="app.kubernetes.io/name=dcgm-exporter"
    ),
)


class ClusterExporter(BaseModel):
    """One exporter pod to forward: it reports the GPUs of ``node``."""

    model_config = ConfigDict(frozen=True)

    source: str
    namespace: str
    pod: str
    node: str
    port: int = DEFAULT_PORT


class ExporterDiscovery(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: DcgmState
    message: str | None = None
    exporters: list[ClusterExporter] = Field(default_factory=list)
    target_pods: list[str] = Field(default_factory=list, description="the deployment's running pods")
    target_namespace: str = ""
    nodes: list[str] = Field(default_factory=list, description="nodes the target's pods run on")

    @property
    def found(self) -> bool:
        return self.state is DcgmState.OK


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def exporter_port(pod: Mapping[str, Any]) -> int:
    """The container port named like the exporter's (``metrics``, ``gpu-metrics``), else 9400."""
    ports = [
        port
        for container in pod.get("spec", {}).get("containers") or []
        for port in container.get("ports") or []
        if isinstance(port, dict) and isinstance(port.get("containerPort"), int)
    ]
    for port in ports:
        if port.get("name") in PORT_NAMES:
            return int(port["containerPort"])
    return DEFAULT_PORT


def parse_source(text: str) -> ExporterSource:
    """``--gpu-exporter NAMESPACE/LABEL=VALUE[,...]`` (or ``LABEL=VALUE`` for any namespace)."""
    namespace, slash, selector = text.partition("/")
    # A namespace has no dots: "app.kubernetes.io/name=x" is a selector alone.
    if not slash or "." in namespace or "=" in namespace:
        namespace, selector = "", text
    if "=" not in selector:
        raise KubeError(
            f"--gpu-exporter {text!r}: give NAMESPACE/LABEL=VALUE, "
            "e.g. monitoring/app.kubernetes.io/name=dcgm-exporter"
        )
    return ExporterSource(name="given", namespace=namespace or None, label_selector=selector)


def discover_exporters(
    client: KubeClient,
    deployment: str,
    namespace: str,
    sources: tuple[ExporterSource, ...] | None = None,
) -> ExporterDiscovery:
    """The exporter pods on the nodes of ``deployment``'s pods (KubeError only for the deployment itself)."""
    pods = [
        pod
        for pod in deployment_pods(client, deployment, namespace)
        if pod.get("status", {}).get("phase") == "Running" and pod.get("spec", {}).get("nodeName")
    ]
    base: dict[str, Any] = {"target_namespace": namespace}
    if not pods:
        return ExporterDiscovery(
            state=DcgmState.NOT_FOUND,
            message=f"GPU metrics: deployment {deployment} has no running pods to read GPUs of",
            **base,
        )
    names = sorted(str(pod["metadata"]["name"]) for pod in pods)
    nodes = sorted({str(pod["spec"]["nodeName"]) for pod in pods})
    base |= {"target_pods": names, "nodes": nodes}
    elsewhere: list[str] = []
    denied: list[str] = []
    for source in sources or KNOWN_SOURCES:
        try:
            found = client.list_objects(
                "Pod",
                source.namespace,
                label_selector=source.label_selector,
                all_namespaces=source.namespace is None,
            )
        except KubeForbiddenError:
            denied.append(f"{source.namespace or 'all namespaces'} ({source.label_selector})")
            continue
        live = [pod for pod in found if pod.get("status", {}).get("phase") == "Running" and _ready(pod)]
        by_node: dict[str, Mapping[str, Any]] = {}
        for pod in sorted(live, key=lambda p: str(p["metadata"]["name"])):
            by_node.setdefault(str(pod.get("spec", {}).get("nodeName") or ""), pod)
        exporters = [
            ClusterExporter(
                source=source.name,
                namespace=str(pod["metadata"].get("namespace") or source.namespace or ""),
                pod=str(pod["metadata"]["name"]),
                node=node,
                port=exporter_port(pod),
            )
            for node, pod in sorted(by_node.items())
            if node in nodes
        ]
        if exporters:
            missing = [node for node in nodes if node not in {e.node for e in exporters}]
            message = (
                f"GPU metrics: no {source.name} exporter on node(s) {', '.join(missing)}; "
                "their GPUs are left out"
                if missing
                else None
            )
            return ExporterDiscovery(state=DcgmState.OK, message=message, exporters=exporters, **base)
        if by_node:
            elsewhere.append(f"{source.name} runs on {', '.join(sorted(by_node))}")
    if elsewhere:
        detail = "; ".join(elsewhere)
        message = (
            f"GPU metrics: no ready dcgm-exporter on the node(s) of {deployment} ({', '.join(nodes)}): "
            f"{detail}"
        )
    else:
        message = f"GPU metrics: no dcgm-exporter found in the cluster; {GKE_HINT}"
    if denied:
        message += f" (not allowed to list pods in {', '.join(denied)})"
    return ExporterDiscovery(state=DcgmState.NOT_FOUND, message=message, **base)


@contextlib.contextmanager
def forward_exporters(client: KubeClient, discovery: ExporterDiscovery) -> Iterator[str]:
    """Port-forward each exporter pod on 127.0.0.1; yields the URLs, comma-separated (``DcgmScraper``)."""
    if not discovery.exporters:
        raise KubeError(discovery.message or "GPU metrics: no dcgm-exporter to forward")
    with contextlib.ExitStack() as stack:
        urls = []
        for exporter in discovery.exporters:
            forwarder = PortForwarder(client, exporter.namespace, pod=exporter.pod, remote_port=exporter.port)
            stack.enter_context(forwarder)
            urls.append(forwarder.url + "/metrics")
        yield ",".join(urls)
