"""A fast fake OpenAI-compatible streaming server for load-generator tests and benchmarks.

It is the "proto/tick" and "proto/sleep" server of ``reference/sse_limits.md``: a raw
``asyncio.Protocol`` HTTP/1.1 server on uvloop (httptools parses requests), keep-alive, chunked
transfer encoding, one HTTP chunk per SSE event, JSON rendered from byte templates.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream`` true or false),
``GET /v1/models``, ``GET /health``, ``GET /stats`` (counters, see ``FakeServerStats``) and
``POST /stats/reset``.

Stream format follows vLLM's OpenAI server: chat streams start with a role chunk
(``delta: {"role":"assistant","content":""}``), then one chunk per token; the last token's chunk
carries ``finish_reason`` ("length" at ``max_tokens``, "stop" when ``fake_output_tokens`` ends it
earlier) and ``"stop_reason":null``; with ``stream_options.include_usage`` a usage chunk with
``"choices":[]`` follows; then ``data: [DONE]`` and the zero-length chunk. Completions chunks carry
``choices[0].text`` and ``"usage":null`` (vLLM dumps them with ``exclude_unset=False``).

Every chunk with ``choices`` (the role chunk and every token chunk) carries ``"emit_ns"``
(``time.time_ns()`` taken right before the write); the first chunk also carries ``"req_ns"`` (when
the request was parsed). Both are wall-clock nanoseconds, so a client on the same host can compute
its timing error as arrival - emit_ns.

Emission modes (server-wide):

- ``tick``: one engine timer per ITL value wakes every ready stream and writes each its next chunk
  in the same loop iteration (bursty, like a real engine step). A stream whose transport is paused
  by backpressure is skipped that tick. A stream joins its engine when its TTFT has passed and
  gets its first chunk on the next step.
- ``sleep``: every stream keeps its own absolute deadlines (TTFT plus a random jitter of up to one
  ITL, so streams started together are out of step), waiting for the transport to drain when paused.

Timers are uvloop's (millisecond resolution); deadlines are absolute, so average rates are right
even for sub-millisecond ITLs. ITL 0 means "as fast as backpressure allows".

Per-request knobs in the JSON body: ``max_tokens`` (or ``max_completion_tokens``), ``ignore_eos``,
``fake_ttft_ms`` (20), ``fake_itl_ms`` (10), ``fake_prompt_tokens`` (default: prompt characters // 4),
``fake_output_tokens`` (finish with "stop" after this many tokens unless ``ignore_eos``),
``fake_fault`` (see ``Fault``), ``fake_fault_after`` (content chunks before the fault strikes) and
``fake_error_format`` ("flat", vLLM <= 0.10.0, default; or "nested", vLLM >= 0.10.1).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import httptools
import uvloop
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backends.errors import ServeDeckError
from backends.http_listener import Listener, ListenFailure, LoopStartTimeout, serve_on_thread

DEFAULT_MODEL = "fake-model"
MAX_MODEL_LEN = 2048
RECV_NS_LIMIT = 100_000
STARTUP_TIMEOUT_S = 10.0
PROCESS_STARTUP_TIMEOUT_S = 30.0
DEFAULT_MAX_TOKENS = 16

_time_ns = time.time_ns
# The fast path precomputes chunk sizes assuming emit_ns has 19 digits (true from 2001 to 2286).
_EMIT_NS_DIGITS = 19
if len(str(_time_ns())) != _EMIT_NS_DIGITS:  # pragma: no cover - clock set before 2001
    raise RuntimeError("the system clock is outside 2001..2286; fix it before using the fake server")

VOCAB: tuple[str, ...] = (
    " the",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " a",
    " lazy",
    " dog",
    ",",
    " and",
    " then",
    " it",
    " runs",
    " home",
    ".",
)
_VOCAB_N = len(VOCAB)
_VOCAB_JSON: tuple[bytes, ...] = tuple(json.dumps(word).encode() for word in VOCAB)


class FakeServerError(ServeDeckError):
    """The fake server could not be configured or started."""


class Mode(StrEnum):
    TICK = "tick"
    SLEEP = "sleep"


class Fault(StrEnum):
    HTTP400 = "http400"
    HTTP500 = "http500"
    DROP_MID_STREAM = "drop_mid_stream"
    MALFORMED_SSE = "malformed_sse"
    STALL = "stall"
    CLOSE_AFTER_RESPONSE = "close_after_response"
    NO_USAGE = "no_usage"


# ---- typed boundaries ---------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = True  # vLLM's default once stream_options is present
    continuous_usage_stats: bool = False


class GenerationBody(BaseModel):
    """The JSON body of a chat or completions request, with the fake server's extension fields."""

    model_config = ConfigDict(extra="ignore")

    model: str = DEFAULT_MODEL
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[str] | list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    ignore_eos: bool = False
    fake_ttft_ms: float = Field(default=20.0, ge=0, le=600_000)
    fake_itl_ms: float = Field(default=10.0, ge=0, le=600_000)
    fake_prompt_tokens: int | None = Field(default=None, ge=0)
    fake_output_tokens: int | None = Field(default=None, ge=1)
    fake_fault: Fault | None = None
    fake_fault_after: int | None = Field(default=None, ge=0)
    fake_error_format: Literal["flat", "nested"] = "flat"


