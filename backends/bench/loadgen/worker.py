"""A load-generator worker process: runs its share of one level on uvloop.

Protocol with the parent over a ``multiprocessing`` connection (pickled tuples):
  worker -> parent: ("ready", connections) · ("progress", WorkerProgress) · ("done", ClientStats) ·
                    ("fatal", message)
  parent -> worker: ("start", start_at_perf_counter) · ("cancel",)
``WorkerProgress`` carries the requests that finished since the last message (raw, see
``finished.py``), so the parent holds every finished request even if this process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import queue
import resource
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from backends.bench.loadgen.finished import FinishedRequest, build_record
from backends.bench.loadgen.requests import Endpoint, RequestOptions, render_request, render_turn_body
from backends.bench.loadgen.selfmon import LoopLagSampler, client_stats
from backends.bench.loadgen.stream_protocol import (
    ProbingStreamConnection,
    StreamConnection,
    StreamState,
    answer_text,
)
from backends.bench.models import ClientStats, RequestRecord

_perf_counter = time.perf_counter
_PROGRESS_INTERVAL_S = 0.25
_WATCHDOG_INTERVAL_S = 0.25
_MAX_SEND_ATTEMPTS = 3
# Finished requests per progress message: pickling one costs the loop a few µs (its chunk times go as
# one block of bytes), so a message holds the loop ~0.1 ms and sockets are read in between messages.
_FINISHED_PER_MESSAGE = 16


class SessionPlan(BaseModel):
    """Multi-turn: this worker's sessions. Lists indexed by position hold one entry per turn."""

    sessions: list[list[int]] = Field(description="each session's positions, turn by turn")
    session_ids: list[int]
    session_arrivals: list[float] = Field(description="seconds after start; all 0 for closed loop")
    users: list[str]
    answers: list[str] = Field(description="the dataset's answer of each turn")
    user_lens: list[int]
    answer_lens: list[int]
    think_s: list[float] = Field(description="think time before each turn (0 before the first)")
    dataset_answers: bool = False
    options: RequestOptions


class WorkerJob(BaseModel):
    worker_index: int = 0
    endpoint: Endpoint
    requests: list[bytes]
    indices: list[int]
    prompt_lens: list[int]
    output_lens: list[int]
    arrivals: list[float] = Field(description="seconds after start; all 0 for closed loop")
    concurrency: int | None = Field(description="max requests in flight in this worker; None = no cap")
    preopen: int
    request_timeout_s: float = 600.0
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    cpu: int | None = None
    probe_timing: bool = False
    session_plan: SessionPlan | None = None


class WorkerProgress(NamedTuple):
    """Sent every 0.25 s; a NamedTuple, not a pydantic model: it is pickled on the hot event loop."""

    worker_index: int
    t: float
    sent: int
    in_flight: int
    tokens: int
    """Output tokens received since the previous progress message."""
    finished: list[FinishedRequest]


def job_records(job: WorkerJob, start_at: float, finished: list[FinishedRequest]) -> list[RequestRecord]:
    """The records of a worker's finished requests (``start_at``: the level's perf_counter time zero)."""
    plan = job.session_plan
    if plan is not None:
        where = {
            p: (plan.session_ids[s], t) for s, turns in enumerate(plan.sessions) for t, p in enumerate(turns)
        }
        return [
            build_record(
                f,
                start_at,
                job.indices[f.position],
                job.prompt_lens[f.position],
                job.output_lens[f.position],
                *where[f.position],
            )
            for f in finished
        ]
    return [
        build_record(
            f, start_at, job.indices[f.position], job.prompt_lens[f.position], job.output_lens[f.position]
        )
        for f in finished
    ]


