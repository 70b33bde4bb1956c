"""Reading and writing the rows of one run: shared by the writer, the queries and bundle import."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from backends.bench.metrics import BenchmarkMetrics
from backends.bench.models import ClientStats, LoadLevel, RequestRecord
from backends.bench.results import STORED, PromptSampling, RunStatus, SweepConfig
from backends.redaction import redact, redact_url
from backends.target_types import ServerSnapshot
from backends.telemetry.models import LevelGpuTelemetry
from sessions.errors import SessionStoreError
from sessions.jsoncodec import dump_model
from sessions.record_codec import CODEC_COLUMNAR, RecordDecodeError, decode_records, encode_records
from sessions.run_models import LevelSummary, RunSummary
from sessions.secrets_guard import scrub_records
from sessions.timestamps import parse_stored, stored

RUN_COLUMNS = (
    "r.id, r.label, r.gpu, r.target_name, r.base_url, r.model, r.axis, r.config_json, r.created_at,"
    " r.finished_at, r.status, r.message,"
    " (SELECT COUNT(*) FROM run_levels l WHERE l.run_id = r.id),"
    " (SELECT COALESCE(SUM(l.n_records), 0) FROM run_levels l WHERE l.run_id = r.id)"
)


def incompatible(run_id: str, what: str, exc: ValidationError | RecordDecodeError) -> SessionStoreError:
    first = str(exc).splitlines()
    detail = " ".join(first[:3]) if first else exc.__class__.__name__
    return SessionStoreError(
        f"run {run_id}: the stored {what} cannot be read ({detail}); it may come from an incompatible "
        "ServeDeck version or the file may be damaged. Other runs are unaffected; "
        "`servedeck runs delete` removes this one."
    )


def parse_config(run_id: str, config_json: str) -> SweepConfig:
    try:
        return SweepConfig.model_validate_json(config_json, context=STORED)
    except ValidationError as exc:
        raise incompatible(run_id, "configuration", exc) from None


def summary_from_row(row: tuple[Any, ...]) -> RunSummary:
    run_id = str(row[0])
    config = parse_config(run_id, str(row[7]))
    return RunSummary(
        id=run_id,
        label=row[1],
        gpu=row[2],
        target_name=str(row[3]),
        base_url=redact_url(str(row[4])),
        model=str(row[5]),
        axis=str(row[6]),
        level_values=config.levels,
        created_at=parse_stored(str(row[8])),
        finished_at=None if row[9] is None else parse_stored(str(row[9])),
        status=RunStatus(str(row[10])),
        message=redact(row[11]),
        levels_stored=row[12],
        records_stored=row[13],
        kind="search" if config.search is not None else "sweep",
    )


def fetch_summary(conn: sqlite3.Connection, run_id: str) -> RunSummary:
    row = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = ?", (run_id,)).fetchone()
    if row is None:
        raise SessionStoreError(f"no run {run_id!r}; `servedeck runs list` shows the saved runs")
    return summary_from_row(row)


def fetch_config(conn: sqlite3.Connection, run_id: str) -> SweepConfig:
    row = conn.execute("SELECT config_json FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise SessionStoreError(f"no run {run_id!r}; `servedeck runs list` shows the saved runs")
    return parse_config(run_id, row[0])


def fetch_levels(conn: sqlite3.Connection, run_id: str) -> list[LevelSummary]:
    rows = conn.execute(
        "SELECT level_index, level_json, started_at, status, n_records, metrics_json, client_json, message,"
        " gpu_json, prompt_sampling FROM run_levels WHERE run_id = ? ORDER BY level_index",
        (run_id,),
    ).fetchall()
    levels = []
    for row in rows:
        (
            index,
            level_json,
            started_at,
            status,
            n_records,
            metrics_json,
            client_json,
            message,
            gpu_json,
            sampling,
        ) = row
        try:
            levels.append(
                LevelSummary(
                    index=index,
                    level=LoadLevel.model_validate_json(level_json),
                    started_at=parse_stored(started_at),
                    status=RunStatus(status),
                    records_stored=n_records,
                    metrics=None
                    if metrics_json is None
                    else BenchmarkMetrics.model_validate_json(metrics_json),
                    client=None if client_json is None else ClientStats.model_validate_json(client_json),
                    message=redact(message),
                    gpu=None if gpu_json is None else LevelGpuTelemetry.model_validate_json(gpu_json),
                    prompt_sampling=sampling,
                )
            )
        except ValidationError as exc:
            raise incompatible(run_id, f"results of level {index}", exc) from None
    return levels


def iter_record_chunks(
    conn: sqlite3.Connection, run_id: str, level_index: int
) -> Iterator[list[RequestRecord]]:
    cursor = conn.execute(
        "SELECT codec, payload FROM run_record_chunks WHERE run_id = ? AND level_index = ? ORDER BY id",
        (run_id, level_index),
    )
    for codec, payload in cursor:
        try:
            # Runs stored before messages were masked are masked on the way out.
            yield scrub_records(decode_records(codec, payload))
        except RecordDecodeError as exc:
            raise incompatible(run_id, f"requests of level {level_index}", exc) from None


def fetch_records(conn: sqlite3.Connection, run_id: str, level_index: int) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    for chunk in iter_record_chunks(conn, run_id, level_index):
        records.extend(chunk)
    return records


def fetch_snapshots(conn: sqlite3.Connection, run_id: str, level_index: int) -> list[ServerSnapshot]:
    rows = conn.execute(
        "SELECT data_json FROM server_snapshots WHERE run_id = ? AND level_index = ? ORDER BY id",
        (run_id, level_index),
    ).fetchall()
    try:
        return [ServerSnapshot.model_validate_json(row[0]) for row in rows]
    except ValidationError as exc:
        raise incompatible(run_id, f"server snapshots of level {level_index}", exc) from None


def insert_run(
    conn: sqlite3.Connection,
    *,
    run_id: str,
    config: SweepConfig,
    label: str | None,
    gpu: str | None,
    created_at: datetime,
    status: RunStatus,
    finished_at: datetime | None = None,
    message: str | None = None,
) -> None:
    if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None:
        raise SessionStoreError(f"a run with id {run_id!r} is already saved; use another id")
    conn.execute(
        "INSERT INTO runs (id, created_at, finished_at, status, config_json, message, label, gpu,"
        " target_name, base_url, model, axis) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            stored(created_at),
            None if finished_at is None else stored(finished_at),
            status.value,
            dump_model(config),
            message,
            label,
            gpu,
            config.target.name,
            config.target.base_url,
            config.target.model,
            config.axis.value,
        ),
    )


def ensure_level(
    conn: sqlite3.Connection, run_id: str, index: int, level: LoadLevel, started_at: datetime
) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO run_levels (run_id, level_index, level_json, started_at, status)"
        " VALUES (?, ?, ?, ?, ?)",
        (run_id, index, dump_model(level), started_at.isoformat(), RunStatus.RUNNING.value),
    )


def update_level(
    conn: sqlite3.Connection,
    run_id: str,
    *,
    index: int,
    level: LoadLevel,
    started_at: datetime,
    status: RunStatus,
    metrics: BenchmarkMetrics | None,
    client: ClientStats | None,
    message: str | None,
    gpu: LevelGpuTelemetry | None = None,
    prompt_sampling: PromptSampling | None = None,
) -> None:
    conn.execute(
        "UPDATE run_levels SET level_json = ?, started_at = ?, status = ?, metrics_json = ?, client_json = ?,"
        " message = ?, gpu_json = ?, prompt_sampling = ? WHERE run_id = ? AND level_index = ?",
        (
            dump_model(level),
            started_at.isoformat(),
            status.value,
            None if metrics is None else dump_model(metrics),
            None if client is None else dump_model(client),
            message,
            None if gpu is None else dump_model(gpu),
            None if prompt_sampling is None else prompt_sampling.value,
            run_id,
            index,
        ),
    )


class EncodedChunk(NamedTuple):
    """Records compressed before a transaction begins, so the write lock is held only to insert."""

    n_records: int
    payload: bytes

    @classmethod
    def of(cls, records: Sequence[RequestRecord]) -> EncodedChunk | None:
        return cls(len(records), encode_records(records)) if records else None


def insert_chunk(conn: sqlite3.Connection, run_id: str, level_index: int, chunk: EncodedChunk | None) -> None:
    if chunk is None:
        return
    conn.execute(
        "INSERT INTO run_record_chunks (run_id, level_index, n_records, codec, payload)"
        " VALUES (?, ?, ?, ?, ?)",
        (run_id, level_index, chunk.n_records, CODEC_COLUMNAR, chunk.payload),
    )
    conn.execute(
        "UPDATE run_levels SET n_records = n_records + ? WHERE run_id = ? AND level_index = ?",
        (chunk.n_records, run_id, level_index),
    )


def insert_snapshots(
    conn: sqlite3.Connection, run_id: str, level_index: int, snapshots: Sequence[ServerSnapshot]
) -> None:
    conn.executemany(
        "INSERT INTO server_snapshots (run_id, level_index, t, data_json) VALUES (?, ?, ?, ?)",
        [(run_id, level_index, snapshot.t, dump_model(snapshot)) for snapshot in snapshots],
    )
