"""Kubernetes failures as one line each.

The API server answers errors with a ``Status`` object (``reason``, ``message``, ``code``); we keep
its message (it names the object and the field) and say what we were doing. Secret values are
redacted from any server text before it reaches a message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from backends.errors import ServeDeckError


class KubeError(ServeDeckError):
    """Any failure talking to Kubernetes."""


class KubeconfigError(KubeError):
    """No kubeconfig, an unreadable one, or an unknown context."""


class KubeUnreachableError(KubeError):
    """The API server cannot be reached (refused, DNS, TLS, timeout)."""


class KubeForbiddenError(KubeError):
    """RBAC denied a request (HTTP 403)."""


class KubeUnauthorizedError(KubeError):
    """The API server did not accept the credentials at all (HTTP 401): not an RBAC question."""


class KubeNotFoundError(KubeError):
    """The object (or its namespace) does not exist (HTTP 404)."""


class NamespaceMissingError(KubeNotFoundError):
    """The namespace itself does not exist."""


class KubeConflictError(KubeError):
    """HTTP 409: already exists, field-manager conflict, or an object we do not own."""


class KubeInvalidError(KubeError):
    """HTTP 422: the object was rejected by validation."""


class KubeRequestError(KubeError):
    """Any other error status from the API server."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def status_message(body: str | bytes | None, fallback: str) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, else the first line of the body, else ``fallback``."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if not body:
        return fallback
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        first = body.strip().splitlines()[0] if body.strip() else ""
        return first[:300] or fallback
    if isinstance(parsed, dict):
        message = parsed.get("message")
        if isinstance(message, str) and message:
            return message
    return fallback


def error_for_status(
    status: int,
    body: str | bytes | None,
    *,
    verb: str,
    resource: str,
    namespace: str | None,
    name: str | None = None,
    reason: str | None = None,
    secrets: Iterable[str] = (),
) -> KubeError:
    """The ``KubeError`` for an error answer to ``verb resource[/name]`` in ``namespace``."""
    message = redact(" ".join(status_message(body, reason or f"HTTP {status}").split()), secrets)
    where = f" in {namespace}" if namespace else " (cluster scope)"
    what = f"{resource}/{name}" if name else resource
    if status == 401:
        return KubeUnauthorizedError(
            f"authentication failed: the API server rejected the token (or client certificate) of the "
            f"kubeconfig user ({verb} {what}{where}: {message}); log in again or refresh the cluster "
            "credentials (GKE: gcloud container clusters get-credentials CLUSTER --region REGION)"
        )
    if status == 403:
        return KubeForbiddenError(f"forbidden: {verb} {resource}{where}: {message}")
    if status == 404:
        return KubeNotFoundError(f"not found: {verb} {what}{where}: {message}")
    if status == 409:
        return KubeConflictError(f"conflict: {verb} {what}{where}: {message}")
    if status == 422:
        return KubeInvalidError(f"invalid: {verb} {what}{where}: {message}")
    return KubeRequestError(f"API server answered {status} to {verb} {what}{where}: {message}")
