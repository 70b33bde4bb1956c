"""Read the Hugging Face token a spec points at, and keep secrets out of rendered manifests.

The token travels only as ``SecretStr``; no message, exception or repr here ever contains it. Rendered
objects are readable by anyone who may read the Deployment (and the spec is copied whole into its
``servedeck.io/spec`` annotation), so ``secret_in_arg`` refuses extra vLLM arguments that carry a key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import SecretStr

from manifests.errors import SecretSourceError

if TYPE_CHECKING:
    from manifests.spec import DeploymentSpec

# Flag words that name a secret (--api-key; vLLM's own --tokenizer* flags are not secrets).
_SECRET_FLAG_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"}
# manifests imports no other package of ours, so these mirror backends/redaction.py's value patterns.
_SECRET_VALUES = re.compile(
    r"\bsk-[A-Za-z0-9_-]{8,}|\bhf_[A-Za-z0-9]{16,}|\b(?:gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|(?i:\bBearer\s+[A-Za-z0-9._~+/=-]{4,})|(?i:\b[a-z][a-z0-9+.-]*://[^\s/?#@\"'<>]+@)"
    r"|(?i:(?<![A-Za-z0-9_])(?:api[_-]?key|access[_-]?token|token|password|secret)[\"']?\s*[:=])"
)
_KEY_ADVICE = (
    "it would be written into the manifest (container args and the servedeck.io/spec annotation), readable "
    "by anyone who can read the Deployment"
)


def secret_in_arg(arg: str) -> str | None:
    """Why the extra vLLM argument ``arg`` may not be rendered, or None. The reason never quotes it."""
    flag = arg.split("=", 1)[0]
    if flag.startswith("-"):
        words = set(flag.lstrip("-").lower().replace("_", "-").split("-"))
        if words & _SECRET_FLAG_WORDS:
            hint = (
                "; vLLM reads the key from the VLLM_API_KEY environment variable instead, which can come "
                "from a Kubernetes Secret"
                if "key" in words or "apikey" in words
                else ""
            )
            return f"extra argument {flag} carries a secret: {_KEY_ADVICE}{hint}"
    if _SECRET_VALUES.search(arg):
        return f"an extra argument looks like it holds a secret (a key or token): {_KEY_ADVICE}"
    return None


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
