"""Token counters: a real /tokenize HTTP server on 127.0.0.1 (vLLM and llama.cpp shapes), tiktoken."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backends.bench.datasets import sample_requests
from backends.bench.results import DatasetSpec
from backends.bench.tokenizers import (
    REMOTE_COUNTER_NAME,
    TIKTOKEN_COUNTER_NAME,
    RemoteTokenizer,
    TiktokenCounter,
    TokenCounter,
    pick_token_counter,
)
from backends.errors import TargetError

DATA = Path(__file__).parent.parent / "data"
MODEL = "google/gemma-3-270m"
BOS = 2


@dataclass
class TokenizeServerState:
    """How the fake server behaves, and what it saw."""

    shape: str  # "vllm" | "llamacpp" | "none" (no /tokenize) | "text" (non-JSON answers)
    api_key: str | None = None
    delay_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def whitespace_tokens(text: str, add_bos: bool) -> list[int]:
    return ([BOS] if add_bos else []) + [len(word) for word in text.split()]


class TokenizeHandler(BaseHTTPRequestHandler):
    """vLLM: BOS + one token per word, always. llama.cpp: same, BOS only with add_special."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; without TCP_NODELAY the client's delayed ACK holds
    # the second one back ~40 ms on every keep-alive request.
    disable_nagle_algorithm = True
    server: TokenizeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with state.lock:
            state.requests += 1
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.delay_s:
                time.sleep(state.delay_s)
            self._answer(state, body)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _answer(self, state: TokenizeServerState, body: dict[str, Any]) -> None:
        if state.api_key and self.headers.get("Authorization") != f"Bearer {state.api_key}":
            self._send(
                401, {"error": {"message": "Unauthorized", "type": "AuthenticationError", "code": 401}}
            )
        elif self.path != "/tokenize" or state.shape == "none":
            self._send(404, {"detail": "Not Found"})
        elif state.shape == "text":
            self._send_raw(200, b"tokens: many", "text/plain")
        elif state.shape == "vllm":
            self._answer_vllm(body)
        else:
            # llama.cpp ignores keys it does not know and tokenizes a missing content as ""
            tokens = whitespace_tokens(str(body.get("content", "")), bool(body.get("add_special", False)))
            self._send(200, {"tokens": tokens})

    def _answer_vllm(self, body: dict[str, Any]) -> None:
        if "prompt" not in body:
            message = "1 validation error: prompt Field required"
            self._send(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
        elif body.get("model") != MODEL:
            message = f"The model `{body.get('model')}` does not exist."
            self._send(404, {"error": {"message": message, "type": "NotFoundError", "code": 404}})
        else:
            tokens = whitespace_tokens(body["prompt"], add_bos=True)
            self._send(200, {"count": len(tokens), "max_model_len": 32768, "tokens": tokens})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json")

    def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class TokenizeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: TokenizeServerState) -> None:
        super().__init__(("127.0.0.1", 0), TokenizeHandler)
        self.state = state

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[TokenizeHTTPServer] = []

    def start(shape: str, **options: Any) -> TokenizeHTTPServer:
        server = TokenizeHTTPServer(TokenizeServerState(shape=shape, **options))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


TEXTS = [f"prompt number {i} has " + "word " * (i % 13) for i in range(60)]
EXPECTED_WITH_BOS = [len(text.split()) + 1 for text in TEXTS]


@pytest.mark.parametrize("shape", ["vllm", "llamacpp"])
def test_remote_counts_with_either_server_shape(serve: Any, shape: str) -> None:
    server = serve(shape)
    with RemoteTokenizer(server.base_url, MODEL) as counter:
        assert counter.count("hello there world") == 4
        assert counter.count_many(TEXTS) == EXPECTED_WITH_BOS
        assert counter.shape == shape
        assert counter.count_many([]) == []
        assert counter.name == REMOTE_COUNTER_NAME


def test_remote_accepts_a_v1_base_url(serve: Any) -> None:
    server = serve("vllm")
    with RemoteTokenizer(server.base_url + "/v1/", MODEL) as counter:
        assert counter.url == server.base_url + "/tokenize"
        assert counter.count("a b c") == 4


