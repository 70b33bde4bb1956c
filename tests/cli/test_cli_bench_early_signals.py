"""A signal that reaches `servedeck bench` before its sweep starts (probing the target, tokenising the
dataset) stops it as one in the sweep does: one line, the shell's exit code, nothing left `running`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sessions.database import DB_FILENAME

_HOLD_S = 90.0  # longer than any wait below: a request held this long only ends with the test
_TOKENIZE_S = 0.3  # each /tokenize after the probe: tokenising ShareGPT's prompts takes many of these
_PARALLEL_TOKENIZE = 8  # RemoteTokenizer's requests in flight


class _StallingServer(ThreadingHTTPServer):
    """Answers /v1/models and /tokenize. ``stall`` "models" holds /v1/models (discovery) until closed;
    "tokenize" answers every /tokenize after discovery's probe slowly, counting them."""

    daemon_threads = True

    def __init__(self, stall: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stall = stall
        self.tokenize_calls = 0
        self.stalled = threading.Event()  # the bench is waiting on the stalled part
        self.release = threading.Event()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _StallingServer

    def log_message(self, format: str, *args: object) -> None:
        return

    def _json(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _hold(self) -> None:
        self.server.stalled.set()
        self.server.release.wait(_HOLD_S)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            if self.server.stall == "models":
                self._hold()
                return
            self._json({"object": "list", "data": [{"id": "stalling-model", "object": "model"}]})
            return
        self.send_error(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/tokenize":
            with self.server.lock:
                self.server.tokenize_calls += 1
                first = self.server.tokenize_calls == 1
            if not first and self.server.stall == "tokenize":
                self.server.stalled.set()
                self.server.release.wait(_TOKENIZE_S)
            self._json({"tokens": [1, 2, 3, 4]})
            return
        self.send_error(404)


@pytest.fixture(params=["models", "tokenize"])
def stalling(request: pytest.FixtureRequest) -> Iterator[_StallingServer]:
    server = _StallingServer(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("sig", "exit_code", "said"),
    [
        (signal.SIGINT, 130, "servedeck: interrupted"),
        (signal.SIGTERM, 143, "servedeck: stopped by SIGTERM"),
        (signal.SIGHUP, 129, "servedeck: stopped by SIGHUP"),
    ],
)
def test_a_signal_before_the_sweep_starts_is_one_line_and_leaves_nothing_running(
    sig: signal.Signals, exit_code: int, said: str, stalling: _StallingServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    out = tmp_path / "never.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "bench", "--plain", "--target",
         f"http://127.0.0.1:{stalling.server_address[1]}", "--concurrency", "1",
         "--dataset", "sharegpt", "--num-prompts", "200", "--output-len", "8",
         "--label", "early", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "SERVEDECK_DATA_DIR": str(data_dir), "COLUMNS": "160"},
    )  # fmt: skip
    try:
        assert stalling.stalled.wait(60), "the bench never reached the stalled request"
        proc.send_signal(sig)
        with stalling.lock:
            tokenized_before = stalling.tokenize_calls
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == exit_code, err
    lines = [line for line in err.splitlines() if line.startswith("servedeck:")]
    assert len(lines) == 1 and lines[0].startswith(said), err
    assert "Traceback" not in err
    # Tokenising stops with the signal: only the requests already in flight are answered.
    assert stalling.tokenize_calls - tokenized_before <= _PARALLEL_TOKENIZE
    if (data_dir / DB_FILENAME).exists():
        with sqlite3.connect(f"file:{data_dir / DB_FILENAME}?mode=ro", uri=True) as db:
            statuses = [status for (status,) in db.execute("SELECT status FROM runs")]
        assert "running" not in statuses, statuses
