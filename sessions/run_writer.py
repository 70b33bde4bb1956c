"""Writing a bench run while it happens, so a crash keeps every finished request.

Each call is one committed transaction; nothing is buffered in memory. Call ``add_records`` with
the requests finished since the last call (about once a second is plenty). The run row carries
the writer's pid, start time and host plus a heartbeat; when the store is opened later and that
process is gone, the run is marked partial (see ``RunStore.recover_abandoned``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType

from backends.bench.models import LoadLevel, RequestRecord, ServerSnapshot
from backends.bench.results import LevelResult, RunStatus, SweepConfig
from sessions import run_rows
from sessions.database import Database
from sessions.errors import SessionStoreError
from sessions.liveness import host_name, process_start_token
from sessions.secrets_guard import check_target
from sessions.timestamps import stored, utc_now


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

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            raise RuntimeError("begin_run() has not been called")
        return self._run_id

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
        run_id = run_id or new_run_id(now)
        pid = os.getpid()
        with self._db.write() as conn:
            run_rows.insert_run(
                conn,
                run_id=run_id,
                config=config,
                label=label if label is not None else config.label,
                gpu=gpu,
                created_at=now,
                status=RunStatus.RUNNING,
            )
            conn.execute(
                "UPDATE runs SET writer_pid = ?, writer_host = ?, writer_start = ?, heartbeat_at = ?"
                " WHERE id = ?",
                (pid, host_name(), process_start_token(pid), stored(now), run_id),
            )
        self._run_id = run_id
        self._config = config
        return run_id

    def _open_run(self, conn: sqlite3.Connection) -> str:
        """Heartbeat, and proof that the run still exists (another process may have deleted it)."""
        if self._finished:
            raise RuntimeError(f"run {self.run_id} is already finished")
        run_id = self.run_id
        cursor = conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (stored(utc_now()), run_id))
        if cursor.rowcount == 0:
            raise SessionStoreError(
                f"run {run_id} was deleted while it was being written; its results are lost"
            )
        return run_id

    def _level(self, index: int) -> LoadLevel:
        assert self._config is not None
        levels = self._config.load_levels()
        if not 0 <= index < len(levels):
            raise ValueError(f"level index {index} is outside the {len(levels)} levels of this run")
        return levels[index]

    def begin_level(self, index: int, started_at: datetime | None = None) -> None:
        """Optional: store the level as running before its first request finishes."""
        with self._db.write() as conn:
            run_id = self._open_run(conn)
            run_rows.ensure_level(conn, run_id, index, self._level(index), started_at or utc_now())

    def add_records(self, level_index: int, records: Sequence[RequestRecord]) -> int:
        """Store finished requests of a level; a request index already stored is skipped. Returns the
        number stored."""
        seen = self._stored_record_indices.setdefault(level_index, set())
        fresh = [record for record in records if record.index not in seen]
        level = self._level(level_index)
        chunk = run_rows.EncodedChunk.of(fresh)
        with self._db.write() as conn:
            run_id = self._open_run(conn)
            run_rows.ensure_level(conn, run_id, level_index, level, utc_now())
            run_rows.insert_chunk(conn, run_id, level_index, chunk)
        seen.update(record.index for record in fresh)
        return len(fresh)

    def add_server_snapshots(self, level_index: int, snapshots: Sequence[ServerSnapshot]) -> None:
        seen = self._stored_snapshot_times.setdefault(level_index, set())
        fresh = [snapshot for snapshot in snapshots if snapshot.t not in seen]
        with self._db.write() as conn:
            run_id = self._open_run(conn)
            run_rows.ensure_level(conn, run_id, level_index, self._level(level_index), utc_now())
            run_rows.insert_snapshots(conn, run_id, level_index, fresh)
        seen.update(snapshot.t for snapshot in fresh)

    def finish_level(self, result: LevelResult) -> None:
        """Store a finished level's metrics and status. Records and snapshots in ``result`` that were
        not added before are stored too, so passing a full ``LevelResult`` is also fine."""
        seen_records = self._stored_record_indices.setdefault(result.index, set())
        fresh_records = [record for record in result.records if record.index not in seen_records]
        seen_times = self._stored_snapshot_times.setdefault(result.index, set())
        fresh_snapshots = [s for s in result.server_snapshots if s.t not in seen_times]
        chunk = run_rows.EncodedChunk.of(fresh_records)
        with self._db.write() as conn:
            run_id = self._open_run(conn)
            run_rows.ensure_level(conn, run_id, result.index, result.level, result.started_at)
            run_rows.insert_chunk(conn, run_id, result.index, chunk)
            run_rows.insert_snapshots(conn, run_id, result.index, fresh_snapshots)
            run_rows.update_level(
                conn,
                run_id,
                index=result.index,
                level=result.level,
                started_at=result.started_at,
                status=result.status,
                metrics=result.metrics,
                client=result.client,
                message=result.message,
            )
        seen_records.update(record.index for record in fresh_records)
        seen_times.update(s.t for s in fresh_snapshots)

    def finish_run(self, status: RunStatus, message: str | None = None) -> None:
        if status is RunStatus.RUNNING:
            raise ValueError("finish_run needs a final status (complete, partial or failed)")
        now = stored(utc_now())
        with self._db.write() as conn:
            run_id = self._open_run(conn)
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, message = ? WHERE id = ?",
                (status.value, now, message, run_id),
            )
            conn.execute(
                "UPDATE run_levels SET status = ? WHERE run_id = ? AND status = ?",
                (RunStatus.PARTIAL.value, run_id, RunStatus.RUNNING.value),
            )
        self._finished = True

    def _all_levels_complete(self) -> bool:
        assert self._config is not None
        with self._db.read() as conn:
            statuses = [
                row[0]
                for row in conn.execute("SELECT status FROM run_levels WHERE run_id = ?", (self.run_id,))
            ]
        return len(statuses) == len(self._config.levels) and all(
            status == RunStatus.COMPLETE.value for status in statuses
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
