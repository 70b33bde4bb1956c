"""The sweep host: a child process that runs the Bench view's sweeps, so the UI process never holds
request records, never waits on the sweep's Python work (one interpreter lock) and never pauses for
a garbage collection of tens of thousands of records.

``host_main`` is the child's entry point (spawned by ``sweep_runner.SweepRunner``). For each planned
target it checks the endpoint (a dead one becomes one ``HostFailed`` line), samples the prompts, then
runs ``run_sweep`` (load generation in its own worker processes) and saves the run to History with
``HistoryRecorder``. Towards the UI it sends small typed events over the pipe: one ``HostSample`` per
progress snapshot (about 1 Hz), ``HostTick``s in between (at most ``TICK_HZ``: finished-request
counts and their TTFT points), level and run boundaries with metrics but without records. A
``("cancel",)`` from the parent, or the parent going away, cancels: finished levels and the finished
requests of the current level are kept and saved as a partial run.

This module imports no Textual (it runs in the child).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, TypeAdapter

from backends.bench.models import LoadLevel, ProgressSnapshot
from backends.bench.results import LevelResult, SweepConfig, SweepResult
from backends.bench.sweep import (
    LevelFinished,
    LevelStarted,
    RecordsBatch,
    SweepEvent,
    SweepStarted,
    prepare_dataset,
    run_sweep,
)
from backends.errors import ServeDeckError
from backends.targets import discover_target
from sessions.run_recorder import HistoryRecorder
from tui.services.bench_config import PlannedRun

# TTFT points one event may carry; more finished since the last one are thinned evenly.
MAX_TTFT_POINTS_PER_SAMPLE = 400
PREFLIGHT_TIMEOUT_S = 5.0
TICK_HZ = 4.0
T = TypeVar("T")
Points = list[tuple[float, float]]


class HostPreparing(BaseModel):
    kind: Literal["preparing"] = "preparing"
    run_index: int
    what: str


class HostStarted(BaseModel):
    kind: Literal["started"] = "started"
    run_index: int
    run_id: str
    config: SweepConfig
    notes: list[str]


class HostLevelBegan(BaseModel):
    kind: Literal["level-began"] = "level-began"
    run_index: int
    level_index: int
    level: LoadLevel
    total: int
    x: float


class HostSample(BaseModel):
    """One progress snapshot; ``x`` is seconds since this target's sweep began (all levels)."""

    kind: Literal["sample"] = "sample"
    run_index: int
    x: float
    snapshot: ProgressSnapshot
    ttft_points: Points


class HostTick(BaseModel):
    """Requests finished since the last event (between snapshots)."""

    kind: Literal["tick"] = "tick"
    run_index: int
    done: int
    failed: int
    total: int
    ttft_points: Points


class HostLevelDone(BaseModel):
    kind: Literal["level-done"] = "level-done"
    run_index: int
    result: LevelResult  # without its request records


class HostFinished(BaseModel):
    kind: Literal["finished"] = "finished"
    run_index: int
    result: SweepResult  # without request records
    saved_as: str | None
    save_error: str | None


class HostFailed(BaseModel):
    kind: Literal["failed"] = "failed"
    run_index: int
    message: str


class HostAllDone(BaseModel):
    kind: Literal["all-done"] = "all-done"
    cancelled: bool


HostEvent = (
    HostPreparing
    | HostStarted
    | HostLevelBegan
    | HostSample
    | HostTick
    | HostLevelDone
    | HostFinished
    | HostFailed
    | HostAllDone
)
PLANNED_RUNS = TypeAdapter(list[PlannedRun])


