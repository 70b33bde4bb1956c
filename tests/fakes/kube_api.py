"""A fake Kubernetes API server over real HTTP on 127.0.0.1, for the kube client tests.

It speaks the parts of the API ServeDeck uses, the way the real server does:
- REST under ``/api/v1`` and ``/apis/{group}/{version}``: create (POST), get, list, patch
  (``application/apply-patch+yaml`` server-side apply with ``fieldManager``/``force``, merge and
  strategic-merge patches), delete, for namespaces, pods, services, secrets, configmaps, PVCs, events,
  deployments (and their ``scale`` subresource), replicasets, storageclasses, jobs and, unless turned
  off, LeaderWorkerSets; label selectors (``=``, ``!=``, ``in``, ``notin``, exists) and the field
  selectors the client sends;
- ``watch=true`` streams: chunked JSON lines ``{"type": ..., "object": ...}``, starting with ADDED
  for what exists (or replaying history after ``resourceVersion``), ending at ``timeoutSeconds``;
- ``pods/{name}/log`` with ``follow=true`` (chunked text, new lines as they are appended);
- ``pods/{name}/portforward``: the WebSocket protocol ``v4.channel.k8s.io`` (per port a data channel
  2i and an error channel 2i+1, each opened by a frame ``[channel, port lo, port hi]``, then frames
  ``[channel] + bytes``), piping to a TCP address the test gives for that pod and port;
- server-side apply tracks field ownership per manager in ``managedFields`` (``fieldsV1``; lists of
  named items are keyed by name, other lists are atomic): an apply that changes a field another
  manager owns is a 409 with ``FieldManagerConflict`` causes unless forced; an update (merge patch,
  ``scale``) takes the fields it changes; ``dryRun=All`` checks a write without storing it;
- a pod not scheduled yet answers its log with 204 No Content; a pod marked with
  ``kubelet_unreachable`` answers port-forward with 500 "error dialing backend"; ``tls=`` serves https;
- errors as ``Status`` JSON: 401 without the bearer token, 403 for configured RBAC denials (the real
  message text), 404, 409 (AlreadyExists, apply conflicts), 422 (validation, or forced rejections).

Tests drive state through thread-safe methods (``put``, ``delete_object``, ``append_log``, ...);
``tests.fakes.kube_rollout.ScriptedRollout`` walks a Deployment's pod through a rollout.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import yaml
from aiohttp import WSMsgType, web

from tests.fakes.threaded_aiohttp import STOP_TIMEOUT_S as STOP_TIMEOUT_S
from tests.fakes.threaded_aiohttp import ThreadedAiohttpServer

CALL_TIMEOUT_S = 5.0
DEFAULT_TOKEN = "fake-token-for-tests"
DEFAULT_USER = "system:serviceaccount:ci:servedeck"
PORTFORWARD_PROTOCOL = "v4.channel.k8s.io"
WATCH_DEFAULT_TIMEOUT_S = 60.0
DROP_WATCH: dict[str, Any] = {"type": "DROP"}  # queued to end a watch without a closing bookmark


@dataclass(frozen=True)
class FakeResource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``plural[.group]``, as the real server names a resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[FakeResource, ...] = (
    FakeResource("", "v1", "namespaces", "Namespace", False),
    FakeResource("", "v1", "pods", "Pod", True),
    FakeResource("", "v1", "services", "Service", True),
    FakeResource("", "v1", "secrets", "Secret", True),
    FakeResource("", "v1", "configmaps", "ConfigMap", True),
    FakeResource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    FakeResource("", "v1", "events", "Event", True),
    FakeResource("", "v1", "endpoints", "Endpoints", True),
    FakeResource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    FakeResource("apps", "v1", "deployments", "Deployment", True),
    FakeResource("apps", "v1", "replicasets", "ReplicaSet", True),
    FakeResource("storage.k8s.io", "v1", "storageclasses", "StorageClass", False),
    FakeResource("batch", "v1", "jobs", "Job", True),
    FakeResource("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", "LeaderWorkerSet", True),
    FakeResource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True),
)
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KIND = {r.kind: r for r in RESOURCES}

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class ApiError(Exception):
    """Raised inside handlers; answered as a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = status_body(code, reason, message, details)
        self.code = code


def not_found(resource: FakeResource, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{resource.qualified} "{name}" not found',
        {"name": name, "group": resource.group, "kind": resource.plural},
    )


# --- selectors -----------------------------------------------------------------------------------

