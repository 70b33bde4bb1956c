"""The live twin over real HTTP on 127.0.0.1: vLLM's endpoints, chunk format, errors, /metrics, log line."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backends.bench.tokenizers import TiktokenCounter
from backends.errors import ConfigError
from backends.prometheus import parse_exposition, snapshot_from_metrics
from backends.target_types import TargetKind
from backends.targets import discover_target
from backends.twin.engine_config import TwinConfig
from backends.twin.http_server import TwinServerError
from backends.twin.logline import StatsCounters, StatsLogger, format_stats_message
from backends.twin.metrics_text import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS, Histogram
from backends.twin.process import start_twin_process
from backends.twin.server import TwinServer

pytestmark = pytest.mark.timeout(120)

MAX_MODEL_LEN = 1024
LOG_INTERVAL_S = 0.5
STATS_LINE = re.compile(
    r"^INFO \d\d-\d\d \d\d:\d\d:\d\d \[loggers\.py:\d+\] Engine 000: "
    r"Avg prompt throughput: (?P<prompt>\d+\.\d) tokens/s, "
    r"Avg generation throughput: (?P<gen>\d+\.\d) tokens/s, "
    r"Running: \d+ reqs, Waiting: \d+ reqs, (?:Preemptions: \d+, )?GPU KV cache usage: \d+\.\d%, "
    r"Prefix cache hit rate: \d+\.\d%$"
)


class LogLines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)


@pytest.fixture(scope="module")
def log_lines() -> LogLines:
    return LogLines()


@pytest.fixture(scope="module")
def twin(log_lines: LogLines) -> Iterator[TwinServer]:
    config = TwinConfig.build("gemma-3-1b-it", "h100", 1, max_model_len=MAX_MODEL_LEN)
    server = TwinServer(config, log_interval_s=LOG_INTERVAL_S, log_sink=log_lines)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(twin: TwinServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=twin.base_url, timeout=30) as http:
        yield http


def stream_events(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    """Every SSE ``data:`` payload of one streamed response: dicts, and the string "[DONE]"."""
    events: list[Any] = []
    with client.stream("POST", path, json=body) as response:
        for line in response.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return response, events


def metrics(client: httpx.Client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.text


# ---- discovery and the simple endpoints ------------------------------------------------------------


def test_discovery_sees_a_twin_with_every_capability(twin: TwinServer) -> None:
    target = asyncio.run(discover_target(twin.base_url))
    assert target.kind is TargetKind.TWIN
    assert target.model == "gemma-3-1b-it-twin" == twin.model_id
    caps = target.capabilities
    assert caps.tokenize and caps.metrics and caps.stream_usage and caps.continuous_usage
    assert not caps.slots
    assert target.hardware == "1xh100 (twin)"  # from servedeck:twin_info: History files its runs so


def test_every_response_is_marked_simulated(client: httpx.Client, twin: TwinServer) -> None:
    responses = [
        client.get("/health"),
        client.get("/v1/models"),
        client.get("/metrics"),
        client.get("/version"),
        client.post("/tokenize", json={"prompt": "hi"}),
        client.get("/no-such-path"),
        client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}),
        client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 5000}),
    ]
    for response in responses:
        assert response.headers.get("x-servedeck-simulated") == "1", response.request.url
    with client.stream(
        "POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True}
    ) as streamed:
        assert streamed.headers["x-servedeck-simulated"] == "1"
        assert streamed.headers["content-type"].startswith("text/event-stream")
        streamed.read()


def test_health_and_models(client: httpx.Client, twin: TwinServer) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.content == b""
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == twin.model_id and card["id"].endswith("-twin")
    assert card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["root"] == "google/gemma-3-1b-it"
    assert card["max_model_len"] == MAX_MODEL_LEN


def test_tokenize_has_vllms_shape_and_the_stand_in_tokenizer(client: httpx.Client) -> None:
    text = "The twin counts tokens with cl100k_base plus Gemma's BOS."
    body = client.post("/tokenize", json={"model": "gemma-3-1b-it-twin", "prompt": text}).json()
    assert set(body) >= {"count", "max_model_len", "tokens"}
    assert body["max_model_len"] == MAX_MODEL_LEN
    assert body["count"] == len(body["tokens"]) == 1 + TiktokenCounter().count(text)
    assert body["tokens"][0] == 2  # <bos>
    bare = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert bare["count"] == body["count"] - 1
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": text}]}).json()
    assert chat["count"] > body["count"]  # the chat template's turn markers
    back = client.post("/detokenize", json={"tokens": bare["tokens"]}).json()
    assert back == {"prompt": text}


# ---- streaming format -------------------------------------------------------------------------------


def test_chat_stream_matches_vllms_chunk_format(client: httpx.Client, twin: TwinServer) -> None:
    body = {
        "model": twin.model_id,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me a story."},
        ],
        "max_tokens": 12,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response, events = stream_events(client, "/v1/chat/completions", body)
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    role, *content, usage = chunks
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert "usage" not in role  # vLLM dumps chat chunks with exclude_unset
    assert len(content) == 12
    for chunk in content[:-1]:
        (choice,) = chunk["choices"]
        assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
        assert choice["finish_reason"] is None and isinstance(choice["delta"]["content"], str)
        assert choice["delta"]["content"]
        assert "usage" not in chunk
    last = content[-1]["choices"][0]
    assert last["finish_reason"] == "length" and last["stop_reason"] is None
    assert usage["choices"] == []
    prompt_tokens = client.post("/tokenize", json={"messages": body["messages"]}).json()["count"]
    assert usage["usage"] == {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + 12,
        "completion_tokens": 12,
    }
    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk["model"] for chunk in chunks} == {twin.model_id}
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in content)
    assert len(text.split()) >= 3  # real answer text, not a placeholder


def test_continuous_usage_counts_every_token(client: httpx.Client) -> None:
    body = {
        "prompt": "Once upon a time",
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    _, events = stream_events(client, "/v1/completions", body)
    assert events[-1] == "[DONE]"
    *content, usage = events[:-1]
    prompt_tokens = client.post("/tokenize", json={"prompt": body["prompt"]}).json()["count"]
    assert [chunk["usage"]["completion_tokens"] for chunk in content] == list(range(1, 9))
    for chunk in content:
        assert chunk["object"] == "text_completion" and chunk["id"].startswith("cmpl-")
        assert chunk["usage"]["prompt_tokens"] == prompt_tokens
        assert chunk["usage"]["total_tokens"] == prompt_tokens + chunk["usage"]["completion_tokens"]
        assert isinstance(chunk["choices"][0]["text"], str)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8


def test_chat_role_chunk_carries_usage_with_continuous_stats(client: httpx.Client) -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    _, events = stream_events(client, "/v1/chat/completions", body)
    role = events[0]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["usage"]["completion_tokens"] == 0


def test_completions_without_stream_options_send_no_usage(client: httpx.Client) -> None:
    _, events = stream_events(client, "/v1/completions", {"prompt": "hi", "max_tokens": 4, "stream": True})
    content = events[:-1]
    assert len(content) == 4
    assert all(chunk["usage"] is None and chunk["choices"] for chunk in content)  # no usage chunk at the end


def test_non_streaming_answers_have_text_and_usage(client: httpx.Client, twin: TwinServer) -> None:
    chat = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 6}
    ).json()
    assert chat["object"] == "chat.completion" and chat["model"] == twin.model_id
    (choice,) = chat["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    assert chat["usage"]["completion_tokens"] == 6
    completion = client.post("/v1/completions", json={"prompt": [9906, 1917], "max_tokens": 5}).json()
    assert completion["object"] == "text_completion"
    assert completion["usage"] == {"prompt_tokens": 2, "total_tokens": 7, "completion_tokens": 5}


def test_concurrent_streams_all_complete(twin: TwinServer) -> None:
    async def one(http: httpx.AsyncClient, i: int) -> int:
        body = {"prompt": f"request {i}", "max_tokens": 20, "stream": True}
        count = 0
        async with http.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    count += 1
        return count

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=twin.base_url, timeout=30) as http:
            return await asyncio.gather(*(one(http, i) for i in range(24)))

    assert asyncio.run(run()) == [20] * 24


# ---- errors -----------------------------------------------------------------------------------------


def assert_vllm_error(response: httpx.Response, status: int, error_type: str, message: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == error_type and error["code"] == status
    assert error["message"] == message, error["message"]


def test_prompt_over_max_model_len_is_vllms_400(client: httpx.Client) -> None:
    prompt = "word " * 1500
    prompt_tokens = client.post("/tokenize", json={"prompt": prompt}).json()["count"]
    assert prompt_tokens > MAX_MODEL_LEN
    response = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 10, "stream": True})
    assert_vllm_error(
        response,
        400,
        "BadRequestError",
        f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, your request has "
        f"{prompt_tokens} input tokens. Please reduce the length of the input messages.",
    )
    assert response.json()["error"]["param"] is None


def test_max_tokens_over_max_model_len_is_vllms_400(client: httpx.Client) -> None:
    prompt_tokens = client.post("/tokenize", json={"prompt": "hi there"}).json()["count"]
    response = client.post("/v1/completions", json={"prompt": "hi there", "max_tokens": 5000})
    assert_vllm_error(
        response,
        400,
        "BadRequestError",
        f"'max_tokens' or 'max_completion_tokens' is too large: 5000. This model's maximum context length is "
        f"{MAX_MODEL_LEN} tokens and your request has {prompt_tokens} input tokens "
        f"(5000 > {MAX_MODEL_LEN} - {prompt_tokens}).",
    )


def test_bad_requests_get_one_clear_error(client: httpx.Client) -> None:
    unknown = client.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi"})
    assert_vllm_error(unknown, 404, "NotFoundError", "The model `gpt-4` does not exist.")
    not_json = client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]
    no_messages = client.post("/v1/chat/completions", json={"max_tokens": 3})
    assert no_messages.status_code == 400 and "messages" in no_messages.json()["error"]["message"]
    options_without_stream = client.post(
        "/v1/completions", json={"prompt": "hi", "stream_options": {"include_usage": True}}
    )
    assert_vllm_error(
        options_without_stream,
        400,
        "BadRequestError",
        "Stream options can only be defined when `stream=True`.",
    )
    several = client.post("/v1/completions", json={"prompt": "hi", "n": 2})
    assert several.status_code == 400 and "n=2" in several.json()["error"]["message"]
    batch = client.post("/v1/completions", json={"prompt": ["a", "b"]})
    assert batch.status_code == 400 and "one prompt per request" in batch.json()["error"]["message"]
    zero = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 0})
    assert zero.status_code == 400 and "max_tokens" in zero.json()["error"]["message"]
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/completions").status_code == 405
    assert client.post("/tokenize", json={}).status_code == 400


# ---- metrics, log line, aborts ---------------------------------------------------------------------


def test_metrics_have_vllm_names_and_parse_as_a_twin(client: httpx.Client, twin: TwinServer) -> None:
    before = snapshot_from_metrics(metrics(client), 0.0)
    stream_events(client, "/v1/completions", {"prompt": "metrics please", "max_tokens": 7, "stream": True})
    text = metrics(client)
    snapshot = snapshot_from_metrics(text, 1.0)
    assert snapshot.source == "twin"
    assert snapshot.running == 0 and snapshot.waiting == 0
    assert snapshot.kv_cache_usage is not None and 0.0 <= snapshot.kv_cache_usage <= 1.0
    assert before.generation_tokens_total is not None and snapshot.generation_tokens_total is not None
    assert snapshot.generation_tokens_total - before.generation_tokens_total == 7
    assert snapshot.prompt_tokens_total is not None and before.prompt_tokens_total is not None
    assert snapshot.prompt_tokens_total > before.prompt_tokens_total
    for name in ("preemptions_total", "prefix_cache_hits_total", "prefix_cache_queries_total"):
        assert getattr(snapshot, name) is not None, name

    exposition = parse_exposition(text)
    assert not exposition.malformed
    assert exposition.total("servedeck:simulated") == 1.0
    for family, bounds in (
        ("vllm:time_to_first_token_seconds", TTFT_BUCKETS),
        ("vllm:inter_token_latency_seconds", ITL_BUCKETS),
        ("vllm:e2e_request_latency_seconds", REQUEST_LATENCY_BUCKETS),
    ):
        (series,) = exposition.histograms(family)
        assert series.labels == {"engine": "0", "model_name": twin.model_id}
        assert [bound for bound, _ in series.buckets][:-1] == list(bounds)
        assert series.buckets[-1][0] == float("inf") and series.buckets[-1][1] == series.count
        assert series.count is not None and series.count > 0
    (cache_info,) = exposition.by_name("vllm:cache_config_info")
    assert cache_info.labels["block_size"] == "16"
    assert int(cache_info.labels["num_gpu_blocks"]) == twin.memory.num_gpu_blocks
    assert cache_info.labels["enable_prefix_caching"] == "True"
    length = [
        s for s in exposition.by_name("vllm:request_success_total") if s.labels["finished_reason"] == "length"
    ]
    assert length and length[0].value >= 1


def test_stats_log_line_is_vllms(client: httpx.Client, log_lines: LogLines) -> None:
    stream_events(client, "/v1/completions", {"prompt": "log me", "max_tokens": 200, "stream": True})
    deadline = time.monotonic() + 30
    matching: list[re.Match[str]] = []
    while time.monotonic() < deadline:
        matching = [m for line in log_lines.snapshot() if (m := STATS_LINE.match(line))]
        if any(float(m["gen"]) > 0 for m in matching):
            break
        time.sleep(LOG_INTERVAL_S / 2)
    assert any(float(m["gen"]) > 0 for m in matching), log_lines.snapshot()
    assert all(STATS_LINE.match(line) for line in log_lines.snapshot())


def test_stats_logger_stays_quiet_when_idle_like_vllm() -> None:
    def counters(prompt: int, generated: int) -> StatsCounters:
        return StatsCounters(
            prompt_tokens=prompt,
            generation_tokens=generated,
            preemptions=0,
            prefix_queries=prompt,
            prefix_hits=prompt // 2,
            running=0,
            waiting=0,
            kv_cache_usage=0.25,
        )

    logger = StatsLogger()
    logger.start(counters(0, 0), 0.0)
    assert logger.line(counters(0, 0), 10.0) is None  # idle
    busy = logger.line(counters(100, 400), 20.0)
    assert busy is not None and "Avg prompt throughput: 10.0 tokens/s" in busy
    assert "Avg generation throughput: 40.0 tokens/s" in busy and "Prefix cache hit rate: 50.0%" in busy
    after = logger.line(counters(100, 400), 30.0)  # the interval after traffic is still logged
    assert after is not None and "Avg generation throughput: 0.0 tokens/s" in after
    assert logger.line(counters(100, 400), 40.0) is None
    message = format_stats_message(0, 1.0, 2.0, 3, 4, 5, 0.5, 0.1)
    assert "Preemptions: 5, GPU KV cache usage: 50.0%" in message


def test_histogram_uses_prometheus_le_semantics() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert histogram.count == 4 and histogram.total == pytest.approx(2.65)


def test_client_disconnect_aborts_the_request(client: httpx.Client, twin: TwinServer) -> None:
    def aborted() -> float:
        exposition = parse_exposition(metrics(client))
        return sum(
            s.value
            for s in exposition.by_name("vllm:request_success_total")
            if s.labels["finished_reason"] == "abort"
        )

    before = aborted()
    body = json.dumps({"prompt": "a long answer", "max_tokens": 900, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", twin.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(65536)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        snapshot = snapshot_from_metrics(metrics(client), 0.0)
        if snapshot.running == 0 and snapshot.waiting == 0 and aborted() == before + 1:
            break
        time.sleep(0.05)
    assert aborted() == before + 1
    assert snapshot_from_metrics(metrics(client), 0.0).running == 0


# ---- bad configuration -------------------------------------------------------------------------------


def test_bad_twin_configurations_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="unknown GPU type 'b200'"):
        TwinConfig.build("gemma-3-1b-it", "b200", 1)
    with pytest.raises(ConfigError, match="unknown model 'llama-9'"):
        TwinConfig.build("llama-9", "h100", 1)
    with pytest.raises(ConfigError, match="does not divide"):
        TwinConfig.build("gemma-3-27b-it", "h100", 3)
    with pytest.raises(ConfigError, match=r"does not fit .* GiB of weights"):
        TwinServer(TwinConfig.build("gemma-3-27b-it", "l4", 1))
    with pytest.raises(TwinServerError, match="interval must be > 0"):
        TwinServer(TwinConfig.build("gemma-3-1b-it", "h100", 1), log_interval_s=0)


def test_a_twin_process_that_cannot_start_says_why() -> None:
    with pytest.raises(TwinServerError, match=r"could not start: gemma-3-27b-it does not fit 1xNVIDIA L4"):
        start_twin_process(TwinConfig.build("gemma-3-27b-it", "l4", 1), timeout_s=60)


def test_port_in_use_is_one_clear_error(twin: TwinServer) -> None:
    other = TwinServer(TwinConfig.build("gemma-3-1b-it", "h100", 1), port=twin.port)
    with pytest.raises(TwinServerError, match=rf"cannot listen on 127.0.0.1:{twin.port}.*--port"):
        other.start_in_thread()


# ---- the CLI -----------------------------------------------------------------------------------------

_CLI = (
    "import argparse, sys\n"
    "from tui.cli import twin\n"
    "parser = argparse.ArgumentParser(prog='servedeck')\n"
    "twin.add_parser(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "from backends.errors import ServeDeckError\n"
    "try:\n"
    "    sys.exit(args.handler(args))\n"
    "except ServeDeckError as err:\n"
    "    print(f'servedeck: error: {err}', file=sys.stderr)\n"
    "    sys.exit(1)\n"
)


def test_cli_serves_until_interrupted() -> None:
    command = [sys.executable, "-c", _CLI, "twin", "serve", "--gpu", "h100", "--count", "2"]
    command += ["--model", "gemma-3-27b-it", "--port", "0", "--max-model-len", "8192"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if match := re.search(r"twin ready at (http://\S+)/v1", line):
                url = match.group(1)
                break
        assert url is not None, lines
        assert any("GPU KV cache size:" in line for line in lines)
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == "gemma-3-27b-it-twin"
        assert models["data"][0]["max_model_len"] == 8192
        process.send_signal(2)  # ctrl-c
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_rejects_a_model_that_does_not_fit() -> None:
    command = [sys.executable, "-c", _CLI, "twin", "serve", "--gpu", "l4", "--model", "gemma-3-27b-it"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("servedeck: error: gemma-3-27b-it does not fit 1xNVIDIA L4 24GB")
    assert len(done.stderr.strip().splitlines()) == 1
