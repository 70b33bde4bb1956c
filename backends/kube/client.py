"""``KubeClient``: server-side apply, read, list, scale and delete of plain object dicts.

Objects are the plain dicts ``manifests.render.render_objects`` produces (or any dict shaped like a
Kubernetes object of a kind in ``resources.KINDS``). Requests go through the typed API classes of the
official client with ``_preload_content=False``: we read the JSON ourselves, so custom resources and
fields newer than the client's models pass through untouched.

Ownership rules:
- apply refuses to take over an existing object that lacks our managed-by label (HTTP-409-like
  ``KubeConflictError``); shared kinds (Namespace, StorageClass) are created when missing and otherwise
  used as they are;
- delete removes only objects carrying the label, in one namespace, and never Namespaces or
  StorageClasses (other people's workloads may use them).
"""

from __future__ import annotations

import copy
import json
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict

from backends.kube.errors import (
    KubeConflictError,
    KubeError,
    KubeForbiddenError,
    KubeNotFoundError,
    KubeUnreachableError,
    NamespaceMissingError,
    error_for_status,
    redact,
)
from backends.kube.kubeconfig import DEFAULT_NAMESPACE, KubeContext, load_kubeconfig, new_api_client
from backends.kube.resources import (
    DELETABLE_KINDS,
    DEPLOYMENT_LABEL,
    FIELD_MANAGER,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    ApiGroup,
    ResourceKind,
    is_managed,
    kind_of,
    labels_of,
    managed_selector,
    object_name,
    resource_kind,
)

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
CONNECT_TIMEOUT_S = 5.0
_HANDSHAKE_STATUS = re.compile(r"^Handshake status (\d{3})\b")
READ_TIMEOUT_S = 20.0


class Request(BaseModel):
    """What a call does, for its error message: ``verb resource[/name] in namespace``."""

    model_config = ConfigDict(frozen=True)

    verb: str
    resource: str
    namespace: str | None = None
    name: str | None = None


class ObjectRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str
    name: str
    namespace: str | None = None

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


