"""The run journal: where a bench run goes while another process holds the database's write lock.

A writer that cannot get the lock within the busy timeout appends what it would have written to
``sessions.journal/<run id>.jsonl`` next to the database, one JSON entry a line, and keeps trying
the lock; the first time it gets it, the whole journal is replayed in one transaction and the file
is removed. A journal left behind (the lock never freed, or the writer died) is merged by the next
``SessionStore.open``. The writer holds an exclusive ``flock`` on its journal while it runs, so no
other process merges a journal that is still growing.

Replaying is idempotent (a run already stored, request indices and snapshot times already stored
are skipped): a process killed between the commit and the removal of the file loses nothing and
duplicates nothing the next time.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic_core import from_json

from backends.bench.metrics import BenchmarkMetrics
from backends.bench.models import ClientStats, LoadLevel, RequestRecord
from backends.bench.results import STORED, PromptSampling, RunStatus, SweepConfig
from backends.target_types import ServerSnapshot
from backends.telemetry.models import LevelGpuTelemetry
from sessions import run_rows
from sessions.database import Database
from sessions.errors import SessionStoreError, StoreBusyError
from sessions.jsoncodec import dump_model
from sessions.record_codec import CODEC_COLUMNAR, decode_records, encode_records
from sessions.timestamps import parse_stored

JOURNAL_DIRNAME = "sessions.journal"
JOURNAL_SUFFIX = ".jsonl"


def journal_dir(db_path: Path) -> Path:
    return db_path.parent / JOURNAL_DIRNAME


class _Entry(BaseModel):
    at: str  # stored UTC time of the write: the run's heartbeat once merged


class RunBegun(_Entry):
    op: Literal["run"] = "run"
    run_id: str
    config: SweepConfig
    label: str | None
    gpu: str | None
    created_at: str
    pid: int
    host: str
    start: str | None


class _LevelEntry(_Entry):
    index: int
    level: LoadLevel
    started_at: datetime


class LevelBegun(_LevelEntry):
    op: Literal["level"] = "level"


class RecordsAdded(_LevelEntry):
    op: Literal["records"] = "records"
    indices: list[int]
    payload: str  # base64 of the columnar chunk

    @classmethod
    def of(
        cls, at: str, index: int, level: LoadLevel, started_at: datetime, records: Sequence[RequestRecord]
    ) -> RecordsAdded:
        return cls(
            at=at,
            index=index,
            level=level,
            started_at=started_at,
            indices=[record.index for record in records],
            payload=base64.b64encode(encode_records(records)).decode() if records else "",
        )


class SnapshotsAdded(_LevelEntry):
    op: Literal["snapshots"] = "snapshots"
    snapshots: list[ServerSnapshot]


class LevelFinished(_LevelEntry):
    op: Literal["level_result"] = "level_result"
    status: RunStatus
    metrics: BenchmarkMetrics | None
    client: ClientStats | None
    message: str | None
    gpu: LevelGpuTelemetry | None = None
    prompt_sampling: PromptSampling | None = None


class RunFinished(_Entry):
    op: Literal["finish"] = "finish"
    status: RunStatus
    message: str | None


Entry = Annotated[
    RunBegun | LevelBegun | RecordsAdded | SnapshotsAdded | LevelFinished | RunFinished,
    Field(discriminator="op"),
]
_ENTRY = TypeAdapter(Entry)


class _Replay:
    """Applies entries of one run inside an open write transaction."""

    def __init__(self, conn: sqlite3.Connection, run_id: str, *, dedupe: bool) -> None:
        self._conn = conn
        self._run_id = run_id
        self._dedupe = dedupe
        self._stored_indices: dict[int, set[int]] = {}

    def _has_run(self) -> bool:
        return self._conn.execute("SELECT 1 FROM runs WHERE id = ?", (self._run_id,)).fetchone() is not None

    def _indices(self, level_index: int) -> set[int]:
        if level_index not in self._stored_indices:
            self._stored_indices[level_index] = {
                record.index
                for chunk in run_rows.iter_record_chunks(self._conn, self._run_id, level_index)
                for record in chunk
            }
        return self._stored_indices[level_index]

    def apply(self, entry: Entry) -> bool:
        """False when the run no longer exists (deleted while it was being written)."""
        conn, run_id = self._conn, self._run_id
        if isinstance(entry, RunBegun):
            if self._dedupe and self._has_run():
                return True
            run_rows.insert_run(
                conn,
                run_id=run_id,
                config=entry.config,
                label=entry.label,
                gpu=entry.gpu,
                created_at=parse_stored(entry.created_at),
                status=RunStatus.RUNNING,
            )
            conn.execute(
                "UPDATE runs SET writer_pid = ?, writer_host = ?, writer_start = ?, heartbeat_at = ?"
                " WHERE id = ?",
                (entry.pid, entry.host, entry.start, entry.at, run_id),
            )
            return True
        cursor = conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (entry.at, run_id))
        if cursor.rowcount == 0:
            return False
        if isinstance(entry, RunFinished):
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, message = ? WHERE id = ?",
                (entry.status.value, entry.at, entry.message, run_id),
            )
            conn.execute(
                "UPDATE run_levels SET status = ? WHERE run_id = ? AND status = ?",
                (RunStatus.PARTIAL.value, run_id, RunStatus.RUNNING.value),
            )
            return True
        run_rows.ensure_level(conn, run_id, entry.index, entry.level, entry.started_at)
        if isinstance(entry, RecordsAdded):
            self._add_records(entry)
        elif isinstance(entry, SnapshotsAdded):
            snapshots = entry.snapshots
            if self._dedupe:
                times = {
                    row[0]
                    for row in conn.execute(
                        "SELECT t FROM server_snapshots WHERE run_id = ? AND level_index = ?",
                        (run_id, entry.index),
                    )
                }
                snapshots = [s for s in snapshots if s.t not in times]
            run_rows.insert_snapshots(conn, run_id, entry.index, snapshots)
        elif isinstance(entry, LevelFinished):
            run_rows.update_level(
                conn,
                run_id,
                index=entry.index,
                level=entry.level,
                started_at=entry.started_at,
                status=entry.status,
                metrics=entry.metrics,
                client=entry.client,
                message=entry.message,
                gpu=entry.gpu,
                prompt_sampling=entry.prompt_sampling,
            )
        return True

    def _add_records(self, entry: RecordsAdded) -> None:
        if not entry.indices:
            return
        payload = base64.b64decode(entry.payload)
        if self._dedupe:
            stored_indices = self._indices(entry.index)
            fresh = [i for i in entry.indices if i not in stored_indices]
            if not fresh:
                return
            if len(fresh) < len(entry.indices):
                records = [
                    r for r in decode_records(CODEC_COLUMNAR, payload) if r.index not in stored_indices
                ]
                payload = encode_records(records)
            stored_indices.update(fresh)
            count = len(fresh)
        else:
            count = len(entry.indices)
        run_rows.insert_chunk(self._conn, self._run_id, entry.index, run_rows.EncodedChunk(count, payload))


def apply_entries(conn: sqlite3.Connection, run_id: str, entries: Sequence[Entry], *, dedupe: bool) -> bool:
    """Write entries inside the caller's transaction; False if the run was deleted meanwhile."""
    replay = _Replay(conn, run_id, dedupe=dedupe)
    return all(replay.apply(entry) for entry in entries)


