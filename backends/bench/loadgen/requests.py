"""Pre-rendered HTTP requests: every byte is built before the clock starts."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from pydantic import BaseModel

from backends.bench.models import SampledRequest
from backends.errors import ConfigError


class Endpoint(BaseModel):
    scheme: str
    host: str
    port: int
    path_prefix: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        default = 443 if self.tls else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def parse_endpoint(base_url: str) -> Endpoint:
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"not an http(s) URL: {base_url!r} (expected e.g. http://127.0.0.1:8000)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"bad port in URL {base_url!r}") from None
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/v1"):
        prefix = prefix[:-3]
    return Endpoint(scheme=parts.scheme, host=parts.hostname, port=port, path_prefix=prefix)


class RequestOptions(BaseModel):
    model: str
    endpoint: str = "chat"
    temperature: float = 0.0
    ignore_eos: bool = False
    continuous_usage: bool = True
    api_key: str | None = None


def render_body(sample: SampledRequest, options: RequestOptions) -> dict[str, object]:
    body: dict[str, object] = {
        "model": options.model,
        "max_tokens": sample.expected_output_len,
        "temperature": options.temperature,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": options.continuous_usage},
    }
    if options.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": sample.prompt}]
    else:
        body["prompt"] = sample.prompt
    if options.ignore_eos:
        body["ignore_eos"] = True
    return body


def render_turn_body(
    history: list[tuple[str, str]], user: str, max_tokens: int, options: RequestOptions
) -> dict[str, object]:
    """A multi-turn request: the history's (user, answer) pairs, then the new user turn; a completions
    prompt gets the same turns as a plain transcript the next answer continues."""
    body = render_body(SampledRequest(prompt=user, prompt_len=0, expected_output_len=max_tokens), options)
    if options.endpoint == "chat":
        messages: list[dict[str, str]] = []
        for past_user, past_answer in history:
            messages.append({"role": "user", "content": past_user})
            messages.append({"role": "assistant", "content": past_answer})
        messages.append({"role": "user", "content": user})
        body["messages"] = messages
    else:
        parts = [f"User: {u}\n\nAssistant: {a}" for u, a in history]
        parts.append(f"User: {user}\n\nAssistant:")
        body["prompt"] = "\n\n".join(parts)
    return body


def render_request(endpoint: Endpoint, body: dict[str, object], options: RequestOptions) -> bytes:
    path = endpoint.path_prefix + (
        "/v1/chat/completions" if options.endpoint == "chat" else "/v1/completions"
    )
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    headers = [
        f"POST {path} HTTP/1.1",
        f"Host: {endpoint.host_header}",
        "User-Agent: servedeck-bench",
        "Accept: text/event-stream",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: keep-alive",
    ]
    if options.api_key:
        headers.append(f"Authorization: Bearer {options.api_key}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + payload
