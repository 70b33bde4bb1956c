"""Refuse to store anything that looks like a secret.

Targets carry only the *name* of the environment variable that holds an API key, so the normal
path never sees a key. These checks catch the two ways one could still slip in: a free-form
parameter named like a secret, and credentials written into a URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from backends.bench.models import Target
from sessions.errors import SessionStoreError

_SECRET_WORDS = ("api_key", "apikey", "secret", "password", "authorization", "credential", "bearer")
_ADVICE = "ServeDeck never stores secrets: put the key in an environment variable and set api_key_env"


def _looks_secret(name: str) -> bool:
    lowered = name.lower().replace("-", "_")
    # "hf_token" and "token" are secrets; "max_tokens" is not.
    return lowered == "token" or lowered.endswith("_token") or any(word in lowered for word in _SECRET_WORDS)


def check_params(params: Mapping[str, Any]) -> None:
    for name, value in params.items():
        if _looks_secret(name):
            raise SessionStoreError(
                f"chat parameter {name!r} looks like a secret and was not saved; {_ADVICE}"
            )
        if isinstance(value, Mapping):
            check_params(value)


def check_target(target: Target) -> None:
    parts = urlsplit(target.base_url)
    if parts.password is not None or parts.username is not None:
        raise SessionStoreError(f"the URL of target {target.name!r} contains credentials; {_ADVICE}")
    for name, _ in parse_qsl(parts.query):
        if _looks_secret(name):
            raise SessionStoreError(f"the URL of target {target.name!r} carries {name!r}; {_ADVICE}")