class FakeServerStats(BaseModel):
    """What ``GET /stats`` returns. ``requests_received`` counts every request except /stats ones."""

    mode: Mode
    connections_accepted: int = 0
    connections_open: int = 0
    requests_received: int = 0
    generation_requests: int = 0
    streams_completed: int = 0
    chunks_sent: int = 0
    write_pauses: int = 0  # times a transport's buffer filled up and the server had to wait
    recv_ns: list[int] = Field(default_factory=list)
    recv_ns_dropped: int = 0


class _Counters:
    """Mutable counters on the hot path (a pydantic model would be slower to bump)."""

    __slots__ = (
        "chunks_sent",
        "connections_accepted",
        "connections_open",
        "generation_requests",
        "recv_ns",
        "requests_received",
        "streams_completed",
        "write_pauses",
    )

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.connections_open = 0
        self.requests_received = 0
        self.generation_requests = 0
        self.streams_completed = 0
        self.chunks_sent = 0
        self.write_pauses = 0
        self.recv_ns: deque[int] = deque(maxlen=RECV_NS_LIMIT)

    def snapshot(self, mode: Mode) -> FakeServerStats:
        return FakeServerStats(
            mode=mode,
            connections_accepted=self.connections_accepted,
            connections_open=self.connections_open,
            requests_received=self.requests_received,
            generation_requests=self.generation_requests,
            streams_completed=self.streams_completed,
            chunks_sent=self.chunks_sent,
            write_pauses=self.write_pauses,
            recv_ns=list(self.recv_ns),
            recv_ns_dropped=self.generation_requests - len(self.recv_ns),
        )


# ---- byte templates -----------------------------------------------------------------------------

_STATUS_TEXT = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
}
_SERVER_HEADER = b"server: servedeck-fake-sse\r\n"
_CLOSE_HEADER = b"connection: close\r\n"
_SSE_HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n" + _SERVER_HEADER
)
_DONE_AND_END = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
_MALFORMED_EVENT = b"data: this is not JSON {\n\n"  # neither JSON nor a known SSE payload

_ERROR_400_MESSAGE = (
    "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens "
    "(2048 in the messages, 2048 in the completion). Please reduce the length of the messages or completion."
)
_ERROR_500_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


class _Kind:
    """The pieces of one endpoint's chunk JSON that do not depend on the request."""

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
        id_prefix: bytes,
        role: bytes,
        content_open: bytes,
        content_close: bytes,
        final_close: bytes,
        no_usage: bytes,
    ) -> None:
        self.object_name = object_name
        self.id_prefix = id_prefix
        self.role = role  # b"" when the endpoint has no role chunk
        self.content_open = content_open
        self.content_close = content_close
        self.final_close = final_close  # %b takes the JSON finish reason
        self.no_usage = no_usage


_CHAT = _Kind(
    object_name=b"chat.completion.chunk",
    id_prefix=b"chatcmpl-",
    role=b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]',
    content_open=b'{"index":0,"delta":{"content":',
    content_close=b'},"logprobs":null,"finish_reason":null}]',
    final_close=b'},"logprobs":null,"finish_reason":%b,"stop_reason":null}]',
    no_usage=b"",
)
_COMPLETION = _Kind(
    object_name=b"text_completion",
    id_prefix=b"cmpl-",
    role=b"",
    content_open=b'{"index":0,"text":',
    content_close=b',"logprobs":null,"finish_reason":null,"stop_reason":null}]',
    final_close=b',"logprobs":null,"finish_reason":%b,"stop_reason":null}]',
    no_usage=b',"usage":null',
)


def _frame(event: bytes) -> bytes:
    """One HTTP/1.1 chunk holding one SSE event."""
    return b"%x\r\n%b\r\n" % (len(event), event)


