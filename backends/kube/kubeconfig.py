"""Kubeconfig: where it is, its contexts, and an API client for one context.

The kubeconfig is found the way kubectl finds it: ``--kubeconfig``, else ``$KUBECONFIG`` (a list of
files separated by ``os.pathsep``; for each name the first file that defines it wins, and so does the
first ``current-context``), else ``~/.kube/config``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from pydantic import BaseModel, ConfigDict

from backends.kube.errors import KubeconfigError
from backends.kube.kubeconfig_paths import (
    kubeconfig_paths,
    missing_kubeconfig_message,
)

DEFAULT_NAMESPACE = "default"


class KubeContext(BaseModel):
    """One context of a kubeconfig, with the API server it points at."""

    model_config = ConfigDict(frozen=True)

    name: str
    cluster: str
    user: str
    namespace: str | None = None
    server: str | None = None


class Kubeconfig(BaseModel):
    """The merged contexts of the kubeconfig file(s) in use."""

    model_config = ConfigDict(frozen=True)

    paths: list[Path]
    contexts: list[KubeContext]
    current_context: str | None

    def context(self, name: str | None) -> KubeContext:
        """The context called ``name`` (the current one when None); KubeconfigError when there is none."""
        wanted = name or self.current_context
        if not wanted:
            raise KubeconfigError(
                f"{self._where()} sets no current-context; pass --context NAME "
                f"(contexts: {self._names()}) or run `kubectl config use-context NAME`"
            )
        for context in self.contexts:
            if context.name == wanted:
                return context
        raise KubeconfigError(f"context {wanted!r} is not in {self._where()}; contexts: {self._names()}")

    def _names(self) -> str:
        return ", ".join(context.name for context in self.contexts) or "none"

    def _where(self) -> str:
        return os.pathsep.join(str(path) for path in self.paths)


def _read_document(path: Path) -> dict[str, Any]:
    try:
        loaded: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise KubeconfigError(f"kubeconfig {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise KubeconfigError(f"kubeconfig {path} is not a kubeconfig (expected a mapping at the top)")
    return loaded


def _named_entries(document: dict[str, Any], key: str, path: Path) -> dict[str, dict[str, Any]]:
    entries = document.get(key) or []
    if not isinstance(entries, list):
        raise KubeconfigError(f"kubeconfig {path}: {key} must be a list")
    named: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            body = entry.get(key[:-1])
            named[entry["name"]] = body if isinstance(body, dict) else {}
    return named


def load_kubeconfig(explicit: str | os.PathLike[str] | None = None) -> Kubeconfig:
    """Contexts of the kubeconfig in use; KubeconfigError when there is none or it is unreadable."""
    paths = kubeconfig_paths(explicit)
    existing = [path for path in paths if path.is_file()]
    if not existing:
        raise KubeconfigError(missing_kubeconfig_message(paths, flag_hint=True))
    clusters: dict[str, dict[str, Any]] = {}
    contexts: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for path in existing:
        document = _read_document(path)
        for name, body in _named_entries(document, "clusters", path).items():
            clusters.setdefault(name, body)
        for name, body in _named_entries(document, "contexts", path).items():
            contexts.setdefault(name, body)
        if current is None and isinstance(document.get("current-context"), str):
            current = document["current-context"] or None
    return Kubeconfig(
        paths=existing,
        contexts=[
            KubeContext(
                name=name,
                cluster=str(body.get("cluster", "")),
                user=str(body.get("user", "")),
                namespace=body.get("namespace") if isinstance(body.get("namespace"), str) else None,
                server=clusters.get(str(body.get("cluster", "")), {}).get("server"),
            )
            for name, body in contexts.items()
        ],
        current_context=current,
    )


def new_api_client(
    kubeconfig: Kubeconfig, context: str | None = None, *, retries: int = 0
) -> tuple[k8s_client.ApiClient, KubeContext]:
    """An ``ApiClient`` for ``context`` (the current one when None) and that context."""
    chosen = kubeconfig.context(context)
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.pathsep.join(str(path) for path in kubeconfig.paths),
            context=chosen.name,
            client_configuration=configuration,
            persist_config=False,
        )
    except (k8s_config.ConfigException, OSError, ValueError, TypeError) as err:
        text = " ".join(str(err).split())
        raise KubeconfigError(
            f"kubeconfig context {chosen.name!r} cannot be used: {text}; "
            "check its cluster and user entries (kubectl config view)"
        ) from None
    # One attempt per call: the caller decides about retrying, and an unreachable server fails fast.
    configuration.retries = retries
    return k8s_client.ApiClient(configuration), chosen
