"""Read the Hugging Face token a spec points at. The value travels only as ``SecretStr``; no message,
exception or repr here ever contains it."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import SecretStr

from manifests.errors import SecretSourceError
from manifests.spec import DeploymentSpec


def read_hf_token(spec: DeploymentSpec, environ: Mapping[str, str]) -> SecretStr:
    """The token from ``spec.hf_token_env`` (looked up in ``environ``, which the caller passes) or from
    ``spec.hf_token_file``."""
    if spec.hf_token_env is not None:
        value = environ.get(spec.hf_token_env, "").strip()
        if not value:
            raise SecretSourceError(
                f"env var {spec.hf_token_env} is not set or empty: export your Hugging Face token in it "
                "(or point --hf-token-file at a file holding it)"
            )
        return _checked(value, f"env var {spec.hf_token_env}")
    if spec.hf_token_file is not None:
        path = spec.hf_token_file.expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise SecretSourceError(f"HF token file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:
            raise SecretSourceError(f"cannot read HF token file {path}: {type(err).__name__}") from None
        if not value:
            raise SecretSourceError(f"HF token file {path} is empty")
        return _checked(value, f"HF token file {path}")
    raise SecretSourceError(f"{spec.name} names no HF token source (hf_token_env or hf_token_file)")


def _checked(value: str, where: str) -> SecretStr:
    if any(ch.isspace() for ch in value):
        raise SecretSourceError(f"{where} holds more than one word; it must contain only the token")
    return SecretStr(value)