def _usage_json(prompt_tokens: int, completion_tokens: int) -> bytes:
    # vLLM's UsageInfo field order.
    return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
        prompt_tokens,
        prompt_tokens + completion_tokens,
        completion_tokens,
    )


def _error_json(status: int, error_type: str, message: str, nested: bool) -> bytes:
    if nested:
        body: dict[str, Any] = {
            "error": {"message": message, "type": error_type, "param": None, "code": status}
        }
    else:
        body = {"object": "error", "message": message, "type": error_type, "param": None, "code": status}
    return json.dumps(body, separators=(",", ":")).encode()


def _simple_response(status: int, body: bytes, content_type: bytes, keep_alive: bool) -> bytes:
    return b"HTTP/1.1 %d %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n%b%b\r\n%b" % (
        status,
        _STATUS_TEXT[status],
        content_type,
        len(body),
        _SERVER_HEADER,
        b"" if keep_alive else _CLOSE_HEADER,
        body,
    )


def _output_tokens(body: GenerationBody) -> int:
    max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
    if body.fake_output_tokens is not None and not body.ignore_eos:
        return min(max_tokens, body.fake_output_tokens)
    return max_tokens


def _finish_reason(body: GenerationBody, n_out: int) -> str:
    max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
    return "length" if n_out == max_tokens else "stop"


