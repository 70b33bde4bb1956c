"""A load-generator worker process: runs its share of one level on uvloop.

Protocol with the parent over a ``multiprocessing`` connection (pickled tuples):
  worker -> parent: ("ready", connections) · ("progress", WorkerProgress) · ("done", ClientStats) ·
                    ("fatal", message)
  parent -> worker: ("start", start_at_perf_counter) · ("cancel",)
``WorkerProgress`` carries the records that finished since the last message, so the parent holds
every finished request even if this process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import socket
import ssl
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from pydantic import BaseModel, Field

from backends.bench.loadgen.requests import Endpoint
from backends.bench.loadgen.selfmon import LoopLagSampler, client_stats
from backends.bench.loadgen.stream_protocol import (
    ProbingStreamConnection,
    StreamConnection,
    StreamState,
    parse_tail_events,
)
from backends.bench.models import ClientStats, RequestRecord

_perf_counter = time.perf_counter
_PROGRESS_INTERVAL_S = 0.25
_WATCHDOG_INTERVAL_S = 0.25
_MAX_SEND_ATTEMPTS = 3
_RECORDS_PER_MESSAGE = 8


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


class WorkerProgress(BaseModel):
    worker_index: int
    t: float
    sent: int
    completed: int
    failed: int
    in_flight: int
    tokens: int = Field(description="output tokens received since the previous progress message")
    records: list[RequestRecord]


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
    def __init__(self, job: WorkerJob, loop: asyncio.AbstractEventLoop, emit: Any) -> None:
        self.job = job
        self.loop = loop
        self.emit = emit
        self.pool = _Pool(loop, job.endpoint, job.connect_timeout_s, job.probe_timing)
        self.start_at = 0.0
        self.sent = 0
        self.completed = 0
        self.failed = 0
        self.tokens = 0
        self.in_flight: dict[StreamConnection, StreamState] = {}
        self.finished: list[RequestRecord] = []
        # Finished requests waiting to become records: turning them into records (parsing their usage and
        # timings) is put off to the progress loop, so a burst of completions costs the socket reads nothing.
        self.done_states: list[tuple[int, float, StreamState]] = []
        self.cancelled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def _count_tokens(self, n: int) -> None:
        self.tokens += n

    async def _run_one(self, position: int) -> None:
        job = self.job
        arrival = job.arrivals[position]
        state = StreamState()
        conn: StreamConnection | None = None
        for attempt in range(_MAX_SEND_ATTEMPTS):
            state = StreamState()
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
                await conn.send(job.requests[position], state)
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
            return
        self.done_states.append((position, arrival, state))

    def _record(self, position: int, arrival: float, state: StreamState) -> None:
        base = self.start_at
        tail = parse_tail_events(state.tail_events) if state.tail_events else {}
        error = state.error or tail.get("error")
        usage = tail.get("usage") or tail.get("chunk_usage") or {}
        success = error is None and state.http_status == 200 and bool(state.chunk_times)
        if error is None and not success:
            error = "no tokens received" if state.http_status == 200 else f"HTTP {state.http_status}"
        # model_construct: every field is built here with the right type; validation would cost ~20 µs a
        # record at the moment many requests finish together.
        record = RequestRecord.model_construct(
            index=self.job.indices[position],
            prompt_len=self.job.prompt_lens[position],
            expected_output_len=self.job.output_lens[position],
            queued_at=arrival,
            sent_at=None if state.sent_at is None else state.sent_at - base,
            first_token_at=None if state.first_token_at is None else state.first_token_at - base,
            chunk_times=[t - base for t in state.chunk_times],
            chunk_tokens=state.chunk_tokens if state.continuous_usage_seen else [],
            input_tokens=_as_count(usage.get("prompt_tokens")),
            output_tokens=_as_count(usage.get("completion_tokens")),
            finish_reason=tail.get("finish_reason"),
            http_status=state.http_status,
            error=error,
            success=success,
            server_timings=tail.get("timings"),
            probe_emit_arrival_ns=state.probe,
        )
        if success:
            self.completed += 1
        else:
            self.failed += 1
        self.finished.append(record)

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
            # Many requests can finish in one round; pickling them all in one send would hold the loop
            # for milliseconds and stamp the chunks arriving meanwhile late. Send small batches and let
            # the loop read sockets in between.
            self.flush_progress(_RECORDS_PER_MESSAGE)
            while self.done_states or self.finished:
                await asyncio.sleep(0)
                self.flush_progress(_RECORDS_PER_MESSAGE)

    def flush_progress(self, max_records: int | None = None) -> None:
        states = self.done_states
        if max_records is None or len(states) <= max_records:
            self.done_states = []
        else:
            states, self.done_states = states[:max_records], states[max_records:]
        for position, arrival, state in states:
            self._record(position, arrival, state)
        if max_records is None or len(self.finished) <= max_records:
            records, self.finished = self.finished, []
        else:
            records, self.finished = self.finished[:max_records], self.finished[max_records:]
        tokens, self.tokens = self.tokens, 0
        self.emit(
            (
                "progress",
                WorkerProgress(
                    worker_index=self.job.worker_index,
                    t=_perf_counter() - self.start_at,
                    sent=self.sent,
                    completed=self.completed,
                    failed=self.failed,
                    in_flight=len(self.in_flight),
                    tokens=tokens,
                    records=records,
                ),
            )
        )

    def _spawn(self, position: int) -> asyncio.Task[None]:
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
            if closed_loop:
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


def _as_count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


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
    try:
        loop.run_until_complete(_serve(job, conn, loop))
    except Exception as exc:  # report, never die silently: the parent keeps what was sent before
        with contextlib.suppress(OSError, ValueError):
            conn.send(("fatal", f"load generator worker failed: {exc.__class__.__name__}: {exc}"))
        raise
    finally:
        loop.close()
        conn.close()


async def _serve(job: WorkerJob, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
    worker = LevelWorker(job, loop, conn.send)
    closed_loop = all(a == 0.0 for a in job.arrivals) and job.concurrency is not None
    try:
        await worker.pool.preopen(job.preopen)
    except ConnectionError as exc:
        conn.send(("fatal", str(exc)))
        return
    gc.collect()
    gc.freeze()
    conn.send(("ready", worker.pool.opened))

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
    conn.send(("done", stats))