def test_remote_count_many_runs_requests_in_parallel(serve: Any) -> None:
    server = serve("vllm", delay_s=0.02)
    with RemoteTokenizer(server.base_url, MODEL, parallel=8) as counter:
        assert counter.count_many(TEXTS[:32]) == EXPECTED_WITH_BOS[:32]
    assert server.state.max_in_flight > 1
    assert server.state.requests == 32 + 1  # the texts plus one shape probe


def test_remote_sends_the_api_key(serve: Any) -> None:
    server = serve("vllm", api_key="sk-test-123")
    with RemoteTokenizer(server.base_url, MODEL, api_key="sk-test-123") as counter:
        assert counter.count("one two") == 3
    with (
        RemoteTokenizer(server.base_url, MODEL) as counter,
        pytest.raises(TargetError, match="HTTP 401: Unauthorized"),
    ):
        counter.count("one two")


def test_remote_server_down_is_a_target_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        RemoteTokenizer(f"http://127.0.0.1:{port}", MODEL) as counter,
        pytest.raises(
            TargetError, match=rf"cannot reach http://127.0.0.1:{port}/tokenize .*is the server running"
        ),
    ):
        counter.count_many(["a b c", "d e f"])


def test_remote_without_tokenize_endpoint_is_a_target_error(serve: Any) -> None:
    server = serve("none")
    with (
        RemoteTokenizer(server.base_url, MODEL) as counter,
        pytest.raises(
            TargetError, match=r"does not speak .* HTTP 404 \(the target has no /tokenize endpoint\)"
        ),
    ):
        counter.count("a b c")


def test_remote_unknown_model_shows_the_servers_message(serve: Any) -> None:
    server = serve("vllm")
    with (
        RemoteTokenizer(server.base_url, "no-such-model") as counter,
        pytest.raises(TargetError, match="The model `no-such-model` does not exist"),
    ):
        counter.count("a b c")


def test_remote_non_json_answer_is_a_target_error(serve: Any) -> None:
    server = serve("text")
    with (
        RemoteTokenizer(server.base_url, MODEL, shape="vllm") as counter,
        pytest.raises(TargetError, match="answered with non-JSON text: 'tokens: many'"),
    ):
        counter.count("a b c")


def test_remote_counter_samples_sharegpt_end_to_end(serve: Any) -> None:
    server = serve("llamacpp")
    with RemoteTokenizer(server.base_url, MODEL) as counter:
        sampled = sample_requests(
            DatasetSpec(kind="file", path=str(DATA / "sharegpt_small.json")),
            4,
            counter,
            seed=0,
            output_len=None,
        )
    by_first_word = {request.prompt.split()[0]: request for request in sampled.requests}
    # with BOS, "Yes." counts 2 and "Hi there" 3: both still below vLLM's minimum of 4
    assert set(by_first_word) == {"What", "Name", "Traduis", "Print"}
    assert by_first_word["What"].prompt_len == 8
    assert by_first_word["What"].expected_output_len == 8


def test_tiktoken_counts_offline() -> None:
    counter = TiktokenCounter()
    assert counter.count("hello world") == 2
    texts = ["The quick brown fox", "jumps over\nthe lazy dog", ""]
    assert counter.count_many(texts) == [counter.count(text) for text in texts]
    assert counter.count_many([]) == []
    # special-token text inside a prompt is counted as plain text, not rejected
    assert counter.count("end <|endoftext|> here") > 3
    assert counter.name == TIKTOKEN_COUNTER_NAME


def test_pick_token_counter(serve: Any) -> None:
    server = serve("vllm")
    remote = pick_token_counter(server.base_url, MODEL, has_tokenize=True)
    assert isinstance(remote, RemoteTokenizer)
    assert remote.name == "remote /tokenize"
    assert remote.count("a b") == 3
    remote.close()
    local = pick_token_counter(server.base_url, MODEL, has_tokenize=False)
    assert isinstance(local, TiktokenCounter)
    assert local.name == "tiktoken cl100k_base (offline)"
    assert isinstance(local, TokenCounter)
