"""A small HTTP/1.1 server core for the twin: asyncio Protocol + httptools, keep-alive, chunked streams.

Why not a framework: the twin must push every engine step's tokens to hundreds of streams from one
tick, on one core (reference/sse_limits.md: a raw Protocol writing straight to the transports serves
~118k chunks/s, aiohttp.web ~58-76k). Requests on one connection are answered in order (pipelining
is queued); every response carries ``x-servedeck-simulated: 1``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from http import HTTPStatus
from typing import Any, Protocol

import httptools

from backends.errors import ServeDeckError
from backends.http_listener import ListenFailure

MAX_BODY_BYTES = 32 * 1024 * 1024

SERVER_HEADERS = b"server: servedeck-twin\r\nx-servedeck-simulated: 1\r\n"
CLOSE_HEADER = b"connection: close\r\n"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n" + SERVER_HEADERS
)
STREAM_END = b"0\r\n\r\n"


class TwinServerError(ServeDeckError):
    """The twin server could not be configured or started."""


def sse_frame(event: bytes) -> bytes:
    """One HTTP/1.1 chunk holding one SSE event (``event`` includes ``data: `` and the blank line)."""
    return b"%x\r\n%b\r\n" % (len(event), event)


def response_bytes(status: int, body: bytes, content_type: bytes, keep_alive: bool) -> bytes:
    reason = HTTPStatus(status).phrase.encode()
    return b"HTTP/1.1 %d %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n%b%b\r\n%b" % (
        status,
        reason,
        content_type,
        len(body),
        SERVER_HEADERS,
        b"" if keep_alive else CLOSE_HEADER,
        body,
    )


class HttpRequest:
    """One parsed request; ``received_at`` is ``time.perf_counter()`` when its last byte was read."""

    __slots__ = ("body", "keep_alive", "method", "path", "query", "received_at")

    def __init__(
        self, method: str, path: str, query: str, body: bytes, keep_alive: bool, received_at: float
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.keep_alive = keep_alive
        self.received_at = received_at


class AsyncResponse(Protocol):
    """A response that finishes later (a stream or a non-streamed generation)."""

    def cancel(self) -> None:
        """The client went away: stop producing for it."""


class RequestHandler(Protocol):
    def handle(self, connection: HttpConnection, request: HttpRequest) -> None:
        """Answer now with ``connection.respond`` or start an async response with ``connection.begin``."""


class HttpConnection(asyncio.Protocol):
    """One client connection; requests are handled one at a time, in order."""

    __slots__ = (
        "active",
        "body_parts",
        "body_size",
        "busy",
        "closed",
        "handler",
        "loop",
        "parser",
        "pending",
        "registry",
        "transport",
        "url",
    )

    def __init__(
        self, handler: RequestHandler, loop: asyncio.AbstractEventLoop, registry: set[HttpConnection]
    ) -> None:
        self.handler = handler
        self.loop = loop
        self.registry = registry
        self.transport: Any = None  # asyncio.Transport; Any keeps the hot path free of casts
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.pending: deque[HttpRequest] = deque()
        self.active: AsyncResponse | None = None
        self.busy = False
        self.closed = False

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.registry.discard(self)
        self.pending.clear()
        active, self.active = self.active, None
        if active is not None:
            active.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "Protocol upgrades are not supported by the twin.")
        except httptools.HttpParserError as exc:
            self._fail(400, f"Invalid HTTP request: {exc}")

    # ---- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.body_parts = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_BODY_BYTES:
            self._fail(413, f"Request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB.")
            return
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        if self.closed:
            return
        path, _, query = self.url.decode("latin-1").partition("?")
        self.pending.append(
            HttpRequest(
                method=self.parser.get_method().decode("latin-1"),
                path=path,
                query=query,
                body=b"".join(self.body_parts),
                keep_alive=self.parser.should_keep_alive(),
                received_at=time.perf_counter(),
            )
        )
        self.body_parts = []
        self._start_next()

    # ---- responses --------------------------------------------------------------------------

    def respond(
        self, request: HttpRequest, status: int, body: bytes, content_type: bytes = b"application/json"
    ) -> None:
        if self.closed:
            return
        self.transport.write(response_bytes(status, body, content_type, request.keep_alive))
        self.finish(request.keep_alive)

    def begin(self, response: AsyncResponse) -> None:
        """The current request is answered later by ``response``, which calls ``finish``."""
        self.active = response
        self.busy = True

    def finish(self, keep_alive: bool) -> None:
        """The current response has been written completely."""
        self.active = None
        self.busy = False
        if not keep_alive:
            self.close()
            return
        self._start_next()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pending.clear()
            self.transport.close()

    def abort(self) -> None:
        active, self.active = self.active, None
        if active is not None:
            active.cancel()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _start_next(self) -> None:
        while not self.closed and not self.busy and self.pending:
            request = self.pending.popleft()
            self.busy = True
            try:
                self.handler.handle(self, request)
            except Exception as exc:  # one bad request must not take the server down
                if self.busy and self.active is None:
                    message = f"The twin failed on this request: {type(exc).__name__}: {exc}"
                    self.respond(request, 500, error_body(500, "InternalServerError", message))

    def _fail(self, status: int, message: str) -> None:
        if self.closed:
            return
        self.transport.write(
            response_bytes(status, error_body(status, "BadRequestError", message), b"application/json", False)
        )
        self.close()


def error_body(status: int, error_type: str, message: str, param: str | None = None) -> bytes:
    """vLLM's error JSON (nested form, vLLM >= 0.10.1; reference/vllm_k8s_facts.md §3b)."""
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": status}},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


def listen_failure(failure: ListenFailure) -> TwinServerError:
    """The twin's line for a listener that could not open."""
    if failure.stage == "host":
        return TwinServerError(f"the twin cannot use host {failure.host!r} ({failure.error}); use 127.0.0.1")
    reason = failure.error.strerror or failure.error
    return TwinServerError(
        f"the twin cannot listen on {failure.host}:{failure.port} ({reason}); "
        "pick another --port, or 0 for a free one"
    )
