"""Objects of a distributed bench: bundle ConfigMaps, an optional API-key Secret, one Job per level.

The Job is Indexed (``completionMode: Indexed``, ``completions = parallelism = N``): pod ``k`` gets
``JOB_COMPLETION_INDEX=k`` and takes share ``k`` of the level. ``backoffLimitPerIndex: 0`` keeps a
failed pod from being retried (a retry would send its share again, late) without failing the other
indexes, so the pods that do run keep their results. Every object carries
``app.kubernetes.io/managed-by: servedeck`` and ``servedeck.io/bench-run: <run id>``; the driver deletes
them when the run ends (``ttlSecondsAfterFinished`` cleans a Job up if the driver died).

The pod's command installs ServeDeck's wheel from the mounted ConfigMaps into a venv that sees the
image's own packages (so an image that already has the dependencies downloads nothing), installs the
worker's few dependencies from PyPI when they are missing, then runs the worker.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence
from typing import Any

from backends.kube.resources import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from backends.kube_bench.plan import BUNDLE_DIR_ENV, DEFAULT_BUNDLE_DIR, INDEX_ENV, PLAN_ENV, WorkerPlan

DEFAULT_LOADGEN_IMAGE = "python:3.11-slim"
BENCH_RUN_LABEL = "servedeck.io/bench-run"
BENCH_LEVEL_LABEL = "servedeck.io/bench-level"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "loadgen"
CONTAINER_NAME = "loadgen"
WORKER_MODULE = "tui.commands.bench_worker"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_NAME_LABEL = "job-name"
VENV = "/tmp/servedeck-venv"
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


def bootstrap_script(wheel_name: str, requirements: Sequence[str]) -> str:
    """The pod's shell command: install the carried wheel and the worker's dependencies, run the worker."""
    wheel = shlex.quote(f"/tmp/{wheel_name}")
    python = f"{VENV}/bin/python"
    return "\n".join(
        [
            "set -eu",
            f'cat "${BUNDLE_DIR_ENV}"/wheel.part-* > {wheel}',
            f"python -m venv --system-site-packages {VENV}",
            f"{python} -m pip install --quiet --no-deps --no-index {wheel}",
            f"{python} -m pip install --quiet {' '.join(shlex.quote(r) for r in requirements)}",
            f"exec {python} -m {WORKER_MODULE}",
        ]
    )


def render_job(
    plan: WorkerPlan,
    *,
    namespace: str,
    image: str,
    wheel_name: str,
    requirements: Sequence[str],
    configmaps: Sequence[str],
    api_key_secret: str | None = None,
) -> dict[str, Any]:
    labels = level_labels(plan.run_id, plan.level_index)
    env: list[dict[str, Any]] = [
        {
            "name": INDEX_ENV,
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
            },
        },
        {"name": PLAN_ENV, "value": plan.model_dump_json()},
        {"name": BUNDLE_DIR_ENV, "value": DEFAULT_BUNDLE_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PIP_DISABLE_PIP_VERSION_CHECK", "value": "1"},
        {"name": "PIP_NO_INPUT", "value": "1"},
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
        "command": ["sh", "-c", bootstrap_script(wheel_name, requirements)],
        "env": env,
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
            "backoffLimitPerIndex": 0,
            "maxFailedIndexes": plan.pods,
            "ttlSecondsAfterFinished": JOB_TTL_S,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
