"""The fake SSE server, checked with a strict blocking raw-socket HTTP/1.1 client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.sse_server import VOCAB, FakeServerError, FakeSSEServer, start_in_process, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
FAST = {"fake_ttft_ms": 1, "fake_itl_ms": 1}


# ---- a strict little HTTP/1.1 client -------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = True  # False when the server closed or went silent mid-body
    eof: bool = False
    timed_out: bool = False

    @property
    def events(self) -> list[bytes]:
        """SSE events; each chunk must hold exactly one ``...\\n\\n`` event."""
        for chunk in self.chunks:
            assert chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1, chunk
        return [chunk[:-2] for chunk in self.chunks]

    def json_events(self) -> list[dict[str, Any]]:
        out = []
        for event in self.events:
            assert event.startswith(b"data: "), event
            if event != b"data: [DONE]":
                out.append(json.loads(event[6:]))
        return out

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    def __init__(self, port: int, timeout: float = 5.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def request_bytes(self, method: str, path: str, body: Any = None, close: bool = False) -> bytes:
        payload = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if payload or method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        if close:
            head += "Connection: close\r\n"
        return head.encode() + b"\r\n" + payload

    def send(self, method: str, path: str, body: Any = None, close: bool = False) -> None:
        self.sock.sendall(self.request_bytes(method, path, body, close))

    def call(self, method: str, path: str, body: Any = None, close: bool = False) -> Response:
        self.send(method, path, body, close)
        return self.read_response()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def _read_until(self, separator: bytes) -> bytes:
        while (end := self.buf.find(separator)) < 0:
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[: end + len(separator)]
        return line

    def _read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def read_response(self) -> Response:
        head = self._read_until(b"\r\n\r\n").decode()
        status_line, *header_lines = head.split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in header_lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        response = Response(status=int(status), headers=headers)
        try:
            if "content-length" in headers:
                response.body = self._read_exact(int(headers["content-length"]))
            else:
                assert headers.get("transfer-encoding") == "chunked"
                while True:
                    size = int(self._read_until(b"\r\n"), 16)
                    if size == 0:
                        assert self._read_exact(2) == b"\r\n"
                        break
                    response.chunks.append(self._read_exact(size))
                    assert self._read_exact(2) == b"\r\n", "chunk data not followed by CRLF"
        except EOFError:
            response.complete = False
            response.eof = True
        except TimeoutError:
            response.complete = False
            response.timed_out = True
        return response

    def at_eof(self) -> bool:
        """True when the server has closed the connection (nothing more buffered or to come)."""
        try:
            return not self.buf and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


# ---- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["tick", "sleep"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    server = FakeSSEServer(mode=request.param)
    yield server.start_in_thread()
    server.stop()


@pytest.fixture
def client(port: int) -> Iterator[RawClient]:
    raw = RawClient(port)
    yield raw
    raw.close()


def chat(max_tokens: int, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "gemma-3-270m",
        "messages": [{"role": "user", "content": "Tell me a story about a fox."}],
        "stream": True,
        "max_tokens": max_tokens,
        **FAST,
    }
    body.update(extra)
    return body


def completion(max_tokens: int, **extra: Any) -> dict[str, Any]:
    body = {"model": "m", "prompt": "Once upon a time", "stream": True, "max_tokens": max_tokens, **FAST}
    body.update(extra)
    return body


def expected_text(n: int) -> str:
    return "".join(VOCAB[i % len(VOCAB)] for i in range(n))


def content_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["choices"] and "role" not in e["choices"][0].get("delta", {})]


# ---- stream format -------------------------------------------------------------------------------


def test_chat_stream_has_role_chunk_tokens_finish_usage_and_done(client: RawClient) -> None:
    n = 40  # longer than the vocabulary, so the precomputed fast path is used and wraps around
    body = chat(n, stream_options={"include_usage": True}, fake_prompt_tokens=123)
    response = client.call("POST", "/v1/chat/completions", body)
    assert response.status == 200 and response.complete
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "connection" not in response.headers
    assert response.events[-1] == b"data: [DONE]"
    events = response.json_events()
    role, contents, usage = events[0], events[1:-1], events[-1]

    assert role["object"] == "chat.completion.chunk" and role["model"] == "gemma-3-270m"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["req_ns"] <= role["emit_ns"]
    assert len(contents) == n
    assert "".join(e["choices"][0]["delta"]["content"] for e in contents) == expected_text(n)
    assert all(e["id"] == role["id"] and e["id"].startswith("chatcmpl-") for e in events)
    assert all("req_ns" not in e for e in contents)
    emits = [e["emit_ns"] for e in contents]
    assert emits == sorted(emits) and emits[0] >= role["emit_ns"]
    assert [e["choices"][0]["finish_reason"] for e in contents] == [None] * (n - 1) + ["length"]
    assert contents[-1]["choices"][0]["stop_reason"] is None
    assert "stop_reason" not in contents[0]["choices"][0]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 123, "total_tokens": 123 + n, "completion_tokens": n}


def test_completions_stream_uses_text_and_puts_req_ns_on_first_chunk(client: RawClient) -> None:
    n = 20
    response = client.call("POST", "/v1/completions", completion(n, stream_options={"include_usage": True}))
    assert response.status == 200 and response.complete
    events = response.json_events()
    contents, usage = events[:-1], events[-1]
    assert len(contents) == n
    assert all(e["object"] == "text_completion" and e["usage"] is None for e in contents)
    assert "".join(e["choices"][0]["text"] for e in contents) == expected_text(n)
    assert "req_ns" in contents[0] and all("req_ns" not in e for e in contents[1:])
    assert all("emit_ns" in e for e in contents)
    assert contents[-1]["choices"][0]["finish_reason"] == "length"
    prompt_tokens = len("Once upon a time") // 4
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + n,
        "completion_tokens": n,
    }


def test_no_usage_chunk_unless_asked(client: RawClient) -> None:
    response = client.call("POST", "/v1/chat/completions", chat(5))
    events = response.json_events()
    assert len(content_events(events)) == 5
    assert all(e["choices"] for e in events)
    assert all("usage" not in e for e in events)


def test_continuous_usage_stats_counts_every_chunk(client: RawClient) -> None:
    body = chat(
        6, stream_options={"include_usage": True, "continuous_usage_stats": True}, fake_prompt_tokens=7
    )
    events = client.call("POST", "/v1/chat/completions", body).json_events()
    running = [e["usage"]["completion_tokens"] for e in events[:-1]]
    assert running == [0, 1, 2, 3, 4, 5, 6]
    assert all(e["usage"]["total_tokens"] == 7 + e["usage"]["completion_tokens"] for e in events)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 6


def test_fake_output_tokens_stops_early_unless_ignore_eos(client: RawClient) -> None:
    stopped = client.call("POST", "/v1/chat/completions", chat(10, fake_output_tokens=3)).json_events()
    assert len(content_events(stopped)) == 3
    assert content_events(stopped)[-1]["choices"][0]["finish_reason"] == "stop"
    forced = client.call("POST", "/v1/chat/completions", chat(10, fake_output_tokens=3, ignore_eos=True))
    assert len(content_events(forced.json_events())) == 10


def test_non_streaming_answers_in_one_json(client: RawClient) -> None:
    answer = client.call("POST", "/v1/chat/completions", chat(5, stream=False, fake_prompt_tokens=9))
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    data = answer.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {
        "role": "assistant",
        "content": expected_text(5),
        "tool_calls": [],
    }
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"] == {"prompt_tokens": 9, "total_tokens": 14, "completion_tokens": 5}
    text = client.call("POST", "/v1/completions", completion(4, stream=False)).json()
    assert text["object"] == "text_completion" and text["choices"][0]["text"] == expected_text(4)


def test_pipelined_requests_are_answered_in_order(client: RawClient) -> None:
    first = client.request_bytes("POST", "/v1/chat/completions", chat(3, fake_prompt_tokens=1))
    second = client.request_bytes("POST", "/v1/chat/completions", chat(4, fake_prompt_tokens=2))
    client.sock.sendall(first + second)
    one, two = client.read_response(), client.read_response()
    assert len(content_events(one.json_events())) == 3
    assert len(content_events(two.json_events())) == 4


@pytest.mark.parametrize("mode", ["tick", "sleep"])
def test_backpressure_on_a_slow_reader_loses_nothing(mode: str) -> None:
    with FakeSSEServer(mode=mode) as server:
        raw = RawClient(server.port, rcvbuf=4096)
        try:
            n = 30_000  # ~7 MB at ITL 0 overflows the socket buffers (4 MB max), so the server must pause
            raw.send("POST", "/v1/completions", completion(n, fake_itl_ms=0, fake_ttft_ms=0))
            for _ in range(500):  # do not read until the server has paused writing (bounded wait)
                if server.stats().write_pauses:
                    break
                time.sleep(0.01)
            assert server.stats().write_pauses >= 1
            events = raw.read_response().json_events()
        finally:
            raw.close()
        assert "".join(e["choices"][0]["text"] for e in events) == expected_text(n)


# ---- health, models, stats -----------------------------------------------------------------------


def test_health_and_models(client: RawClient) -> None:
    health = client.call("GET", "/health")
    assert health.status == 200 and health.body == b""
    models = client.call("GET", "/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["object"] == "model" and models["data"][0]["max_model_len"] == 2048


def test_keep_alive_reuses_one_connection_and_stats_count_it() -> None:
    with FakeSSEServer(mode="tick") as server:
        raw = RawClient(server.port)
        try:
            for _ in range(2):
                response = raw.call("POST", "/v1/chat/completions", chat(3))
                assert response.complete and "connection" not in response.headers
            stats = raw.call("GET", "/stats").json()
        finally:
            raw.close()
        assert stats["mode"] == "tick"
        assert stats["connections_accepted"] == 1
        assert stats["requests_received"] == 2  # /stats itself is not counted
        assert stats["generation_requests"] == 2 and stats["streams_completed"] == 2
        assert stats["chunks_sent"] == 6
        assert len(stats["recv_ns"]) == 2 and stats["recv_ns"] == sorted(stats["recv_ns"])
        assert server.stats().generation_requests == 2

        other = RawClient(server.port)
        try:
            assert other.call("POST", "/stats/reset").status == 200
            after = other.call("GET", "/stats").json()
        finally:
            other.close()
        assert after["generation_requests"] == 0 and after["recv_ns"] == []
        assert after["connections_open"] >= 1


def test_client_connection_close_is_honoured(client: RawClient) -> None:
    response = client.call("POST", "/v1/chat/completions", chat(2), close=True)
    assert response.complete and response.headers["connection"] == "close"
    assert client.at_eof()


# ---- faults --------------------------------------------------------------------------------------


def test_http400_fault_is_vllms_flat_error(client: RawClient) -> None:
    response = client.call("POST", "/v1/chat/completions", chat(5, fake_fault="http400"))
    assert response.status == 400
    error = response.json()
    assert error["object"] == "error" and error["type"] == "BadRequestError"
    assert error["code"] == 400 and error["param"] is None
    assert error["message"].startswith("This model's maximum context length is 2048 tokens.")
    nested = client.call(
        "POST", "/v1/chat/completions", chat(5, fake_fault="http400", fake_error_format="nested")
    )
    assert nested.json()["error"]["code"] == 400
    assert client.call("GET", "/health").status == 200  # the connection survives an error


def test_http500_fault(client: RawClient) -> None:
    response = client.call("POST", "/v1/completions", completion(5, fake_fault="http500"))
    assert response.status == 500
    error = response.json()
    assert error["type"] == "InternalServerError" and error["code"] == 500


def test_drop_mid_stream_closes_after_k_chunks(client: RawClient) -> None:
    response = client.call(
        "POST", "/v1/completions", completion(10, fake_fault="drop_mid_stream", fake_fault_after=4)
    )
    assert response.status == 200 and response.eof and not response.complete
    assert len(response.json_events()) == 4
    assert b"[DONE]" not in b"".join(response.chunks)


def test_drop_mid_stream_defaults_to_half_way(client: RawClient) -> None:
    response = client.call("POST", "/v1/chat/completions", chat(10, fake_fault="drop_mid_stream"))
    assert response.eof and len(content_events(response.json_events())) == 5


def test_malformed_sse_line_then_the_stream_continues(client: RawClient) -> None:
    body = completion(
        6, fake_fault="malformed_sse", fake_fault_after=2, stream_options={"include_usage": True}
    )
    response = client.call("POST", "/v1/completions", body)
    assert response.complete
    events = response.events
    bad = events[2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad[6:])
    good = [json.loads(e[6:]) for i, e in enumerate(events) if i != 2 and e != b"data: [DONE]"]
    assert len(good) == 7 and good[-1]["usage"]["completion_tokens"] == 6
    assert events[-1] == b"data: [DONE]"


def test_stall_sends_first_chunk_then_keeps_the_socket_open(port: int) -> None:
    raw = RawClient(port, timeout=0.3)
    try:
        response = raw.call("POST", "/v1/chat/completions", chat(50, fake_fault="stall"))
        assert response.status == 200 and response.timed_out and not response.eof
        events = response.json_events()
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert len(content_events(events)) == 1
    finally:
        raw.close()


def test_close_after_response_closes_the_idle_connection_unannounced(client: RawClient) -> None:
    response = client.call("POST", "/v1/chat/completions", chat(3, fake_fault="close_after_response"))
    assert response.complete and "connection" not in response.headers
    assert len(content_events(response.json_events())) == 3
    assert client.at_eof()


def test_no_usage_fault_omits_usage_even_when_asked(client: RawClient) -> None:
    body = chat(
        3, fake_fault="no_usage", stream_options={"include_usage": True, "continuous_usage_stats": True}
    )
    response = client.call("POST", "/v1/chat/completions", body)
    events = response.json_events()
    assert len(content_events(events)) == 3 and all("usage" not in e for e in events)
    assert response.events[-1] == b"data: [DONE]"


def test_close_idle_after_each_closes_every_connection() -> None:
    with FakeSSEServer(mode="sleep", close_idle_after_each=True) as server:
        raw = RawClient(server.port)
        try:
            response = raw.call("POST", "/v1/chat/completions", chat(3))
            assert response.complete and "connection" not in response.headers
            assert raw.at_eof()
        finally:
            raw.close()


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        ({"messages": [{"role": "user", "content": "x"}], "fake_fault": "explode"}, "fake_fault"),
        ({"messages": [{"role": "user", "content": "x"}], "fake_itl_ms": -1}, "fake_itl_ms"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"stream": True}, "messages"),
    ],
)
def test_bad_generation_requests_get_one_clear_400(client: RawClient, body: Any, fragment: str) -> None:
    response = client.call("POST", "/v1/chat/completions", body)
    assert response.status == 400
    error = response.json()
    assert error["type"] == "BadRequestError" and fragment in error["message"]


def test_completions_without_prompt_is_a_400(client: RawClient) -> None:
    response = client.call("POST", "/v1/completions", {"stream": True})
    assert response.status == 400 and "prompt" in response.json()["message"]


def test_unknown_path_and_wrong_method(client: RawClient) -> None:
    assert client.call("GET", "/nope").status == 404
    assert client.call("GET", "/v1/chat/completions").status == 405


def test_garbage_http_gets_400_and_close(port: int) -> None:
    raw = RawClient(port)
    try:
        raw.sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        response = raw.read_response()
        assert response.status == 400 and "Invalid HTTP request" in response.json()["message"]
        assert response.headers["connection"] == "close"
    finally:
        raw.close()


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(FakeServerError, match="Unknown fake server mode 'fast'"):
        FakeSSEServer(mode="fast")


def test_port_in_use_is_a_clear_error() -> None:
    with FakeSSEServer() as first:
        second = FakeSSEServer(port=first.port)
        with pytest.raises(FakeServerError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            second.start_in_thread()


def test_stop_ends_open_streams() -> None:
    server = FakeSSEServer(mode="sleep")
    raw = RawClient(server.start_in_thread(), timeout=5.0)
    try:
        raw.send("POST", "/v1/chat/completions", chat(5, fake_fault="stall"))
        raw._read_until(b"\r\n\r\n")
        server.stop()
        with pytest.raises((EOFError, ConnectionResetError)):
            while True:
                raw._fill()
    finally:
        raw.close()


# ---- other ways to run it ------------------------------------------------------------------------


def test_start_in_process_serves_and_stops() -> None:
    port, process = start_in_process(mode="sleep")
    try:
        raw = RawClient(port)
        try:
            response = raw.call("POST", "/v1/chat/completions", chat(3))
            assert len(content_events(response.json_events())) == 3
        finally:
            raw.close()
    finally:
        stop_process(process)
    assert not process.is_alive()


def test_module_entry_point_announces_its_port() -> None:
    command = [sys.executable, "-m", "tests.fakes.sse_server", "--port", "0", "--mode", "tick"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        port = int(line.rsplit(":", 1)[1])
        raw = RawClient(port)
        try:
            assert raw.call("GET", "/health").status == 200
        finally:
            raw.close()
    finally:
        process.terminate()
        process.wait(10)
