"""Queries over stored bench runs: History lists, overlays, labels, deletion, crash recovery.

Loading runs for an overlay reads the per-level metrics only; raw request records are decoded
only when asked for (``with_records=True`` or ``level_records``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from backends.bench.models import RequestRecord
from backends.bench.multi_turn import per_turn_metrics
from backends.bench.results import LevelResult, RunStatus, SweepResult
from backends.target_types import ServerSnapshot
from sessions import run_rows
from sessions.database import Database
from sessions.errors import SessionStoreError
from sessions.liveness import host_name, is_process_alive
from sessions.run_models import RunDetail, RunFilter, RunSummary
from sessions.run_writer import RunWriter
from sessions.timestamps import parse_stored, stored, utc_now

# A run written from another machine (a shared data folder) cannot have its pid checked; it counts
# as abandoned once its heartbeat is this old.
FOREIGN_HOST_STALE_AFTER = timedelta(minutes=15)


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class RunStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def writer(self) -> RunWriter:
        return RunWriter(self._db)

    def list_runs(self, run_filter: RunFilter | None = None) -> list[RunSummary]:
        """Newest first."""
        run_filter = run_filter or RunFilter()
        clauses: list[str] = []
        params: list[object] = []
        if run_filter.target:
            clauses.append(
                "(r.target_name LIKE ? ESCAPE '\\' OR r.base_url LIKE ? ESCAPE '\\'"
                " OR r.model LIKE ? ESCAPE '\\')"
            )
            params += [_like(run_filter.target)] * 3
        if run_filter.gpu:
            clauses.append("r.gpu LIKE ? ESCAPE '\\'")
            params.append(_like(run_filter.gpu))
        if run_filter.label:
            clauses.append("r.label LIKE ? ESCAPE '\\'")
            params.append(_like(run_filter.label))
        if run_filter.status is not None:
            clauses.append("r.status = ?")
            params.append(run_filter.status.value)
        if run_filter.since is not None:
            clauses.append("r.created_at >= ?")
            params.append(stored(run_filter.since))
        if run_filter.until is not None:
            clauses.append("r.created_at < ?")
            params.append(stored(run_filter.until))
        query = f"SELECT {run_rows.RUN_COLUMNS} FROM runs r"
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY r.created_at DESC, r.id DESC"
        if run_filter.limit is not None:
            query += " LIMIT ?"
            params.append(run_filter.limit)
        with self._db.read() as conn:
            rows = conn.execute(query, params).fetchall()
        return [run_rows.summary_from_row(row) for row in rows]

    def resolve_run_id(self, id_or_prefix: str) -> str:
        """A full run id, from the id itself or an unambiguous prefix of it."""
        with self._db.read() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (id_or_prefix,)).fetchone() is not None:
                return id_or_prefix
            matches = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 6",
                    (_like(id_or_prefix)[1:],),
                )
            ]
        if not matches:
            raise SessionStoreError(f"no run {id_or_prefix!r}; `servedeck runs list` shows the saved runs")
        if len(matches) > 1:
            shown = ", ".join(matches[:5])
            raise SessionStoreError(f"{id_or_prefix!r} matches several runs ({shown}); give more of the id")
        return str(matches[0])

    def summary(self, run_id: str) -> RunSummary:
        with self._db.read() as conn:
            return run_rows.fetch_summary(conn, run_id)

    def detail(self, run_id: str) -> RunDetail:
        with self._db.read() as conn:
            return RunDetail(
                summary=run_rows.fetch_summary(conn, run_id),
                config=run_rows.fetch_config(conn, run_id),
                levels=run_rows.fetch_levels(conn, run_id),
            )

    def load_sweeps(
        self, run_ids: Sequence[str], *, with_records: bool = False, with_snapshots: bool = False
    ) -> list[SweepResult]:
        """Runs as ``SweepResult`` for an overlay, from one consistent snapshot of the database.

        Levels that were cut off before their metrics were computed are left out (``detail`` lists
        them). Records stay compressed on disk unless ``with_records``.
        """
        sweeps = []
        with self._db.read() as conn:
            for run_id in run_ids:
                summary = run_rows.fetch_summary(conn, run_id)
                levels = []
                for level in run_rows.fetch_levels(conn, run_id):
                    if level.metrics is None or level.client is None:
                        continue
                    records = run_rows.fetch_records(conn, run_id, level.index) if with_records else []
                    levels.append(
                        LevelResult(
                            index=level.index,
                            level=level.level,
                            started_at=level.started_at,
                            status=level.status,
                            metrics=level.metrics,
                            client=level.client,
                            records=records,
                            server_snapshots=(
                                run_rows.fetch_snapshots(conn, run_id, level.index) if with_snapshots else []
                            ),
                            message=level.message,
                            gpu=level.gpu,
                            prompt_sampling=level.prompt_sampling,
                            # Multi-turn: TTFT by turn comes back from the records (they keep session/turn).
                            turns=per_turn_metrics(records)
                            if any(r.turn is not None for r in records)
                            else None,
                        )
                    )
                sweeps.append(
                    SweepResult(
                        run_id=run_id,
                        config=run_rows.fetch_config(conn, run_id),
                        started_at=summary.created_at,
                        finished_at=summary.finished_at,
                        status=summary.status,
                        levels=levels,
                        message=summary.message,
                    )
                )
        return sweeps

    def load_sweep(
        self, run_id: str, *, with_records: bool = False, with_snapshots: bool = False
    ) -> SweepResult:
        return self.load_sweeps([run_id], with_records=with_records, with_snapshots=with_snapshots)[0]

    def level_records(self, run_id: str, level_index: int) -> list[RequestRecord]:
        with self._db.read() as conn:
            run_rows.fetch_summary(conn, run_id)
            return run_rows.fetch_records(conn, run_id, level_index)

    def level_snapshots(self, run_id: str, level_index: int) -> list[ServerSnapshot]:
        with self._db.read() as conn:
            run_rows.fetch_summary(conn, run_id)
            return run_rows.fetch_snapshots(conn, run_id, level_index)

    def set_label(self, run_id: str, label: str | None) -> None:
        with self._db.write() as conn:
            cursor = conn.execute("UPDATE runs SET label = ? WHERE id = ?", (label, run_id))
            if cursor.rowcount == 0:
                raise SessionStoreError(f"no run {run_id!r}; `servedeck runs list` shows the saved runs")

    def delete_run(self, run_id: str) -> None:
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT status, writer_pid, writer_host, writer_start FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise SessionStoreError(f"no run {run_id!r}; `servedeck runs list` shows the saved runs")
            status, pid, host, start = row
            if (
                status == RunStatus.RUNNING.value
                and pid is not None
                and host == host_name()
                and is_process_alive(pid, start)
            ):
                raise SessionStoreError(
                    f"run {run_id} is still being written by process {pid}; cancel that run first"
                )
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            conn.execute("PRAGMA incremental_vacuum")

    def _is_abandoned(
        self, pid: int | None, host: str | None, start: str | None, heartbeat: str | None, now: datetime
    ) -> bool:
        if pid is None:
            return True
        if host == host_name():
            return not is_process_alive(pid, start)
        return heartbeat is None or now - parse_stored(heartbeat) > FOREIGN_HOST_STALE_AFTER

    def recover_abandoned(self, *, busy_timeout_s: float | None = None) -> list[str]:
        """Mark runs whose writing process is gone as partial; returns their ids."""
        now = utc_now()
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT id, writer_pid, writer_host, writer_start, heartbeat_at FROM runs WHERE status = ?",
                (RunStatus.RUNNING.value,),
            ).fetchall()
        abandoned = [row for row in rows if self._is_abandoned(row[1], row[2], row[3], row[4], now)]
        if not abandoned:
            return []
        recovered = []
        with self._db.write(busy_timeout_s=busy_timeout_s) as conn:
            for run_id, pid, _host, _start, heartbeat in abandoned:
                (n_records,) = conn.execute(
                    "SELECT COALESCE(SUM(n_records), 0) FROM run_levels WHERE run_id = ?", (run_id,)
                ).fetchone()
                writer = (
                    "the process writing this run"
                    if pid is None
                    else f"the process writing this run (pid {pid})"
                )
                cursor = conn.execute(
                    "UPDATE runs SET status = ?, finished_at = COALESCE(?, created_at), message = ?"
                    " WHERE id = ? AND status = ?",
                    (
                        RunStatus.PARTIAL.value,
                        heartbeat,
                        f"{writer} stopped before it finished; "
                        f"the {n_records} requests it had finished are kept",
                        run_id,
                        RunStatus.RUNNING.value,
                    ),
                )
                if cursor.rowcount:
                    conn.execute(
                        "UPDATE run_levels SET status = ? WHERE run_id = ? AND status = ?",
                        (RunStatus.PARTIAL.value, run_id, RunStatus.RUNNING.value),
                    )
                    recovered.append(run_id)
        return recovered
