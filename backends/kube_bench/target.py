"""The bench target as the pods see it: a Service's cluster DNS name, or an in-cluster URL.

This machine cannot reach either, so nothing is probed: the model comes from ``--model`` or from the
vLLM Deployment behind the Service (its ``--model`` argument), and the target is taken to be vLLM's
OpenAI server (usage in every stream chunk), which is what ServeDeck deploys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.bench.loadgen.requests import parse_endpoint
from backends.bench.models import Target, TargetCapabilities, TargetKind
from backends.errors import ConfigError
from backends.kube.client import KubeClient
from backends.kube.errors import KubeNotFoundError
from backends.kube.inventory import DEFAULT_VLLM_PORT, describe_deployment

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


def model_behind(kube: KubeClient, namespace: str, service: Mapping[str, Any]) -> str | None:
    name = (service.get("metadata") or {}).get("name")
    for deployment in kube.list_objects("Deployment", namespace):
        row = describe_deployment(deployment, [service])
        if row is not None and row.service == name and row.model:
            return row.model
    return None


def service_target(
    kube: KubeClient, namespace: str, name: str, *, model: str | None, api_key_env: str | None
) -> Target:
    service = kube.get("Service", name, namespace)
    if service is None:
        raise KubeNotFoundError(
            f"service {name!r} not found in namespace {namespace}; pass the vLLM Service's name "
            f"(servedeck deploy list -n {namespace} shows them) or --namespace"
        )
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
