"""A Job controller and kubelet for the fake Kubernetes API: Indexed Jobs get pods that "run".

``FakeJobController`` watches (polls) the fake API server for Jobs, creates one pod per completion
index the way the Job controller does (labels ``batch.kubernetes.io/job-name``,
``batch.kubernetes.io/job-completion-index``, the index annotation, the template's labels) and runs a
``behaviour`` for each pod on its own thread. A behaviour gets a ``FakePod`` and drives it like a kubelet
would: ``running()``, ``log(...)``, ``succeed()``/``fail(...)``, ``image_pull_backoff()``. Deleting the Job
terminates its pods: ``FakePod.terminating`` is set (a behaviour may still write its last lines), then the
pod ends and disappears. A failed pod is retried as the real controller does: not when the stored Job
has ``backoffLimitPerIndex`` (1.29+), else by a replacement pod for its index until the failures exceed
``backoffLimit`` (default 6), when the Job fails and its other pods are terminated.

Behaviours here: ``scripted_worker`` prints the protocol lines of prepared records (what a pod would
print), ``exec_worker`` runs the real ``python -m tui.cli.bench_worker`` in a subprocess with the
pod's env and its mounted bundle, piping its stdout into the pod log, ``run_container(image)`` runs the
container's own command as a kubelet would (``$(VAR)`` expansion, the bundle and termination-message
paths mapped to temporary files, the ``FakeImage``'s Python first on ``PATH``, the termination message
read back into the pod's status), and ``image_pull_backoff``.

``VersionedKubeApi`` answers ``/version`` with a given version and, below 1.29, drops the Job fields of
the disabled ``JobBackoffLimitPerIndex`` gate, as such a server does.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiohttp import web

from backends.bench.models import ClientStats, RequestRecord
from backends.kube_bench.codec import PodReady, PodStart, PodSummary, encode
from backends.kube_bench.job import (
    COMPLETION_INDEX_ANNOTATION,
    JOB_NAME_LABEL,
    LEGACY_JOB_NAME_LABEL,
    WORKER_MODULE,
)
from backends.kube_bench.plan import BUNDLE_DIR_ENV, INDEX_ENV, PLAN_ENV, WorkerPlan, parse_plan
from backends.kube_bench.shares import pod_share
from tests.fakes.kube_api import STOP_TIMEOUT_S, FakeKubeApi, now_rfc3339

REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.02
DEFAULT_BACKOFF_LIMIT = 6
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_MAX_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048

Behaviour = Callable[["FakePod"], None]


class FakePod:
    """One pod of a Job on the fake API server, driven by a behaviour thread."""

    def __init__(self, api: FakeKubeApi, job: dict[str, Any], index: int) -> None:
        self.api = api
        self.job = job
        self.index = index
        self.namespace = str(job["metadata"]["namespace"])
        job_name = str(job["metadata"]["name"])
        self.name = f"{job_name}-{index}-{uuid.uuid4().hex[:5]}"
        template = job["spec"]["template"]
        self.spec: dict[str, Any] = json.loads(json.dumps(template["spec"]))
        self.container = str(self.spec["containers"][0]["name"])
        labels = dict(template.get("metadata", {}).get("labels") or {})
        labels.update(
            {
                JOB_NAME_LABEL: job_name,
                LEGACY_JOB_NAME_LABEL: job_name,
                COMPLETION_INDEX_ANNOTATION: str(index),
            }
        )
        self.labels = labels
        self.terminating = threading.Event()
        self.ended = threading.Event()
        self.deleted = False
        self.phase = "Pending"
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._put({"phase": "Pending"})

    # --- what the pod sees ------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The container's env with ``valueFrom`` resolved (index annotation, Secret keys)."""
        resolved: dict[str, str] = {}
        for item in self.spec["containers"][0].get("env") or []:
            if "value" in item:
                resolved[item["name"]] = str(item["value"])
                continue
            source = item.get("valueFrom") or {}
            if "fieldRef" in source:
                resolved[item["name"]] = str(self.index)
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.api.get("Secret", ref["name"], self.namespace) or {}
                raw = (secret.get("data") or {}).get(ref["key"], "")
                resolved[item["name"]] = base64.b64decode(raw).decode()
        return resolved

    @property
    def plan(self) -> WorkerPlan:
        return parse_plan(self.env()[PLAN_ENV])

    def write_bundle(self, directory: Path) -> Path:
        """The projected volume: every key of every ConfigMap the pod mounts, as files."""
        directory.mkdir(parents=True, exist_ok=True)
        for volume in self.spec.get("volumes") or []:
            for source in (volume.get("projected") or {}).get("sources") or []:
                name = source["configMap"]["name"]
                configmap = self.api.get("ConfigMap", name, self.namespace)
                if configmap is None:
                    raise AssertionError(f"pod {self.name} mounts ConfigMap {name}, which does not exist")
                for key, value in (configmap.get("binaryData") or {}).items():
                    (directory / key).write_bytes(base64.b64decode(value))
        return directory

    # --- what the kubelet does ------------------------------------------------------------------

    def _put(self, status: dict[str, Any]) -> None:
        with self._lock:
            if self.deleted:
                return
            self.api.put(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "labels": self.labels,
                        "annotations": {COMPLETION_INDEX_ANNOTATION: str(self.index)},
                        "creationTimestamp": now_rfc3339(),
                    },
                    "spec": self.spec,
                    "status": status,
                }
            )

    def running(self) -> None:
        # The scheduler binds the pod to a node; the API server streams logs only of a bound pod.
        self.spec = {**self.spec, "nodeName": "fake-node"}
        self._put(
            {
                "phase": "Running",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": self.container,
                        "ready": True,
                        "state": {"running": {"startedAt": now_rfc3339()}},
                    }
                ],
            }
        )

    def log(self, *lines: str) -> None:
        if not self.deleted:
            self.lines.extend(lines)
            self.api.append_log(self.namespace, self.name, *lines, container=self.container)

    def _termination_message(self, exit_code: int, written: str) -> str:
        """What the kubelet reports: the file's text, else (FallbackToLogsOnError, on error) the log tail."""
        if written.strip():
            return written
        policy = self.spec["containers"][0].get("terminationMessagePolicy") or "File"
        if policy != "FallbackToLogsOnError" or exit_code == 0:
            return ""
        tail = "\n".join(self.lines[-FALLBACK_LOG_LINES:])
        return tail.encode()[-FALLBACK_LOG_BYTES:].decode(errors="ignore")

    def _end(self, phase: str, exit_code: int, reason: str, written: str = "") -> None:
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": reason, "finishedAt": now_rfc3339()}
        message = self._termination_message(exit_code, written)
        if message:
            terminated["message"] = message
        self.phase = phase
        self._put(
            {
                "phase": phase,
                "containerStatuses": [
                    {"name": self.container, "ready": False, "state": {"terminated": terminated}}
                ],
            }
        )
        if not self.deleted:
            self.api.close_log(self.namespace, self.name, container=self.container)
        self.ended.set()

    def succeed(self) -> None:
        self._end("Succeeded", 0, "Completed")

    def fail(self, exit_code: int = 1, reason: str = "Error", termination_message: str = "") -> None:
        self._end("Failed", exit_code, reason, termination_message)

    def image_pull_backoff(self, image: str | None = None) -> None:
        image = image or self.spec["containers"][0]["image"]
        self._put(
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": self.container,
                        "ready": False,
                        "state": {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": f'Back-off pulling image "{image}"',
                            }
                        },
                    }
                ],
            }
        )

    def unschedulable(self, message: str = "0/3 nodes are available: 3 Insufficient cpu.") -> None:
        self._put(
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
                ],
            }
        )

    def remove(self) -> None:
        with self._lock:
            if self.deleted:
                return
            self.deleted = True
            if self.api.get("Pod", self.name, self.namespace) is not None:
                self.api.delete_object("Pod", self.name, self.namespace)


