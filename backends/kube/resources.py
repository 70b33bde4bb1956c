"""The kinds ServeDeck reads and writes, and where each lives in the API.

Built-in kinds go through the typed API classes of the official client (``CoreV1Api``,
``AppsV1Api``, ...), whose methods follow one naming scheme: ``{verb}_namespaced_{snake}`` for
namespaced kinds and ``{verb}_{snake}`` for cluster-scoped ones. LeaderWorkerSet is a custom
resource and goes through ``CustomObjectsApi``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from backends.kube.errors import KubeError

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "servedeck"
DEPLOYMENT_LABEL = "servedeck.io/deployment"
FIELD_MANAGER = "servedeck"


class ApiGroup(StrEnum):
    CORE = "CoreV1Api"
    APPS = "AppsV1Api"
    STORAGE = "StorageV1Api"
    BATCH = "BatchV1Api"
    CUSTOM = "CustomObjectsApi"


class ResourceKind(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str
    api_version: str
    plural: str
    snake: str
    namespaced: bool
    api: ApiGroup
    apply_order: int
    shared: bool = False
    """Shared kinds (Namespace, StorageClass) may serve other deployments and people: apply creates
    them when missing and otherwise leaves them as they are; delete never removes them."""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def resource(self) -> str:
        """``plural[.group]``, the way RBAC messages and kubectl name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


KINDS: tuple[ResourceKind, ...] = (
    ResourceKind(
        kind="StorageClass",
        api_version="storage.k8s.io/v1",
        plural="storageclasses",
        snake="storage_class",
        namespaced=False,
        api=ApiGroup.STORAGE,
        apply_order=0,
        shared=True,
    ),
    ResourceKind(
        kind="Namespace",
        api_version="v1",
        plural="namespaces",
        snake="namespace",
        namespaced=False,
        api=ApiGroup.CORE,
        apply_order=1,
        shared=True,
    ),
    ResourceKind(
        kind="Secret",
        api_version="v1",
        plural="secrets",
        snake="secret",
        namespaced=True,
        api=ApiGroup.CORE,
        apply_order=2,
    ),
    ResourceKind(
        kind="ConfigMap",
        api_version="v1",
        plural="configmaps",
        snake="config_map",
        namespaced=True,
        api=ApiGroup.CORE,
        apply_order=3,
    ),
    ResourceKind(
        kind="PersistentVolumeClaim",
        api_version="v1",
        plural="persistentvolumeclaims",
        snake="persistent_volume_claim",
        namespaced=True,
        api=ApiGroup.CORE,
        apply_order=4,
    ),
    ResourceKind(
        kind="Service",
        api_version="v1",
        plural="services",
        snake="service",
        namespaced=True,
        api=ApiGroup.CORE,
        apply_order=5,
    ),
    ResourceKind(
        kind="Deployment",
        api_version="apps/v1",
        plural="deployments",
        snake="deployment",
        namespaced=True,
        api=ApiGroup.APPS,
        apply_order=6,
    ),
    ResourceKind(
        kind="LeaderWorkerSet",
        api_version="leaderworkerset.x-k8s.io/v1",
        plural="leaderworkersets",
        snake="custom_object",
        namespaced=True,
        api=ApiGroup.CUSTOM,
        apply_order=7,
    ),
    ResourceKind(
        kind="Job",
        api_version="batch/v1",
        plural="jobs",
        snake="job",
        namespaced=True,
        api=ApiGroup.BATCH,
        apply_order=8,
    ),
    ResourceKind(
        kind="Pod",
        api_version="v1",
        plural="pods",
        snake="pod",
        namespaced=True,
        api=ApiGroup.CORE,
        apply_order=9,
    ),
    ResourceKind(
        kind="Event",
        api_version="v1",
        plural="events",
        snake="event",
        namespaced=True,
        api=ApiGroup.CORE,
        apply_order=10,
    ),
)

_BY_KIND = {kind.kind: kind for kind in KINDS}
APPLICABLE_KINDS = tuple(kind for kind in KINDS if kind.kind not in ("Pod", "Event"))
"""Kinds ``apply`` accepts (pods and events belong to controllers and the cluster)."""

DELETABLE_KINDS = tuple(kind for kind in APPLICABLE_KINDS if not kind.shared)
"""Kinds ``delete`` removes, in reverse apply order: workloads first, then what they used."""


def resource_kind(kind: str) -> ResourceKind:
    try:
        return _BY_KIND[kind]
    except KeyError:
        known = ", ".join(k.kind for k in APPLICABLE_KINDS)
        raise KubeError(f"servedeck cannot handle kind {kind!r}; it applies {known}") from None


def kind_of(obj: Mapping[str, Any]) -> ResourceKind:
    """The ``ResourceKind`` of a plain object dict, checking its apiVersion."""
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        raise KubeError(
            "an object to apply has no kind; every object needs apiVersion, kind and metadata.name"
        )
    resource = resource_kind(kind)
    api_version = obj.get("apiVersion")
    if api_version != resource.api_version:
        raise KubeError(
            f"{kind} {object_name(obj) or '?'} has apiVersion {api_version!r}; servedeck applies "
            f"{kind} as {resource.api_version}"
        )
    return resource


def object_name(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        name = metadata.get("name")
        if isinstance(name, str) and name:
            return name
    return None


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        labels = metadata.get("labels")
        if isinstance(labels, Mapping):
            return {str(k): str(v) for k, v in labels.items()}
    return {}


def is_managed(obj: Mapping[str, Any]) -> bool:
    """True when the object carries ServeDeck's managed-by label."""
    return labels_of(obj).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def managed_selector(deployment: str | None = None) -> str:
    """Label selector for objects ServeDeck manages (of one deployment when named)."""
    selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
    if deployment:
        selector += f",{DEPLOYMENT_LABEL}={deployment}"
    return selector
