"""Find out what an OpenAI-compatible URL is: its model, its kind and what it can report.

``discover_target`` asks ``/v1/models``, tells vLLM, llama.cpp's llama-server, the ServeDeck twin
and other OpenAI-compatible servers apart, and probes the extras the bench uses (``/tokenize``,
``/metrics``, ``/slots``, usage in streamed chunks). Every failure is one TargetError line; the API
key is read from an environment variable and never appears in a message.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx

from backends.errors import TargetError
from backends.prometheus import Exposition, parse_exposition
from backends.redaction import looks_like_secret, redact, redact_url, remember_secret, url_has_credentials
from backends.target_types import Target, TargetCapabilities, TargetKind

SIMULATED_HEADER = "x-servedeck-simulated"
TWIN_MODEL_SUFFIX = "-twin"
PROBE_PROMPT = "Hello"


def normalize_base_url(base_url: str) -> str:
    """``http://host:port[/prefix]`` without a trailing ``/`` or ``/v1``; TargetError when not a URL."""
    text = base_url.strip()
    parts = urlsplit(text)
    if url_has_credentials(text):
        raise TargetError(
            f"{redact_url(text)!r}: the URL carries credentials (user:password@), which would end up in "
            "results and history; drop them, put the API key in an environment variable and pass its "
            "name (--api-key-env)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(
            f"{redact_url(base_url)!r} is not an http(s) URL; give one like http://127.0.0.1:8000"
        )
    try:
        _ = parts.port
    except ValueError:
        raise TargetError(
            f"{redact_url(base_url)!r} has an invalid port; give one like http://127.0.0.1:8000"
        ) from None
    text = text.rstrip("/")
    if text.endswith("/v1"):
        text = text[: -len("/v1")]
    return text


def read_api_key(api_key_env: str | None) -> str | None:
    """The key held in the environment variable named ``api_key_env`` (None when no name is given)."""
    if not api_key_env:
        return None
    check_api_key_env_name(api_key_env)
    value = remember_secret(os.environ.get(api_key_env, "").strip()) or ""
    if not value:
        raise TargetError(
            f"environment variable {api_key_env} is empty or not set; export the API key there "
            "(or drop the API key option for a server without one)"
        )
    return value


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_api_key_env_name(api_key_env: str) -> None:
    """TargetError when ``api_key_env`` is not a variable name (most likely the key itself): the message
    never repeats it, and the value is remembered so that no other message shows it either."""
    if _ENV_NAME.match(api_key_env) and not looks_like_secret(api_key_env):
        return
    remember_secret(api_key_env)
    raise TargetError(
        "--api-key-env takes the NAME of an environment variable, and what was given is not one (it looks "
        "like the key itself, which is not repeated here); export the key, e.g. export "
        "OPENAI_API_KEY=..., and pass --api-key-env OPENAI_API_KEY"
    )


def _redact(text: str, secret: str | None) -> str:
    return redact(text, secret)


