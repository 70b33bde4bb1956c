"""vLLM's OpenAI response bodies, byte for byte: streamed chunks, usage chunks and full answers.

Chat chunks are dumped by vLLM with ``exclude_unset=True`` (so no ``usage`` key unless continuous usage
is on, and ``stop_reason`` only on the last token's chunk); completions chunks with
``exclude_unset=False`` (``"usage":null`` when there is none). Usage follows ``UsageInfo``'s field order.
The first chat chunk carries the role; the last token's chunk carries ``finish_reason``; with
``include_usage`` a chunk with ``"choices":[]`` precedes ``data: [DONE]``
(reference/vllm_k8s_facts.md §3a). Templates are bytes, filled with ``%``: the hot path never calls
``json.dumps``.
"""

from __future__ import annotations

import json
from typing import Any

from backends.twin.http_server import sse_frame

DONE_FRAME = sse_frame(b"data: [DONE]\n\n")


def usage_json(prompt_tokens: int, completion_tokens: int) -> bytes:
    return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
        prompt_tokens,
        prompt_tokens + completion_tokens,
        completion_tokens,
    )


class ChunkFormat:
    """The byte pieces of one endpoint's chunks that do not depend on the request."""

    __slots__ = (
        "content_close",
        "content_open",
        "final_close",
        "id_prefix",
        "no_usage",
        "object_name",
        "role",
    )

    def __init__(
        self,
        object_name: bytes,
        id_prefix: str,
        role: bytes,
        content_open: bytes,
        content_close: bytes,
        final_close: bytes,
        no_usage: bytes,
    ) -> None:
        self.object_name = object_name
        self.id_prefix = id_prefix
        self.role = role
        self.content_open = content_open
        self.content_close = content_close
        self.final_close = final_close  # %b: the finish reason as a JSON string
        self.no_usage = no_usage


CHAT = ChunkFormat(
    object_name=b"chat.completion.chunk",
    id_prefix="chatcmpl-",
    role=b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]',
    content_open=b'{"index":0,"delta":{"content":',
    content_close=b'},"logprobs":null,"finish_reason":null}]',
    final_close=b'},"logprobs":null,"finish_reason":%b,"stop_reason":null}]',
    no_usage=b"",
)
COMPLETION = ChunkFormat(
    object_name=b"text_completion",
    id_prefix="cmpl-",
    role=b"",
    content_open=b'{"index":0,"text":',
    content_close=b',"logprobs":null,"finish_reason":null,"stop_reason":null}]',
    final_close=b',"logprobs":null,"finish_reason":%b,"stop_reason":null}]',
    no_usage=b',"usage":null',
)


def chunk_head(fmt: ChunkFormat, request_id: str, created: int, model: str) -> bytes:
    """``data: {"id":..,"object":..,"created":..,"model":..,"choices":[`` for one request."""
    return b'data: {"id":"%b","object":"%b","created":%d,"model":%b,"choices":[' % (
        request_id.encode(),
        fmt.object_name,
        created,
        json.dumps(model).encode(),
    )


def role_event(fmt: ChunkFormat, head: bytes, prompt_tokens: int, continuous: bool) -> bytes:
    usage = b',"usage":%b' % usage_json(prompt_tokens, 0) if continuous else fmt.no_usage
    return sse_frame(head + fmt.role + usage + b"}\n\n")


def usage_event(head: bytes, prompt_tokens: int, completion_tokens: int) -> bytes:
    return sse_frame(b'%b],"usage":%b}\n\n' % (head, usage_json(prompt_tokens, completion_tokens)))


def full_answer(
    fmt: ChunkFormat,
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    """A ``stream: false`` answer (vLLM's ChatCompletionResponse / CompletionResponse)."""
    choice: dict[str, Any]
    if fmt is CHAT:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        object_name = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        object_name = "text_completion"
    answer = {
        "id": request_id,
        "object": object_name,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
        },
    }
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()
