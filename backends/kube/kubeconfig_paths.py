"""Where the kubeconfig is, found the way kubectl finds it, without importing the Kubernetes client.

The TUI asks this at start-up to say "no cluster" before paying for the client's import; the client side
(``kubeconfig.load_kubeconfig``) reads the same paths.
"""

from __future__ import annotations

import os
from pathlib import Path

KUBECONFIG_ENV = "KUBECONFIG"
DEFAULT_KUBECONFIG = Path("~/.kube/config")
GKE_HINT = "(for GKE: gcloud container clusters get-credentials CLUSTER --region REGION)"


def kubeconfig_paths(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """The kubeconfig files to read, in precedence order (they may not exist)."""
    if explicit:
        return [Path(explicit).expanduser()]
    env = os.environ.get(KUBECONFIG_ENV, "")
    from_env = [Path(part).expanduser() for part in env.split(os.pathsep) if part.strip()]
    return from_env or [DEFAULT_KUBECONFIG.expanduser()]


def missing_kubeconfig_message(paths: list[Path], *, flag_hint: bool) -> str:
    """One line for "none of these files exists"; ``flag_hint`` where a --kubeconfig flag can be passed."""
    where = os.pathsep.join(str(path) for path in paths)
    how = "set KUBECONFIG or pass --kubeconfig PATH" if flag_hint else "set KUBECONFIG to use a cluster"
    return f"no kubeconfig found at {where}; {how} {GKE_HINT}"


def missing_kubeconfig(
    explicit: str | os.PathLike[str] | None = None, *, flag_hint: bool = False
) -> str | None:
    """Why there is no cluster when no kubeconfig file exists, else None."""
    paths = kubeconfig_paths(explicit)
    if any(path.is_file() for path in paths):
        return None
    return missing_kubeconfig_message(paths, flag_hint=flag_hint)