def _read_entries(handle_fd: int) -> list[Entry]:
    """Every whole, valid line; a last line cut short by a killed process is left out."""
    os.lseek(handle_fd, 0, os.SEEK_SET)
    chunks = []
    while block := os.read(handle_fd, 1 << 20):
        chunks.append(block)
    lines = b"".join(chunks).split(b"\n")
    entries: list[Entry] = []
    for line in lines[:-1]:  # the part after the last newline was never finished
        if not line.strip():
            continue
        try:
            entries.append(_ENTRY.validate_python(from_json(line), context=STORED))
        except (ValueError, ValidationError):
            continue
    return entries


class RunJournal:
    """One run's journal file, locked by whoever holds this object."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def create(cls, db_path: Path, run_id: str) -> RunJournal:
        folder = journal_dir(db_path)
        path = folder / f"{run_id}{JOURNAL_SUFFIX}"
        try:
            folder.mkdir(exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise SessionStoreError(
                f"the sessions database {db_path} is busy and the journal {path} cannot be written "
                f"({exc.strerror}); this run is not saved"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        return cls(path, fd)

    @classmethod
    def claim(cls, path: Path) -> RunJournal | None:
        """Lock a journal left behind; None if its writer is still running or it is gone."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:  # merged and removed meanwhile
                raise OSError
        except OSError:
            os.close(fd)
            return None
        return cls(path, fd)

    @property
    def run_id(self) -> str:
        return self.path.name.removesuffix(JOURNAL_SUFFIX)

    def _handle(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"journal {self.path} is closed")
        return self._fd

    def append(self, entries: Sequence[Entry]) -> None:
        # One write of whole lines to an O_APPEND file; like the database's synchronous=NORMAL, no
        # fsync: a killed process loses nothing, only power loss could.
        data = "".join(dump_model(entry) + "\n" for entry in entries).encode()
        try:
            os.write(self._handle(), data)
        except OSError as exc:
            raise SessionStoreError(f"cannot write the run journal {self.path} ({exc.strerror})") from None

    def entries(self) -> list[Entry]:
        return _read_entries(self._handle())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def discard(self) -> None:
        """Remove the file (its content is in the database now), then release the lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()

    def merge_into(self, db: Database, *, busy_timeout_s: float) -> bool:
        """Replay the whole journal in one transaction and remove it. False if the store is busy.

        Raises SessionStoreError if the run was deleted while it was being written (the journal is
        removed: there is no run to add it to)."""
        entries = self.entries()
        try:
            with db.write(busy_timeout_s=busy_timeout_s) as conn:
                alive = apply_entries(conn, self.run_id, entries, dedupe=True)
        except StoreBusyError:
            return False
        self.discard()
        if not alive:
            raise SessionStoreError(
                f"run {self.run_id} was deleted while it was being written; its results are lost"
            )
        return True


def pending_journals(db_path: Path) -> Iterator[Path]:
    folder = journal_dir(db_path)
    if folder.is_dir():
        yield from sorted(folder.glob(f"*{JOURNAL_SUFFIX}"))


def merge_journals(db: Database, *, busy_timeout_s: float = 1.0) -> list[str]:
    """Merge every journal left behind by a writer that is no longer running; returns their run ids.

    Stops at the first journal the store is too busy to take (the next open tries again)."""
    merged = []
    for path in pending_journals(db.path):
        journal = RunJournal.claim(path)
        if journal is None:
            continue
        try:
            if not journal.merge_into(db, busy_timeout_s=busy_timeout_s):
                break
        except SessionStoreError:
            continue  # deleted while it was written: nothing to merge it into
        finally:
            journal.close()
        merged.append(journal.run_id)
    return merged
