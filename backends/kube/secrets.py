"""The Hugging Face token: read at apply time from an env var or a file, and put into our Secret.

The value lives only in a ``pydantic.SecretStr`` (its ``repr``/``str`` show ``**********``) and in
the body of the apply request. Messages about it name where it was looked for, never the value.
Rendered (exported) Secrets carry a placeholder; ``with_hf_token`` fills every key of every Secret
that ServeDeck manages with the token, as ``stringData``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from backends.errors import ConfigError
from backends.kube.resources import is_managed

HF_TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def read_hf_token(*, env_var: str | None = None, file: str | os.PathLike[str] | None = None) -> SecretStr:
    """The token from ``file`` if given, else from ``env_var`` (default HF_TOKEN, HUGGING_FACE_HUB_TOKEN)."""
    if file is not None:
        path = Path(file).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(f"cannot read the HF token file {path}: {err.strerror or err}") from None
        if not value:
            raise ConfigError(f"the HF token file {path} is empty; put the token (hf_...) in it")
        return SecretStr(value)
    names = (env_var,) if env_var else HF_TOKEN_ENV_VARS
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return SecretStr(value)
    raise ConfigError(
        f"no Hugging Face token: set {' or '.join(names)} or pass --hf-token-file PATH "
        "(gated models such as Gemma need a token whose account accepted the license)"
    )


def managed_secrets(objects: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [obj for obj in objects if obj.get("kind") == "Secret" and is_managed(obj)]


def with_hf_token(objects: Sequence[Mapping[str, Any]], token: SecretStr) -> list[dict[str, Any]]:
    """Copies of ``objects`` whose managed Secrets carry ``token`` in each of their keys."""
    filled: list[dict[str, Any]] = []
    for obj in objects:
        copied = copy.deepcopy(dict(obj))
        if copied.get("kind") == "Secret" and is_managed(copied):
            keys = list((copied.get("stringData") or {}).keys()) + list((copied.get("data") or {}).keys())
            if not keys:
                name = copied.get("metadata", {}).get("name")
                raise ConfigError(f"Secret {name} has no key to hold the HF token; render it again")
            copied.pop("data", None)
            copied["stringData"] = {key: token.get_secret_value() for key in dict.fromkeys(keys)}
        filled.append(copied)
    return filled