class FakeJobController:
    """Creates and runs the pods of every Job that appears; terminates them when the Job goes away."""

    def __init__(self, api: FakeKubeApi, behaviour: Behaviour | Callable[[FakePod], Behaviour]) -> None:
        self.api = api
        self.behaviour = behaviour
        self.pods: list[FakePod] = []
        self.jobs_seen: list[dict[str, Any]] = []
        self.failed_jobs: list[str] = []
        self._jobs: dict[tuple[str, str], list[FakePod]] = {}
        self._counted: set[str] = set()
        self._failures: dict[tuple[str, str], int] = {}
        self._threads: list[threading.Thread] = []
        self._terminations: list[threading.Thread] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-job-controller", daemon=True)

    def __enter__(self) -> FakeJobController:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(STOP_TIMEOUT_S)
        self._reconcile()  # Jobs deleted since the last poll: their pods go, as garbage collection does
        for thread in self._terminations:
            thread.join(STOP_TIMEOUT_S)
        for pods in self._jobs.values():
            for pod in pods:
                pod.terminating.set()
        for thread in self._threads:
            thread.join(STOP_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._reconcile()

    def _reconcile(self) -> None:
        jobs = self.api.list_objects("Job")
        current = {(job["metadata"]["namespace"], job["metadata"]["name"]): job for job in jobs}
        for key, job in current.items():
            if key not in self._jobs:
                self.jobs_seen.append(job)
                completions = int(job["spec"]["completions"])
                self._jobs[key] = [self._start_pod(job, index) for index in range(completions)]
            else:
                self._retry_failed(key, job)
        for key in [key for key in self._jobs if key not in current]:
            for pod in self._jobs.pop(key):
                thread = threading.Thread(target=self._terminate, args=(pod,), daemon=True)
                self._terminations.append(thread)
                thread.start()

    def _retry_failed(self, key: tuple[str, str], job: dict[str, Any]) -> None:
        if key[1] in self.failed_jobs:
            return
        pods = self._jobs[key]
        for pod in list(pods):
            if pod.phase != "Failed" or pod.name in self._counted:
                continue
            self._counted.add(pod.name)
            if "backoffLimitPerIndex" in job["spec"]:
                continue  # limit 0 per index: the index fails, the others go on
            self._failures[key] = self._failures.get(key, 0) + 1
            if self._failures[key] > int(job["spec"].get("backoffLimit", DEFAULT_BACKOFF_LIMIT)):
                self.failed_jobs.append(key[1])
                for other in pods:
                    if not other.ended.is_set():
                        thread = threading.Thread(target=self._terminate, args=(other,), daemon=True)
                        self._terminations.append(thread)
                        thread.start()
                return
            pods.append(self._start_pod(job, pod.index))

    def _start_pod(self, job: dict[str, Any], index: int) -> FakePod:
        pod = FakePod(self.api, job, index)
        self.pods.append(pod)
        thread = threading.Thread(target=self._behave, args=(pod,), name=f"fake-pod-{pod.name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return pod

    def _behave(self, pod: FakePod) -> None:
        try:
            self.behaviour(pod)
        finally:
            if not pod.ended.is_set() and not pod.terminating.is_set():
                pod.ended.set()

    @staticmethod
    def _terminate(pod: FakePod) -> None:
        pod.terminating.set()
        pod.ended.wait(STOP_TIMEOUT_S)
        pod.remove()


# --- behaviours ---------------------------------------------------------------------------------------


def fabricated_records(plan: WorkerPlan, index: int, *, output_tokens: int = 8) -> list[RequestRecord]:
    """Deterministic, plausible records for share ``index`` of ``plan`` (times from the pod's zero)."""
    share = pod_share(plan.level, plan.num_requests, plan.pods, index, plan.seed)
    records = []
    for position, (request, arrival) in enumerate(zip(share.indices, share.arrivals, strict=True)):
        sent = arrival + 0.0005 * (position % 5)
        first = sent + 0.020 + 0.001 * (request % 7) + 0.0003 * index
        chunks = [first + 0.004 * (k + (request % 3)) for k in range(output_tokens)]
        records.append(
            RequestRecord(
                index=request,
                prompt_len=10 + request % 13,
                expected_output_len=output_tokens,
                queued_at=arrival,
                sent_at=sent,
                first_token_at=first,
                chunk_times=chunks,
                input_tokens=10 + request % 13,
                output_tokens=output_tokens,
                finish_reason="length",
                http_status=200,
                success=True,
            )
        )
    return records


def scripted_worker(zero_epoch_offset: Callable[[int], float] = lambda _i: 0.0) -> Behaviour:
    """Pods that print what a worker would for ``fabricated_records`` (pod ``i`` late by the offset)."""

    def behave(pod: FakePod) -> None:
        plan = pod.plan
        pod.running()
        pod.log("Collecting pydantic>=2.7", "Successfully installed servedeck-0.1.0")
        records = fabricated_records(plan, pod.index)
        late = zero_epoch_offset(pod.index)
        pod.log(encode(PodReady(pod_index=pod.index, connections=2, epoch=plan.start_at_epoch - 1)))
        pod.log(encode(PodStart(pod_index=pod.index, zero_epoch=plan.start_at_epoch + late, late_s=late)))
        pod.log(*(encode(record) for record in records))
        duration = max(r.chunk_times[-1] for r in records) if records else 0.0
        pod.log(
            encode(
                PodSummary(
                    pod_index=pod.index, records=len(records), duration_s=duration, client=ClientStats()
                )
            )
        )
        pod.succeed()

    return behave


def image_pull_backoff_for(indices: set[int], otherwise: Behaviour) -> Behaviour:
    def behave(pod: FakePod) -> None:
        if pod.index in indices:
            pod.image_pull_backoff()
            pod.terminating.wait()
            pod.ended.set()
            return
        otherwise(pod)

    return behave


def exec_worker(pod: FakePod) -> None:
    """Run the real worker module with the pod's env and bundle; its stdout becomes the pod log."""
    with tempfile.TemporaryDirectory(prefix="fake-pod-") as tmp:
        bundle = pod.write_bundle(Path(tmp) / "bundle")
        env = {**os.environ, **pod.env(), BUNDLE_DIR_ENV: str(bundle), INDEX_ENV: str(pod.index)}
        env.pop("HOME", None)
        env["HOME"] = tmp
        pod.running()
        process = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def on_terminate() -> None:
            pod.terminating.wait()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

        threading.Thread(target=on_terminate, daemon=True).start()
        assert process.stdout is not None
        for line in process.stdout:
            pod.log(line.rstrip("\n"))
        code = process.wait()
        if code == 0:
            pod.succeed()
        else:
            pod.fail(code)


class SkewedClockKubeApi(FakeKubeApi):
    """A fake API server whose clock (the ``Date`` header) is ``skew_s`` seconds off this machine's."""

    def __init__(self, skew_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skew_s = skew_s

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        response = await super()._middleware(request, handler)
        if not response.prepared:
            response.headers["Date"] = formatdate(time.time() + self.skew_s, usegmt=True)
        return response


class VersionedKubeApi(FakeKubeApi):
    """A fake API server of a given version; below 1.29 it drops the fields of ``JobBackoffLimitPerIndex``."""

    def __init__(self, git_version: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.git_version = git_version
        match = re.match(r"v(\d+)\.(\d+)", git_version)
        assert match, git_version
        self.major, self.minor = match.group(1), match.group(2)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "major": self.major,
                "minor": self.minor,
                "gitVersion": self.git_version,
                "platform": "linux/amd64",
            }
        )

    def _validate(self, resource: Any, namespace: str | None, obj: Any, url_name: str | None) -> None:
        super()._validate(resource, namespace, obj, url_name)
        if resource.kind == "Job" and (int(self.major), int(self.minor)) < (1, 29):
            spec = obj.get("spec") or {}
            spec.pop("backoffLimitPerIndex", None)
            spec.pop("maxFailedIndexes", None)


# --- running the container's own command --------------------------------------------------------------

_DEP_PATTERNS = {
    "pydantic": ("pydantic", "pydantic-*.dist-info"),
    "pydantic_core": ("pydantic_core", "pydantic_core-*.dist-info"),
    "annotated_types": ("annotated_types", "annotated_types-*.dist-info"),
    "typing_extensions": ("typing_extensions.py", "typing_extensions-*.dist-info"),
    "typing_inspection": ("typing_inspection", "typing_inspection-*.dist-info"),
    "numpy": ("numpy", "numpy.libs", "numpy-*.dist-info"),
    "httptools": ("httptools", "httptools-*.dist-info"),
    "uvloop": ("uvloop", "uvloop-*.dist-info"),
    "pip": ("pip", "pip-*.dist-info"),
}
WORKER_DEPS = ("pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection")
WORKER_DEPS += ("numpy", "httptools")


@dataclass
class FakeImage:
    """A container image stand-in: a Python (a venv without this project) holding only ``packages``."""

    root: Path
    packages: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        return self.root / "bin"


def fake_image(root: Path, packages: tuple[str, ...], env: Mapping[str, str] | None = None) -> FakeImage:
    """A venv at ``root`` (no pip) whose site-packages links just ``packages`` from this environment."""
    import pydantic

    source = Path(pydantic.__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)],
        check=True,
        timeout=60,
        capture_output=True,
    )
    (site,) = (root / "lib").glob("python3*/site-packages")
    for package in packages:
        for pattern in _DEP_PATTERNS[package]:
            for path in source.glob(pattern):
                (site / path.name).symlink_to(path)
    return FakeImage(root=root, packages=packages, env=dict(env or {}))


