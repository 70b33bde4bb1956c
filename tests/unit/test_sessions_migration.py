"""Schema migration from a hand-written version 1 database to the current schema."""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import NamedTuple

import pytest

from backends.bench.models import RequestRecord
from backends.bench.results import LevelResult, RunStatus, SweepConfig
from sessions import MessageStatus, RunFilter, SessionStore, SessionStoreError
from sessions.database import DB_FILENAME
from sessions.schema import SCHEMA_VERSION
from tests.sessions_helpers import make_config, make_level_result, make_records, make_target

# Schema version 1 exactly as it shipped, written out by hand so that later edits to the migration
# code cannot silently change what "an old database" means.
V1_SCHEMA = """
CREATE TABLE chat_sessions (id TEXT PRIMARY KEY, title TEXT NOT NULL, target_json TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '', params_json TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE chat_messages (id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL, text TEXT NOT NULL, created_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'complete', stats_json TEXT);
CREATE TABLE runs (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
    config_json TEXT NOT NULL, message TEXT);
CREATE TABLE run_levels (run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    level_index INTEGER NOT NULL, result_json TEXT NOT NULL, PRIMARY KEY (run_id, level_index));
CREATE TABLE run_record_chunks (id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    level_index INTEGER NOT NULL, n_records INTEGER NOT NULL, payload BLOB NOT NULL);
PRAGMA user_version = 1;
"""

T0 = "2025-03-04T10:00:00.000000+00:00"
T1 = "2025-03-04T10:05:00.000000+00:00"


class V1Content(NamedTuple):
    config: SweepConfig
    level: LevelResult
    records: list[RequestRecord]


def write_v1_database(path: Path, *, level_json: str | None = None) -> V1Content:
    config = make_config(label="4xL4 baseline")
    level = make_level_result(config, 0)
    records = make_records(0, 6, seed=9, chunks=12)
    level_json = level_json or level.model_dump_json(exclude={"records"})
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute(
        "INSERT INTO chat_sessions VALUES ('c1', 'old chat', ?, 'Be brief.', '{\"temperature\": 0.2}', ?, ?)",
        (make_target().model_dump_json(), T0, T1),
    )
    conn.execute("INSERT INTO chat_messages VALUES (1, 'c1', 'user', 'hi', ?, 'complete', NULL)", (T0,))
    stats = {"ttft_ms": 150.0, "tpot_ms": 20.0, "itl_ms": [19.0, 21.0], "output_tokens": 3, "e2e_ms": 190.0}
    conn.execute(
        "INSERT INTO chat_messages VALUES (2, 'c1', 'assistant', 'hello!', ?, 'partial', ?)",
        (T1, json.dumps(stats)),
    )
    conn.execute(
        "INSERT INTO runs VALUES ('r1', ?, ?, 'complete', ?, NULL)", (T0, T1, config.model_dump_json())
    )
    conn.execute("INSERT INTO run_levels VALUES ('r1', 0, ?)", (level_json,))
    jsonl = "\n".join(record.model_dump_json() for record in records)
    conn.execute(
        "INSERT INTO run_record_chunks VALUES (1, 'r1', 0, ?, ?)",
        (len(records), zlib.compress(jsonl.encode())),
    )
    conn.commit()
    conn.close()
    return V1Content(config, level, records)


def test_hand_written_v1_database_migrates_with_all_data(tmp_path: Path) -> None:
    written = write_v1_database(tmp_path / DB_FILENAME)

    with SessionStore.open(tmp_path) as store:
        assert store.db.schema_version == SCHEMA_VERSION == 4

        chat = store.chats.load_chat("c1")
        assert (chat.title, chat.system_prompt, chat.params) == (
            "old chat",
            "Be brief.",
            {"temperature": 0.2},
        )
        assert chat.target == make_target()
        question, answer = chat.messages
        assert (question.text, question.timing) == ("hi", None)
        assert (answer.text, answer.status) == ("hello!", MessageStatus.PARTIAL)
        assert answer.timing is not None
        assert (answer.timing.ttft_ms, answer.timing.itl_ms, answer.timing.output_tokens) == (
            150.0,
            [19.0, 21.0],
            3,
        )
        assert store.chats.list_chats()[0].target_name == "twin-h100"

        (summary,) = store.runs.list_runs()
        assert (summary.id, summary.label, summary.target_name, summary.status) == (
            "r1",
            "4xL4 baseline",
            "twin-h100",
            RunStatus.COMPLETE,
        )
        assert summary.records_stored == 6
        sweep = store.runs.load_sweep("r1", with_records=True, with_snapshots=True)
        assert sweep.config == written.config
        assert sweep.levels[0].metrics == written.level.metrics
        assert sweep.levels[0].server_snapshots == written.level.server_snapshots
        assert sweep.levels[0].records == written.records
        assert sweep.levels[0].gpu is None  # v3's column: no GPU telemetry was read in v1
        assert sweep.levels[0].prompt_sampling is None  # v4's column: v1 did not record it

        # The migrated database takes new data in the new format next to the old chunks.
        writer = store.runs.writer()
        new_run = writer.begin_run(make_config())
        writer.add_records(0, make_records(0, 3))
        writer.finish_run(RunStatus.PARTIAL)
        assert len(store.runs.level_records(new_run, 0)) == 3
        assert [s.id for s in store.runs.list_runs(RunFilter(label="baseline"))] == ["r1"]

    backup = tmp_path / f"{DB_FILENAME}.v1.bak"
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM run_record_chunks").fetchone() == (1,)
    conn.close()


def test_failed_migration_leaves_the_v1_database_untouched(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    write_v1_database(path, level_json='{"not": "a level result"}')
    with pytest.raises(SessionStoreError, match=r"could not upgrade .* from schema version 1") as caught:
        SessionStore.open(tmp_path)
    assert "left unchanged" in str(caught.value)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
        assert conn.execute("SELECT result_json FROM run_levels").fetchone() == ('{"not": "a level result"}',)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(runs)")]
        assert "label" not in columns
    conn.close()


def test_fresh_database_is_created_at_the_current_version(tmp_path: Path) -> None:
    with SessionStore.open(tmp_path) as store:
        assert store.db.schema_version == SCHEMA_VERSION
        with store.db.read() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert not list(tmp_path.glob("*.bak"))  # nothing to back up for a new file
