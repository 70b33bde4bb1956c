"""The Bench view's side of a sweep: starts the sweep host process and hands its typed events on.

``SweepRunner.run`` is blocking: the screen calls it from a thread worker. It spawns
``sweep_host.host_main`` (which checks the targets, samples prompts, runs the sweeps with their own
load-generator processes and saves them to History), reads the host's typed events from a pipe and
passes each one to ``post`` as it came (the screen wraps it in one ``SweepHostEvent`` message). No
request record ever enters the UI process: levels and results arrive with metrics only, and exports
read the saved run back from History. ``cancel()`` may be called from any
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

from tui.services.bench_config import PlannedRun
from tui.services.sweep_host import PLANNED_RUNS, HostAllDone, HostEvent, HostFailed, host_main

HOST_EXIT_TIMEOUT_S = 30.0
_TRACKER_LOCK = threading.Lock()


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
    def __init__(self, post: Callable[[HostEvent], object], data_dir: Path | None) -> None:
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
                    self.post(HostAllDone(cancelled=event.cancelled or self.cancelled))
                    break
                self.post(event)
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
                    HostFailed(
                        run_index=-1,
                        message=f"the sweep process stopped unexpectedly (exit code {process.exitcode}); "
                        "levels that finished are saved in History",
                    )
                )
                self.post(HostAllDone(cancelled=self.cancelled))
