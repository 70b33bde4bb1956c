"""Keep secrets out of every message ServeDeck prints, stores or exports.

Servers quote what they were sent (OpenAI answers a bad key with ``Incorrect API key provided: sk-...``),
exceptions carry URLs, and users paste keys where a name belongs. ``redact`` replaces, in any text:

- the secret values in play: every value given to ``remember_secret`` (the API key a target's variable
  holds, read by ``backends.targets.read_api_key``, the sweep and the chat) and the values of environment
  variables named like secrets (``HF_TOKEN``, ``OPENAI_API_KEY``, ``*_SECRET`` ...);
- what looks like a secret whatever its value: ``sk-...``, ``hf_...``, GitHub/Slack/AWS tokens, JWTs,
  ``Bearer ...``, ``user:password@`` in URLs, token query parameters, ``api_key=...``/``"password": ...``.

``redact_url`` gives a URL without its userinfo and with token query parameters masked.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import overload
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_MIN_KNOWN_LENGTH = 4  # a remembered value shorter than this would mask ordinary words
_MIN_ENV_LENGTH = 8  # env values are remembered by their variable's name alone, so ask for more
_CACHE_SIZE = 4096  # a failing level repeats the same few error lines thousands of times

_SECRET_ENV_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|KEY|APIKEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|CREDENTIALS)(?:_|$)", re.IGNORECASE
)
_SECRET_PARAM = (
    r"(?:api[_-]?key|apikey|key|access[_-]?token|auth[_-]?token|token|password|passwd|secret|sig|signature)"
)
_SECRET_NAME = (
    r"(?:x-api-key|api[_-]?key|apikey|access[_-]?token|auth[_-]?token|refresh[_-]?token|id[_-]?token|"
    r"hf[_-]?token|token|password|passwd|client[_-]?secret|secret|authorization)"
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host -> scheme://***@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@\"'<>]+@"), rf"\1{MASK}@"),
    (re.compile(rf"(?i)([?&]{_SECRET_PARAM}=)(?!\*\*\*)[^&#\s\"'<>]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)\b(Bearer|Basic)\s+(?!\*\*\*)[A-Za-z0-9._~+/=-]{4,}"), rf"\1 {MASK}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), f"sk-{MASK}"),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), f"hf_{MASK}"),
    (re.compile(r"\b(gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}"), rf"\1{MASK}"),
    (re.compile(r"\b(xox[abprs]-)[A-Za-z0-9-]{10,}"), rf"\1{MASK}"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), MASK),
    # api_key=..., password: ..., "token": "..." (JSON stays JSON: the quotes are kept)
    (
        re.compile(
            rf"(?i)(?<![A-Za-z0-9_])({_SECRET_NAME})([\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)([^\s\"'&,;}}]+)"
        ),
        rf"\1\2{MASK}",
    ),
)


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables named like secrets (paths and short values left out)."""
    env = os.environ if environ is None else environ
    return [
        value.strip()
        for name, value in env.items()
        if _SECRET_ENV_NAME.search(name)
        and len(value.strip()) >= _MIN_ENV_LENGTH
        and not value.startswith(("/", "~", "."))
    ]


class Redactor:
    """Masks the values it knows plus everything that looks like a secret."""

    def __init__(self, secrets: Iterable[str | None] = (), *, environment: bool = False) -> None:
        self._known: set[str] = set()
        self._lock = threading.Lock()
        # Reading os.environ costs ~50 µs, more than the rest of a call: read once, on first use.
        self._environment_pending = environment
        self._ordered: tuple[str, ...] = ()
        self._cache: dict[str, str] = {}
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        if secret is None:
            return
        value = secret.strip()
        if len(value) >= _MIN_KNOWN_LENGTH and value not in self._known:
            with self._lock:
                self._known.add(value)
                self._reorder()

    def _reorder(self) -> None:
        # Longest first, so a key that contains another is masked whole.
        self._ordered = tuple(sorted(self._known, key=len, reverse=True))
        self._cache = {}

    def _values(self) -> tuple[str, ...]:
        if self._environment_pending:
            with self._lock:
                if self._environment_pending:
                    self._known.update(environment_secrets())
                    self._environment_pending = False
                    self._reorder()
        return self._ordered

    def __call__(self, text: str, extra: Iterable[str | None] = ()) -> str:
        extras = [v.strip() for v in extra if v is not None and len(v.strip()) >= _MIN_KNOWN_LENGTH]
        values = self._values()
        cache = self._cache
        if not extras:
            hit = cache.get(text)
            if hit is not None:
                return hit
        masked = text
        for value in (*sorted(extras, key=len, reverse=True), *values):
            if value in masked:
                masked = masked.replace(value, MASK)
        for pattern, replacement in _PATTERNS:
            masked = pattern.sub(replacement, masked)
        if not extras:
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[text] = masked
        return masked


_PROCESS = Redactor(environment=True)


def remember_secret(secret: str | None) -> str | None:
    """Note ``secret`` as a value no message of this process may show; returns it unchanged."""
    _PROCESS.add(secret)
    return secret


@overload
def redact(text: str, *secrets: str | None) -> str: ...
@overload
def redact(text: None, *secrets: str | None) -> None: ...
def redact(text: str | None, *secrets: str | None) -> str | None:
    """``text`` with the remembered secrets, ``secrets`` and secret-looking strings masked."""
    if not text:
        return text
    return _PROCESS(text, secrets)


def url_has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return "@" in parts.netloc


def redact_url(url: str) -> str:
    """``url`` without ``user:password@`` and with secret-looking query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        masked = [(k, MASK if re.fullmatch(_SECRET_PARAM, k, re.IGNORECASE) else v) for k, v in pairs]
        query = urlencode(masked, safe="*")
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def looks_like_secret(text: str) -> bool:
    """True when ``text`` is, or contains, something ``redact`` would mask."""
    return redact(text) != text