class ApplyAction(StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    KEPT = "exists, left as is"
    UNCHECKED = "not checked (no right to read it), left as is"


class AppliedObject(BaseModel):
    model_config = ConfigDict(frozen=True)

    ref: ObjectRef
    action: ApplyAction
    note: str | None = None
    """What apply left as it was, e.g. replicas an autoscaler owns."""


AUTOSCALER_MANAGERS = frozenset({"kube-controller-manager", "horizontal-pod-autoscaler", "keda-operator"})
"""Field managers that scale Deployments on their own (through the scale subresource)."""


@dataclass
class _Planned:
    """One object of an apply after the read-only checks."""

    resource: ResourceKind
    body: dict[str, Any]
    ref: ObjectRef
    existing: dict[str, Any] | None
    action: ApplyAction | None = None  # set: nothing to write (a shared kind that exists, unreadable)
    problem: KubeError | None = None
    note: str | None = None


class _FieldConflicts(Exception):
    """A 409 apply conflict: (field, manager) pairs other managers own."""

    def __init__(self, conflicts: list[tuple[str, str]]) -> None:
        super().__init__(conflicts)
        self.conflicts = conflicts

    def error(self, ref: ObjectRef) -> KubeConflictError:
        fields = ", ".join(f"{field} (owned by {manager})" for field, manager in self.conflicts)
        return KubeConflictError(
            f"{ref}: this apply would change fields other managers set: {fields}; run again with "
            "--force-conflicts to take them over"
        )


def _field_conflicts(err: ApiException) -> list[tuple[str, str]]:
    """(field, manager) of each FieldManagerConflict cause of a 409 apply answer."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        return []
    causes = (body.get("details") or {}).get("causes") if isinstance(body, dict) else None
    conflicts: list[tuple[str, str]] = []
    for cause in causes or []:
        if not isinstance(cause, dict) or cause.get("reason") != "FieldManagerConflict":
            continue
        manager = str(cause.get("message") or "").removeprefix("conflict with ")
        manager = re.sub(r" using \S+( at \S+)?$", "", manager)
        conflicts.append((str(cause.get("field") or "?"), manager or "another manager"))
    return conflicts


def _combined(problems: Sequence[KubeError], outcome: str) -> KubeError:
    """One error for every problem found (the first one's class), ending with ``outcome``."""
    text = "; ".join(str(problem) for problem in problems)
    return type(problems[0])(f"{text}; {outcome}")


class ScaleResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    ref: ObjectRef
    previous_replicas: int
    replicas: int


def network_reason(err: BaseException) -> str:
    """A short reason for a transport failure: "connection refused", "timed out", a DNS error..."""
    inner: BaseException = err
    reason = getattr(err, "reason", None)
    if isinstance(reason, BaseException):
        inner = reason
    text = " ".join(str(inner).split())
    errno_match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno_match:
        return errno_match.group(1).strip().rstrip(".").lower()
    if isinstance(inner, urllib3.exceptions.TimeoutError) or "timed out" in text.lower():
        return "timed out"
    return text.rpartition(": ")[2] or type(inner).__name__


def tls_failure(err: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a transport failure (urllib3 wraps it in MaxRetryError/SSLError), if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            current = reason
            continue
        args = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        current = args[0] if args else (current.__cause__ or current.__context__)
    return None


class KubeClient:
    """One Kubernetes context, reached through the official client. Use as a context manager."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        context: KubeContext,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.api_client = api_client
        self.context = context
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.core = k8s_client.CoreV1Api(api_client)
        self.apps = k8s_client.AppsV1Api(api_client)
        self._apis: dict[ApiGroup, Any] = {
            ApiGroup.CORE: self.core,
            ApiGroup.APPS: self.apps,
            ApiGroup.STORAGE: k8s_client.StorageV1Api(api_client),
            ApiGroup.BATCH: k8s_client.BatchV1Api(api_client),
            ApiGroup.CUSTOM: k8s_client.CustomObjectsApi(api_client),
        }
        self._autoscaling = k8s_client.AutoscalingV2Api(api_client)

    @classmethod
    def connect(
        cls,
        kubeconfig: str | None = None,
        context: str | None = None,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> KubeClient:
        """A client for ``context`` of the kubeconfig in use (nothing is sent until the first call)."""
        api_client, chosen = new_api_client(load_kubeconfig(kubeconfig), context)
        return cls(api_client, chosen, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    @property
    def default_namespace(self) -> str:
        return self.context.namespace or DEFAULT_NAMESPACE

    @property
    def server(self) -> str:
        return str(self.api_client.configuration.host)

    # --- errors ------------------------------------------------------------------------------

    def unreachable(self, err: BaseException | str) -> KubeUnreachableError:
        tls = None if isinstance(err, str) else tls_failure(err)
        if tls is not None:
            return self.tls_error(tls)
        reason = err if isinstance(err, str) else network_reason(err)
        return KubeUnreachableError(
            f"cannot reach the Kubernetes API server at {self.server} (context {self.context.name}): "
            f"{reason}; check that the cluster is up and the context is right (servedeck deploy contexts)"
        )

    def tls_error(self, err: ssl.SSLError) -> KubeUnreachableError:
        detail = str(getattr(err, "verify_message", "") or err.reason or err)
        detail = re.sub(r"\s*\(_ssl\.c:\d+\)", "", " ".join(detail.split()))
        where = f"the API server at {self.server} (context {self.context.name})"
        if isinstance(err, ssl.SSLCertVerificationError):
            return KubeUnreachableError(
                f"TLS certificate verify failed for {where}: {detail}; wrong CA in kubeconfig: its "
                "certificate-authority(-data) for this cluster does not sign the server's certificate "
                "(fetch the credentials again, e.g. gcloud container clusters get-credentials)"
            )
        return KubeUnreachableError(
            f"TLS handshake with {where} failed: {detail}; check the server URL (https, host and port) "
            "in the kubeconfig"
        )

    @contextmanager
    def errors(
        self,
        verb: str,
        resource: str,
        namespace: str | None,
        name: str | None = None,
        *,
        secrets: Sequence[str] = (),
    ) -> Iterator[None]:
        """Turn what the client raises inside the block into one-line ``KubeError``s."""
        try:
            yield
        except ApiException as err:
            status, body = err.status, err.body
            if not status:
                # The WebSocket helpers (port-forward) report a refused upgrade as status 0 with the
                # handshake's status line and body in the reason.
                handshake = _HANDSHAKE_STATUS.match(str(err.reason or ""))
                if handshake is None:
                    raise self.unreachable(redact(" ".join(str(err.reason).split()), secrets)) from None
                status, body = int(handshake.group(1)), str(err.reason).rpartition(" -+-+- ")[2]
            raise error_for_status(
                int(status),
                body,
                verb=verb,
                resource=resource,
                namespace=namespace,
                name=name,
                reason=str(err.reason) if err.reason else None,
                secrets=secrets,
            ) from None
        except urllib3.exceptions.HTTPError as err:
            raise self.unreachable(err) from None

    def call_json(
        self,
        request: Request,
        operation: Callable[..., Any],
        *,
        secrets: Sequence[str] = (),
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Call a typed API method with ``kwargs`` and return its JSON answer as a dict."""
        with self.errors(request.verb, request.resource, request.namespace, request.name, secrets=secrets):
            response = operation(**kwargs, _preload_content=False, _request_timeout=self.timeout)
            try:
                data = response.data
            finally:
                response.release_conn()
        if not data:
            return {}
        parsed = json.loads(data)
        return parsed if isinstance(parsed, dict) else {}

    def _operation(
        self, resource: ResourceKind, verb: str, *, all_namespaces: bool = False
    ) -> tuple[Callable[..., Any], dict[str, Any]]:
        api = self._apis[resource.api]
        if resource.api is ApiGroup.CUSTOM:
            fixed = {"group": resource.group, "version": resource.version, "plural": resource.plural}
            if verb == "list" and all_namespaces:
                return api.list_cluster_custom_object, fixed
            method = {"read": "get", "patch": "patch", "list": "list", "delete": "delete"}[verb]
            return getattr(api, f"{method}_namespaced_custom_object"), fixed
        if verb == "list" and all_namespaces and resource.namespaced:
            return getattr(api, f"list_{resource.snake}_for_all_namespaces"), {}
        scope = "namespaced_" if resource.namespaced else ""
        return getattr(api, f"{verb}_{scope}{resource.snake}"), {}

    def _scope(self, resource: ResourceKind, namespace: str | None) -> dict[str, Any]:
        return {"namespace": namespace} if resource.namespaced else {}

    # --- reads -------------------------------------------------------------------------------

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        resource = resource_kind(kind)
        namespace = (namespace or self.default_namespace) if resource.namespaced else None
        operation, fixed = self._operation(resource, "read")
        request = Request(verb="get", resource=resource.resource, namespace=namespace, name=name)
        try:
            return self.call_json(request, operation, name=name, **fixed, **self._scope(resource, namespace))
        except KubeNotFoundError:
            return None

    def list_objects(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        all_namespaces: bool = False,
        missing_kind_ok: bool = False,
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` in ``namespace`` (or everywhere); [] for a CRD the cluster lacks if allowed."""
        resource = resource_kind(kind)
        scope_all = all_namespaces or not resource.namespaced
        namespace = None if scope_all else (namespace or self.default_namespace)
        operation, fixed = self._operation(resource, "list", all_namespaces=all_namespaces)
        kwargs: dict[str, Any] = dict(fixed)
        if namespace is not None:
            kwargs["namespace"] = namespace
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        try:
            request = Request(verb="list", resource=resource.resource, namespace=namespace)
            answer = self.call_json(request, operation, **kwargs)
        except KubeNotFoundError:
            if missing_kind_ok and resource.api is ApiGroup.CUSTOM:
                return []
            raise
        items = answer.get("items")
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []

    def require_namespace(self, namespace: str) -> None:
        """NamespaceMissingError when ``namespace`` does not exist (nothing when RBAC hides namespaces)."""
        try:
            request = Request(verb="get", resource="namespaces", name=namespace)
            self.call_json(request, self.core.read_namespace, name=namespace)
        except KubeNotFoundError:
            raise self.namespace_missing(namespace) from None
        except KubeError as err:
            if "forbidden" not in str(err):
                raise

    def namespace_missing(self, namespace: str) -> NamespaceMissingError:
        return NamespaceMissingError(
            f"namespace {namespace!r} does not exist in context {self.context.name}; create it "
            f"(kubectl create namespace {namespace}) or pass --namespace with an existing one"
        )

    # --- apply -------------------------------------------------------------------------------

    def apply(
        self,
        objects: Sequence[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        secrets: Sequence[str] = (),
        force_conflicts: bool = False,
    ) -> list[AppliedObject]:
        """Server-side apply each object (field manager ``servedeck``), shared kinds first.

        Nothing is written until the whole set passed: ownership (our managed-by label), then a
        server-side dry run of every object (kinds the cluster serves, validation, RBAC, fields other
        managers own). A failure after that deletes what this apply created. Fields other managers own
        (``kubectl scale``, ``kubectl edit``) are a ``KubeConflictError`` naming them unless
        ``force_conflicts``; a Deployment's ``spec.replicas`` an autoscaler owns is never applied.

        Namespaced objects without ``metadata.namespace`` go to ``namespace`` (the context's by default).
        ``secrets`` are values to redact from any error text (the HF token inside a Secret).
        """
        target_namespace = namespace or self.default_namespace
        prepared = sorted(
            (self._prepare(obj, target_namespace) for obj in objects), key=lambda p: p[0].apply_order
        )
        applied_namespaces = {
            object_name(body) for resource, body, _ in prepared if resource.kind == "Namespace"
        }
        for needed in sorted({ns for _, _, ns in prepared if ns is not None} - applied_namespaces):
            self.require_namespace(needed)
        plans = [self._plan(resource, body, ns) for resource, body, ns in prepared]
        new_namespaces = {
            plan.ref.name for plan in plans if plan.resource.kind == "Namespace" and plan.existing is None
        }
        problems: list[KubeError] = [plan.problem for plan in plans if plan.problem is not None]
        for plan in plans:
            if plan.problem is None and plan.action is None:
                problem = self._dry_run(plan, new_namespaces, secrets, force_conflicts)
                if problem is not None:
                    problems.append(problem)
        if problems:
            raise _combined(problems, "nothing was applied")
        done: list[AppliedObject] = []
        for plan in plans:
            try:
                done.append(self._apply_planned(plan, secrets, force=force_conflicts))
            except (KubeError, _FieldConflicts) as err:
                failure = err.error(plan.ref) if isinstance(err, _FieldConflicts) else err
                raise self._rolled_back(failure, done) from None
        return done

    def _prepare(
        self, obj: Mapping[str, Any], namespace: str
    ) -> tuple[ResourceKind, dict[str, Any], str | None]:
        resource = kind_of(obj)
        if resource.kind in ("Pod", "Event"):
            raise KubeError(
                f"servedeck does not apply {resource.kind} objects; apply their Deployment or Job"
            )
        name = object_name(obj)
        if name is None:
            raise KubeError(f"a {resource.kind} to apply has no metadata.name")
        body = copy.deepcopy(dict(obj))
        metadata = body.setdefault("metadata", {})
        labels = metadata.setdefault("labels", {})
        labels[MANAGED_BY_LABEL] = MANAGED_BY_VALUE
        if not resource.namespaced:
            metadata.pop("namespace", None)
            return resource, body, None
        metadata.setdefault("namespace", namespace)
        return resource, body, str(metadata["namespace"])

    def _plan(self, resource: ResourceKind, body: dict[str, Any], namespace: str | None) -> _Planned:
        name = str(body["metadata"]["name"])
        ref = ObjectRef(kind=resource.kind, name=name, namespace=namespace)
        try:
            existing = self.get(resource.kind, name, namespace)
        except KubeForbiddenError:
            if not resource.shared:
                raise
            # Tenants often may not read Namespaces or StorageClasses (nor create them): go on, and a
            # namespace that is really missing is reported by the namespaced objects' apply.
            return _Planned(resource, body, ref, None, action=ApplyAction.UNCHECKED)
        if existing is not None and resource.shared:
            # A StorageClass's parameters are immutable and a Namespace may hold other people's work:
            # an existing one (ours from an earlier apply, or not) is used as it is.
            return _Planned(resource, body, ref, existing, action=ApplyAction.KEPT)
        if existing is not None and not is_managed(existing):
            problem = KubeConflictError(
                f"{ref} already exists and is not managed by servedeck (no {MANAGED_BY_LABEL}="
                f"{MANAGED_BY_VALUE} label); delete it yourself or choose another deployment name"
            )
            return _Planned(resource, body, ref, existing, problem=problem)
        note = None
        if existing is not None and resource.kind == "Deployment" and namespace is not None:
            autoscaler = self._replicas_autoscaler(existing, name, namespace)
            if autoscaler is not None:
                body["spec"].pop("replicas", None)
                note = f"spec.replicas left to {autoscaler}"
        return _Planned(resource, body, ref, existing, note=note)

    def _replicas_autoscaler(self, existing: Mapping[str, Any], name: str, namespace: str) -> str | None:
        """What scales this Deployment automatically: an HPA targeting it, or an autoscaler controller
        that owns ``spec.replicas`` through the scale subresource (GKE's and upstream HPA, KEDA...)."""
        with suppress(KubeForbiddenError, KubeNotFoundError):
            answer = self.call_json(
                Request(verb="list", resource="horizontalpodautoscalers.autoscaling", namespace=namespace),
                self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
                namespace=namespace,
            )
            for hpa in answer.get("items") or []:
                target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
                if target.get("kind") == "Deployment" and target.get("name") == name:
                    return f"HorizontalPodAutoscaler {hpa.get('metadata', {}).get('name', '?')}"
        for entry in existing.get("metadata", {}).get("managedFields") or []:
            manager = str(entry.get("manager") or "")
            owns = "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
            autoscaler = manager in AUTOSCALER_MANAGERS or "autoscaler" in manager
            if owns and manager != FIELD_MANAGER and entry.get("subresource") == "scale" and autoscaler:
                return f"the autoscaler {manager!r} (it owns spec.replicas)"
        return None

    def _patch_apply(
        self, plan: _Planned, secrets: Sequence[str], *, force: bool, dry_run: bool = False
    ) -> dict[str, Any]:
        resource, ref = plan.resource, plan.ref
        operation, fixed = self._operation(resource, "patch")
        extra: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        request = Request(verb="patch", resource=resource.resource, namespace=ref.namespace, name=ref.name)
        with self.errors(request.verb, request.resource, ref.namespace, ref.name, secrets=secrets):
            try:
                response = operation(
                    name=ref.name,
                    body=plan.body,
                    field_manager=FIELD_MANAGER,
                    force=force,
                    _content_type=APPLY_PATCH,
                    _preload_content=False,
                    _request_timeout=self.timeout,
                    **extra,
                    **fixed,
                    **self._scope(resource, ref.namespace),
                )
            except ApiException as err:
                conflicts = _field_conflicts(err) if err.status == 409 else []
                if conflicts:
                    raise _FieldConflicts(conflicts) from None
                raise
            try:
                data = response.data
            finally:
                response.release_conn()
        parsed = json.loads(data) if data else {}
        return parsed if isinstance(parsed, dict) else {}

    def _not_served(self, resource: ResourceKind) -> KubeError:
        return KubeError(
            f"the cluster of context {self.context.name} does not serve {resource.kind} "
            f"({resource.api_version}); install its controller first "
            "(LeaderWorkerSet: https://lws.sigs.k8s.io/docs/installation/)"
        )

    def _dry_run(
        self, plan: _Planned, new_namespaces: set[str], secrets: Sequence[str], force: bool
    ) -> KubeError | None:
        """The problem a server-side dry run of ``plan`` finds, or None."""
        resource, ref = plan.resource, plan.ref
        if resource.shared:
            return None
        try:
            if ref.namespace in new_namespaces:
                # The namespace is created by this apply, so the server cannot dry-run into it yet:
                # check at least that the kind is served.
                if resource.api is ApiGroup.CUSTOM:
                    self.list_objects(resource.kind, ref.namespace)
                return None
            self._patch_apply(plan, secrets, force=force, dry_run=True)
        except _FieldConflicts as err:
            return err.error(ref)
        except KubeNotFoundError as err:
            if ref.namespace is not None and f'namespaces "{ref.namespace}" not found' in str(err):
                return self.namespace_missing(ref.namespace)
            if resource.api is ApiGroup.CUSTOM:
                return self._not_served(resource)
            return err
        except KubeError as err:
            return err
        return None

    def _apply_planned(self, plan: _Planned, secrets: Sequence[str], *, force: bool) -> AppliedObject:
        if plan.action is not None:
            return AppliedObject(ref=plan.ref, action=plan.action)
        try:
            answer = self._patch_apply(plan, secrets, force=force)
        except KubeNotFoundError as err:
            namespace = plan.ref.namespace
            if namespace is not None and f'namespaces "{namespace}" not found' in str(err):
                raise self.namespace_missing(namespace) from None
            if plan.resource.api is ApiGroup.CUSTOM:
                raise self._not_served(plan.resource) from None
            raise
        if plan.existing is None:
            return AppliedObject(ref=plan.ref, action=ApplyAction.CREATED, note=plan.note)
        before = plan.existing.get("metadata", {}).get("resourceVersion")
        after = answer.get("metadata", {}).get("resourceVersion")
        action = ApplyAction.UNCHANGED if before == after else ApplyAction.CONFIGURED
        return AppliedObject(ref=plan.ref, action=action, note=plan.note)

    def _rolled_back(self, failure: KubeError, done: Sequence[AppliedObject]) -> KubeError:
        """``failure`` after deleting what this apply created (shared kinds stay: others may use them)."""
        created = [
            item.ref
            for item in done
            if item.action is ApplyAction.CREATED and not resource_kind(item.ref.kind).shared
        ]
        if not created:
            return failure
        removed: list[ObjectRef] = []
        left: list[ObjectRef] = []
        for ref in reversed(created):
            try:
                removed.extend(self.delete([ref]))
            except KubeError:
                left.append(ref)
        text = f"{failure}; rolled back what this apply created: {', '.join(map(str, removed)) or 'nothing'}"
        if left:
            text += f" (could not delete {', '.join(map(str, left))}: remove them with kubectl)"
        return type(failure)(text)

    # --- scale -------------------------------------------------------------------------------

    def scale(self, name: str, replicas: int, namespace: str | None = None) -> ScaleResult:
        """Set a Deployment's replicas through its ``scale`` subresource."""
        if replicas < 0:
            raise KubeError(f"replicas must be 0 or more, got {replicas}")
        namespace = namespace or self.default_namespace
        self.require_namespace(namespace)
        scale_kwargs: dict[str, Any] = {"name": name, "namespace": namespace}
        try:
            current = self.call_json(
                Request(verb="get", resource="deployments.apps/scale", namespace=namespace, name=name),
                self.apps.read_namespaced_deployment_scale,
                **scale_kwargs,
            )
        except KubeNotFoundError:
            raise KubeNotFoundError(
                f"deployment {name!r} not found in namespace {namespace}; "
                f"see servedeck deploy list -n {namespace}"
            ) from None
        self.call_json(
            Request(verb="patch", resource="deployments.apps/scale", namespace=namespace, name=name),
            self.apps.patch_namespaced_deployment_scale,
            body={"spec": {"replicas": replicas}},
            _content_type=MERGE_PATCH,
            **scale_kwargs,
        )
        previous = int(current.get("spec", {}).get("replicas") or 0)
        ref = ObjectRef(kind="Deployment", name=name, namespace=namespace)
        return ScaleResult(ref=ref, previous_replicas=previous, replicas=replicas)

    # --- delete ------------------------------------------------------------------------------

    def managed_objects(
        self, namespace: str, deployment: str | None = None, *, keep_cache: bool = False
    ) -> list[ObjectRef]:
        """What ``delete`` would remove: objects with our label (of one deployment when named)."""
        self.require_namespace(namespace)
        selector = managed_selector(deployment)
        refs: list[ObjectRef] = []
        for resource in sorted(DELETABLE_KINDS, key=lambda r: -r.apply_order):
            if keep_cache and resource.kind == "PersistentVolumeClaim":
                continue
            for item in self.list_objects(
                resource.kind, namespace, label_selector=selector, missing_kind_ok=True
            ):
                name = object_name(item)
                if name is None or not is_managed(item):
                    continue
                if deployment and labels_of(item).get(DEPLOYMENT_LABEL) != deployment:
                    continue
                refs.append(ObjectRef(kind=resource.kind, name=name, namespace=namespace))
        return refs

    def delete(self, refs: Sequence[ObjectRef]) -> list[ObjectRef]:
        """Delete each object that still exists and still carries our label; returns those deleted."""
        deleted: list[ObjectRef] = []
        for ref in refs:
            resource = resource_kind(ref.kind)
            if resource.shared or not resource.namespaced or ref.namespace is None:
                raise KubeError(f"servedeck never deletes {ref.kind} objects ({ref}); remove it with kubectl")
            current = self.get(ref.kind, ref.name, ref.namespace)
            if current is None:
                continue
            if not is_managed(current):
                raise KubeConflictError(
                    f"{ref} is not managed by servedeck (no {MANAGED_BY_LABEL}={MANAGED_BY_VALUE} label); "
                    "servedeck deletes only its own objects"
                )
            operation, fixed = self._operation(resource, "delete")
            try:
                self.call_json(
                    Request(
                        verb="delete", resource=resource.resource, namespace=ref.namespace, name=ref.name
                    ),
                    operation,
                    name=ref.name,
                    propagation_policy="Background",
                    **fixed,
                    **self._scope(resource, ref.namespace),
                )
            except KubeNotFoundError:
                continue
            deleted.append(ref)
        return deleted
