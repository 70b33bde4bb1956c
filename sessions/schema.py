"""Schema migrations, keyed on ``PRAGMA user_version``.

``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1``; version 0 is an empty file.
Version 1 is the first hand-written schema; later versions evolve it and carry its data along.
Migrations work on raw JSON, never on today's pydantic models, so an old database still migrates
after the models change. A migration never deletes user data.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from sessions.record_codec import CODEC_JSONL_ZLIB

Migration = Callable[[sqlite3.Connection], None]

SCHEMA_V1 = """
CREATE TABLE chat_sessions (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    target_json TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    params_json TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE chat_messages (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'complete',
    stats_json TEXT
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    config_json TEXT NOT NULL,
    message TEXT
);
CREATE TABLE run_levels (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    level_index INTEGER NOT NULL,
    result_json TEXT NOT NULL,
    PRIMARY KEY (run_id, level_index)
);
CREATE TABLE run_record_chunks (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    level_index INTEGER NOT NULL,
    n_records INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""


def _to_v1(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _v2_chats(conn: sqlite3.Connection) -> None:
    for column in ("target_name", "base_url", "model"):
        conn.execute(f"ALTER TABLE chat_sessions ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    for session_id, target_json in conn.execute("SELECT id, target_json FROM chat_sessions").fetchall():
        target = json.loads(target_json)
        conn.execute(
            "UPDATE chat_sessions SET target_name = ?, base_url = ?, model = ? WHERE id = ?",
            (target.get("name", ""), target.get("base_url", ""), target.get("model", ""), session_id),
        )
    conn.execute("ALTER TABLE chat_messages ADD COLUMN updated_at TEXT")
    conn.execute("UPDATE chat_messages SET updated_at = created_at")
    conn.execute("ALTER TABLE chat_messages ADD COLUMN error TEXT")
    conn.execute(
        """
        CREATE TABLE answer_timings (
            message_id INTEGER PRIMARY KEY REFERENCES chat_messages(id) ON DELETE CASCADE,
            ttft_ms REAL,
            tpot_ms REAL,
            e2e_ms REAL,
            itl_ms_json TEXT NOT NULL DEFAULT '[]',
            prompt_tokens INTEGER,
            output_tokens INTEGER,
            finish_reason TEXT,
            server_timings_json TEXT
        )
        """
    )
    rows = conn.execute("SELECT id, stats_json FROM chat_messages WHERE stats_json IS NOT NULL").fetchall()
    for message_id, stats_json in rows:
        stats = json.loads(stats_json)
        conn.execute(
            "INSERT INTO answer_timings (message_id, ttft_ms, tpot_ms, e2e_ms, itl_ms_json, prompt_tokens,"
            " output_tokens, finish_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message_id,
                stats.get("ttft_ms"),
                stats.get("tpot_ms"),
                stats.get("e2e_ms"),
                json.dumps(stats.get("itl_ms", [])),
                stats.get("prompt_tokens"),
                stats.get("output_tokens"),
                stats.get("finish_reason"),
            ),
        )
    conn.execute("ALTER TABLE chat_messages DROP COLUMN stats_json")
    conn.execute("CREATE INDEX chat_messages_by_session ON chat_messages(session_id, id)")
    conn.execute("CREATE INDEX chat_sessions_by_update ON chat_sessions(updated_at)")


_RUN_COLUMNS_V2 = (
    "label TEXT",
    "gpu TEXT",
    "target_name TEXT NOT NULL DEFAULT ''",
    "base_url TEXT NOT NULL DEFAULT ''",
    "model TEXT NOT NULL DEFAULT ''",
    "axis TEXT NOT NULL DEFAULT ''",
    "writer_pid INTEGER",
    "writer_host TEXT",
    "writer_start TEXT",
    "heartbeat_at TEXT",
)


def _v2_runs(conn: sqlite3.Connection) -> None:
    for column in _RUN_COLUMNS_V2:
        conn.execute(f"ALTER TABLE runs ADD COLUMN {column}")
    for run_id, config_json in conn.execute("SELECT id, config_json FROM runs").fetchall():
        config = json.loads(config_json)
        target = config.get("target", {})
        conn.execute(
            "UPDATE runs SET label = ?, target_name = ?, base_url = ?, model = ?, axis = ? WHERE id = ?",
            (
                config.get("label"),
                target.get("name", ""),
                target.get("base_url", ""),
                target.get("model", ""),
                config.get("axis", ""),
                run_id,
            ),
        )

    conn.execute(
        """
        CREATE TABLE server_snapshots (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            level_index INTEGER NOT NULL,
            t REAL NOT NULL,
            data_json TEXT NOT NULL
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE run_levels_v2 (
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            level_index INTEGER NOT NULL,
            level_json TEXT NOT NULL,
            started_at TEXT NOT NULL,
            status TEXT NOT NULL,
            metrics_json TEXT,
            client_json TEXT,
            message TEXT,
            n_records INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, level_index)
        )
        """
    )
    old_levels = conn.execute("SELECT run_id, level_index, result_json FROM run_levels").fetchall()
    for run_id, level_index, result_json in old_levels:
        result = json.loads(result_json)
        (n_records,) = conn.execute(
            "SELECT COALESCE(SUM(n_records), 0) FROM run_record_chunks WHERE run_id = ? AND level_index = ?",
            (run_id, level_index),
        ).fetchone()
        conn.execute(
            "INSERT INTO run_levels_v2 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                level_index,
                json.dumps(result["level"]),
                result["started_at"],
                result["status"],
                _json_or_none(result.get("metrics")),
                _json_or_none(result.get("client")),
                result.get("message"),
                n_records,
            ),
        )
        for snapshot in result.get("server_snapshots", []):
            conn.execute(
                "INSERT INTO server_snapshots (run_id, level_index, t, data_json) VALUES (?, ?, ?, ?)",
                (run_id, level_index, snapshot["t"], json.dumps(snapshot)),
            )
    conn.execute("DROP TABLE run_levels")
    conn.execute("ALTER TABLE run_levels_v2 RENAME TO run_levels")

    conn.execute(f"ALTER TABLE run_record_chunks ADD COLUMN codec TEXT NOT NULL DEFAULT '{CODEC_JSONL_ZLIB}'")
    conn.execute("CREATE INDEX run_record_chunks_by_level ON run_record_chunks(run_id, level_index, id)")
    conn.execute("CREATE INDEX server_snapshots_by_level ON server_snapshots(run_id, level_index, id)")
    conn.execute("CREATE INDEX runs_by_created ON runs(created_at)")
    conn.execute("CREATE INDEX runs_by_status ON runs(status)")


def _to_v2(conn: sqlite3.Connection) -> None:
    """Columns for filtering (label, GPU, target), writer liveness, a per-level row with columns,
    server snapshots in their own table, timing stats in their own table, a codec per record chunk."""
    _v2_chats(conn)
    _v2_runs(conn)


def _to_v3(conn: sqlite3.Connection) -> None:
    """A level's GPU telemetry (``LevelGpuTelemetry`` JSON; NULL where none was read)."""
    conn.execute("ALTER TABLE run_levels ADD COLUMN gpu_json TEXT")


def _to_v4(conn: sqlite3.Connection) -> None:
    """How a level's prompts were sampled (``PromptSampling`` value; NULL where not known)."""
    conn.execute("ALTER TABLE run_levels ADD COLUMN prompt_sampling TEXT")


MIGRATIONS: list[Migration] = [_to_v1, _to_v2, _to_v3, _to_v4]
SCHEMA_VERSION = len(MIGRATIONS)