class _ParentLink:
    """Messages to the parent: pickled on the event loop, written to the pipe by a thread.

    A write blocks while the pipe is full, i.e. while the parent is slow to read (measured: 25-50 ms
    when the parent shares a busy core). On the loop that stall would stamp every chunk arriving
    meanwhile late; the thread waits with the GIL released instead. One writer keeps messages whole and
    in order.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="loadgen-parent-writer", daemon=True)
        self._thread.start()

    def send(self, message: tuple[Any, ...]) -> None:
        self._queue.put(bytes(ForkingPickler.dumps(message)))

    def _write(self) -> None:
        while (payload := self._queue.get()) is not None:
            try:
                self._conn.send_bytes(payload)
            except OSError:  # the parent is gone: nobody is left to tell
                return

    def close(self) -> None:
        """Wait until every queued message is written (or the parent is gone)."""
        self._queue.put(None)
        self._thread.join()


class _Pool:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        endpoint: Endpoint,
        connect_timeout_s: float,
        probe_timing: bool = False,
    ) -> None:
        self._loop = loop
        self._endpoint = endpoint
        self._timeout = connect_timeout_s
        self._idle: list[StreamConnection] = []
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if endpoint.tls else None
        self._protocol = ProbingStreamConnection if probe_timing else StreamConnection
        self.opened = 0

    async def open(self) -> StreamConnection:
        endpoint = self._endpoint
        try:
            _, protocol = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: self._protocol(self._loop),
                    endpoint.host,
                    endpoint.port,
                    ssl=self._ssl,
                    server_hostname=endpoint.host if self._ssl else None,
                ),
                self._timeout,
            )
        except TimeoutError:
            raise ConnectionError(
                f"cannot connect to {endpoint.host}:{endpoint.port}: timed out after {self._timeout:g}s"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConnectionError(f"cannot connect to {endpoint.host}:{endpoint.port}: {reason}") from None
        sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opened += 1
        return protocol

    async def preopen(self, count: int) -> None:
        conns = await asyncio.gather(*(self.open() for _ in range(count)))
        self._idle.extend(conns)

    async def acquire(self) -> StreamConnection:
        while self._idle:
            conn = self._idle.pop()
            if conn.idle:
                return conn
        return await self.open()

    def release(self, conn: StreamConnection) -> None:
        if conn.idle:
            self._idle.append(conn)

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()


class LevelWorker:
    def __init__(
        self, job: WorkerJob, loop: asyncio.AbstractEventLoop, emit: Callable[[tuple[Any, ...]], None]
    ) -> None:
        self.job = job
        self.loop = loop
        self.emit = emit
        self.pool = _Pool(loop, job.endpoint, job.connect_timeout_s, job.probe_timing)
        self.start_at = 0.0
        self.sent = 0
        self.tokens = 0
        self.in_flight: dict[StreamConnection, StreamState] = {}
        self.finished: list[FinishedRequest] = []
        self.cancelled = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def _count_tokens(self, n: int) -> None:
        self.tokens += n

    async def _run_one(
        self,
        position: int,
        request: bytes | None = None,
        queued_at: float | None = None,
        prompt_len: int | None = None,
        keep_content: bool = False,
    ) -> StreamState:
        job = self.job
        arrival = job.arrivals[position] if queued_at is None else queued_at
        payload = job.requests[position] if request is None else request
        state = StreamState()
        conn: StreamConnection | None = None
        for attempt in range(_MAX_SEND_ATTEMPTS):
            state = StreamState()
            if keep_content:
                state.content = []
            try:
                conn = await self.pool.acquire()
            except ConnectionError as exc:
                state.error = str(exc)
                conn = None
                break
            conn.on_tokens = self._count_tokens
            self.in_flight[conn] = state
            if attempt == 0:
                self.sent += 1
            try:
                await conn.send(payload, state)
            finally:
                self.in_flight.pop(conn, None)
            retry = state.error is not None and state.error.startswith("retry: ")
            if not retry:
                break
            if attempt + 1 == _MAX_SEND_ATTEMPTS:
                state.error = state.error[len("retry: ") :] if state.error else None
        if conn is not None:
            self.pool.release(conn)
        if self.cancelled and state.error is not None and state.error.startswith("cancelled"):
            return state
        self.finished.append(FinishedRequest.from_state(position, arrival, state, prompt_len))
        return state

    async def _watchdog(self) -> None:
        job = self.job
        while True:
            await asyncio.sleep(_WATCHDOG_INTERVAL_S)
            now = _perf_counter()
            for conn, state in list(self.in_flight.items()):
                if state.sent_at is not None and now - state.sent_at > job.request_timeout_s:
                    conn.abort(f"request timed out after {job.request_timeout_s:g}s")
                elif now - state.last_activity > job.idle_timeout_s:
                    conn.abort(
                        f"server stalled: no data for {job.idle_timeout_s:g}s "
                        f"after {len(state.chunk_times)} chunks"
                    )

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(_PROGRESS_INTERVAL_S)
            # Many requests can finish in one round; pickling them all in one message would hold the loop
            # and stamp the chunks arriving meanwhile late. Send small messages, reading sockets in between.
            self.flush_progress(_FINISHED_PER_MESSAGE)
            while self.finished:
                await asyncio.sleep(0)
                self.flush_progress(_FINISHED_PER_MESSAGE)

    def flush_progress(self, max_finished: int | None = None) -> None:
        """Send progress with up to ``max_finished`` finished requests (all when None)."""
        if max_finished is None or len(self.finished) <= max_finished:
            batch, self.finished = self.finished, []
        else:
            batch, self.finished = self.finished[:max_finished], self.finished[max_finished:]
        tokens, self.tokens = self.tokens, 0
        self.emit(
            (
                "progress",
                WorkerProgress(
                    worker_index=self.job.worker_index,
                    t=_perf_counter() - self.start_at,
                    sent=self.sent,
                    in_flight=len(self.in_flight),
                    tokens=tokens,
                    finished=batch,
                ),
            )
        )

    def _spawn(self, position: int) -> asyncio.Task[StreamState]:
        task = self.loop.create_task(self._run_one(position))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _open_loop(self) -> None:
        job = self.job
        cap = job.concurrency
        semaphore = asyncio.Semaphore(cap) if cap else None

        async def gated(position: int) -> None:
            assert semaphore is not None
            async with semaphore:
                if not self.cancelled:
                    await self._run_one(position)

        for position, arrival in enumerate(job.arrivals):
            delay = self.start_at + arrival - _perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.cancelled:
                return
            if semaphore is None:
                self._spawn(position)
            else:
                task = self.loop.create_task(gated(position))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _closed_loop(self) -> None:
        job = self.job
        positions = iter(range(len(job.requests)))

        async def lane() -> None:
            for position in positions:
                if self.cancelled:
                    return
                await self._run_one(position)

        lanes = job.concurrency or len(job.requests)
        await asyncio.gather(*(lane() for _ in range(min(lanes, len(job.requests)))))

    async def _session(self, plan: SessionPlan, index: int) -> None:
        """One user's conversation: each turn waits for the previous answer, then the think time."""
        job = self.job
        options = plan.options
        history: list[tuple[str, str]] = []
        context = 0
        for turn, position in enumerate(plan.sessions[index]):
            think = plan.think_s[position]
            if turn and think > 0:
                await asyncio.sleep(think)
            if self.cancelled:
                return
            user = plan.users[position]
            body = render_turn_body(history, user, job.output_lens[position], options)
            request = render_request(job.endpoint, body, options)
            context += plan.user_lens[position]
            state = await self._run_one(
                position,
                request,
                queued_at=_perf_counter() - self.start_at,
                prompt_len=context,
                keep_content=not plan.dataset_answers,
            )
            if state.error is not None or state.http_status != 200:
                return  # the next turn would resend an answer that never came: the session ends here
            if plan.dataset_answers:
                answer, answer_len = plan.answers[position], plan.answer_lens[position]
            else:
                answer = answer_text(state.content or [])
                answer_len = int(sum(state.chunk_tokens))
            history.append((user, answer))
            context += answer_len

    async def _session_loop(self, plan: SessionPlan) -> None:
        job = self.job
        count = len(plan.sessions)
        if all(a == 0.0 for a in plan.session_arrivals) and job.concurrency is not None:
            sessions = iter(range(count))

            async def user() -> None:
                for index in sessions:
                    if self.cancelled:
                        return
                    await self._session(plan, index)

            await asyncio.gather(*(user() for _ in range(min(job.concurrency, count))))
            return
        semaphore = asyncio.Semaphore(job.concurrency) if job.concurrency else None

        async def start(index: int) -> None:
            if semaphore is None:
                await self._session(plan, index)
                return
            async with semaphore:
                if not self.cancelled:
                    await self._session(plan, index)

        tasks = []
        for index, arrival in enumerate(plan.session_arrivals):
            delay = self.start_at + arrival - _perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.cancelled:
                break
            tasks.append(self.loop.create_task(start(index)))
        await asyncio.gather(*tasks, return_exceptions=True)

    def cancel(self) -> None:
        self.cancelled = True
        for conn in list(self.in_flight):
            conn.abort("cancelled")

    async def run(self, start_at: float, closed_loop: bool) -> ClientStats:
        self.start_at = start_at
        delay = start_at - _perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sampler = LoopLagSampler(self.loop)
        sampler.start()
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        wall_before = _perf_counter()
        helpers = [self.loop.create_task(self._watchdog()), self.loop.create_task(self._progress())]
        try:
            if self.job.session_plan is not None:
                await self._session_loop(self.job.session_plan)
            elif closed_loop:
                await self._closed_loop()
            else:
                await self._open_loop()
        finally:
            for helper in helpers:
                helper.cancel()
            sampler.stop()
        usage_after = resource.getrusage(resource.RUSAGE_SELF)
        wall = _perf_counter() - wall_before
        cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
        self.pool.close()
        self.flush_progress()
        return client_stats(sampler.lags, cpu, wall)