def _prompt_tokens_of(body: GenerationBody) -> int:
    if body.fake_prompt_tokens is not None:
        return body.fake_prompt_tokens
    chars = 0
    if body.messages is not None:
        for message in body.messages:
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
    elif isinstance(body.prompt, str):
        chars = len(body.prompt)
    elif isinstance(body.prompt, list):
        if body.prompt and isinstance(body.prompt[0], int):
            return len(body.prompt)
        chars = sum(len(item) for item in body.prompt if isinstance(item, str))
    return max(1, chars // 4)


# ---- server state shared by all connections -----------------------------------------------------


class _ServerState:
    __slots__ = ("close_idle_after_each", "connections", "counters", "engines", "ids", "loop", "mode", "rng")

    def __init__(self, mode: Mode, close_idle_after_each: bool, loop: asyncio.AbstractEventLoop) -> None:
        self.mode = mode
        self.close_idle_after_each = close_idle_after_each
        self.loop = loop
        self.counters = _Counters()
        self.connections: set[_Connection] = set()
        self.engines: dict[float, _TickEngine] = {}
        self.rng = random.Random()
        nonce = f"{os.getpid() & 0xFFFF:04x}{random.getrandbits(32):08x}"
        self.ids = (f"{nonce}{n:020x}".encode() for n in itertools.count())

    def engine_for(self, itl_ms: float) -> _TickEngine:
        engine = self.engines.get(itl_ms)
        if engine is None:
            engine = self.engines[itl_ms] = _TickEngine(self.loop, itl_ms / 1000.0)
        return engine

    def shutdown(self) -> None:
        for engine in self.engines.values():
            engine.stop()
        for connection in list(self.connections):
            connection.abort()


class _TickEngine:
    """One timer for every stream with the same ITL: each step writes every ready stream's next chunk."""

    __slots__ = ("handle", "incoming", "itl_s", "loop", "next_at", "parked", "running", "streams")

    def __init__(self, loop: asyncio.AbstractEventLoop, itl_s: float) -> None:
        self.loop = loop
        self.itl_s = itl_s
        self.streams: list[_Stream] = []
        self.incoming: list[_Stream] = []
        self.handle: asyncio.Handle | None = None
        self.next_at = 0.0
        self.running = False
        self.parked = False  # ITL 0 with every stream paused: wait for a resume instead of spinning

    def add(self, stream: _Stream) -> None:
        self.incoming.append(stream)
        if not self.running:
            self.running = True
            self.parked = False
            self.next_at = self.loop.time()
            self.handle = self.loop.call_soon(self.step)

    def wake(self) -> None:
        if self.parked:
            self.parked = False
            self.running = True
            self.next_at = self.loop.time()
            self.handle = self.loop.call_soon(self.step)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.handle = None
        self.running = False
        self.streams = []
        self.incoming = []

    def step(self) -> None:
        self.handle = None
        streams = self.streams
        if self.incoming:
            streams.extend(self.incoming)
            self.incoming = []
        keep: list[_Stream] = []
        wrote = 0
        for stream in streams:
            if stream.finished:
                continue
            if stream.conn.paused:
                keep.append(stream)
                continue
            wrote += 1
            if stream.emit():
                keep.append(stream)
        self.streams = keep
        if not keep and not self.incoming:
            self.running = False
            return
        if self.itl_s <= 0.0:
            if wrote == 0 and not self.incoming:
                self.running = False
                self.parked = True
                return
            self.handle = self.loop.call_soon(self.step)
            return
        now = self.loop.time()
        self.next_at += self.itl_s
        if self.next_at < now:  # the step ran late: start the next one now, like a busy engine
            self.next_at = now
        self.handle = self.loop.call_at(self.next_at, self.step)


class _Stream:
    """One streaming response: its templates, position and fault plan."""

    __slots__ = (
        "conn",
        "continuous",
        "deadline",
        "engine",
        "fast",
        "fast_until",
        "fault",
        "fault_after",
        "finish_json",
        "finished",
        "handle",
        "head",
        "include_usage",
        "itl_s",
        "keep_alive",
        "kind",
        "n_out",
        "prompt_tokens",
        "req_ns",
        "sent",
        "waiting_resume",
    )

    def __init__(
        self,
        conn: _Connection,
        kind: _Kind,
        body: GenerationBody,
        req_ns: int,
        request_id: bytes,
        keep_alive: bool,
    ) -> None:
        self.conn = conn
        self.kind = kind
        self.req_ns = req_ns
        self.keep_alive = keep_alive
        self.n_out = n_out = _output_tokens(body)
        self.finish_json = b'"%b"' % _finish_reason(body, n_out).encode()
        self.prompt_tokens = _prompt_tokens_of(body)
        options = body.stream_options
        self.fault = body.fake_fault
        self.include_usage = (
            options is not None and options.include_usage and self.fault is not Fault.NO_USAGE
        )
        self.continuous = self.include_usage and options is not None and options.continuous_usage_stats
        self.itl_s = body.fake_itl_ms / 1000.0
        self.head = b'data: {"id":"%b%b","object":"%b","created":%d,"model":%b,"choices":[' % (
            kind.id_prefix,
            request_id,
            kind.object_name,
            req_ns // 1_000_000_000,
            json.dumps(body.model).encode(),
        )
        self.sent = 0
        self.finished = False
        self.waiting_resume = False
        self.handle: asyncio.Handle | None = None
        self.engine: _TickEngine | None = None
        self.deadline = 0.0

        fault_after = n_out
        if self.fault is Fault.STALL:
            fault_after = 1 if body.fake_fault_after is None else body.fake_fault_after
        elif self.fault is Fault.DROP_MID_STREAM or self.fault is Fault.MALFORMED_SSE:
            fault_after = max(1, n_out // 2) if body.fake_fault_after is None else body.fake_fault_after
        if self.fault is Fault.MALFORMED_SSE:
            fault_after = max(1, fault_after)
        self.fault_after = min(fault_after, n_out)

        # Chunks 1 .. fast_until-1 are plain content chunks written from precomputed prefixes.
        self.fast_until = 0 if self.continuous else min(n_out - 1, self.fault_after - 1)
        self.fast: list[bytes] = []
        if self.fast_until > 1:
            event_len_base = (
                len(self.head)
                + len(kind.content_open)
                + len(kind.content_close)
                + len(kind.no_usage)
                + len(b',"emit_ns":')
                + _EMIT_NS_DIGITS
                + len(b"}\n\n")
            )
            for index in range(min(_VOCAB_N, self.fast_until)):
                token = _VOCAB_JSON[index]
                self.fast.append(
                    b'%x\r\n%b%b%b%b%b,"emit_ns":'
                    % (
                        event_len_base + len(token),
                        self.head,
                        kind.content_open,
                        token,
                        kind.content_close,
                        kind.no_usage,
                    )
                )

    # ---- scheduling ------------------------------------------------------------------------

    def schedule(self, ttft_s: float, mode: Mode, state: _ServerState) -> None:
        loop = state.loop
        if mode is Mode.TICK:
            engine = self.engine = state.engine_for(self.itl_s * 1000.0)
            self.handle = loop.call_at(loop.time() + ttft_s, engine.add, self)
        else:
            jitter = state.rng.uniform(0.0, self.itl_s)
            self.deadline = loop.time() + ttft_s + jitter
            self.handle = loop.call_at(self.deadline, self.on_deadline)

    def on_deadline(self) -> None:
        """Sleep mode: the stream's own timer fired."""
        self.handle = None
        if self.finished:
            return
        if self.conn.paused:
            self.waiting_resume = True
            return
        if self.emit():
            self.deadline += self.itl_s
            self.handle = self.conn.loop.call_at(self.deadline, self.on_deadline)

    def on_resume(self) -> None:
        if self.waiting_resume:
            self.waiting_resume = False
            self.on_deadline()
        elif self.engine is not None:
            self.engine.wake()

    def cancel(self) -> None:
        self.finished = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    # ---- emission --------------------------------------------------------------------------

    def emit(self) -> bool:
        """Write the next chunk(s); True while more remain to be written."""
        sent = self.sent
        if 0 < sent < self.fast_until:
            transport = self.conn.transport
            data = self.fast[sent % _VOCAB_N] + b"%d}\n\n\r\n" % _time_ns()
            transport.write(data)
            self.sent = sent + 1
            self.conn.counters.chunks_sent += 1
            return True
        return self._emit_special()

    def _emit_special(self) -> bool:
        conn = self.conn
        if conn.closed:
            self.finished = True
            return False
        sent = self.sent
        fault = self.fault
        if sent == self.fault_after:
            if fault is Fault.DROP_MID_STREAM:
                self.finished = True
                conn.close()
                return False
            if fault is Fault.STALL:
                return False  # keep the connection open and busy, write nothing more
        kind = self.kind
        pieces: list[bytes] = []
        emit_ns = _time_ns()
        stamp = b',"emit_ns":%d' % emit_ns
        if sent == 0:
            stamp += b',"req_ns":%d' % self.req_ns
            if kind.role:
                usage = b',"usage":%b' % _usage_json(self.prompt_tokens, 0) if self.continuous else b""
                pieces.append(_frame(self.head + kind.role + usage + stamp + b"}\n\n"))
                stamp = b',"emit_ns":%d' % emit_ns  # req_ns goes on the first chunk only
        token = _VOCAB_JSON[sent % _VOCAB_N]
        last = sent + 1 == self.n_out
        close = kind.final_close % self.finish_json if last else kind.content_close
        if self.continuous:
            usage = b',"usage":%b' % _usage_json(self.prompt_tokens, sent + 1)
        else:
            usage = kind.no_usage
        pieces.append(_frame(self.head + kind.content_open + token + close + usage + stamp + b"}\n\n"))
        sent += 1
        self.sent = sent
        conn.counters.chunks_sent += 1
        if fault is Fault.MALFORMED_SSE and sent == self.fault_after:
            pieces.append(_frame(_MALFORMED_EVENT))
        hold_trailer = (
            fault is Fault.DROP_MID_STREAM or fault is Fault.STALL
        ) and self.fault_after == self.n_out
        done = last and not hold_trailer
        if done:
            if self.include_usage:
                usage_event = b'%b],"usage":%b}\n\n' % (self.head, _usage_json(self.prompt_tokens, sent))
                pieces.append(_frame(usage_event))
            pieces.append(_DONE_AND_END)
        conn.transport.write(b"".join(pieces))
        if done:
            self.finished = True
            conn.counters.streams_completed += 1
            keep_alive = self.keep_alive and fault is not Fault.CLOSE_AFTER_RESPONSE
            conn.response_finished(keep_alive)
            return False
        return True


# ---- one HTTP/1.1 connection --------------------------------------------------------------------


class _Request:
    __slots__ = ("body", "keep_alive", "method", "path", "recv_ns")

    def __init__(self, method: bytes, path: bytes, body: bytes, keep_alive: bool, recv_ns: int) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.keep_alive = keep_alive
        self.recv_ns = recv_ns


class _Connection(asyncio.Protocol):
    __slots__ = (
        "active",
        "body_parts",
        "busy",
        "closed",
        "counters",
        "loop",
        "parser",
        "paused",
        "pending",
        "state",
        "transport",
        "url_parts",
    )

    def __init__(self, state: _ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.counters = state.counters
        self.transport: Any = None  # asyncio.Transport; Any keeps the hot path free of casts
        self.parser = httptools.HttpRequestParser(self)
        self.paused = False
        self.closed = False
        self.url_parts: list[bytes] = []
        self.body_parts: list[bytes] = []
        self.pending: deque[_Request] = deque()
        self.active: _Stream | asyncio.Handle | None = None
        self.busy = False

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.counters.connections_accepted += 1
        self.counters.connections_open += 1
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.counters.connections_open -= 1
        self.state.connections.discard(self)
        self.pending.clear()
        if self.active is not None:
            self.active.cancel()
            self.active = None

    def pause_writing(self) -> None:
        self.paused = True
        self.counters.write_pauses += 1

    def resume_writing(self) -> None:
        self.paused = False
        if isinstance(self.active, _Stream):
            self.active.on_resume()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reply_and_close(400, "Protocol upgrades are not supported by the fake server.")
        except httptools.HttpParserError as exc:
            self._reply_and_close(400, f"Invalid HTTP request: {exc}")

    # ---- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url_parts = []
        self.body_parts = []

    def on_url(self, url: bytes) -> None:
        self.url_parts.append(url)

    def on_body(self, body: bytes) -> None:
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        if self.closed:
            return
        url = b"".join(self.url_parts)
        request = _Request(
            method=self.parser.get_method(),
            path=url.split(b"?", 1)[0],
            body=b"".join(self.body_parts),
            keep_alive=self.parser.should_keep_alive(),
            recv_ns=_time_ns(),
        )
        self.pending.append(request)
        self.start_next()

    # ---- request lifecycle -----------------------------------------------------------------

    def start_next(self) -> None:
        """Serve queued (pipelined) requests one at a time, in order."""
        while not self.closed and not self.busy and self.pending:
            self._dispatch(self.pending.popleft())

    def response_finished(self, keep_alive: bool) -> None:
        """An asynchronous response (stream or delayed answer) has been fully written."""
        self.active = None
        self.busy = False
        if not keep_alive or self.state.close_idle_after_each:
            self.close()
            return
        self.start_next()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pending.clear()
            self.transport.close()

    def abort(self) -> None:
        if self.active is not None:
            self.active.cancel()
            self.active = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _reply_and_close(self, status: int, message: str) -> None:
        if self.closed:
            return
        body = _error_json(status, "BadRequestError", message, nested=False)
        self.transport.write(_simple_response(status, body, b"application/json", keep_alive=False))
        self.close()

    def _reply(
        self, request: _Request, status: int, body: bytes, content_type: bytes = b"application/json"
    ) -> None:
        keep_alive = request.keep_alive and not self.state.close_idle_after_each
        self.transport.write(_simple_response(status, body, content_type, keep_alive=request.keep_alive))
        if not keep_alive:
            self.close()

    def _dispatch(self, request: _Request) -> None:
        path = request.path
        method = request.method
        counters = self.counters
        if not path.startswith(b"/stats"):
            counters.requests_received += 1
        if path == b"/v1/chat/completions" or path == b"/v1/completions":
            if method != b"POST":
                self._reply(request, 405, b'{"detail":"Method Not Allowed"}')
                return
            counters.generation_requests += 1
            counters.recv_ns.append(request.recv_ns)
            self._generate(request, _CHAT if path == b"/v1/chat/completions" else _COMPLETION)
        elif path == b"/health":
            self._reply(request, 200, b"", b"text/plain")
        elif path == b"/v1/models":
            self._reply(request, 200, _models_json())
        elif path == b"/stats":
            stats = counters.snapshot(self.state.mode)
            self._reply(request, 200, stats.model_dump_json().encode())
        elif path == b"/stats/reset":
            if method != b"POST":
                self._reply(request, 405, b'{"detail":"Method Not Allowed"}')
                return
            self.state.counters = self.counters = _Counters()
            for connection in self.state.connections:
                connection.counters = self.counters
            self.counters.connections_open = len(self.state.connections)
            self._reply(request, 200, b"{}")
        else:
            self._reply(request, 404, b'{"detail":"Not Found"}')

    def _generate(self, request: _Request, kind: _Kind) -> None:
        try:
            raw = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            message = f"The request body is not valid JSON ({exc}); send a JSON object."
            self._reply(request, 400, _error_json(400, "BadRequestError", message, nested=False))
            return
        try:
            body = GenerationBody.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            message = f"Invalid request field '{where}': {first['msg']}."
            self._reply(request, 400, _error_json(400, "BadRequestError", message, nested=False))
            return
        nested = body.fake_error_format == "nested"
        if kind is _CHAT and not body.messages:
            message = "Chat requests need a non-empty 'messages' list."
            self._reply(request, 400, _error_json(400, "BadRequestError", message, nested))
            return
        if kind is _COMPLETION and body.prompt is None:
            message = "Completions requests need a 'prompt'."
            self._reply(request, 400, _error_json(400, "BadRequestError", message, nested))
            return
        if body.fake_fault is Fault.HTTP400:
            self._reply(request, 400, _error_json(400, "BadRequestError", _ERROR_400_MESSAGE, nested))
            return
        if body.fake_fault is Fault.HTTP500:
            self._reply(request, 500, _error_json(500, "InternalServerError", _ERROR_500_MESSAGE, nested))
            return
        request_id = next(self.state.ids)
        ttft_s = body.fake_ttft_ms / 1000.0
        self.busy = True
        if body.stream:
            stream = _Stream(self, kind, body, request.recv_ns, request_id, request.keep_alive)
            self.active = stream
            self.transport.write(_SSE_HEADERS + (b"\r\n" if request.keep_alive else _CLOSE_HEADER + b"\r\n"))
            stream.schedule(ttft_s, self.state.mode, self.state)
            return
        answer = _NonStreamingAnswer(self, kind, body, request, request_id)
        delay = ttft_s + max(0, answer.n_out - 1) * body.fake_itl_ms / 1000.0
        self.active = self.loop.call_later(delay, answer.send)


class _NonStreamingAnswer:
    """A ``stream: false`` answer, sent in one piece once every token would have been generated."""

    def __init__(
        self, conn: _Connection, kind: _Kind, body: GenerationBody, request: _Request, request_id: bytes
    ) -> None:
        self.conn = conn
        self.kind = kind
        self.body = body
        self.request = request
        self.request_id = request_id.decode()
        self.n_out = _output_tokens(body)
        self.finish_reason = _finish_reason(body, self.n_out)

    def send(self) -> None:
        conn = self.conn
        conn.active = None
        if conn.closed:
            return
        fault = self.body.fake_fault
        if fault is Fault.DROP_MID_STREAM:
            conn.close()
            return
        if fault is Fault.STALL:
            return  # the connection stays busy and silent
        text = "".join(VOCAB[i % _VOCAB_N] for i in range(self.n_out))
        prompt_tokens = _prompt_tokens_of(self.body)
        created = self.request.recv_ns // 1_000_000_000
        answer: dict[str, Any]
        if self.kind is _CHAT:
            answer = {
                "id": f"chatcmpl-{self.request_id}",
                "object": "chat.completion",
                "created": created,
                "model": self.body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "tool_calls": []},
                        "logprobs": None,
                        "finish_reason": self.finish_reason,
                        "stop_reason": None,
                    }
                ],
            }
        else:
            answer = {
                "id": f"cmpl-{self.request_id}",
                "object": "text_completion",
                "created": created,
                "model": self.body.model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": self.finish_reason,
                        "stop_reason": None,
                    }
                ],
            }
        if fault is not Fault.NO_USAGE:
            answer["usage"] = {
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens + self.n_out,
                "completion_tokens": self.n_out,
            }
        answer["req_ns"] = self.request.recv_ns
        answer["emit_ns"] = _time_ns()
        payload = json.dumps(answer, separators=(",", ":")).encode()
        if fault is Fault.MALFORMED_SSE:
            payload = payload[: len(payload) // 2]
        keep_alive = self.request.keep_alive and fault is not Fault.CLOSE_AFTER_RESPONSE
        conn.transport.write(_simple_response(200, payload, b"application/json", self.request.keep_alive))
        conn.counters.streams_completed += 1
        conn.response_finished(keep_alive)


def _models_json() -> bytes:
    card = {
        "id": DEFAULT_MODEL,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": DEFAULT_MODEL,
        "parent": None,
        "max_model_len": MAX_MODEL_LEN,
        "permission": [],
    }
    return json.dumps({"object": "list", "data": [card]}, separators=(",", ":")).encode()


# ---- running it ---------------------------------------------------------------------------------


def _parse_mode(mode: str) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise FakeServerError(f"Unknown fake server mode '{mode}': use one of {choices}.") from None


def _listen_failure(failure: ListenFailure) -> FakeServerError:
    if failure.stage == "host":
        return FakeServerError(f"The fake SSE server cannot use host '{failure.host}' ({failure.error}).")
    return FakeServerError(
        f"The fake SSE server cannot listen on {failure.host}:{failure.port} "
        f"({failure.error.strerror or failure.error}); pass port=0 to get a free port."
    )


def _listen(state: _ServerState, host: str, port: int) -> Listener:
    return Listener(state.loop, host, port, lambda: _Connection(state), _listen_failure)


class FakeSSEServer:
    """The fake server on its own thread and uvloop loop (see the module docstring)."""

    def __init__(
        self,
        mode: str = "tick",
        host: str = "127.0.0.1",
        port: int = 0,
        close_idle_after_each: bool = False,
    ) -> None:
        self.mode = _parse_mode(mode)
        self.host = host
        self.port = port
        self.close_idle_after_each = close_idle_after_each
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: _ServerState | None = None
        self._listener: Listener | None = None

    def start_in_thread(self, timeout_s: float = STARTUP_TIMEOUT_S) -> int:
        """Start serving on a daemon thread; return the bound port."""
        if self._thread is not None:
            raise FakeServerError(
                "This fake SSE server is already running; call stop() before starting it again."
            )
        loop = uvloop.new_event_loop()
        state = _ServerState(self.mode, self.close_idle_after_each, loop)

        def open_server() -> None:
            self._listener = _listen(state, self.host, self.port)
            self.port = self._listener.port

        self._loop = loop
        self._state = state
        try:
            thread = serve_on_thread(loop, open_server, name="fake-sse-server", timeout_s=timeout_s)
        except LoopStartTimeout:
            raise FakeServerError(f"The fake SSE server did not start within {timeout_s:.0f} s.") from None
        except FakeServerError:
            self._loop = self._state = None
            raise
        except BaseException as error:
            self._loop = self._state = None
            raise FakeServerError(f"The fake SSE server failed to start: {error}") from error
        self._thread = thread
        return self.port

    def stats(self, timeout_s: float = 5.0) -> FakeServerStats:
        """The same counters as ``GET /stats``, read on the server's loop."""
        loop, state = self._loop, self._state
        if loop is None or state is None or self._thread is None:
            raise FakeServerError("The fake SSE server is not running; call start_in_thread() first.")

        async def snapshot() -> FakeServerStats:
            return state.counters.snapshot(state.mode)

        return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listener and every connection, stop the loop and join the thread."""
        thread, loop, state, listener = self._thread, self._loop, self._state, self._listener
        if thread is None or loop is None or state is None:
            return

        def shutdown() -> None:
            if listener is not None:
                listener.close()
            state.shutdown()
            loop.call_soon(loop.stop)

        if not loop.is_closed():
            loop.call_soon_threadsafe(shutdown)
        thread.join(timeout_s)
        self._thread = self._loop = self._state = self._listener = None

    def __enter__(self) -> FakeSSEServer:
        self.start_in_thread()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_forever(
    mode: str = "tick",
    host: str = "127.0.0.1",
    port: int = 0,
    close_idle_after_each: bool = False,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Run the server on the calling thread (a fresh uvloop loop) until the process ends."""
    parsed_mode = _parse_mode(mode)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    state = _ServerState(parsed_mode, close_idle_after_each, loop)
    try:
        listener = _listen(state, host, port)
        if on_ready is not None:
            on_ready(listener.port)
        loop.run_forever()
        listener.close()
    finally:
        state.shutdown()
        loop.close()


def _process_main(
    mode: str, host: str, port: int, close_idle_after_each: bool, cpu: int | None, report: Connection
) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        serve_forever(
            mode, host, port, close_idle_after_each, on_ready=lambda bound: report.send(("ok", bound))
        )
    except FakeServerError as exc:
        report.send(("error", str(exc)))


def start_in_process(
    mode: str = "tick",
    host: str = "127.0.0.1",
    port: int = 0,
    close_idle_after_each: bool = False,
    cpu: int | None = None,
    timeout_s: float = PROCESS_STARTUP_TIMEOUT_S,
) -> tuple[int, BaseProcess]:
    """Start the server in a spawned process (optionally pinned to ``cpu``); return (port, process).

    Stop it with ``stop_process(process)``.
    """
    _parse_mode(mode)
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_process_main,
        args=(mode, host, port, close_idle_after_each, cpu, sender),
        name="fake-sse-server",
        daemon=True,
    )
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            stop_process(process)
            raise FakeServerError(f"The fake SSE server process did not start within {timeout_s:.0f} s.")
        try:
            status, value = receiver.recv()
        except EOFError:
            stop_process(process)
            raise FakeServerError(
                f"The fake SSE server process exited during startup (exit code {process.exitcode})."
            ) from None
    finally:
        receiver.close()
    if status != "ok":
        stop_process(process)
        raise FakeServerError(str(value))
    return int(value), process


def stop_process(process: BaseProcess, timeout_s: float = 5.0) -> None:
    """Terminate a server started by ``start_in_process`` and wait for it (kill if it lingers)."""
    if process.is_alive():
        process.terminate()
        process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join(timeout_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.sse_server", description="Fake OpenAI-compatible SSE server"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.TICK.value)
    parser.add_argument(
        "--close-idle-after-each", action="store_true", help="close every connection after each response"
    )
    args = parser.parse_args(argv)

    def announce(bound: int) -> None:
        print(f"fake SSE server ({args.mode}) listening on http://{args.host}:{bound}", flush=True)

    try:
        serve_forever(args.mode, args.host, args.port, args.close_idle_after_each, on_ready=announce)
    except FakeServerError as exc:
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
