"""The hot path: one keep-alive HTTP/1.1 connection reading an OpenAI SSE stream.

Costs are per socket read, not per chunk, wherever possible (reference/sse_limits.md):
one ``perf_counter`` per ``data_received``, httptools (llhttp) for HTTP framing and chunked
decoding, and no JSON parsing of content events — they are classified by byte tests. Only the
events that carry usage, finish reasons, server timings or errors are kept as bytes and parsed
once, after the stream ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from typing import Any, cast

import httptools

_perf_counter = time.perf_counter

_DONE = b"[DONE]"
_EMPTY_CHOICES = b'"choices":[]'
_EMPTY_CHOICES_SPACED = b'"choices": []'
_COMPLETION_TOKENS = b'"completion_tokens":'
_MAX_ERROR_BODY = 64 * 1024


class StreamState:
    """Measurements of one request, filled in by the protocol as bytes arrive."""

    __slots__ = (
        "chunk_times",
        "chunk_tokens",
        "content",
        "continuous_usage_seen",
        "done",
        "error",
        "error_body",
        "first_token_at",
        "http_status",
        "last_activity",
        "last_completion_tokens",
        "malformed",
        "probe",
        "sent_at",
        "tail_events",
    )

    def __init__(self) -> None:
        self.sent_at: float | None = None
        self.first_token_at: float | None = None
        # Arrays, not lists: they go to the parent process as one block of bytes each.
        self.chunk_times: array[float] = array("d")
        self.chunk_tokens: array[int] = array("q")
        # Multi-turn with the model's own answers: the content events, to read the answer from afterwards.
        self.content: list[bytes] | None = None
        self.last_completion_tokens = 0
        self.continuous_usage_seen = False
        self.http_status: int | None = None
        self.tail_events: list[bytes] = []
        self.error_body = bytearray()
        self.error: str | None = None
        self.malformed: bytes | None = None
        self.probe: array[int] | None = None
        self.done = False
        self.last_activity = 0.0


class StreamConnection(asyncio.Protocol):
    """One TCP (or TLS) connection that carries requests one after another (keep-alive)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._state: StreamState | None = None
        self._finished: asyncio.Future[None] | None = None
        self._buffer = bytearray()
        self._now = 0.0
        self._keep_alive = True
        self._received_any = False
        self.closed = False
        self.on_tokens: Any = None  # optional callable(count, t) for live throughput

    # ---- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._now = now = _perf_counter()
        state = self._state
        if state is None or self._parser is None:
            return  # bytes on an idle connection (should not happen): ignore
        self._received_any = True
        state.last_activity = now
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("server tried to upgrade the connection")
        except httptools.HttpParserError as exc:
            self._fail(f"invalid HTTP response from server: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        state = self._state
        if state is not None and not state.done:
            chunks = len(state.chunk_times)
            reason = f" ({exc})" if exc else ""
            if self._received_any:
                self._fail(f"connection closed by server mid-stream after {chunks} chunks{reason}")
            else:
                self._fail(f"connection closed by server before any response{reason}", retryable=True)

    # ---- httptools callbacks ----------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        pass

    def on_headers_complete(self) -> None:
        assert self._parser is not None and self._state is not None
        self._state.http_status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        state = self._state
        assert state is not None
        if state.http_status != 200:
            if len(state.error_body) < _MAX_ERROR_BODY:
                state.error_body += body
            return
        buffer = self._buffer
        buffer += body
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            self._event(bytes(buffer[start:end]), state)
            start = end + 2
        if start:
            del buffer[:start]

    def on_message_complete(self) -> None:
        state = self._state
        assert state is not None
        if self._buffer.strip():
            self._event(bytes(self._buffer.strip()), state)
            self._buffer.clear()
        if state.http_status != 200:
            state.error = _describe_http_error(state.http_status, bytes(state.error_body))
        elif state.error is None and state.malformed is not None:
            state.error = f"malformed SSE event from server: {state.malformed[:120]!r}"
        elif state.error is None and not state.done:
            state.error = "stream ended without [DONE]"
        state.done = True
        self._complete()
        if not self._keep_alive and self.transport is not None:
            self.transport.close()

    # ---- SSE events -------------------------------------------------------------------------
    def _event(self, event: bytes, state: StreamState) -> None:
        if event.startswith(b"\r\n") or event.endswith(b"\r"):
            event = event.replace(b"\r\n", b"\n").strip()
        if event.startswith(b"data: "):
            payload = event[6:]
        elif event.startswith(b"data:"):
            payload = event[5:].lstrip()
        elif event.startswith(b":") or not event:
            return  # SSE comment / keep-alive ping
        else:
            if event.startswith((b"event:", b"id:", b"retry:")):
                return
            if state.malformed is None:
                state.malformed = event
            return
        if payload[:1] == b"{":
            if payload[-1:] != b"}":
                if state.malformed is None:
                    state.malformed = event
                return
            if _EMPTY_CHOICES in payload or _EMPTY_CHOICES_SPACED in payload or b'"choices"' not in payload:
                # usage-only chunk, or an error object: parsed once at the end
                state.tail_events.append(payload)
                return
            now = self._now
            if state.first_token_at is None:
                state.first_token_at = now
            state.chunk_times.append(now)
            pos = payload.rfind(_COMPLETION_TOKENS)
            if pos >= 0:
                state.continuous_usage_seen = True
                total = _read_int(payload, pos + len(_COMPLETION_TOKENS))
                tokens = total - state.last_completion_tokens
                state.last_completion_tokens = total
            else:
                tokens = 1
            state.chunk_tokens.append(tokens)
            if state.content is not None:
                state.content.append(payload)
            if self.on_tokens is not None:
                self.on_tokens(tokens)
            if b'"finish_reason":"' in payload or b'"timings"' in payload or b'"finish_reason": "' in payload:
                state.tail_events.append(payload)
        elif payload.strip() == _DONE:
            state.done = True
        else:
            if state.malformed is None:
                state.malformed = event

    # ---- request lifecycle ------------------------------------------------------------------
    def send(self, request: bytes, state: StreamState) -> asyncio.Future[None]:
        """Write one request; the returned future resolves when the response is complete or failed."""
        assert self.transport is not None
        self._state = state
        self._parser = httptools.HttpResponseParser(self)
        self._buffer.clear()
        self._received_any = False
        self._keep_alive = True
        self._finished = self._loop.create_future()
        state.sent_at = state.last_activity = _perf_counter()
        self.transport.write(request)
        return self._finished

    def _fail(self, message: str, *, retryable: bool = False) -> None:
        state = self._state
        if state is None or state.done:
            return
        state.error = ("retry: " if retryable else "") + message
        state.done = True
        self._complete()
        if self.transport is not None:
            self.transport.close()

    def abort(self, message: str) -> None:
        """Give up on the current request (timeout, cancel) and close the connection."""
        self._fail(message)

    def _complete(self) -> None:
        finished = self._finished
        self._state = None
        self._parser = None
        if finished is not None and not finished.done():
            finished.set_result(None)

    @property
    def idle(self) -> bool:
        return self._state is None and not self.closed


def _read_int(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] == 0x20:
        pos += 1
    end = pos
    while end < len(data) and 0x30 <= data[end] <= 0x39:
        end += 1
    return int(data[pos:end]) if end > pos else 0


def answer_text(events: list[bytes]) -> str:
    """The text an answer streamed (chat ``delta.content`` or completions ``text``), from its events."""
    parts: list[str] = []
    for raw in events:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                parts.append(text)
    return "".join(parts)


def _describe_http_error(status: int | None, body: bytes) -> str:
    """One line from an HTTP error: vLLM's error JSON message when there is one."""
    message = ""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            inner = parsed.get("error", parsed)
            if isinstance(inner, dict):
                message = str(inner.get("message") or inner.get("detail") or "")
            elif isinstance(inner, str):
                message = inner
            if not message and "detail" in parsed:
                message = str(parsed["detail"])
    except (ValueError, UnicodeDecodeError):
        message = body[:200].decode("utf-8", "replace").strip()
    return f"HTTP {status}: {message}" if message else f"HTTP {status}"


def parse_tail_events(events: list[bytes]) -> dict[str, Any]:
    """Usage, finish reason, server timings and mid-stream errors from the kept events."""
    found: dict[str, Any] = {}
    for raw in events:
        try:
            obj = json.loads(raw)
        except ValueError:
            found.setdefault("error", f"malformed JSON in SSE event: {raw[:120]!r}")
            continue
        if not isinstance(obj, dict):
            continue
        if "error" in obj:
            err = obj["error"]
            found["error"] = str(err.get("message", err)) if isinstance(err, dict) else str(err)
        usage = obj.get("usage")
        if isinstance(usage, dict) and not obj.get("choices"):
            found["usage"] = usage
        elif isinstance(usage, dict):
            found.setdefault("chunk_usage", usage)
            found["chunk_usage"] = usage
        for choice in obj.get("choices") or []:
            reason = choice.get("finish_reason")
            if reason:
                found["finish_reason"] = reason
        timings = obj.get("timings")
        if isinstance(timings, dict):
            found["timings"] = {k: float(v) for k, v in timings.items() if isinstance(v, int | float)}
    return found


_EMIT_NS = b'"emit_ns":'


class ProbingStreamConnection(StreamConnection):
    """For calibration against the fake SSE server only: pairs each chunk's server ``emit_ns`` with the
    wall-clock time of the socket read that delivered it, so timing error can be measured exactly."""

    def data_received(self, data: bytes) -> None:
        self._now_ns = time.time_ns()
        super().data_received(data)

    def _event(self, event: bytes, state: StreamState) -> None:
        before = len(state.chunk_times)
        super()._event(event, state)
        if len(state.chunk_times) > before:
            pos = event.find(_EMIT_NS)
            if pos >= 0:
                if state.probe is None:
                    state.probe = array("q")
                # time_ns() has 19 digits until the year 2286: a slice is ~7x cheaper than scanning digits.
                start = pos + len(_EMIT_NS)
                state.probe.append(int(event[start : start + 19]))
                state.probe.append(self._now_ns)
