"""The Bench view's side of a sweep: starts the sweep host process and turns its events into
Textual messages for the screen.

``SweepRunner.run`` is blocking: the screen calls it from a thread worker. It spawns
``bench_host.host_main`` (which checks the targets, samples prompts, runs the sweeps with their own
load-generator processes and saves them to History), reads the host's events from a pipe and posts
one message per event. No request record ever enters the UI process: levels and results arrive with
metrics only, and exports read the saved run back from History. ``cancel()`` may be called from any
thread: the host keeps finished levels and the finished requests of the current level.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path

from textual.message import Message

from backends.bench.models import LoadLevel, ProgressSnapshot
from backends.bench.results import LevelResult, SweepConfig, SweepResult
from tui.services.bench_config import PlannedRun
from tui.services.sweep_host import (
    PLANNED_RUNS,
    HostAllDone,
    HostEvent,
    HostFailed,
    HostFinished,
    HostLevelBegan,
    HostLevelDone,
    HostPreparing,
    HostSample,
    HostStarted,
    HostTick,
    host_main,
)

HOST_EXIT_TIMEOUT_S = 30.0
_TRACKER_LOCK = threading.Lock()


class RunPreparing(Message):
    """Checking target ``run_index`` and sampling its prompts."""

    def __init__(self, run_index: int, what: str) -> None:
        super().__init__()
        self.run_index = run_index
        self.what = what


class RunStarted(Message):
    def __init__(self, run_index: int, run_id: str, config: SweepConfig, notes: list[str]) -> None:
        super().__init__()
        self.run_index = run_index
        self.run_id = run_id
        self.config = config
        self.notes = notes


class LevelBegan(Message):
    def __init__(self, run_index: int, level_index: int, level: LoadLevel, total: int, x: float) -> None:
        super().__init__()
        self.run_index = run_index
        self.level_index = level_index
        self.level = level
        self.total = total
        self.x = x


class LiveSample(Message):
    """One progress snapshot; ``x`` is seconds since this target's sweep began (all levels)."""

    def __init__(
        self, run_index: int, x: float, snapshot: ProgressSnapshot, ttft_points: list[tuple[float, float]]
    ) -> None:
        super().__init__()
        self.run_index = run_index
        self.x = x
        self.snapshot = snapshot
        self.ttft_points = ttft_points


class LiveTick(Message):
    """Requests finished since the last message (between snapshots, at most 4 a second)."""

    def __init__(
        self, run_index: int, done: int, failed: int, total: int, ttft_points: list[tuple[float, float]]
    ) -> None:
        super().__init__()
        self.run_index = run_index
        self.done = done
        self.failed = failed
        self.total = total
        self.ttft_points = ttft_points


class LevelDone(Message):
    def __init__(self, run_index: int, result: LevelResult) -> None:
        super().__init__()
        self.run_index = run_index
        self.result = result


class RunFinished(Message):
    """A target's sweep ended (complete, partial or failed); ``saved_as``/``save_error`` say what
    happened to its History record."""

    def __init__(
        self, run_index: int, result: SweepResult, saved_as: str | None, save_error: str | None
    ) -> None:
        super().__init__()
        self.run_index = run_index
        self.result = result
        self.saved_as = saved_as
        self.save_error = save_error


class RunFailed(Message):
    """A target's sweep could not start (dead endpoint, bad dataset); ``message`` says what to do."""

    def __init__(self, run_index: int, message: str) -> None:
        super().__init__()
        self.run_index = run_index
        self.message = message


class AllRunsDone(Message):
    def __init__(self, cancelled: bool) -> None:
        super().__init__()
        self.cancelled = cancelled


def to_message(event: HostEvent) -> Message:
    if isinstance(event, HostSample):
        return LiveSample(event.run_index, event.x, event.snapshot, event.ttft_points)
    if isinstance(event, HostTick):
        return LiveTick(event.run_index, event.done, event.failed, event.total, event.ttft_points)
    if isinstance(event, HostLevelBegan):
        return LevelBegan(event.run_index, event.level_index, event.level, event.total, event.x)
    if isinstance(event, HostLevelDone):
        return LevelDone(event.run_index, event.result)
    if isinstance(event, HostPreparing):
        return RunPreparing(event.run_index, event.what)
    if isinstance(event, HostStarted):
        return RunStarted(event.run_index, event.run_id, event.config, event.notes)
    if isinstance(event, HostFinished):
        return RunFinished(event.run_index, event.result, event.saved_as, event.save_error)
    if isinstance(event, HostFailed):
        return RunFailed(event.run_index, event.message)
    return AllRunsDone(event.cancelled)


def start_resource_tracker() -> None:
    """Make sure multiprocessing's resource tracker runs, started with the real stderr.

    Spawning a process starts this tracker first, and the tracker is handed ``sys.stderr.fileno()``.
    Inside a Textual app stderr is captured and that fileno is -1, so the spawn fails ("bad value(s)
    in fds_to_keep"). The swap of ``sys.stderr`` lasts only as long as the tracker's own start.
    """
    with _TRACKER_LOCK:
        real = sys.__stderr__
        if real is None or sys.stderr is real:
            resource_tracker.ensure_running()
            return
        with contextlib.redirect_stderr(real):
            resource_tracker.ensure_running()


class SweepRunner:
    def __init__(self, post: Callable[[Message], object], data_dir: Path | None) -> None:
        self.post = post
        self.data_dir = data_dir
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._conn: Connection | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the host to stop, keeping what finished; safe from any thread, any number of times."""
        self._cancelled.set()
        with self._lock:
            conn = self._conn
            if conn is not None:
                with contextlib.suppress(OSError):  # the host has just ended: nothing left to cancel
                    conn.send(("cancel",))

    def run(self, runs: list[PlannedRun]) -> None:
        """Run every planned sweep in the host process, posting its events (blocking)."""
        start_resource_tracker()
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        payload = PLANNED_RUNS.dump_json(runs)
        data_dir = None if self.data_dir is None else str(self.data_dir)
        # Not a daemon: the host starts load-generator processes of its own.
        process = context.Process(
            target=host_main, args=(payload, data_dir, child_end), name="servedeck-sweep-host"
        )
        process.start()
        child_end.close()
        with self._lock:
            self._conn = parent_end
        if self.cancelled:
            self.cancel()
        finished = False
        try:
            while True:
                try:
                    event: HostEvent = parent_end.recv()
                except (EOFError, OSError):
                    break
                if isinstance(event, HostAllDone):
                    finished = True
                    self.post(AllRunsDone(event.cancelled or self.cancelled))
                    break
                self.post(to_message(event))
        finally:
            with self._lock:
                self._conn = None
            parent_end.close()
            process.join(HOST_EXIT_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()
            if not finished:
                self.post(
                    RunFailed(
                        -1,
                        f"the sweep process stopped unexpectedly (exit code {process.exitcode}); "
                        "levels that finished are saved in History",
                    )
                )
                self.post(AllRunsDone(self.cancelled))
