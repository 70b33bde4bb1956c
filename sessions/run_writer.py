"""Writing a bench run while it happens, so a crash keeps every finished request.

Each call is one committed transaction; nothing is buffered in memory. Call ``add_records`` with
the requests finished since the last call (about once a second is plenty). The run row carries
the writer's pid, start time and host plus a heartbeat; when the store is opened later and that
process is gone, the run is marked partial (see ``RunStore.recover_abandoned``).

When another process keeps the write lock past the busy timeout, the writer spools to the run
journal (``sessions.journal``) instead of failing, tries the lock again at most every
``retry_interval_s`` and merges the journal the first time it gets it; a journal still pending
when the run finishes is merged by the next ``SessionStore.open`` (``pending_journal`` names it).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType

from backends.bench.models import LoadLevel, RequestRecord
from backends.bench.results import LevelResult, RunStatus, SweepConfig
from backends.redaction import redact
from backends.target_types import ServerSnapshot
from sessions import journal
from sessions.database import Database
from sessions.errors import SessionStoreError, StoreBusyError
from sessions.liveness import host_name, process_start_token
from sessions.secrets_guard import check_target, scrub_records
from sessions.timestamps import stored, utc_now

RETRY_INTERVAL_S = 1.0
FINAL_MERGE_WAIT_S = 1.0  # at the end of a run: how long to wait for the lock before leaving it


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class RunWriter:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._run_id: str | None = None
        self._config: SweepConfig | None = None
        self._finished = False
        self._stored_record_indices: dict[int, set[int]] = {}
        self._stored_snapshot_times: dict[int, set[float]] = {}
        self._level_statuses: dict[int, RunStatus] = {}
        self._journal: journal.RunJournal | None = None
        self._pending_journal: Path | None = None
        self._last_try = 0.0
        self.retry_interval_s = RETRY_INTERVAL_S

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            raise RuntimeError("begin_run() has not been called")
        return self._run_id

    @property
    def journal_path(self) -> Path | None:
        """The journal this writer is spooling to while the store is busy, else None."""
        return None if self._journal is None else self._journal.path

    @property
    def pending_journal(self) -> Path | None:
        """After the run: the journal left for the next open to merge (the store stayed busy)."""
        return self._pending_journal

    def _commit(self, entries: Sequence[journal.Entry], *, final: bool = False) -> None:
        run_id = self.run_id
        if self._journal is None:
            try:
                with self._db.write() as conn:
                    alive = journal.apply_entries(conn, run_id, entries, dedupe=False)
                if not alive:
                    raise SessionStoreError(
                        f"run {run_id} was deleted while it was being written; its results are lost"
                    )
                return
            except StoreBusyError:
                self._journal = journal.RunJournal.create(self._db.path, run_id)
                self._last_try = time.monotonic()
        self._journal.append(entries)
        now = time.monotonic()
        if final or now - self._last_try >= self.retry_interval_s:
            self._last_try = now
            merged = self._journal.merge_into(self._db, busy_timeout_s=FINAL_MERGE_WAIT_S if final else 0.0)
            if merged:
                self._journal = None

    def _check_open(self) -> str:
        if self._finished:
            raise RuntimeError(f"run {self.run_id} is already finished")
        return stored(utc_now())

    def begin_run(
        self,
        config: SweepConfig,
        *,
        gpu: str | None = None,
        label: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Store the run as running and return its id. ``gpu`` is free text ("4x L4", "twin H100")."""
        if self._run_id is not None:
            raise RuntimeError("this writer already began a run")
        check_target(config.target)
        now = utc_now()
        pid = os.getpid()
        entry = journal.RunBegun(
            at=stored(now),
            run_id=run_id or new_run_id(now),
            config=config,
            label=label if label is not None else config.label,
            gpu=gpu,
            created_at=stored(now),
            pid=pid,
            host=host_name(),
            start=process_start_token(pid),
        )
        self._run_id = entry.run_id
        self._config = config
        try:
            self._commit([entry])
        except BaseException:
            self._run_id = None
            self._config = None
            raise
        return entry.run_id

    def _level(self, index: int) -> LoadLevel:
        assert self._config is not None
        levels = self._config.load_levels()
        if not 0 <= index < len(levels):
            raise ValueError(f"level index {index} is outside the {len(levels)} levels of this run")
        return levels[index]

    def begin_level(self, index: int, started_at: datetime | None = None) -> None:
        """Optional: store the level as running before its first request finishes."""
        at = self._check_open()
        self._commit(
            [
                journal.LevelBegun(
                    at=at, index=index, level=self._level(index), started_at=started_at or utc_now()
                )
            ]
        )

    def add_records(self, level_index: int, records: Sequence[RequestRecord]) -> int:
        """Store finished requests of a level; a request index already stored is skipped. Returns the
        number stored."""
        at = self._check_open()
        seen = self._stored_record_indices.setdefault(level_index, set())
        fresh = [record for record in records if record.index not in seen]
        level = self._level(level_index)
        self._commit([journal.RecordsAdded.of(at, level_index, level, utc_now(), scrub_records(fresh))])
        seen.update(record.index for record in fresh)
        return len(fresh)

    def add_server_snapshots(self, level_index: int, snapshots: Sequence[ServerSnapshot]) -> None:
        at = self._check_open()
        seen = self._stored_snapshot_times.setdefault(level_index, set())
        fresh = [snapshot for snapshot in snapshots if snapshot.t not in seen]
        level = self._level(level_index)
        self._commit(
            [
                journal.SnapshotsAdded(
                    at=at, index=level_index, level=level, started_at=utc_now(), snapshots=fresh
                )
            ]
        )
        seen.update(snapshot.t for snapshot in fresh)

    def finish_level(self, result: LevelResult) -> None:
        """Store a finished level's metrics and status. Records and snapshots in ``result`` that were
        not added before are stored too, so passing a full ``LevelResult`` is also fine."""
        at = self._check_open()
        seen_records = self._stored_record_indices.setdefault(result.index, set())
        fresh_records = [record for record in result.records if record.index not in seen_records]
        seen_times = self._stored_snapshot_times.setdefault(result.index, set())
        fresh_snapshots = [s for s in result.server_snapshots if s.t not in seen_times]
        where = {"at": at, "index": result.index, "level": result.level, "started_at": result.started_at}
        self._commit(
            [
                journal.RecordsAdded.of(
                    at, result.index, result.level, result.started_at, scrub_records(fresh_records)
                ),
                journal.SnapshotsAdded(**where, snapshots=fresh_snapshots),
                journal.LevelFinished(
                    **where,
                    status=result.status,
                    metrics=result.metrics,
                    client=result.client,
                    message=redact(result.message),
                    gpu=result.gpu,
                    prompt_sampling=result.prompt_sampling,
                ),
            ]
        )
        seen_records.update(record.index for record in fresh_records)
        seen_times.update(s.t for s in fresh_snapshots)
        self._level_statuses[result.index] = result.status

    def finish_run(self, status: RunStatus, message: str | None = None) -> None:
        if status is RunStatus.RUNNING:
            raise ValueError("finish_run needs a final status (complete, partial or failed)")
        at = self._check_open()
        try:
            self._commit([journal.RunFinished(at=at, status=status, message=redact(message))], final=True)
        finally:
            if self._journal is not None:
                # Still busy: release the journal so that the next open (any process) merges it.
                if self._journal.path.exists():
                    self._pending_journal = self._journal.path
                self._journal.close()
                self._journal = None
        self._finished = True

    def _all_levels_complete(self) -> bool:
        assert self._config is not None
        return len(self._level_statuses) == len(self._config.levels) and all(
            status is RunStatus.COMPLETE for status in self._level_statuses.values()
        )

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Leaving the block unfinished still leaves a truthful status behind."""
        if self._run_id is None or self._finished:
            return
        try:
            if exc is None:
                complete = self._all_levels_complete()
                self.finish_run(RunStatus.COMPLETE if complete else RunStatus.PARTIAL)
            elif isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
                self.finish_run(RunStatus.PARTIAL, "cancelled; finished requests were kept")
            elif any(self._stored_record_indices.values()):
                self.finish_run(RunStatus.PARTIAL, f"stopped by {exc.__class__.__name__}: {exc}")
            else:
                self.finish_run(RunStatus.FAILED, f"{exc.__class__.__name__}: {exc}")
        except SessionStoreError:
            if exc is None:
                raise
            # The store itself is failing (full disk...); the original error is the one to report.