_SET_REQUIREMENT = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for requirement in _split_selector(selector):
        set_match = _SET_REQUIREMENT.match(requirement)
        if set_match:
            key, op, values_text = set_match.groups()
            values = {value.strip() for value in values_text.split(",") if value.strip()}
            present = key in labels and labels[key] in values
            if (op == "in") != present:
                return False
        elif "!=" in requirement:
            key, value = (s.strip() for s in requirement.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in requirement:
            key, value = (s.strip() for s in requirement.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def _field_value(obj: dict[str, Any], path: str) -> str:
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, dict):
            return ""
        current = current.get(part)
    return "" if current is None else str(current)


def field_selector_matches(selector: str | None, obj: dict[str, Any]) -> bool:
    if not selector:
        return True
    for requirement in _split_selector(selector):
        if "!=" in requirement:
            key, value = requirement.split("!=", 1)
            if _field_value(obj, key.strip()) == value.strip():
                return False
        else:
            key, value = requirement.replace("==", "=").split("=", 1)
            if _field_value(obj, key.strip()) != value.strip():
                return False
    return True


# --- merging -------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes; lists replace)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _leaf_paths(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaf_paths(item, f"{prefix}.{key}")
    else:
        yield prefix, value


def _lookup(obj: Any, path: str) -> tuple[bool, Any]:
    current = obj
    for part in path.strip(".").split("."):
        if not isinstance(current, dict) or part not in current:
            return False, None
        current = current[part]
    return True, current


# --- field ownership (server-side apply) -------------------------------------------------------

FieldPath = tuple[str, ...]
"""A field as ``fieldsV1`` names it: ("f:spec", "f:template", ..., 'k:{"name":"vllm"}', "f:args")."""

_UNTRACKED_METADATA = (
    "name",
    "namespace",
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
)


def _tracked(obj: Any) -> dict[str, Any]:
    """The part of an object whose fields have owners (not apiVersion/kind/status/identity)."""
    if not isinstance(obj, dict):
        return {}
    tracked = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
    metadata = tracked.get("metadata")
    if isinstance(metadata, dict):
        for key in _UNTRACKED_METADATA:
            metadata.pop(key, None)
        if not metadata:
            tracked.pop("metadata")
    return tracked


def _item_key(item: Any) -> str | None:
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        return "k:" + json.dumps({"name": item["name"]}, separators=(",", ":"))
    return None


def _field_paths(value: Any, prefix: FieldPath = ()) -> set[FieldPath]:
    """Leaf fields of ``value``; lists of named items are keyed by name, other lists are atomic."""
    if isinstance(value, dict) and value:
        paths: set[FieldPath] = set()
        for key, item in value.items():
            paths |= _field_paths(item, (*prefix, f"f:{key}"))
        return paths
    if isinstance(value, list) and value and all(_item_key(item) for item in value):
        paths = set()
        for item in value:
            paths |= _field_paths(item, (*prefix, str(_item_key(item))))
        return paths
    return {prefix} if prefix else set()


def _value_at(obj: Any, path: FieldPath) -> tuple[bool, Any]:
    current = obj
    for part in path:
        if part.startswith("f:") and isinstance(current, dict) and part[2:] in current:
            current = current[part[2:]]
        elif part.startswith("k:") and isinstance(current, list):
            match = [item for item in current if _item_key(item) == part]
            if not match:
                return False, None
            current = match[0]
        else:
            return False, None
    return True, current


def _fields_v1(paths: set[FieldPath]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(part, {})
    return root


def _paths_of(fields: Any, prefix: FieldPath = ()) -> set[FieldPath]:
    if not isinstance(fields, dict) or not fields:
        return {prefix} if prefix else set()
    paths: set[FieldPath] = set()
    for key, child in fields.items():
        if key != ".":
            paths |= _paths_of(child, (*prefix, key))
    return paths


def _without_fields(entry: dict[str, Any], fields: set[FieldPath]) -> dict[str, Any] | None:
    """``entry`` without ``fields``; None when that leaves it owning nothing (the server drops it)."""
    owned = _paths_of(entry.get("fieldsV1"))
    if not owned & fields:
        return entry
    left = owned - fields
    if not left:
        return None
    return {**entry, "fieldsV1": _fields_v1(left)}


def _path_text(path: FieldPath) -> str:
    """``.spec.template.spec.containers[name="vllm"].args``, as the server prints a field."""
    text = ""
    for part in path:
        if part.startswith("k:"):
            key = json.loads(part[2:])
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in key.items()) + "]"
        else:
            text += f".{part[2:]}"
    return text


def _print_manager(entry: dict[str, Any]) -> str:
    text = json.dumps(str(entry.get("manager", "")))
    if entry.get("subresource"):
        text += f" with subresource {json.dumps(entry['subresource'])}"
    if entry.get("operation") == "Update":
        text += f" using {entry.get('apiVersion', '')}"
        if entry.get("time"):
            text += f" at {entry['time']}"
    return text


def _conflict_message(conflicts: list[tuple[dict[str, Any], FieldPath]]) -> str:
    """The real server's wording (k8s.io/apiserver fieldmanager NewConflictError)."""
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        return f"Apply failed with 1 conflict: conflict with {_print_manager(entry)}: {_path_text(path)}"
    by_manager: dict[str, list[str]] = {}
    for entry, path in conflicts:
        by_manager.setdefault(_print_manager(entry), []).append(_path_text(path))
    lines: list[str] = []
    for printed in sorted(by_manager):
        lines.append(f"conflicts with {printed}:")
        lines.extend(f"- {text}" for text in by_manager[printed])
    return f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files), made with openssl."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


# --- the store -----------------------------------------------------------------------------------


@dataclass
class _Watcher:
    resource: FakeResource
    namespace: str | None
    label_selector: str | None
    field_selector: str | None
    queue: asyncio.Queue[dict[str, Any] | None]
    loop: asyncio.AbstractEventLoop

    def wants(self, obj: dict[str, Any]) -> bool:
        metadata = obj.get("metadata", {})
        if self.namespace is not None and metadata.get("namespace") != self.namespace:
            return False
        return label_selector_matches(self.label_selector, metadata.get("labels") or {}) and (
            field_selector_matches(self.field_selector, obj)
        )


@dataclass
class _PodLog:
    lines: list[str] = field(default_factory=list)
    closed: bool = False
    followers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str | None]]] = field(default_factory=list)


@dataclass(frozen=True)
class Denial:
    verb: str
    resource: str
    namespace: str | None = None
    cluster_scope_only: bool = False

    def matches(self, verb: str, resource: str, namespace: str | None) -> bool:
        if (self.verb, self.resource) != (verb, resource):
            return False
        if self.cluster_scope_only:
            return namespace is None
        return self.namespace in (None, namespace)


@dataclass(frozen=True)
class Rejection:
    kind: str
    name: str
    field_path: str
    detail: str


@dataclass(frozen=True)
class InjectedError:
    verb: str
    resource: str
    code: int
    reason: str
    message: str
    skip_dry_run: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: str


