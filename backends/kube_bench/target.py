"""The bench target as the pods see it: a Service's cluster DNS name, or an in-cluster URL.

This machine cannot reach either, so nothing is probed: the model comes from ``--model`` or from the
vLLM Deployment behind the Service (its ``--model`` argument), and the target is taken to be vLLM's
OpenAI server (usage in every stream chunk), which is what ServeDeck deploys. A Service named with
``--service`` must have a ready endpoint (its EndpointSlices, or its Endpoints where slices may not be
listed) before anything is created: pods started against a server that is still loading would only
record refused connections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s_client

from backends.bench.loadgen.requests import parse_endpoint
from backends.errors import ConfigError
from backends.kube.client import KubeClient, Request
from backends.kube.errors import KubeForbiddenError, KubeNotFoundError
from backends.kube.inventory import DEFAULT_VLLM_PORT, describe_deployment
from backends.target_types import Target, TargetCapabilities, TargetKind

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

IN_CLUSTER_CAPABILITIES = TargetCapabilities(
    tokenize=True, metrics=True, slots=False, stream_usage=True, continuous_usage=True
)


def service_port(service: Mapping[str, Any]) -> int:
    """The Service port that leads to vLLM: the one targeting 8000 or named http, else the first."""
    ports = [p for p in (service.get("spec") or {}).get("ports") or [] if isinstance(p, Mapping)]
    for port in ports:
        if (
            port.get("targetPort") in (DEFAULT_VLLM_PORT, str(DEFAULT_VLLM_PORT))
            or port.get("name") == "http"
        ):
            return int(port.get("port", DEFAULT_VLLM_PORT))
    return int(ports[0].get("port", DEFAULT_VLLM_PORT)) if ports else DEFAULT_VLLM_PORT


def service_dns_url(name: str, namespace: str, port: int) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local:{port}"


def _deployments_behind(
    kube: KubeClient, namespace: str, service: Mapping[str, Any]
) -> list[tuple[str, str | None]]:
    """``(deployment name, model)`` of the vLLM Deployments the Service leads to."""
    name = (service.get("metadata") or {}).get("name")
    rows = [
        describe_deployment(deployment, [service])
        for deployment in kube.list_objects("Deployment", namespace)
    ]
    return [(row.name, row.model) for row in rows if row is not None and row.service == name]


def model_behind(kube: KubeClient, namespace: str, service: Mapping[str, Any]) -> str | None:
    return next((model for _, model in _deployments_behind(kube, namespace, service) if model), None)


def _endpoint_counts(kube: KubeClient, namespace: str, name: str) -> tuple[int, int] | None:
    """``(ready, not ready)`` endpoints of Service ``name``; None when neither kind may be read."""
    try:
        answer = kube.call_json(
            Request(verb="list", resource="endpointslices.discovery.k8s.io", namespace=namespace),
            k8s_client.DiscoveryV1Api(kube.api_client).list_namespaced_endpoint_slice,
            namespace=namespace,
            label_selector=f"{SERVICE_NAME_LABEL}={name}",
        )
    except (KubeForbiddenError, KubeNotFoundError):  # not allowed, or a server without discovery/v1
        return _core_endpoint_counts(kube, namespace, name)
    # A dual-stack Service has one slice per address family for the same pods: count each pod once.
    ready: set[str] = set()
    not_ready: set[str] = set()
    for item in answer.get("items") or []:
        for endpoint in (item or {}).get("endpoints") or []:
            ref = endpoint.get("targetRef") or {}
            key = str(ref.get("uid") or ref.get("name") or (endpoint.get("addresses") or ["?"])[0])
            # An unset condition means ready (discovery.k8s.io/v1).
            if (endpoint.get("conditions") or {}).get("ready") is False:
                not_ready.add(key)
            else:
                ready.add(key)
    return len(ready), len(not_ready - ready)


def _core_endpoint_counts(kube: KubeClient, namespace: str, name: str) -> tuple[int, int] | None:
    try:
        answer = kube.call_json(
            Request(verb="get", resource="endpoints", namespace=namespace, name=name),
            k8s_client.CoreV1Api(kube.api_client).read_namespaced_endpoints,
            name=name,
            namespace=namespace,
        )
    except KubeForbiddenError:
        return None
    except KubeNotFoundError:
        return 0, 0
    subsets = answer.get("subsets") or []
    ready = sum(len(subset.get("addresses") or []) for subset in subsets)
    not_ready = sum(len(subset.get("notReadyAddresses") or []) for subset in subsets)
    return ready, not_ready


def require_ready_endpoints(kube: KubeClient, namespace: str, service: Mapping[str, Any]) -> None:
    """Refuse a Service no pod could reach a server through: no endpoints, or none ready."""
    name = str((service.get("metadata") or {}).get("name") or "")
    if (service.get("spec") or {}).get("type") == "ExternalName":
        return
    counts = _endpoint_counts(kube, namespace, name)
    if counts is None or counts[0] > 0:
        return
    deployments = [deployment for deployment, _ in _deployments_behind(kube, namespace, service)]
    if deployments:
        see = f"see servedeck deploy status {deployments[0]} -n {namespace}"
    else:
        see = f"see kubectl get pods -n {namespace} (the pods its selector matches)"
    _, not_ready = counts
    if not_ready:
        raise ConfigError(
            f"service {name} in namespace {namespace} has no ready endpoints ({not_ready} not ready: the "
            f"server is still loading or failing its readiness probe); {see}"
        )
    selector = ",".join(f"{k}={v}" for k, v in ((service.get("spec") or {}).get("selector") or {}).items())
    why = f"no running pod matches its selector {selector}" if selector else "it has no selector"
    raise ConfigError(f"service {name} in namespace {namespace} has no endpoints ({why}); {see}")


def service_target(
    kube: KubeClient, namespace: str, name: str, *, model: str | None, api_key_env: str | None
) -> Target:
    service = kube.get("Service", name, namespace)
    if service is None:
        raise KubeNotFoundError(
            f"service {name!r} not found in namespace {namespace}; pass the vLLM Service's name "
            f"(servedeck deploy list -n {namespace} shows them) or --namespace"
        )
    require_ready_endpoints(kube, namespace, service)
    chosen = model or model_behind(kube, namespace, service)
    if not chosen:
        raise ConfigError(
            f"cannot tell which model service {name!r} serves (no vLLM Deployment with --model behind it); "
            "pass --model MODEL"
        )
    return Target(
        name=f"{namespace}/{name}",
        base_url=service_dns_url(name, namespace, service_port(service)),
        model=chosen,
        kind=TargetKind.VLLM,
        api_key_env=api_key_env,
        capabilities=IN_CLUSTER_CAPABILITIES,
    )


def url_target(url: str, *, model: str | None, api_key_env: str | None) -> Target:
    endpoint = parse_endpoint(url)
    if not model:
        raise ConfigError(
            f"--target {url} is reached from the pods, not from here, so its models cannot be listed; "
            "pass --model MODEL (or use --service NAME to read it from the Deployment)"
        )
    return Target(
        name=endpoint.host,
        base_url=url,
        model=model,
        kind=TargetKind.VLLM,
        api_key_env=api_key_env,
        capabilities=IN_CLUSTER_CAPABILITIES,
    )
