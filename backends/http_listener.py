"""The HTTP servers' common plumbing: a listening socket accepted by hand, and a loop on its own thread.

Shared by the twin's server (backends/twin/) and the test fakes (tests/fakes/), which import it from here
(backends/ never imports tests/). Each caller turns failures into its own one-line error.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

LISTEN_BACKLOG = 4096
ACCEPT_BATCH = 1024


@dataclass(frozen=True)
class ListenFailure:
    """Why a listener could not open: ``host`` (the address does not resolve) or ``bind`` (bind/listen)."""

    stage: Literal["host", "bind"]
    host: str
    port: int
    error: OSError


class Listener:
    """The listening socket, accepted by hand: every pending connection each time it is readable.

    libuv (under uvloop) accepts one connection per loop iteration; with an engine step running every
    few milliseconds, a ramp of 500 new connections would otherwise wait in the backlog for seconds.
    ``fail`` makes the caller's exception from a ``ListenFailure``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        make_protocol: Callable[[], asyncio.Protocol],
        fail: Callable[[ListenFailure], Exception],
    ) -> None:
        self.loop = loop
        self.make_protocol = make_protocol
        self.adopting: set[asyncio.Task[None]] = set()
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            self.sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise fail(ListenFailure("host", host, port, exc)) from None
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(address)
            self.sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            self.sock.close()
            raise fail(ListenFailure("bind", host, port, exc)) from None
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        loop.add_reader(self.sock.fileno(), self.accept_pending)

    def accept_pending(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError:  # out of file descriptors: leave the rest in the backlog for now
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self.loop.create_task(self._adopt(conn))
            self.adopting.add(task)
            task.add_done_callback(self.adopting.discard)

    async def _adopt(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.make_protocol, conn)
        except OSError:
            conn.close()

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for task in self.adopting:
            task.cancel()


class LoopStartTimeout(Exception):
    """``serve_on_thread``: the opener had not returned within the timeout."""


def serve_on_thread(
    loop: asyncio.AbstractEventLoop,
    open_server: Callable[[], None],
    *,
    name: str,
    timeout_s: float,
    on_exit: Callable[[], None] | None = None,
) -> threading.Thread:
    """On a daemon thread: make ``loop`` current, call ``open_server``, then run the loop until stopped
    (then ``on_exit`` and close it). Returns once ``open_server`` returned; raises what it raised (the
    loop closed, the thread joined), or LoopStartTimeout."""
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            open_server()
        except BaseException as exc:  # reported to the starting thread
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            if on_exit is not None:
                on_exit()
            loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not ready.wait(timeout_s):
        raise LoopStartTimeout(name)
    if failure:
        thread.join(timeout_s)
        raise failure[0]
    return thread