def error_message_from_body(body: bytes | str) -> str | None:
    """The server's own message from an error body: vLLM's flat ``{"object":"error","message":..}``,
    the OpenAI/vLLM/llama.cpp nested ``{"error": {"message": ..}}``, FastAPI's ``{"detail": ..}``."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    nested = data.get("error")
    if isinstance(nested, dict) and isinstance(nested.get("message"), str):
        return str(nested["message"])
    if isinstance(nested, str):
        return nested
    if isinstance(data.get("message"), str):
        return str(data["message"])
    detail = data.get("detail")
    if isinstance(detail, str):
        return detail
    if detail is not None:
        return json.dumps(detail)[:200]
    return None


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _connect_failure(base_url: str, exc: httpx.HTTPError) -> TargetError:
    host = urlsplit(base_url).hostname or base_url
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return TargetError(f"cannot resolve host {host!r} ({base_url}); check the URL")
        if isinstance(cause, ConnectionRefusedError):
            break
        cause = cause.__cause__ or cause.__context__
    text = str(exc).lower()
    if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return TargetError(f"cannot resolve host {host!r} ({base_url}); check the URL")
    if "refused" in text or isinstance(cause, ConnectionRefusedError):
        return TargetError(
            f"cannot connect to {base_url}: connection refused; is the server running on that port?"
        )
    return TargetError(f"cannot connect to {base_url}: {_one_line(str(exc)) or type(exc).__name__}")


def _auth_failure(base_url: str, status: int, api_key: str | None, api_key_env: str | None) -> TargetError:
    if api_key is None:
        return TargetError(
            f"{base_url} refused the request (HTTP {status}): it needs an API key; put the key in an "
            "environment variable and pass that variable's name (--api-key-env)"
        )
    source = f"the API key from ${api_key_env}" if api_key_env else "the given API key"
    return TargetError(f"{base_url} rejected {source} (HTTP {status}); check the key")


class _Discovery:
    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str | None,
        api_key_env: str | None,
        timeout_s: float,
    ) -> None:
        self.client = client
        self.base_url = base_url
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s

    async def get_models(self) -> tuple[list[dict[str, Any]], httpx.Headers]:
        url = f"{self.base_url}/v1/models"
        try:
            response = await self.client.get("/v1/models")
        except httpx.TimeoutException:
            await self._refuse_https_on_plain_http()
            raise TargetError(
                f"{url} did not answer within {self.timeout_s:g} s; is the server still loading the model?"
            ) from None
        except httpx.HTTPError as exc:
            await self._refuse_https_on_plain_http()
            raise _connect_failure(self.base_url, exc) from None
        status = response.status_code
        if status in (401, 403):
            raise _auth_failure(self.base_url, status, self.api_key, self.api_key_env)
        if status == 404:
            raise TargetError(
                f"{url} returned HTTP 404: not an OpenAI-compatible server? check the URL and port"
            )
        if status >= 400:
            message = error_message_from_body(response.content)
            detail = _one_line(_redact(message, self.api_key)) if message else _one_line(response.text, 120)
            raise TargetError(f"{url} answered HTTP {status}: {detail or 'no details'}")
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            content_type = response.headers.get("content-type", "unknown type")
            raise TargetError(
                f"{url} did not return JSON (got {content_type}: {_one_line(response.text, 60)!r}); "
                "is this an OpenAI-compatible server?"
            ) from None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise TargetError(
                f"{url} returned JSON without a 'data' list of models; not an OpenAI-compatible server?"
            )
        models = [entry for entry in data if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
        if not models:
            raise TargetError(f"{url} lists no models; is the model still loading?")
        return models, response.headers

    async def _refuse_https_on_plain_http(self) -> None:
        """TargetError when an https URL failed and the same port answers plain HTTP (a TLS hello sent to
        a plain-HTTP server fails the handshake, or leaves the server waiting for a request line)."""
        parts = urlsplit(self.base_url)
        if parts.scheme != "https":
            return
        plain = parts._replace(scheme="http").geturl()
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(min(self.timeout_s, 3.0))) as client:
                answer = await client.get(f"{plain}/v1/models")
        except httpx.HTTPError:
            return
        if answer.status_code == 400:  # nginx and others: "plain HTTP request sent to HTTPS port"
            return
        raise TargetError(
            f"{self.base_url} looks like a plain-HTTP port: TLS failed there but {plain} answers; "
            "use http:// (or put a TLS proxy in front)"
        )

    async def get(self, path: str) -> httpx.Response | None:
        try:
            return await self.client.get(path)
        except httpx.HTTPError:
            return None

    async def probe_metrics(self) -> Exposition | None:
        """What /metrics holds, or None when there is no usable /metrics."""
        response = await self.get("/metrics")
        if response is None or response.status_code != 200:
            return None
        exposition = parse_exposition(response.text)
        if not exposition.samples:
            return None
        return exposition

    async def probe_json(self, path: str) -> Any:
        response = await self.get(path)
        if response is None or response.status_code != 200:
            return None
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError):
            return None

    async def probe_tokenize(self, model: str) -> bool:
        # vLLM reads "prompt", llama.cpp reads "content"; each ignores the other's field.
        try:
            response = await self.client.post(
                "/tokenize", json={"model": model, "prompt": PROBE_PROMPT, "content": PROBE_PROMPT}
            )
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(body, dict) and isinstance(body.get("tokens"), list) and bool(body["tokens"])

    async def _stream_chunks(self, path: str, payload: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        chunks: list[dict[str, Any]] = []
        async with self.client.stream("POST", path, json=payload) as response:
            if response.status_code != 200:
                await response.aread()
                return response.status_code, chunks
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if isinstance(chunk, dict):
                    chunks.append(chunk)
        return 200, chunks

    async def probe_stream_usage(self, model: str) -> tuple[bool, bool]:
        """(usage arrives in the stream, usage arrives on every content chunk).

        Two tokens are asked so that a server which only attaches usage to its last content chunk is
        not mistaken for one that reports it continuously. Servers that reject the vLLM-only
        ``continuous_usage_stats`` field are asked again with ``include_usage`` alone.
        """
        options_tried = ({"include_usage": True, "continuous_usage_stats": True}, {"include_usage": True})
        for stream_options in options_tried:
            for path, body in (
                ("/v1/completions", {"prompt": PROBE_PROMPT}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROBE_PROMPT}]}),
            ):
                payload = {
                    "model": model,
                    **body,
                    "max_tokens": 2,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": stream_options,
                }
                try:
                    status, chunks = await self._stream_chunks(path, payload)
                except httpx.HTTPError:
                    return False, False
                if status in (404, 405):
                    continue  # this server lacks that endpoint; try the other one
                if status != 200:
                    break  # most likely the stream options were refused; retry without the extra one
                with_choices = [c for c in chunks if c.get("choices")]
                has_usage = any(isinstance(c.get("usage"), dict) for c in chunks)
                continuous = len(with_choices) >= 2 and all(
                    isinstance(c.get("usage"), dict) for c in with_choices
                )
                return has_usage, continuous
        return False, False


def _detect_kind(
    model_entry: dict[str, Any],
    headers: httpx.Headers,
    metric_names: set[str] | None,
    props: Any,
    slots: Any,
    version: Any,
) -> TargetKind:
    model_id = str(model_entry.get("id", ""))
    owned_by = str(model_entry.get("owned_by", "")).lower()
    if SIMULATED_HEADER in headers or model_id.endswith(TWIN_MODEL_SUFFIX):
        return TargetKind.TWIN
    if owned_by == "vllm":
        return TargetKind.VLLM
    if owned_by == "llamacpp":
        return TargetKind.LLAMACPP
    names = metric_names or set()
    if any(name.startswith("vllm:") for name in names):
        return TargetKind.VLLM
    if any(name.startswith("llamacpp:") for name in names):
        return TargetKind.LLAMACPP
    if (isinstance(props, dict) and ("default_generation_settings" in props or "total_slots" in props)) or (
        isinstance(slots, list) and slots and isinstance(slots[0], dict) and "n_ctx" in slots[0]
    ):
        return TargetKind.LLAMACPP
    if isinstance(version, dict) and isinstance(version.get("version"), str):
        return TargetKind.VLLM
    return TargetKind.OPENAI


async def discover_target(
    base_url: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    api_key_env: str | None = None,
    name: str | None = None,
    kind: TargetKind | None = None,
    timeout_s: float = 5,
) -> Target:
    """Ask ``base_url`` what it serves and return a Target with its kind and capabilities.

    The key comes from ``api_key`` or else from the environment variable ``api_key_env`` (the name is
    what the Target keeps). ``model`` must be one the server lists; by default its first model.
    ``kind`` skips detection. Raises TargetError with one line for every failure.
    """
    url = normalize_base_url(base_url)
    key = remember_secret(api_key) if api_key is not None else read_api_key(api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=httpx.Timeout(timeout_s)) as client:
        discovery = _Discovery(client, url, key, api_key_env, timeout_s)
        models, model_headers = await discovery.get_models()
        ids = [str(entry["id"]) for entry in models]
        if model is None:
            chosen = models[0]
        else:
            matches = [entry for entry in models if entry["id"] == model]
            if not matches:
                raise TargetError(f"model {model!r} is not served by {url}; available: {', '.join(ids)}")
            chosen = matches[0]
        model_id = str(chosen["id"])

        exposition, props, slots, version, tokenize, (stream_usage, continuous) = await asyncio.gather(
            discovery.probe_metrics(),
            discovery.probe_json("/props"),
            discovery.probe_json("/slots"),
            discovery.probe_json("/version"),
            discovery.probe_tokenize(model_id),
            discovery.probe_stream_usage(model_id),
        )
    metric_names = exposition.names() if exposition is not None else None
    detected = (
        kind if kind is not None else _detect_kind(chosen, model_headers, metric_names, props, slots, version)
    )
    capabilities = TargetCapabilities(
        tokenize=tokenize,
        metrics=metric_names is not None,
        slots=isinstance(slots, list),
        stream_usage=stream_usage,
        continuous_usage=continuous,
    )
    host = urlsplit(url)
    default_name = (
        f"{model_id} @ {host.hostname}:{host.port}" if host.port else f"{model_id} @ {host.hostname}"
    )
    return Target(
        name=name or default_name,
        base_url=url,
        model=model_id,
        kind=detected,
        api_key_env=api_key_env,
        capabilities=capabilities,
        hardware=_twin_hardware(exposition) if detected is TargetKind.TWIN else None,
        max_model_len=_context_length(chosen, props, slots, detected),
    )


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _context_length(model_entry: dict[str, Any], props: Any, slots: Any, kind: TargetKind) -> int | None:
    """Tokens one request may use: a llama.cpp slot's n_ctx (/props, else /slots), which is the server's
    context divided among its slots, else vLLM's max_model_len from /v1/models."""
    if kind is TargetKind.LLAMACPP:
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        n_ctx = _positive_int(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if n_ctx is None and isinstance(slots, list) and slots and isinstance(slots[0], dict):
            n_ctx = _positive_int(slots[0].get("n_ctx"))
        if n_ctx is not None:
            return n_ctx
    return _positive_int(model_entry.get("max_model_len"))


def _twin_hardware(exposition: Exposition | None) -> str | None:
    """A label such as 2xh100 (twin), from the twin's ``servedeck:twin_info``; History files runs by it."""
    if exposition is None:
        return None
    for sample in exposition.samples:
        if sample.name == "servedeck:twin_info":
            gpu, count = sample.labels.get("gpu"), sample.labels.get("gpu_count")
            if gpu and count:
                return f"{count}x{gpu} (twin)"
    return None