def thin(points: list[T], limit: int) -> list[T]:
    """At most ``limit`` points, evenly spaced through the list (keeps the time spread)."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit)]


def without_records(level: LevelResult) -> LevelResult:
    return level.model_copy(update={"records": []})


class _UiFeed:
    """Turns one target's sweep events into host events.

    Between the core's 1 Hz snapshots, finished requests are forwarded at most ``TICK_HZ`` times a
    second. TTFT points are placed at the moment they are reported, on this process's clock from the
    level's start (request times are on the load generator's clock, which starts only after its
    worker processes are up).
    """

    def __init__(self, run_index: int, post: Callable[[HostEvent], object]) -> None:
        self.run_index = run_index
        self.post = post
        self.level_offset = 0.0
        self.level_started = time.perf_counter()
        self.x = 0.0
        self.total = 0
        self.done = 0
        self.failed = 0
        self.last_post = 0.0
        self.pending_ttfts: Points = []

    def _now_x(self) -> float:
        return self.level_offset + (time.perf_counter() - self.level_started)

    def _take_points(self) -> Points:
        points = thin(self.pending_ttfts, MAX_TTFT_POINTS_PER_SAMPLE)
        self.pending_ttfts = []
        self.last_post = time.perf_counter()
        return points

    def handle(self, event: SweepEvent) -> None:
        if isinstance(event, RecordsBatch):
            x = self._now_x()
            for record in event.records:
                ttft = record.ttft
                if record.success and ttft is not None:
                    self.done += 1
                    self.pending_ttfts.append((x, ttft * 1000.0))
                else:
                    self.failed += 1
            if len(self.pending_ttfts) > 4 * MAX_TTFT_POINTS_PER_SAMPLE:
                self.pending_ttfts = thin(self.pending_ttfts, 2 * MAX_TTFT_POINTS_PER_SAMPLE)
            if time.perf_counter() - self.last_post >= 1.0 / TICK_HZ:
                points = self._take_points()
                self.post(
                    HostTick(
                        run_index=self.run_index,
                        done=self.done,
                        failed=self.failed,
                        total=self.total,
                        ttft_points=points,
                    )
                )
        elif isinstance(event, ProgressSnapshot):
            self.x = self.level_offset + event.t
            self.post(
                HostSample(
                    run_index=self.run_index, x=self.x, snapshot=event, ttft_points=self._take_points()
                )
            )
        elif isinstance(event, LevelStarted):
            self.level_offset = self.x
            self.level_started = time.perf_counter()
            self.total, self.done, self.failed = event.total, 0, 0
            self.post(
                HostLevelBegan(
                    run_index=self.run_index,
                    level_index=event.index,
                    level=event.level,
                    total=event.total,
                    x=self.x,
                )
            )
        elif isinstance(event, LevelFinished):
            self.post(HostLevelDone(run_index=self.run_index, result=without_records(event.result)))
        elif isinstance(event, SweepStarted):
            self.post(
                HostStarted(
                    run_index=self.run_index, run_id=event.run_id, config=event.config, notes=event.notes
                )
            )


class SweepDriver:
    """Runs planned sweeps one after another on the calling thread (the host's main thread)."""

    def __init__(
        self, post: Callable[[HostEvent], object], data_dir: Path | None, *, save: bool = True
    ) -> None:
        self.post = post
        self.data_dir = data_dir
        self.save = save
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancel_event: asyncio.Event | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop after keeping what finished; safe from any thread, any number of times."""
        self._cancelled.set()
        with self._lock:
            loop, event = self._loop, self._cancel_event
        if loop is not None and event is not None:
            # RuntimeError: that loop has just closed, so the sweep is over anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def run(self, runs: list[PlannedRun]) -> None:
        try:
            for index, planned in enumerate(runs):
                if self.cancelled:
                    break
                try:
                    asyncio.run(self._run_one(index, planned.config))
                except Exception as err:  # a bug, not a user error: say so and go on with the next target
                    name = planned.config.target.name
                    what = f"{type(err).__name__}: {err}"
                    text = f"{name}: the sweep stopped unexpectedly ({what}); please report this"
                    self.post(HostFailed(run_index=index, message=text))
        finally:
            self.post(HostAllDone(cancelled=self.cancelled))

    async def _run_one(self, index: int, config: SweepConfig) -> None:
        cancel = asyncio.Event()
        if self.cancelled:
            cancel.set()
        with self._lock:
            self._loop, self._cancel_event = asyncio.get_running_loop(), cancel
        try:
            await self._sweep(index, config, cancel)
        finally:
            with self._lock:
                self._loop = self._cancel_event = None

    async def _sweep(self, index: int, config: SweepConfig, cancel: asyncio.Event) -> None:
        target = config.target
        self.post(HostPreparing(run_index=index, what=f"checking {target.name} at {target.base_url}"))
        try:
            live = await discover_target(
                target.base_url,
                model=target.model,
                api_key_env=target.api_key_env,
                name=target.name,
                timeout_s=PREFLIGHT_TIMEOUT_S,
            )
            config = config.model_copy(update={"target": live})
            what = f"sampling {config.num_prompts} prompts ({config.dataset.kind})"
            self.post(HostPreparing(run_index=index, what=what))
            dataset = await prepare_dataset(config)
        except ServeDeckError as err:
            self.post(HostFailed(run_index=index, message=f"{target.name}: {err}"))
            return
        if self.cancelled:
            return
        recorder, save_error = self._open_recorder()
        feed = _UiFeed(index, self.post)

        def emit(event: SweepEvent) -> None:
            feed.handle(event)
            if recorder is not None:
                recorder.handle(event)

        saved_as: str | None = None
        try:
            result = await run_sweep(config, emit, cancel, dataset=dataset)
        except ServeDeckError as err:
            self.post(HostFailed(run_index=index, message=f"{target.name}: {err}"))
            return
        finally:
            if recorder is not None:
                saved_as, save_error = await asyncio.to_thread(self._close_recorder, recorder)
        stripped = result.model_copy(update={"levels": [without_records(level) for level in result.levels]})
        self.post(HostFinished(run_index=index, result=stripped, saved_as=saved_as, save_error=save_error))

    def _open_recorder(self) -> tuple[HistoryRecorder | None, str | None]:
        if not self.save:
            return None, None
        try:
            return HistoryRecorder(self.data_dir), None
        except ServeDeckError as err:
            return None, f"not saved to history: {err}"

    @staticmethod
    def _close_recorder(recorder: HistoryRecorder) -> tuple[str | None, str | None]:
        recorder.close()
        if recorder.error is not None:
            return recorder.run_id, f"the run was not fully saved to history: {recorder.error}"
        return recorder.run_id, None


def _silence_output() -> None:
    """The child shares the terminal the UI draws on: nothing it (or its workers) prints may reach it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def host_main(runs_json: bytes, data_dir: str | None, conn: Connection) -> None:
    """Entry point of the sweep host process."""
    _silence_output()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the UI owns ctrl+c; it cancels through the pipe
    send_lock = threading.Lock()

    def post(event: HostEvent) -> None:
        with send_lock, contextlib.suppress(OSError):
            conn.send(event)

    driver = SweepDriver(post, Path(data_dir) if data_dir else None)

    def listen() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the UI went away: stop, keeping what finished
                driver.cancel()
                return
            if message == ("cancel",):
                driver.cancel()

    threading.Thread(target=listen, name="sweep-host-listener", daemon=True).start()
    try:
        driver.run(PLANNED_RUNS.validate_json(runs_json))
    finally:
        conn.close()
