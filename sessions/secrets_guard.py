"""Refuse to store anything that looks like a secret, and mask secrets in the text that is stored.

Targets carry only the *name* of the environment variable that holds an API key, so the normal
path never sees a key. These checks catch the ways one could still slip in: a free-form parameter
named like a secret, credentials written into a URL (refused), and a server that quotes the key back
in its error text (masked by ``backends.redaction`` before it is stored or exported: the bench masks
it where the message is made, this is the last line for records built or imported elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from backends.bench.models import RequestRecord
from backends.redaction import redact, redact_url
from backends.target_types import Target
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
    name = redact(target.name)
    if parts.password is not None or parts.username is not None:
        raise SessionStoreError(
            f"the URL of target {name!r} ({redact_url(target.base_url)}) contains credentials; {_ADVICE}"
        )
    for param, _ in parse_qsl(parts.query):
        if _looks_secret(param):
            raise SessionStoreError(f"the URL of target {name!r} carries {param!r}; {_ADVICE}")


def scrub_records(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    """``records`` with secrets masked in their error text (records without one are passed as they are)."""
    scrubbed = []
    for record in records:
        if record.error:
            clean = redact(record.error)
            if clean != record.error:
                record = record.model_copy(update={"error": clean})
        scrubbed.append(record)
    return scrubbed
