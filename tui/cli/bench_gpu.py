"""`servedeck bench` GPU telemetry flags: dcgm-exporter by URL, or found in the cluster for a deployment."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "GPU telemetry (dcgm-exporter; a twin's own simulated GPUs are read without flags)"
    )
    group.add_argument(
        "--gpu-metrics",
        metavar="URL[,URL]",
        help="dcgm-exporter /metrics to read beside the load (one per node, comma-separated)",
    )
    group.add_argument(
        "--gpu-deployment",
        metavar="[NAMESPACE/]NAME",
        help="find dcgm-exporter on this Kubernetes deployment's nodes (GKE managed DCGM, the GPU "
        "operator's, or --gpu-exporter), port-forward it on 127.0.0.1 and keep only its pods' GPUs",
    )
    group.add_argument(
        "--gpu-exporter",
        metavar="NAMESPACE/LABEL=VALUE",
        help="where dcgm-exporter runs when it is none of the known ones (with --gpu-deployment)",
    )
    group.add_argument(
        "--gpu-pods", metavar="POD[,POD]", help="with --gpu-metrics: keep only these pods' GPUs"
    )


def _split(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


@contextlib.contextmanager
def gpu_telemetry(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """SweepConfig fields for GPU telemetry; a deployment's exporters stay forwarded inside the block.
    No exporter found is one note on stderr, and the bench runs without GPU data."""
    from backends.errors import ConfigError

    url, deployment = getattr(args, "gpu_metrics", None), getattr(args, "gpu_deployment", None)
    if url and deployment:
        raise ConfigError("give --gpu-metrics or --gpu-deployment, not both")
    if getattr(args, "gpu_exporter", None) and not deployment:
        raise ConfigError("--gpu-exporter needs --gpu-deployment")
    if url:
        from backends.telemetry.scrape import metrics_urls

        metrics_urls(url)  # a malformed URL is one line now, not a state per level
        yield {"gpu_metrics_url": url, "gpu_metrics_pods": _split(getattr(args, "gpu_pods", None))}
        return
    if not deployment:
        yield {}
        return
    from backends.kube.client import KubeClient
    from backends.telemetry.cluster import discover_exporters, forward_exporters, parse_source

    namespace, slash, name = deployment.rpartition("/")
    sources = (parse_source(args.gpu_exporter),) if getattr(args, "gpu_exporter", None) else None
    with KubeClient.connect(getattr(args, "kubeconfig", None), getattr(args, "context", None)) as client:
        namespace = (namespace if slash else None) or getattr(args, "namespace", None)
        namespace = namespace or client.default_namespace
        discovery = discover_exporters(client, name, namespace, sources)
        if discovery.message:
            print(f"note: {discovery.message}", file=sys.stderr)
        if not discovery.found:
            yield {}
            return
        with forward_exporters(client, discovery) as forwarded:
            where = ", ".join(f"{e.namespace}/{e.pod} ({e.node})" for e in discovery.exporters)
            print(f"GPU metrics: {discovery.exporters[0].source} exporter {where}", file=sys.stderr)
            yield {"gpu_metrics_url": forwarded, "gpu_metrics_pods": discovery.target_pods}