def _expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion in command and args (``$$`` escapes)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def run_container(image: FakeImage) -> Behaviour:
    """Pods that run their container's command in ``image`` with the bundle mounted, like a kubelet."""

    def behave(pod: FakePod) -> None:
        container = pod.spec["containers"][0]
        with tempfile.TemporaryDirectory(prefix="fake-pod-") as tmp:
            work = Path(tmp)
            mounts = {str(m["mountPath"]): str(work / "mnt" / m["name"]) for m in container["volumeMounts"]}
            (bundle_volume,) = [v for v in pod.spec.get("volumes") or [] if v.get("projected")]
            pod.write_bundle(work / "mnt" / bundle_volume["name"])
            termination_path = str(container.get("terminationMessagePath") or TERMINATION_MESSAGE_PATH)
            termination_file = work / "termination-log"
            termination_file.write_text("")
            mounts[termination_path] = str(termination_file)
            (work / "tmp").mkdir()

            def mapped(value: str) -> str:
                for mount, local in mounts.items():
                    if value == mount or value.startswith(mount + "/"):
                        return local + value[len(mount) :]
                return value

            env = {
                "PATH": f"{image.bin}:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                **image.env,
                **{name: mapped(value) for name, value in pod.env().items()},
                "TMPDIR": str(work / "tmp"),
            }
            env["HOME"] = str(work / "tmp")
            argv = [
                mapped(_expand(arg, env)) for arg in [*container["command"], *(container.get("args") or [])]
            ]
            pod.running()
            process = subprocess.Popen(
                argv,
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )

            def on_terminate() -> None:
                pod.terminating.wait()
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)

            threading.Thread(target=on_terminate, daemon=True).start()
            assert process.stdout is not None
            for line in process.stdout:
                pod.log(line.rstrip("\n"))
            code = process.wait()
            written = termination_file.read_bytes()[:TERMINATION_MESSAGE_MAX_BYTES].decode(errors="ignore")
            if code == 0:
                pod.succeed()
            else:
                pod.fail(code, termination_message=written)

    return behave


def endpoint_slice(service: str, namespace: str, *, ready: int, not_ready: int = 0) -> dict[str, Any]:
    """The EndpointSlice the control plane keeps for ``service``: ``ready`` + ``not_ready`` pod addresses."""
    endpoints = [
        {
            "addresses": [f"10.0.0.{k + 1}"],
            "conditions": {"ready": k < ready, "serving": k < ready, "terminating": False},
            "targetRef": {"kind": "Pod", "name": f"{service}-pod-{k}", "namespace": namespace},
        }
        for k in range(ready + not_ready)
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-abcde",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
    }