class FakeKubeApi(ThreadedAiohttpServer):
    """The fake API server; ``start()``/``stop()`` or use as a context manager."""

    thread_name = "fake-kube-api"
    # Like the real server, notice a client that went away (a stopped watch, a closed log follow).
    runner_options: ClassVar[dict[str, Any]] = {"shutdown_timeout": 0.5, "handler_cancellation": True}

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        user: str = DEFAULT_USER,
        serve_lws: bool = True,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        self.user = user
        self.serve_lws = serve_lws
        self.tls = tls  # (certificate, key) in PEM: serve https
        self.unreachable_kubelets: set[tuple[str, str]] = set()
        self.requests: list[RecordedRequest] = []
        self.denials: list[Denial] = []
        self.rejections: list[Rejection] = []
        self.injected: list[InjectedError] = []
        self._objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self._history: list[tuple[int, str, FakeResource, dict[str, Any]]] = []
        self._watchers: list[_Watcher] = []
        self._logs: dict[tuple[str, str, str], _PodLog] = {}
        self._port_backends: dict[tuple[str, str, int], tuple[str, int]] = {}
        self._forwards: dict[tuple[str, str], list[web.WebSocketResponse]] = {}
        self._lock = threading.RLock()
        self._rv = 100
        self._compacted_rv = 0
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def _start_site(self) -> None:
        if self.tls is None:
            await super()._start_site()
            return
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
        self._runner = web.AppRunner(self._build_app(), **self.runner_options)
        await self._runner.setup()
        assert self._sock is not None
        await web.SockSite(self._runner, self._sock, ssl_context=context).start()

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=16 * 1024 * 1024)
        app.router.add_get("/version", self._version)
        app.router.add_get("/version/", self._version)  # the official client asks with the slash
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    def _before_stop(self) -> None:
        self._closing = True
        with self._lock:
            for watcher in self._watchers:
                watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, None)
            for log in self._logs.values():
                for follower_loop, queue in log.followers:
                    follower_loop.call_soon_threadsafe(queue.put_nowait, None)

    def write_kubeconfig(
        self,
        path: Path,
        *,
        context: str = "fake",
        namespace: str | None = "default",
        extra_contexts: dict[str, str] | None = None,
        token: str | None = None,
        ca_file: Path | None = None,
    ) -> Path:
        """A kubeconfig whose ``context`` points here; ``extra_contexts`` maps name -> server URL."""
        contexts = [{"name": context, "context": {"cluster": "fake", "user": "tester"}}]
        if namespace:
            contexts[0]["context"]["namespace"] = namespace
        clusters: list[dict[str, Any]] = [{"name": "fake", "cluster": {"server": self.url}}]
        if ca_file is not None:  # the CA the kubeconfig trusts for this server (https only)
            ca_data = base64.b64encode(ca_file.read_bytes()).decode()
            clusters[0]["cluster"]["certificate-authority-data"] = ca_data
        for name, server in (extra_contexts or {}).items():
            clusters.append({"name": f"{name}-cluster", "cluster": {"server": server}})
            contexts.append({"name": name, "context": {"cluster": f"{name}-cluster", "user": "tester"}})
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": clusters,
            "users": [{"name": "tester", "user": {"token": token or self.token}}],
            "contexts": contexts,
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return path

    # --- test-side controls (thread-safe) ------------------------------------------------------

    def deny(
        self, verb: str, resource: str, namespace: str | None = None, *, cluster_scope_only: bool = False
    ) -> None:
        """Make RBAC refuse ``verb`` on ``resource`` (e.g. "deployments", "pods/log") in ``namespace``
        (None: everywhere), or only at the cluster scope (lists across all namespaces)."""
        self.denials.append(Denial(verb, resource, namespace, cluster_scope_only))

    def reject(self, kind: str, name: str, field_path: str, detail: str) -> None:
        """Answer 422 Invalid to any create/apply of ``kind``/``name``."""
        self.rejections.append(Rejection(kind, name, field_path, detail))

    def inject_error(
        self, verb: str, resource: str, code: int, reason: str, message: str, *, skip_dry_run: bool = False
    ) -> None:
        """Answer the next ``verb`` on ``resource`` with this Status (once), e.g. a 409 write conflict;
        with ``skip_dry_run`` only a real (not ``dryRun=All``) request gets it."""
        self.injected.append(InjectedError(verb, resource, code, reason, message, skip_dry_run))

    def kubelet_unreachable(self, namespace: str, pod: str) -> None:
        """The kubelet of ``pod``'s node cannot be dialled: port-forward answers 500, as the real server."""
        with self._lock:
            self.unreachable_kubelets.add((namespace, pod))

    def set_port_backend(self, namespace: str, pod: str, port: int, address: tuple[str, int]) -> None:
        """Port-forwarding to ``pod``:``port`` reaches the TCP server at ``address``."""
        with self._lock:
            self._port_backends[(namespace, pod, port)] = address

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object as a controller would (no validation, no RBAC)."""
        resource = _BY_KIND[obj["kind"]]
        with self._lock:
            namespace = obj.get("metadata", {}).get("namespace", "") if resource.namespaced else ""
            existing = self._objects.get(self._key(resource, namespace, obj["metadata"]["name"]))
            return self._store(resource, copy.deepcopy(obj), existing)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        resource = _BY_KIND[kind]
        with self._lock:
            found = self._objects.get(self._key(resource, namespace or "", name))
            return copy.deepcopy(found) if found else None

    def list_objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        resource = _BY_KIND[kind]
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (group, plural, ns, _), obj in sorted(self._objects.items())
                if (group, plural) == (resource.group, resource.plural)
                and (namespace is None or ns == namespace)
            ]

    def delete_object(self, kind: str, name: str, namespace: str | None = None) -> None:
        resource = _BY_KIND[kind]
        with self._lock:
            self._remove(resource, namespace or "", name)

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return self.put(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
        )

    def append_log(self, namespace: str, pod: str, *lines: str, container: str | None = None) -> None:
        with self._lock:
            log = self._log(namespace, pod, container or self._default_container(namespace, pod))
            for line in lines:
                log.lines.append(line)
                for loop, queue in log.followers:
                    loop.call_soon_threadsafe(queue.put_nowait, line)

    def close_log(self, namespace: str, pod: str, container: str | None = None) -> None:
        """The container stopped: followers see the end of the stream."""
        with self._lock:
            log = self._log(namespace, pod, container or self._default_container(namespace, pod))
            log.closed = True
            for loop, queue in log.followers:
                loop.call_soon_threadsafe(queue.put_nowait, None)

    def log_followers(self, namespace: str, pod: str, container: str | None = None) -> int:
        with self._lock:
            log = self._logs.get((namespace, pod, container or self._default_container(namespace, pod)))
            return len(log.followers) if log else 0

    def compact_history(self) -> None:
        """Forget the event history, as etcd compaction does after other writes moved the revision on:
        a watch resumed from an older resourceVersion gets a 410 Expired ERROR event."""
        with self._lock:
            self._rv += 50  # writes elsewhere in the cluster moved etcd's revision on meanwhile
            self._compacted_rv = self._rv
            for watcher in self._watchers:  # and the API server restarted: open watches just end
                watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, DROP_WATCH)
            self._history.clear()

    def watcher_count(self) -> int:
        with self._lock:
            return len(self._watchers)

    def add_event(
        self,
        namespace: str,
        involved: dict[str, Any],
        reason: str,
        message: str,
        *,
        type_: str = "Normal",
        component: str = "kubelet",
    ) -> dict[str, Any]:
        name = f"{involved['metadata']['name']}.{uuid.uuid4().hex[:16]}"
        stamp = now_rfc3339()
        return self.put(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {
                    "kind": involved["kind"],
                    "name": involved["metadata"]["name"],
                    "namespace": namespace,
                    "uid": involved["metadata"].get("uid", ""),
                    "apiVersion": involved.get("apiVersion", "v1"),
                },
                "reason": reason,
                "message": message,
                "type": type_,
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "source": {"component": component},
                "reportingComponent": component,
            }
        )

    # --- store internals (call with the lock held) ---------------------------------------------

    @staticmethod
    def _key(resource: FakeResource, namespace: str, name: str) -> tuple[str, str, str, str]:
        return (resource.group, resource.plural, namespace if resource.namespaced else "", name)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _store(
        self, resource: FakeResource, obj: dict[str, Any], existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        metadata = obj.setdefault("metadata", {})
        obj["apiVersion"] = resource.api_version
        obj["kind"] = resource.kind
        if existing is None:
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", now_rfc3339())
            if resource.kind == "Deployment":
                metadata["generation"] = 1
                obj.setdefault("status", {})
                obj["spec"].setdefault("replicas", 1)
            event_type = "ADDED"
        else:
            metadata["uid"] = existing["metadata"]["uid"]
            metadata["creationTimestamp"] = existing["metadata"]["creationTimestamp"]
            if resource.kind == "Deployment":
                generation = existing["metadata"].get("generation", 1)
                changed = obj.get("spec") != existing.get("spec")
                metadata["generation"] = generation + 1 if changed else generation
            event_type = "MODIFIED"
        if resource.kind == "Secret":
            self._fold_string_data(obj)
        metadata["resourceVersion"] = self._next_rv()
        namespace = metadata.get("namespace", "") if resource.namespaced else ""
        self._objects[self._key(resource, namespace, metadata["name"])] = obj
        self._notify(event_type, resource, obj)
        return copy.deepcopy(obj)

    @staticmethod
    def _fold_string_data(obj: dict[str, Any]) -> None:
        string_data = obj.pop("stringData", None) or {}
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()

    def _remove(self, resource: FakeResource, namespace: str, name: str) -> dict[str, Any]:
        key = self._key(resource, namespace, name)
        obj = self._objects.pop(key, None)
        if obj is None:
            raise not_found(resource, name)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._notify("DELETED", resource, obj)
        if resource.kind == "Pod" and self._loop is not None:
            # The kubelet drops port-forward streams of a pod that is gone.
            for ws in self._forwards.pop((namespace, name), []):
                asyncio.run_coroutine_threadsafe(ws.close(), self._loop)
        if resource.kind == "Pod":
            for (ns, pod, _), log in self._logs.items():
                if (ns, pod) == (namespace, name):
                    log.closed = True
                    for loop, queue in log.followers:
                        loop.call_soon_threadsafe(queue.put_nowait, None)
        if resource.kind == "Deployment":
            selector = obj.get("spec", {}).get("selector", {}).get("matchLabels", {})
            for pod_key, pod in list(self._objects.items()):
                labels = pod.get("metadata", {}).get("labels") or {}
                owned = selector and all(labels.get(k) == v for k, v in selector.items())
                if pod_key[1] == "pods" and pod_key[2] == namespace and owned:
                    self._remove(_BY_KIND["Pod"], namespace, pod_key[3])
        return obj

    def _notify(self, event_type: str, resource: FakeResource, obj: dict[str, Any]) -> None:
        snapshot = copy.deepcopy(obj)
        self._history.append((int(snapshot["metadata"]["resourceVersion"]), event_type, resource, snapshot))
        for watcher in self._watchers:
            if watcher.resource == resource and watcher.wants(snapshot):
                event = {"type": event_type, "object": snapshot}
                watcher.loop.call_soon_threadsafe(watcher.queue.put_nowait, event)

    def _log(self, namespace: str, pod: str, container: str) -> _PodLog:
        return self._logs.setdefault((namespace, pod, container), _PodLog())

    def _default_container(self, namespace: str, pod: str) -> str:
        obj = self._objects.get(self._key(_BY_KIND["Pod"], namespace, pod))
        containers = (obj or {}).get("spec", {}).get("containers") or [{"name": "main"}]
        return str(containers[0]["name"])

    # --- HTTP ----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        body = await request.text() if request.can_read_body else ""
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                dict(request.query),
                request.headers.get("Content-Type"),
                body,
            )
        )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(status_body(401, "Unauthorized", "Unauthorized"), status=401)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as err:
            return web.json_response(err.body, status=err.code)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake", "platform": "linux/amd64"}
        )

    def _route(self, path: str) -> tuple[FakeResource, str | None, str | None, str | None]:
        """(resource, namespace, name, subresource) of an API path."""
        parts = [part for part in path.split("/") if part]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resource = _BY_PATH.get((group, version, rest[0]))
        if resource is None or (resource.kind == "LeaderWorkerSet" and not self.serve_lws):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if namespace is not None and not resource.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return resource, namespace, name, sub

    def _check_rbac(
        self, verb: str, resource: FakeResource, namespace: str | None, name: str | None, sub: str | None
    ) -> None:
        rbac_resource = f"{resource.plural}/{sub}" if sub else resource.plural
        for denial in self.denials:
            if denial.matches(verb, rbac_resource, namespace):
                subject = f'{resource.qualified} "{name}"' if name else resource.qualified
                scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{subject} is forbidden: User "{self.user}" cannot {verb} resource "{rbac_resource}" '
                    f'in API group "{resource.group}" {scope}',
                    {"name": name or "", "group": resource.group, "kind": resource.plural},
                )

    def _check_injected(
        self, verb: str, resource: FakeResource, sub: str | None, dry_run: bool = False
    ) -> None:
        rbac_resource = f"{resource.plural}/{sub}" if sub else resource.plural
        for injected in list(self.injected):
            if injected.skip_dry_run and dry_run:
                continue
            if (injected.verb, injected.resource) == (verb, rbac_resource):
                self.injected.remove(injected)
                raise ApiError(injected.code, injected.reason, injected.message)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        resource, namespace, name, sub = self._route(request.path)
        query = request.query
        watching = query.get("watch") in ("true", "1")
        method = request.method
        verb = {
            "GET": "watch" if watching else ("get" if name else "list"),
            "POST": "create",
            "PATCH": "patch",
            "PUT": "update",
            "DELETE": "delete",
        }.get(method, method.lower())
        if sub == "portforward":
            verb = "create"
        self._check_rbac(verb, resource, namespace, name, sub)
        self._check_injected(verb, resource, sub, query.get("dryRun") == "All")
        if sub == "log" and method == "GET":
            return await self._pod_log(request, namespace or "", name or "")
        if sub == "portforward":
            return await self._portforward(request, namespace or "", name or "")
        if sub == "scale" and resource.kind == "Deployment":
            return await self._scale(request, namespace or "", name or "")
        if sub is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and name is None:
            if watching:
                return await self._watch(request, resource, namespace)
            return web.json_response(self._list(resource, namespace, query))
        if method == "GET":
            with self._lock:
                found = self._objects.get(self._key(resource, namespace or "", name or ""))
                if found is None:
                    raise not_found(resource, name or "")
                return web.json_response(copy.deepcopy(found))
        if method == "POST" and name is None:
            return await self._create(request, resource, namespace)
        if method == "PATCH" and name is not None:
            return await self._patch(request, resource, namespace, name)
        if method == "DELETE" and name is not None:
            with self._lock:
                removed = self._remove(resource, namespace or "", name)
            return web.json_response(removed)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    def _list(self, resource: FakeResource, namespace: str | None, query: Any) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (group, plural, ns, _), obj in sorted(self._objects.items())
                if (group, plural) == (resource.group, resource.plural)
                and (namespace is None or ns == namespace)
                and label_selector_matches(query.get("labelSelector"), obj["metadata"].get("labels") or {})
                and field_selector_matches(query.get("fieldSelector"), obj)
            ]
            return {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }

    # --- writes --------------------------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> Any:
        text = await request.text()
        try:
            return yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ApiError(400, "BadRequest", f"error decoding patch: {err}") from None

    def _require_namespace(self, resource: FakeResource, namespace: str | None) -> None:
        namespace_key = self._key(_BY_KIND["Namespace"], "", namespace or "")
        if resource.namespaced and namespace is not None and namespace_key not in self._objects:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )

    def _validate(
        self, resource: FakeResource, namespace: str | None, obj: Any, url_name: str | None
    ) -> None:
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        if obj.get("kind") != resource.kind or obj.get("apiVersion") != resource.api_version:
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({obj.get('apiVersion')}) does not match the expected API "
                f"version ({resource.api_version}) or kind {obj.get('kind')!r} is not {resource.kind!r}",
            )
        metadata = obj.get("metadata") or {}
        name = metadata.get("name") or ""
        if url_name is not None and name != url_name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        body_ns = metadata.get("namespace")
        if resource.namespaced and body_ns and body_ns != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        causes: list[dict[str, str]] = []
        qualified_kind = f"{resource.kind}.{resource.group}" if resource.group else resource.kind

        def invalid(field_path: str, detail: str) -> None:
            causes.append({"reason": "FieldValueInvalid", "message": f"{detail}", "field": field_path})

        if not name:
            invalid("metadata.name", "Required value: name or generateName is required")
        elif not _DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
            invalid(
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        if resource.kind == "Deployment":
            spec = obj.get("spec") or {}
            selector = (spec.get("selector") or {}).get("matchLabels")
            template = spec.get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not selector:
                invalid("spec.selector", "Required value")
            elif any(labels.get(k) != v for k, v in selector.items()):
                invalid(
                    "spec.template.metadata.labels",
                    "Invalid value: `selector` does not match template `labels`",
                )
            containers = (template.get("spec") or {}).get("containers") or []
            if not containers:
                invalid("spec.template.spec.containers", "Required value")
            for index, container in enumerate(containers):
                if not container.get("image"):
                    invalid(f"spec.template.spec.containers[{index}].image", "Required value")
            replicas = spec.get("replicas")
            if isinstance(replicas, int) and replicas < 0:
                invalid("spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0")
        if resource.kind == "Service" and not (obj.get("spec") or {}).get("ports"):
            invalid("spec.ports", "Required value")
        for rejection in self.rejections:
            if rejection.kind == resource.kind and rejection.name == name:
                invalid(rejection.field_path, rejection.detail)
        if causes:
            summary = ", ".join(f"{cause['field']}: {cause['message']}" for cause in causes)
            message = f'{qualified_kind} "{name}" is invalid: {summary}'
            if len(causes) > 1:
                message = f'{qualified_kind} "{name}" is invalid: [{summary}]'
            raise ApiError(
                422,
                "Invalid",
                message,
                {"name": name, "group": resource.group, "kind": resource.kind, "causes": causes},
            )

    async def _create(
        self, request: web.Request, resource: FakeResource, namespace: str | None
    ) -> web.Response:
        obj = await self._read_body(request)
        with self._lock:
            self._require_namespace(resource, namespace)
            self._validate(resource, namespace, obj, None)
            name = obj["metadata"]["name"]
            if self._key(resource, namespace or "", name) in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource.qualified} "{name}" already exists',
                    {"name": name, "group": resource.group, "kind": resource.plural},
                )
            if resource.namespaced:
                obj["metadata"]["namespace"] = namespace
            manager = self._manager(request)
            fields = _field_paths(_tracked(obj))
            obj["metadata"]["managedFields"] = [self._managed_entry(manager, "Update", resource, fields)]
            if request.query.get("dryRun") == "All":
                return web.json_response(self._dry_run_result(resource, obj, None), status=201)
            stored = self._store(resource, obj, None)
        return web.json_response(stored, status=201)

    @staticmethod
    def _managed_entry(
        manager: str,
        operation: str,
        resource: FakeResource,
        fields: set[FieldPath] | None = None,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        entry = {
            "manager": manager,
            "operation": operation,
            "apiVersion": resource.api_version,
            "time": now_rfc3339(),
            "fieldsType": "FieldsV1",
            "fieldsV1": _fields_v1(fields or set()),
        }
        if subresource:
            entry["subresource"] = subresource
        return entry

    @staticmethod
    def _manager(request: web.Request) -> str:
        """``fieldManager``, else what the real server derives: the User-Agent's product name."""
        given = request.query.get("fieldManager")
        if given:
            return given
        agent = request.headers.get("User-Agent", "").split("/")[0].strip()
        return agent or "unknown"

    def _dry_run_result(
        self, resource: FakeResource, obj: dict[str, Any], existing: dict[str, Any] | None
    ) -> dict[str, Any]:
        """What storing ``obj`` would answer, without storing it (``dryRun=All``)."""
        result = copy.deepcopy(obj)
        metadata = result.setdefault("metadata", {})
        result["apiVersion"], result["kind"] = resource.api_version, resource.kind
        if existing is None:
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", now_rfc3339())
        else:
            metadata["uid"] = existing["metadata"]["uid"]
            metadata["resourceVersion"] = existing["metadata"].get("resourceVersion")
        if resource.kind == "Secret":
            self._fold_string_data(result)
        return result

    def _updated_entries(
        self,
        existing: dict[str, Any],
        updated: dict[str, Any],
        manager: str,
        resource: FakeResource,
        subresource: str | None = None,
    ) -> list[dict[str, Any]]:
        """managedFields after an update by ``manager``: it takes every field it changed."""
        before, after = _tracked(existing), _tracked(updated)
        changed = {
            path
            for path in _field_paths(after) | _field_paths(before)
            if _value_at(before, path) != _value_at(after, path)
        }
        entries: list[dict[str, Any]] = []
        mine: set[FieldPath] = set(changed)
        for entry in existing["metadata"].get("managedFields", []):
            same = entry.get("manager") == manager and entry.get("operation") == "Update"
            if same and entry.get("subresource") == subresource:
                mine |= _paths_of(entry.get("fieldsV1"))
                continue
            entries.append(_without_fields(entry, changed))
        entries.append(self._managed_entry(manager, "Update", resource, mine, subresource))
        return [entry for entry in entries if entry is not None]

    async def _patch(
        self, request: web.Request, resource: FakeResource, namespace: str | None, name: str
    ) -> web.Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        patch = await self._read_body(request)
        manager = request.query.get("fieldManager")
        force = request.query.get("force") in ("true", "True", "1")
        dry_run = request.query.get("dryRun") == "All"
        with self._lock:
            key = self._key(resource, namespace or "", name)
            existing = self._objects.get(key)
            if content_type == "application/apply-patch+yaml":
                if not manager:
                    raise ApiError(
                        422,
                        "Invalid",
                        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                        "is required for apply patch",
                    )
                self._require_namespace(resource, namespace)
                self._validate(resource, namespace, patch, name)
                applied = _field_paths(_tracked(patch))
                if existing is None:
                    obj = copy.deepcopy(patch)
                    if resource.namespaced:
                        obj["metadata"]["namespace"] = namespace
                    entry = self._managed_entry(manager, "Apply", resource, applied)
                    obj["metadata"]["managedFields"] = [entry]
                    if dry_run:
                        return web.json_response(self._dry_run_result(resource, obj, None), status=201)
                    return web.json_response(self._store(resource, obj, None), status=201)
                taken = self._check_conflicts(resource, existing, patch, manager, force)
                merged = merge_patch(existing, patch)
                entries = [
                    kept
                    for e in existing["metadata"].get("managedFields", [])
                    if not (e.get("manager") == manager and e.get("operation") == "Apply")
                    and (kept := _without_fields(e, taken)) is not None
                ]
                entries.append(self._managed_entry(manager, "Apply", resource, applied))
                merged["metadata"]["managedFields"] = entries
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if existing is None:
                    raise not_found(resource, name)
                if not isinstance(patch, dict):
                    raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
                merged = merge_patch(existing, patch)
                merged["metadata"]["managedFields"] = self._updated_entries(
                    existing, merged, self._manager(request), resource
                )
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format, accepted media types include: "
                    "application/apply-patch+yaml, application/merge-patch+json, "
                    f"application/strategic-merge-patch+json; got {content_type}",
                )
            if resource.kind == "Secret":
                self._fold_string_data(merged)
            if self._same_content(existing, merged):
                if dry_run:
                    return web.json_response(copy.deepcopy(existing))
                if existing["metadata"].get("managedFields") != merged["metadata"].get("managedFields"):
                    # Ownership changed but no content: the real server stores it without a new
                    # generation; keep the resourceVersion so an unchanged apply reads as unchanged.
                    existing["metadata"]["managedFields"] = merged["metadata"]["managedFields"]
                return web.json_response(copy.deepcopy(existing))
            if dry_run:
                return web.json_response(self._dry_run_result(resource, merged, existing))
            stored = self._store(resource, merged, existing)
        return web.json_response(stored)

    @staticmethod
    def _same_content(existing: dict[str, Any], merged: dict[str, Any]) -> bool:
        def strip(obj: dict[str, Any]) -> dict[str, Any]:
            clean = copy.deepcopy(obj)
            clean.get("metadata", {}).pop("managedFields", None)
            clean.get("metadata", {}).pop("resourceVersion", None)
            return clean

        return strip(existing) == strip(merged)

    def _check_conflicts(
        self,
        resource: FakeResource,
        existing: dict[str, Any],
        patch: dict[str, Any],
        manager: str,
        force: bool,
    ) -> set[FieldPath]:
        """409 when the apply changes fields other managers own (unless forced); the fields it takes."""
        applied_object = _tracked(patch)
        applied = _field_paths(applied_object)
        current = _tracked(existing)
        conflicts: list[tuple[dict[str, Any], FieldPath]] = []
        for entry in existing["metadata"].get("managedFields", []):
            if entry.get("manager") == manager and entry.get("operation") == "Apply":
                continue
            for path in sorted(applied & _paths_of(entry.get("fieldsV1"))):
                if _value_at(current, path) != _value_at(applied_object, path):
                    conflicts.append((entry, path))
        if conflicts and not force:
            raise ApiError(
                409,
                "Conflict",
                _conflict_message(conflicts),
                {
                    "causes": [
                        {
                            "reason": "FieldManagerConflict",
                            "message": f"conflict with {_print_manager(entry)}",
                            "field": _path_text(path),
                        }
                        for entry, path in conflicts
                    ]
                },
            )
        return {path for _, path in conflicts}

    async def _scale(self, request: web.Request, namespace: str, name: str) -> web.Response:
        resource = _BY_KIND["Deployment"]
        patch = await self._read_body(request) if request.method == "PATCH" else None
        with self._lock:
            existing = self._objects.get(self._key(resource, namespace, name))
            if existing is None:
                raise not_found(resource, name)
            if request.method == "PATCH":
                replicas = (patch or {}).get("spec", {}).get("replicas")
                if not isinstance(replicas, int) or replicas < 0:
                    raise ApiError(
                        422,
                        "Invalid",
                        f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: {replicas}',
                    )
                updated = copy.deepcopy(existing)
                updated["spec"]["replicas"] = replicas
                updated["metadata"]["managedFields"] = self._updated_entries(
                    existing, updated, self._manager(request), resource, "scale"
                )
                existing = self._store(resource, updated, existing)
            elif request.method != "GET":
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            selector = existing["spec"].get("selector", {}).get("matchLabels", {})
            return web.json_response(
                {
                    "kind": "Scale",
                    "apiVersion": "autoscaling/v1",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "resourceVersion": existing["metadata"]["resourceVersion"],
                    },
                    "spec": {"replicas": existing["spec"].get("replicas", 1)},
                    "status": {
                        "replicas": existing.get("status", {}).get("replicas", 0),
                        "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
                    },
                }
            )

    # --- streams -------------------------------------------------------------------------------

    async def _watch(
        self, request: web.Request, resource: FakeResource, namespace: str | None
    ) -> web.StreamResponse:
        query = request.query
        timeout_s = float(query.get("timeoutSeconds", WATCH_DEFAULT_TIMEOUT_S))
        since = query.get("resourceVersion")
        loop = asyncio.get_running_loop()
        watcher = _Watcher(
            resource,
            namespace,
            query.get("labelSelector"),
            query.get("fieldSelector"),
            asyncio.Queue(),
            loop,
        )
        with self._lock:
            if since and since != "0" and int(since) < self._compacted_rv:
                expired = status_body(
                    410, "Expired", f"too old resource version: {since} ({self._compacted_rv})"
                )
                backlog = [{"type": "ERROR", "object": expired}]
                timeout_s = 0
            elif since and since != "0":
                backlog = [
                    {"type": event_type, "object": copy.deepcopy(obj)}
                    for rv, event_type, res, obj in self._history
                    if rv > int(since) and res == resource and watcher.wants(obj)
                ]
            else:
                backlog = [
                    {"type": "ADDED", "object": copy.deepcopy(obj)}
                    for (group, plural, _, _), obj in sorted(self._objects.items())
                    if (group, plural) == (resource.group, resource.plural) and watcher.wants(obj)
                ]
            self._watchers.append(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        deadline = loop.time() + timeout_s
        event: dict[str, Any] | None = None
        try:
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
            while not self._closing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None or event is DROP_WATCH:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
            dropped = event is DROP_WATCH
            expired = bool(backlog) and backlog[0]["type"] == "ERROR"
            if query.get("allowWatchBookmarks") == "true" and not dropped and not expired:
                # As the real server does before it ends a watch: where to resume from.
                with self._lock:
                    mark = {"kind": resource.kind, "apiVersion": resource.api_version}
                    mark["metadata"] = {"resourceVersion": str(self._rv)}
                await response.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
            await response.write_eof()
        except ConnectionResetError:
            pass
        finally:
            with self._lock:
                self._watchers.remove(watcher)
        return response

    async def _pod_log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        query = request.query
        follow = query.get("follow") in ("true", "1")
        with self._lock:
            pod = self._objects.get(self._key(_BY_KIND["Pod"], namespace, name))
            if pod is None:
                raise not_found(_BY_KIND["Pod"], name)
            if not pod.get("spec", {}).get("nodeName"):
                # What the real server answers for a pod no node runs yet: no content at all.
                return web.Response(status=204)
            names = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
            container = query.get("container")
            if container is None:
                if len(names) > 1:
                    raise ApiError(
                        400,
                        "BadRequest",
                        f"a container name must be specified for pod {name}, "
                        f"choose one of: [{' '.join(names)}]",
                    )
                container = names[0] if names else "main"
            elif container not in names:
                raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
            for status in pod.get("status", {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting")
                if status.get("name") == container and waiting and "lastState" not in status:
                    raise ApiError(
                        400,
                        "BadRequest",
                        f'container "{container}" in pod "{name}" is waiting to start: '
                        f"{waiting.get('reason', '')}",
                    )
            log = self._log(namespace, name, container)
            lines = list(log.lines)
            tail = query.get("tailLines")
            if tail is not None:
                lines = lines[-int(tail) :] if int(tail) > 0 else []
            queue: asyncio.Queue[str | None] = asyncio.Queue()
            loop = asyncio.get_running_loop()
            following = follow and not log.closed
            if following:
                log.followers.append((loop, queue))
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for line in lines:
                await response.write(line.encode() + b"\n")
            while following and not self._closing:
                line = await queue.get()
                if line is None:
                    break
                await response.write(line.encode() + b"\n")
            await response.write_eof()
        except ConnectionResetError:
            pass
        finally:
            if following:
                with self._lock:
                    log.followers.remove((loop, queue))
        return response

    async def _portforward(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        with self._lock:
            pod = self._objects.get(self._key(_BY_KIND["Pod"], namespace, name))
            if pod is None:
                raise not_found(_BY_KIND["Pod"], name)
            phase = pod.get("status", {}).get("phase")
            if phase != "Running":
                raise ApiError(
                    400,
                    "BadRequest",
                    f"unable to upgrade connection: pod {name} is not running (phase {phase})",
                )
            uid = pod["metadata"]["uid"]
            if (namespace, name) in self.unreachable_kubelets:
                node = pod.get("spec", {}).get("nodeName", "node")
                raise ApiError(
                    500,
                    "InternalError",
                    f"error dialing backend: dial tcp 10.128.0.7:10250: connect: connection refused "
                    f"(node {node})",
                )
        ports = [int(p) for p in request.query.getall("ports", []) for p in p.split(",") if p]
        if not ports:
            raise ApiError(400, "BadRequest", "at least one port must be specified")
        ws = web.WebSocketResponse(protocols=(PORTFORWARD_PROTOCOL,))
        await ws.prepare(request)
        with self._lock:
            self._forwards.setdefault((namespace, name), []).append(ws)
        try:
            await self._forward_session(ws, namespace, name, uid, ports)
        finally:
            with self._lock:
                sessions = self._forwards.get((namespace, name), [])
                if ws in sessions:
                    sessions.remove(ws)
        return ws

    async def _forward_session(
        self, ws: web.WebSocketResponse, namespace: str, name: str, uid: str, ports: list[int]
    ) -> None:
        """v4.channel.k8s.io: per port i, data channel 2i and error channel 2i+1."""
        writers: dict[int, asyncio.StreamWriter] = {}
        pumps: list[asyncio.Task[None]] = []

        async def pump(channel: int, reader: asyncio.StreamReader) -> None:
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    await ws.send_bytes(bytes([channel]) + data)
            except (ConnectionError, RuntimeError):
                pass
            await ws.close()

        try:
            for index, port in enumerate(ports):
                prefix = port.to_bytes(2, "little")
                await ws.send_bytes(bytes([2 * index]) + prefix)
                await ws.send_bytes(bytes([2 * index + 1]) + prefix)
                with self._lock:
                    address = self._port_backends.get((namespace, name, port))
                try:
                    if address is None:
                        raise ConnectionRefusedError("connection refused")
                    reader, writer = await asyncio.open_connection(*address)
                except OSError:
                    await ws.send_bytes(
                        bytes([2 * index + 1])
                        + f"error forwarding port {port} to pod {uid}, uid : failed to connect to "
                        f"localhost:{port} inside namespace {namespace}: connection refused".encode()
                    )
                    await ws.close()
                    return
                writers[2 * index] = writer
                pumps.append(asyncio.create_task(pump(2 * index, reader)))
            async for message in ws:
                if message.type != WSMsgType.BINARY or not message.data:
                    continue
                target = writers.get(message.data[0])
                if target is not None:
                    target.write(message.data[1:])
                    await target.drain()
        finally:
            for writer in writers.values():
                writer.close()
            for task in pumps:
                task.cancel()

    def forward_sessions(self, namespace: str, pod: str) -> int:
        with self._lock:
            return len(self._forwards.get((namespace, pod), []))


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, interval_s: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout_s``; True when it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
