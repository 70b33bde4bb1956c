"""Bad data directories and database files: one clear message, no traceback, nothing overwritten."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from backends.bench.results import RunStatus
from backends.errors import ServeDeckError
from sessions import SessionStore, SessionStoreError
from sessions.database import DB_FILENAME
from sessions.schema import SCHEMA_VERSION
from tests.sessions_helpers import make_config, make_records
from tui.cli import main


def files_in(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def cli_error(capsys: pytest.CaptureFixture[str], data_dir: Path) -> str:
    """Run `servedeck runs list` on ``data_dir``; return its single stderr line."""
    assert main(["runs", "list", "--data-dir", str(data_dir)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("servedeck: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def test_newer_schema_is_refused_and_left_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        conn.execute("CREATE TABLE future_things (x)")
        conn.execute("INSERT INTO future_things VALUES ('precious')")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    before = files_in(tmp_path)

    with pytest.raises(SessionStoreError, match=f"newer ServeDeck \\(schema version {SCHEMA_VERSION + 5}"):
        SessionStore.open(tmp_path)
    line = cli_error(capsys, tmp_path)
    assert "upgrade ServeDeck" in line
    assert files_in(tmp_path) == before


@pytest.mark.parametrize(
    "content",
    [
        b"this is my shopping list, not a database\n" * 10,
        b"SQLite format 3\x00" + b"\xff" * 8000,
        b"SQLite format 3\x00",
    ],
    ids=["text", "garbage-after-header", "truncated-header"],
)
def test_corrupt_database_is_refused_and_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    (tmp_path / DB_FILENAME).write_bytes(content)
    with pytest.raises(SessionStoreError, match="is damaged") as caught:
        SessionStore.open(tmp_path)
    (copy,) = [name for name in files_in(tmp_path) if name != DB_FILENAME]
    assert copy.startswith(f"{DB_FILENAME}.corrupt-")
    assert copy in str(caught.value) and "--reset-store" in str(caught.value)
    assert copy in cli_error(capsys, tmp_path)
    # The damaged file is untouched, and opening twice keeps one copy.
    assert files_in(tmp_path) == {DB_FILENAME: content, copy: content}


def test_sqlite_file_of_another_program_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        conn.execute("CREATE TABLE bookmarks (url TEXT)")
    conn.close()
    before = files_in(tmp_path)
    with pytest.raises(SessionStoreError, match="another program"):
        SessionStore.open(tmp_path)
    assert files_in(tmp_path) == before


def test_database_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).mkdir()
    with pytest.raises(SessionStoreError, match="is a folder"):
        SessionStore.open(tmp_path)


def test_unwritable_data_directory_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    data_dir = blocker / "data"  # cannot be created: its parent is a file
    with pytest.raises(ServeDeckError, match="cannot write the data directory"):
        SessionStore.open(data_dir)
    assert "--data-dir" in cli_error(capsys, data_dir)
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_data_directory_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ServeDeckError, match="cannot write the data directory"):
            SessionStore.open(tmp_path)
        cli_error(capsys, tmp_path)
    finally:
        tmp_path.chmod(0o700)


def test_full_disk_keeps_what_was_saved_and_says_so(tmp_path: Path) -> None:
    with SessionStore.open(tmp_path) as store:
        writer = store.runs.writer()
        run_id = writer.begin_run(make_config())
        writer.add_records(0, make_records(0, 5, chunks=16))
        with store.db.write() as conn:  # SQLite's own way to hit SQLITE_FULL: cap the file's pages
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(SessionStoreError, match="is full; free some space"):
            writer.add_records(0, make_records(5, 2000, chunks=256))
        # What was committed before is intact and the store still answers.
        assert [r.index for r in store.runs.level_records(run_id, 0)] == list(range(5))
        assert store.runs.summary(run_id).status is RunStatus.RUNNING
        with store.db.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
