"""Persists a sweep to the sessions store as its events arrive, off the event loop.

Writes run on one background thread in event order, so a slow disk never delays the live display
and a crash keeps every batch already written.
"""

from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path

from backends.bench.results import SweepResult
from backends.bench.sweep import (
    LevelFinished,
    LevelStarted,
    RecordsBatch,
    SweepEvent,
    SweepFinished,
    SweepStarted,
)
from backends.errors import ServeDeckError
from backends.target_types import Target, TargetKind
from sessions.run_writer import RunWriter
from sessions.store import SessionStore

_STOP = object()


def _hardware_label(target: Target) -> str | None:
    if target.hardware:
        return target.hardware
    return {TargetKind.LLAMACPP: "CPU (llama.cpp)", TargetKind.TWIN: "twin"}.get(target.kind)


class HistoryRecorder:
    def __init__(self, data_dir: Path | None) -> None:
        self.store = SessionStore.open(data_dir)
        self.writer: RunWriter = self.store.runs.writer()
        self.run_id: str | None = None
        self.error: str | None = None
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="history-writer", daemon=True)
        self._thread.start()

    def handle(self, event: SweepEvent) -> None:
        if isinstance(event, SweepStarted | LevelStarted | RecordsBatch | LevelFinished | SweepFinished):
            self._queue.put(event)

    def _write(self, event: object) -> None:
        writer = self.writer
        if isinstance(event, SweepStarted):
            self.run_id = writer.begin_run(
                event.config,
                run_id=event.run_id,
                gpu=_hardware_label(event.config.target),
                label=event.config.label,
            )
        elif isinstance(event, LevelStarted):
            writer.begin_level(event.index)
        elif isinstance(event, RecordsBatch):
            writer.add_records(event.level_index, event.records)
        elif isinstance(event, LevelFinished):
            writer.finish_level(event.result)
        elif isinstance(event, SweepFinished):
            writer.finish_run(event.result.status, event.result.message)

    def _drain(self) -> None:
        while True:
            event = self._queue.get()
            if event is _STOP:
                return
            if self.error is not None:
                continue
            try:
                self._write(event)
            except ServeDeckError as err:
                self.error = str(err)
            except Exception as err:  # keep the sweep alive; the user is told once at the end
                self.error = f"{err.__class__.__name__}: {err}"

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        try:
            if self.run_id is not None and self.error is None:
                with self.writer:
                    pass  # leaves a truthful status if the sweep ended without SweepFinished
        finally:
            self.store.close()
        if self.error is not None:
            print(
                f"servedeck: warning: the run was not fully saved to history: {self.error}", file=sys.stderr
            )
        elif self.run_id is not None and self.writer.pending_journal is not None:
            print(
                f"servedeck: the history store was busy (another process held its write lock); run "
                f"{self.run_id} is kept in {self.writer.pending_journal} and joins history the next time "
                "ServeDeck opens the store",
                file=sys.stderr,
            )
        elif self.run_id is not None:
            print(
                f"saved to history as run {self.run_id} (servedeck runs show {self.run_id})", file=sys.stderr
            )


def save_finished_run(run: SweepResult, data_dir: Path | None) -> str | None:
    """A run that was not recorded as it ran (an SLO search's levels) replayed into History as one run;
    None when saved, else one line saying why not."""
    try:
        recorder = HistoryRecorder(data_dir)
    except ServeDeckError as err:
        return f"not saved to History: {err}"
    try:
        recorder.handle(SweepStarted(run_id=run.run_id, config=run.config, notes=[]))
        for level in run.levels:
            recorder.handle(LevelStarted(index=level.index, level=level.level, total=len(level.records)))
            recorder.handle(RecordsBatch(level_index=level.index, records=level.records))
            recorder.handle(LevelFinished(result=level))
        recorder.handle(SweepFinished(result=run))
    finally:
        recorder.close()
    return None if recorder.error is None else f"not saved to History: {recorder.error}"
