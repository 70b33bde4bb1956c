"""An aiohttp application served on 127.0.0.1 from its own thread and event loop, for the test fakes.

Subclasses build their application in ``_build_app``; the socket is bound before the thread starts, so
``port`` is known as soon as ``start()`` returns.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Self

from aiohttp import web

from backends.http_listener import LoopStartTimeout, serve_on_thread

START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


class ThreadedAiohttpServer:
    thread_name = "fake-server"
    runner_options: dict[str, Any] = {"shutdown_timeout": 0.5}  # noqa: RUF012 - read-only class default

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _build_app(self) -> web.Application:
        raise NotImplementedError

    def start(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._thread = serve_on_thread(
                loop,
                lambda: loop.run_until_complete(self._start_site()),
                name=f"{self.thread_name}-{self.port}",
                timeout_s=START_TIMEOUT_S,
            )
        except LoopStartTimeout:
            raise RuntimeError(f"{self.thread_name} did not start in time") from None
        except BaseException as error:
            raise RuntimeError(f"{self.thread_name} failed to start: {error!r}") from error

    async def _start_site(self) -> None:
        self._runner = web.AppRunner(self._build_app(), **self.runner_options)
        await self._runner.setup()
        assert self._sock is not None
        await web.SockSite(self._runner, self._sock).start()

    def _before_stop(self) -> None:
        """Called first by ``stop()``: release anything the handlers are waiting on."""

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._before_stop()
        if self._runner is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            future.result(STOP_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_S)
        if self._sock is not None:
            self._sock.close()
        self._loop = self._thread = self._runner = None
