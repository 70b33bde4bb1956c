"""ServeDeck's local engine: Gemma 3 270M served by llama.cpp's ``llama-server`` on 127.0.0.1.

``LocalEngine(config).start()`` assembles the model once into the cache, spawns llama-server with
real continuous batching (``--parallel`` slots), ``/metrics`` and ``/slots``, and returns when
``GET /health`` answers 200. The process never outlives ServeDeck (see ``child_process``).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel, ConfigDict, Field

from backends.config import CACHE_DIR_ENV, cache_dir
from backends.engines.child_process import GuardedChild
from backends.engines.gemma_model import MODEL_ID, ensure_gemma_model
from backends.engines.llama_binary import LlamaServerBinary, find_llama_server, llama_server_at
from backends.errors import ConfigError, EngineError
from backends.target_types import Target, TargetCapabilities, TargetKind

HOST = "127.0.0.1"
LOG_TAIL_LINES = 10
LOGS_KEPT = 20

# Flags LocalEngine sets itself; passing them again in extra_args would silently fight ours.
_RESERVED_FLAGS = frozenset(
    {
        "-m", "--model", "--host", "--port", "-np", "--parallel", "-c", "--ctx-size", "-a", "--alias",
        "--jinja", "--no-jinja", "--chat-template", "-t", "--threads", "--metrics", "--slots", "--no-slots",
    }
)  # fmt: skip


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class LocalEngineConfig(BaseModel):
    """How to run llama-server. ``port=0`` picks a free port; ``threads=None`` uses every usable core."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    port: int = Field(0, ge=0, le=65535)
    parallel: int = Field(8, ge=1, le=256)
    ctx_per_slot: int = Field(2048, ge=64, le=32768)
    threads: int | None = Field(None, ge=1)
    extra_args: tuple[str, ...] = ()
    binary_path: Path | None = None
    model_path: Path | None = None
    cache_dir: Path | None = None

    @property
    def context_size(self) -> int:
        return self.parallel * self.ctx_per_slot

    @property
    def thread_count(self) -> int:
        return self.threads if self.threads is not None else _usable_cores()


def _check_extra_args(extra_args: tuple[str, ...]) -> None:
    for arg in extra_args:
        flag = arg.split("=", 1)[0]
        if flag in _RESERVED_FLAGS:
            raise ConfigError(
                f"extra llama-server argument {arg!r} is set by ServeDeck itself; "
                "use the matching LocalEngineConfig field (port, parallel, ctx_per_slot, threads) instead"
            )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option llama-server binds with, so a port in TIME_WAIT is not reported as busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EngineError(
                    f"port {port} on {HOST} is already in use; "
                    "choose another with --port, or --port 0 for a free one"
                ) from None
            raise EngineError(f"cannot use port {port} on {HOST}: {exc.strerror or exc}") from None


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 16384))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _prune_logs(logs_dir: Path) -> None:
    """Keep the newest LOGS_KEPT engine logs; other ServeDeck processes may be pruning at the same time."""
    dated: list[tuple[float, Path]] = []
    for log in logs_dir.glob("llama-server-*.log"):
        with contextlib.suppress(OSError):
            dated.append((log.stat().st_mtime, log))
    dated.sort()
    for _, old in dated[:-LOGS_KEPT]:
        with contextlib.suppress(OSError):
            old.unlink()


def _health_status(port: int) -> int | None:
    """HTTP status of GET /health, or None while nothing answers."""
    connection = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


