"""Following logs in batches of lines: a growing file (local engine, twins) or a blocking line stream
(a Kubernetes pod's log)."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from backends.errors import EngineError

LOG_TAIL_BYTES = 64 * 1024
LOG_POLL_INTERVAL_S = 0.25
LOG_BATCH_LINES = 200
LOG_TAIL_LINES = 500


class LineQueueReader:
    """Reads a blocking line iterator on its own thread so the caller can poll with a timeout."""

    def __init__(self, lines: Iterator[str], close: Callable[[], None]) -> None:
        self._queue: queue.Queue[str | BaseException | None] = queue.Queue(maxsize=10_000)
        self._close = close
        self._thread = threading.Thread(target=self._run, args=(lines,), name="log-reader", daemon=True)
        self._thread.start()

    def _run(self, lines: Iterator[str]) -> None:
        try:
            for line in lines:
                self._queue.put(line)
            self._queue.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it on its thread
            self._queue.put(exc)

    def batches(self, cancelled: Callable[[], bool]) -> Iterator[list[str]]:
        try:
            while not cancelled():
                try:
                    first = self._queue.get(timeout=LOG_POLL_INTERVAL_S)
                except queue.Empty:
                    yield []
                    continue
                batch: list[str] = []
                item: str | BaseException | None = first
                while True:
                    if item is None:
                        if batch:
                            yield batch
                        return
                    if isinstance(item, BaseException):
                        if batch:
                            yield batch
                        raise item
                    batch.append(item)
                    if len(batch) >= LOG_BATCH_LINES:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                yield batch
        finally:
            self._close()


def follow_log_file(path: Path, cancelled: Callable[[], bool]) -> Iterator[list[str]]:
    """Batches of lines from ``path``: its last ``LOG_TAIL_BYTES`` first, then whatever is appended.

    Yields an empty batch whenever nothing new arrived for ``LOG_POLL_INTERVAL_S``, so a caller can flush
    and check for cancellation; returns once ``cancelled()`` is true.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise EngineError(f"cannot open the log {path}: {exc.strerror or exc}") from None
    with handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - LOG_TAIL_BYTES))
        if size > LOG_TAIL_BYTES:
            handle.readline()  # the first line is cut; skip it
        pending = b""
        while not cancelled():
            chunk = handle.read(256 * 1024)
            if not chunk:
                yield []
                time.sleep(LOG_POLL_INTERVAL_S)
                continue
            pending += chunk
            *complete, pending = pending.split(b"\n")
            lines = [raw.decode("utf-8", errors="replace").rstrip("\r") for raw in complete]
            for start in range(0, len(lines), LOG_BATCH_LINES):
                yield lines[start : start + LOG_BATCH_LINES]
