"""A twin server in its own process, so a UI or a load generator never shares its core or its GIL.

``start_twin_process(config)`` spawns a fresh interpreter (never forked from a process with threads),
optionally pins it to one CPU, waits until it listens, and returns a handle with the base URL.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from backends.errors import ServeDeckError
from backends.twin.engine_config import TwinConfig
from backends.twin.http_server import TwinServerError
from backends.twin.logline import DEFAULT_INTERVAL_S

STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 5.0


def _twin_main(
    config: TwinConfig, host: str, port: int, cpu: int | None, log_interval_s: float, ready: Connection
) -> None:
    from backends.twin.server import TwinServer

    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        server = TwinServer(config, host, port, log_interval_s=log_interval_s)
    except (ServeDeckError, OSError) as exc:
        ready.send(("error", str(exc)))
        return

    def on_ready(running: TwinServer) -> None:
        ready.send(("ready", running.port))
        ready.close()

    try:
        server.serve_forever(on_ready=on_ready)
    except ServeDeckError as exc:
        with contextlib.suppress(OSError):
            ready.send(("error", str(exc)))


class TwinProcess:
    """A running twin in a child process."""

    def __init__(self, process: BaseProcess, host: str, port: int, model_id: str) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.model_id = model_id

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: the server closes its sockets and exits
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout_s)

    def __enter__(self) -> TwinProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_twin_process(
    config: TwinConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    cpu: int | None = None,
    log_interval_s: float = DEFAULT_INTERVAL_S,
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> TwinProcess:
    """Spawn a twin serving ``config``; returns once it accepts connections (TwinServerError otherwise)."""
    from backends.twin.server import twin_model_id

    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_twin_main,
        args=(config, host, port, cpu, log_interval_s, child_end),
        name="servedeck-twin",
        daemon=True,
    )
    process.start()
    child_end.close()
    handle = TwinProcess(process, host, port, twin_model_id(config))
    try:
        if not parent_end.poll(timeout_s):
            raise TwinServerError(f"the twin process did not start within {timeout_s:.0f} s")
        try:
            kind, value = parent_end.recv()
        except EOFError:
            raise TwinServerError(
                f"the twin process exited during start-up (exit code {process.exitcode})"
            ) from None
    except BaseException:
        handle.stop()
        raise
    finally:
        parent_end.close()
    if kind != "ready":
        handle.stop()
        raise TwinServerError(f"the twin could not start: {value}")
    handle.port = int(value)
    return handle