class LocalEngine:
    """llama-server serving Gemma 3 270M; a context manager that stops the server on exit."""

    def __init__(self, config: LocalEngineConfig | None = None) -> None:
        self.config = config or LocalEngineConfig()
        _check_extra_args(self.config.extra_args)
        self._child: GuardedChild | None = None
        self._port: int | None = None
        self._log_path: Path | None = None

    # -- what callers read -------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return MODEL_ID

    @property
    def port(self) -> int:
        if self._port is None:
            raise EngineError("the local engine has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:8080`` (``/health``, ``/metrics``, ``/slots`` live here)."""
        return f"http://{HOST}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise EngineError("the local engine has not been started")
        return self._log_path

    @property
    def pid(self) -> int:
        if self._child is None:
            raise EngineError("the local engine has not been started")
        return self._child.pid

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.returncode is None

    def target(self, name: str = "local") -> Target:
        return Target(
            name=name,
            base_url=self.base_url,
            model=self.model_id,
            kind=TargetKind.LLAMACPP,
            capabilities=TargetCapabilities(tokenize=True, metrics=True, slots=True, stream_usage=True),
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def _binary(self) -> LlamaServerBinary:
        if self.config.binary_path is not None:
            return llama_server_at(self.config.binary_path)
        return find_llama_server()

    def _cache_root(self) -> Path:
        root = cache_dir(self.config.cache_dir)
        try:
            (root / "logs").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineError(
                f"cannot create the cache folder {root}: {exc.strerror or exc}; "
                f"point {CACHE_DIR_ENV} to a writable folder"
            ) from None
        return root

    def _argv(self, binary: LlamaServerBinary, model: Path, port: int) -> list[str]:
        config = self.config
        return [
            str(binary.path),
            "--model", str(model),
            "--alias", MODEL_ID,
            "--host", HOST,
            "--port", str(port),
            "--parallel", str(config.parallel),
            "--ctx-size", str(config.context_size),
            "--threads", str(config.thread_count),
            "--cont-batching",
            "--metrics",
            "--slots",
            # A base model: Jinja (on by default) would take "gemma" as a literal one-word template.
            "--no-jinja",
            "--chat-template", "gemma",
            *config.extra_args,
        ]  # fmt: skip

    def start(self, deadline_s: float = 120.0) -> LocalEngine:
        """Spawn llama-server and wait until /health answers 200.

        On any failure raises EngineError (with the log's last lines) and leaves nothing running.
        """
        if self._child is not None and self.running:
            raise EngineError(f"the local engine is already running at {self.base_url}")
        binary = self._binary()
        root = self._cache_root()
        model = self.config.model_path or ensure_gemma_model(root)
        if not model.is_file():
            raise EngineError(
                f"model file {model} does not exist; leave model_path unset to use Gemma 3 270M"
            )
        port = self.config.port or _free_port()
        _check_port_free(port)
        logs_dir = root / "logs"
        _prune_logs(logs_dir)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        self._log_path = logs_dir / f"llama-server-{stamp}-port{port}.log"
        self._port = port
        child = GuardedChild(self._argv(binary, model, port), binary.environment(os.environ), self._log_path)
        try:
            child.spawn()
        except OSError as exc:
            raise EngineError(f"cannot run {binary.path}: {exc.strerror or exc}") from None
        self._child = child
        try:
            self._wait_healthy(child, port, deadline_s)
        except BaseException:
            child.terminate()
            raise
        return self

    def _wait_healthy(self, child: GuardedChild, port: int, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while True:
            if _health_status(port) == 200:
                return
            code = child.returncode
            if code is not None:
                raise EngineError(
                    f"llama-server exited with status {code} while starting; last lines of {self.log_path}:\n"
                    f"{_log_tail(self.log_path)}"
                )
            if time.monotonic() >= deadline:
                raise EngineError(
                    f"llama-server did not become healthy within {deadline_s:g} s (stopped it); "
                    f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            child.wait(0.1)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Block until llama-server exits (its status) or ``timeout_s`` passes (None)."""
        if self._child is None:
            raise EngineError("the local engine has not been started")
        return self._child.wait(timeout_s)

    def unexpected_exit_error(self) -> EngineError:
        """The error to show when llama-server died while it should be serving."""
        code = self._child.returncode if self._child is not None else None
        return EngineError(
            f"llama-server exited unexpectedly (status {code}); last lines of {self.log_path}:\n"
            f"{_log_tail(self.log_path)}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM llama-server, wait up to ``timeout_s``, then SIGKILL it. Safe to call twice."""
        if self._child is not None:
            self._child.terminate(timeout_s)

    def __enter__(self) -> LocalEngine:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
