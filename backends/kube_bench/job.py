"""Objects of a distributed bench: bundle ConfigMaps, an optional API-key Secret, one Job per level.

The Job is Indexed (``completionMode: Indexed``, ``completions = parallelism = N``): pod ``k`` gets
``JOB_COMPLETION_INDEX=k`` and takes share ``k`` of the level. ``backoffLimitPerIndex: 0`` keeps a
failed pod from being retried (a retry would send its share again, late) without failing the other
indexes, so the pods that do run keep their results. A server older than 1.29 drops that field (and
would retry up to the default ``backoffLimit`` of 6), so there the Job gets ``backoffLimit: 0``: no
retry, but the first failed pod fails the Job and its other pods are stopped. Every object carries
``app.kubernetes.io/managed-by: servedeck`` and ``servedeck.io/bench-run: <run id>``; the driver deletes
them when the run ends (``ttlSecondsAfterFinished`` cleans a Job up if the driver died).

The pod's command is ``pod_bootstrap`` run by the image's ``python3``: it unzips ServeDeck's wheel from the
mounted ConfigMaps, uses the image's own packages (an image that has the worker's dependencies
downloads nothing and needs no pip) and installs only the missing ones with pip, then runs the worker.
A pod that cannot writes one line to its termination message (``FallbackToLogsOnError`` gives the log's
tail for any other failure).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backends.kube.resources import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from backends.kube_bench import pod_bootstrap
from backends.kube_bench.plan import (
    BUNDLE_DIR_ENV,
    DEFAULT_BUNDLE_DIR,
    INDEX_ENV,
    PLAN_ENV,
    WorkerPlan,
    encode_plan,
)

DEFAULT_LOADGEN_IMAGE = "python:3.11-slim"
BENCH_RUN_LABEL = "servedeck.io/bench-run"
BENCH_LEVEL_LABEL = "servedeck.io/bench-level"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "loadgen"
CONTAINER_NAME = "loadgen"
WORKER_MODULE = pod_bootstrap.WORKER_MODULE
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_NAME_LABEL = "job-name"
RUN_AS_USER = 65532
JOB_TTL_S = 600
API_KEY_SECRET_KEY = "api-key"


def resource_prefix(run_id: str) -> str:
    return f"servedeck-bench-{run_id}"


def job_name(run_id: str, level_index: int) -> str:
    return f"{resource_prefix(run_id)}-l{level_index}"


def bundle_configmap_name(run_id: str, part: int) -> str:
    return f"{resource_prefix(run_id)}-bundle-{part}"


def api_key_secret_name(run_id: str) -> str:
    return f"{resource_prefix(run_id)}-api-key"


def run_labels(run_id: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY_VALUE, BENCH_RUN_LABEL: run_id, COMPONENT_LABEL: COMPONENT}


def run_selector(run_id: str) -> str:
    return ",".join(f"{key}={value}" for key, value in run_labels(run_id).items())


def level_labels(run_id: str, level_index: int) -> dict[str, str]:
    return {**run_labels(run_id), BENCH_LEVEL_LABEL: str(level_index)}


def render_bundle_configmaps(
    run_id: str, namespace: str, parts: Sequence[dict[str, bytes]]
) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": bundle_configmap_name(run_id, index),
                "namespace": namespace,
                "labels": run_labels(run_id),
            },
            "binaryData": {key: base64.b64encode(data).decode("ascii") for key, data in part.items()},
        }
        for index, part in enumerate(parts)
    ]


def render_api_key_secret(run_id: str, namespace: str, api_key: str) -> dict[str, Any]:
    """The target's API key for the pods (the caller passes the value to apply's redaction list)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": api_key_secret_name(run_id),
            "namespace": namespace,
            "labels": run_labels(run_id),
        },
        "type": "Opaque",
        "stringData": {API_KEY_SECRET_KEY: api_key},
    }


def bootstrap_source() -> str:
    """The pod's entry point (``pod_bootstrap``), as the text ``python3 -c`` runs."""
    return Path(pod_bootstrap.__file__).read_text(encoding="utf-8")


def pod_command(wheel_name: str, requirements: Sequence[str]) -> list[str]:
    """The container's command: the bootstrap, given the carried wheel's name and the worker's needs."""
    return ["python3", "-c", bootstrap_source(), wheel_name, *requirements]


def render_job(
    plan: WorkerPlan,
    *,
    namespace: str,
    image: str,
    wheel_name: str,
    requirements: Sequence[str],
    configmaps: Sequence[str],
    api_key_secret: str | None = None,
    backoff_limit_per_index: bool = True,
) -> dict[str, Any]:
    """The level's Job; ``backoff_limit_per_index=False`` for a server older than 1.29."""
    labels = level_labels(plan.run_id, plan.level_index)
    env: list[dict[str, Any]] = [
        {
            "name": INDEX_ENV,
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
            },
        },
        {"name": PLAN_ENV, "value": encode_plan(plan)},
        {"name": BUNDLE_DIR_ENV, "value": DEFAULT_BUNDLE_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": pod_bootstrap.TERMINATION_LOG_ENV, "value": TERMINATION_MESSAGE_PATH},
    ]
    if plan.api_key_env and api_key_secret:
        env.append(
            {
                "name": plan.api_key_env,
                "valueFrom": {"secretKeyRef": {"name": api_key_secret, "key": API_KEY_SECRET_KEY}},
            }
        )
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": pod_command(wheel_name, requirements),
        "env": env,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "bundle", "mountPath": DEFAULT_BUNDLE_DIR, "readOnly": True}],
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {
                "name": "bundle",
                "projected": {"sources": [{"configMap": {"name": name}} for name in configmaps]},
            }
        ],
        # Spread the load generators over nodes: one node's NIC and CPUs should not be the bottleneck.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": labels},
            }
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(plan.run_id, plan.level_index),
            "namespace": namespace,
            "labels": labels,
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": plan.pods,
            "parallelism": plan.pods,
            **(
                {"backoffLimitPerIndex": 0, "maxFailedIndexes": plan.pods}
                if backoff_limit_per_index
                else {"backoffLimit": 0}
            ),
            "ttlSecondsAfterFinished": JOB_TTL_S,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