def _pin(cpu: int | None) -> None:
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})


def worker_main(job: WorkerJob, conn: Connection) -> None:
    """Entry point of a worker process (multiprocessing spawn target)."""
    # The parent owns ctrl-c: it sends "cancel" so this process can report what finished.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _pin(job.cpu)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    link = _ParentLink(conn)
    try:
        loop.run_until_complete(_serve(job, conn, link, loop))
    except Exception as exc:  # report, never die silently: the parent keeps what was sent before
        link.send(("fatal", f"load generator worker failed: {exc.__class__.__name__}: {exc}"))
        raise
    finally:
        link.close()
        loop.close()
        conn.close()


async def _serve(
    job: WorkerJob, conn: Connection, link: _ParentLink, loop: asyncio.AbstractEventLoop
) -> None:
    worker = LevelWorker(job, loop, link.send)
    closed_loop = all(a == 0.0 for a in job.arrivals) and job.concurrency is not None
    try:
        await worker.pool.preopen(job.preopen)
    except ConnectionError as exc:
        link.send(("fatal", str(exc)))
        return
    gc.collect()
    gc.freeze()
    link.send(("ready", worker.pool.opened))

    start_event: asyncio.Future[float] = loop.create_future()

    def on_message(message: tuple[Any, ...]) -> None:
        if message[0] == "start" and not start_event.done():
            start_event.set_result(float(message[1]))
        elif message[0] == "cancel":
            if not start_event.done():
                start_event.set_result(-1.0)
            worker.cancel()

    # A blocking reader thread, not loop.add_reader: an event-loop reader would switch the pipe to
    # non-blocking mode, and a large progress message would then fail mid-send with BlockingIOError.
    def read_parent() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("cancel",)
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(on_message, message)
            if message[0] == "cancel":
                return

    threading.Thread(target=read_parent, name="loadgen-parent-reader", daemon=True).start()
    start_at = await start_event
    if start_at < 0:
        return
    stats = await worker.run(start_at, closed_loop)
    stats.workers = 1
    link.send(("done", stats))
