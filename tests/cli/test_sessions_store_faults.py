"""A busy, damaged, future-version or read-only store: no finished run is lost, nothing is overwritten.

The write lock is held by a real second process (``BEGIN IMMEDIATE``); the read-only store is a
read-only mount of the data folder (root) or a folder without write permission (other users).
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backends.bench.results import RunStatus
from sessions import SessionStore, SessionStoreError
from sessions.database import DB_FILENAME
from sessions.journal import JOURNAL_DIRNAME
from sessions.schema import SCHEMA_VERSION
from tests.cli_runner import run_main as cli
from tests.fakes.sse_server import FakeSSEServer
from tests.sessions_helpers import make_config, make_level_result, make_records

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 120.0

_HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
"""


@contextmanager
def write_lock_held(db_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the write lock until the block ends (or ``release`` is called)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        release(proc)


def release(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.stdin.close()
        assert proc.wait(timeout=DEADLINE_S) == 0
    if proc.stdout is not None:
        proc.stdout.close()


def write_full_run(store: SessionStore, levels: int = 2, per_level: int = 30) -> tuple[str, int]:
    config = make_config(levels=[float(2**i) for i in range(levels)])
    writer = store.runs.writer()
    writer.retry_interval_s = 0.0  # try the lock at every write, not once a second
    run_id = writer.begin_run(config, gpu="twin 1x H100")
    for index in range(levels):
        writer.begin_level(index)
        writer.add_records(index, make_records(index * 1000, per_level // 2, chunks=8))
        rest = make_records(index * 1000 + per_level // 2, per_level - per_level // 2, chunks=8)
        writer.finish_level(make_level_result(config, index, rest))
    writer.finish_run(RunStatus.COMPLETE)
    return run_id, per_level


def assert_run_whole(store: SessionStore, run_id: str, levels: int, per_level: int) -> None:
    summary = store.runs.summary(run_id)
    assert summary.status is RunStatus.COMPLETE
    assert summary.gpu == "twin 1x H100"
    assert summary.records_stored == levels * per_level
    detail = store.runs.detail(run_id)
    assert [(level.index, level.status) for level in detail.levels] == [
        (i, RunStatus.COMPLETE) for i in range(levels)
    ]
    for index in range(levels):
        records = store.runs.level_records(run_id, index)
        assert [r.index for r in records] == [index * 1000 + i for i in range(per_level)]
        assert records == make_records(index * 1000, per_level // 2, chunks=8) + make_records(
            index * 1000 + per_level // 2, per_level - per_level // 2, chunks=8
        )
        assert len(store.runs.level_snapshots(run_id, index)) == 3
    with store.db.read() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --- a busy store -------------------------------------------------------------------------------


def test_run_finished_under_a_held_lock_is_merged_on_the_next_open(tmp_path: Path) -> None:
    SessionStore.open(tmp_path).close()
    with write_lock_held(tmp_path / DB_FILENAME), SessionStore.open(tmp_path) as store:
        run_id, per_level = write_full_run(store)
        assert not store.runs.list_runs()  # nothing reached the database yet
    journal = tmp_path / JOURNAL_DIRNAME
    assert [path.name for path in journal.iterdir()] == [f"{run_id}.jsonl"]

    with SessionStore.open(tmp_path) as store:
        assert store.merged_runs == [run_id]
        assert store.recovered_runs == []
        assert_run_whole(store, run_id, 2, per_level)
    assert list(journal.iterdir()) == []
    with SessionStore.open(tmp_path) as store:  # merged once, not twice
        assert store.merged_runs == []
        assert_run_whole(store, run_id, 2, per_level)


def test_lock_freed_mid_run_the_writer_merges_its_journal_itself(tmp_path: Path) -> None:
    SessionStore.open(tmp_path).close()
    config = make_config(levels=[1.0, 2.0])
    with SessionStore.open(tmp_path) as store:
        writer = store.runs.writer()
        writer.retry_interval_s = 0.0
        with write_lock_held(tmp_path / DB_FILENAME) as holder:
            run_id = writer.begin_run(config, gpu="twin 1x H100")
            writer.add_records(0, make_records(0, 15, chunks=8))
            assert writer.journal_path is not None and writer.journal_path.exists()
            release(holder)
            writer.finish_level(make_level_result(config, 0, make_records(15, 15, chunks=8)))
        assert writer.journal_path is None  # merged as soon as the lock was free
        assert store.runs.summary(run_id).records_stored == 30
        writer.add_records(1, make_records(1000, 15, chunks=8))
        writer.finish_level(make_level_result(config, 1, make_records(1015, 15, chunks=8)))
        writer.finish_run(RunStatus.COMPLETE)
        assert_run_whole(store, run_id, 2, 30)
    assert list((tmp_path / JOURNAL_DIRNAME).iterdir()) == []


def test_journal_of_a_writer_killed_while_the_store_was_busy_is_merged_and_marked_partial(
    tmp_path: Path,
) -> None:
    SessionStore.open(tmp_path).close()
    with write_lock_held(tmp_path / DB_FILENAME):
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests.sessions_helpers", str(tmp_path), "10"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None and writer.stderr is not None
        try:
            lines = [writer.stdout.readline() for _ in range(4)]  # run id, level 0, two batches
            assert lines[0].startswith("run "), writer.stderr.read()
        finally:
            writer.kill()
            writer.wait(timeout=DEADLINE_S)
            writer.stdout.close()
            writer.stderr.close()
    run_id = lines[0].split()[1]
    with SessionStore.open(tmp_path) as store:
        assert store.merged_runs == [run_id]
        assert store.recovered_runs == [run_id]
        summary = store.runs.summary(run_id)
        assert summary.status is RunStatus.PARTIAL
        assert summary.records_stored >= 30  # level 0 and the two batches it reported
        assert [r.index for r in store.runs.level_records(run_id, 1)] == list(
            range(summary.records_stored - 10)
        )


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSSEServer]:
    srv = FakeSSEServer(mode="tick")
    srv.start_in_thread()
    yield srv
    srv.stop()


def test_bench_cli_under_a_held_lock_loses_no_request(server: FakeSSEServer, tmp_path: Path) -> None:
    SessionStore.open(tmp_path).close()
    with write_lock_held(tmp_path / DB_FILENAME):
        done = subprocess.run(
            [
                *(sys.executable, "-m", "tui.cli", "bench", "--plain"),
                *("--target", f"http://127.0.0.1:{server.port}", "--concurrency", "1,4"),
                *("--dataset", "random", "--random-input-len", "24", "--output-len", "8"),
                *("--num-prompts", "8"),
            ],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            env={**os.environ, "SERVEDECK_DATA_DIR": str(tmp_path), "COLUMNS": "160"},
            stdin=subprocess.DEVNULL,
        )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "not fully saved" not in done.stderr
    assert "busy" in done.stderr and JOURNAL_DIRNAME in done.stderr
    with SessionStore.open(tmp_path) as store:
        (run_id,) = store.merged_runs
        summary = store.runs.summary(run_id)
        assert summary.status is RunStatus.COMPLETE
        assert summary.records_stored == 16
        detail = store.runs.detail(run_id)
        assert [level.records_stored for level in detail.levels] == [8, 8]
        assert all(level.metrics is not None for level in detail.levels)


# --- damaged, truncated and future-version stores ---------------------------------------------------


def files_in(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def store_with_runs(folder: Path, runs: int = 3) -> list[str]:
    ids = []
    with SessionStore.open(folder) as store:
        for _ in range(runs):
            config = make_config(levels=[1.0])
            writer = store.runs.writer()
            ids.append(writer.begin_run(config))
            writer.finish_level(make_level_result(config, 0, make_records(0, 200, chunks=64)))
            writer.finish_run(RunStatus.COMPLETE)
    assert not (folder / f"{DB_FILENAME}-wal").exists()
    return ids


def corrupt_a_table_page(path: Path) -> None:
    """Overwrite the middle of a page of ``runs``' records chunks: the header still reads fine."""
    with sqlite3.connect(path) as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'run_record_chunks'"
        ).fetchone()
    conn.close()
    with path.open("r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\x0d" + b"\xff" * 64)  # a leaf page whose cell count and pointers are garbage


def quarantined(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob(f"{DB_FILENAME}.corrupt-*") if not path.name.endswith("-wal"))


@pytest.mark.parametrize("damage", ["page", "truncated"])
def test_damaged_store_is_quarantined_never_written_and_reset_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    store_with_runs(tmp_path)
    db_path = tmp_path / DB_FILENAME
    if damage == "page":
        corrupt_a_table_page(db_path)
    else:
        data = db_path.read_bytes()
        db_path.write_bytes(data[: len(data) // 2])
    damaged = db_path.read_bytes()

    with pytest.raises(SessionStoreError, match="damaged") as caught:
        SessionStore.open(tmp_path)
    (copy,) = quarantined(tmp_path)
    assert copy.read_bytes() == damaged
    assert str(copy) in str(caught.value)
    assert "--reset-store" in str(caught.value)
    assert db_path.read_bytes() == damaged  # nothing was written into it

    code, out, err = cli(capsys, "runs", "list", "--data-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert err.startswith("servedeck: error: ") and len(err.strip().splitlines()) == 1
    assert str(copy) in err and "Traceback" not in err
    assert quarantined(tmp_path) == [copy]  # opening again keeps one copy, not one per try
    assert db_path.read_bytes() == damaged

    code, out, err = cli(capsys, "runs", "list", "--reset-store", "--data-dir", str(tmp_path))
    assert code == 0, err
    assert str(copy) in err and "fresh" in err
    assert "no saved runs yet" in out
    assert copy.read_bytes() == damaged
    with SessionStore.open(tmp_path) as store:
        assert store.runs.list_runs() == []
        with store.db.read() as conn:
            assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)


def test_reset_store_on_a_healthy_store_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = store_with_runs(tmp_path, runs=1)
    code, out, _ = cli(capsys, "runs", "list", "--reset-store", "--data-dir", str(tmp_path))
    assert code == 0 and ids[0] in out
    assert quarantined(tmp_path) == []


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (-5, "damaged"),
        (-1, "damaged"),
        (SCHEMA_VERSION + 1, "newer ServeDeck"),
        (2**31 - 1, "newer ServeDeck"),
    ],
)
def test_unknown_schema_version_of_our_own_store_is_one_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: int, expected: str
) -> None:
    store_with_runs(tmp_path, runs=1)
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    before = (tmp_path / DB_FILENAME).read_bytes()
    code, out, err = cli(capsys, "runs", "list", "--data-dir", str(tmp_path))
    assert code == 1 and out == ""
    assert expected in err
    assert "already exists" not in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (tmp_path / DB_FILENAME).read_bytes() == before


# --- a read-only store -------------------------------------------------------------------------------


def _read_only_cli(data_dir: Path, out_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``servedeck ARGV`` in a real process that sees ``data_dir`` read-only."""
    command = [sys.executable, "-m", "tui.cli", *argv, "--data-dir", str(data_dir)]
    env = {**os.environ, "COLUMNS": "200"}
    if os.geteuid() == 0:  # root writes through permissions; a read-only mount stops it
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare(1) to mount the store read-only as root")
        script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
        command = ["unshare", "-m", "sh", "-c", script, "sh", str(data_dir), *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env=env,
        cwd=out_dir,
        stdin=subprocess.DEVNULL,
    )


def test_read_only_store_still_lists_shows_and_exports(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (run_id,) = store_with_runs(data_dir, runs=1)
    before = files_in(data_dir)
    if os.geteuid() != 0:
        (data_dir / DB_FILENAME).chmod(0o444)
        data_dir.chmod(0o555)
    try:
        listed = _read_only_cli(data_dir, out_dir, "runs", "list")
        assert listed.returncode == 0, listed.stderr
        assert run_id in listed.stdout
        shown = _read_only_cli(data_dir, out_dir, "runs", "show", run_id[:12])
        assert shown.returncode == 0, shown.stderr
        assert "levels" in shown.stdout
        exported = _read_only_cli(data_dir, out_dir, "runs", "export", run_id, "-o", str(out_dir / "b.json"))
        assert exported.returncode == 0, exported.stderr
        assert f'"run_id":"{run_id}"' in (out_dir / "b.json").read_text().replace(" ", "")
        labelled = _read_only_cli(data_dir, out_dir, "runs", "label", run_id, "x")
        assert labelled.returncode == 1
        assert "read-only" in labelled.stderr and "Traceback" not in labelled.stderr
        assert len(labelled.stderr.strip().splitlines()) == 1
    finally:
        data_dir.chmod(0o755)
    assert files_in(data_dir) == before


def _cli_on_a_tty(data_dir: Path, answer: str) -> tuple[int, str]:
    """``servedeck runs list`` in a real process whose stdin is a terminal; types ``answer``."""
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "runs", "list", "--data-dir", str(data_dir)],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(child_fd)
    output = b""
    deadline = time.monotonic() + DEADLINE_S
    try:
        while b"[y/N]" not in output:
            assert time.monotonic() < deadline, output
            if select.select([main_fd], [], [], 1.0)[0]:
                output += os.read(main_fd, 65536)
        os.write(main_fd, answer.encode() + b"\n")
        while True:
            assert time.monotonic() < deadline, output
            if select.select([main_fd], [], [], 1.0)[0]:
                try:
                    chunk = os.read(main_fd, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=DEADLINE_S), output.decode(errors="replace").replace("\r\n", "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE_S)
        os.close(main_fd)


def test_cli_on_a_terminal_asks_before_starting_a_fresh_store(tmp_path: Path) -> None:
    store_with_runs(tmp_path, runs=1)
    corrupt_a_table_page(tmp_path / DB_FILENAME)
    damaged = (tmp_path / DB_FILENAME).read_bytes()

    code, output = _cli_on_a_tty(tmp_path, "n")
    assert code == 1 and "left as it is" in output and "Traceback" not in output
    (copy,) = quarantined(tmp_path)
    assert (tmp_path / DB_FILENAME).read_bytes() == damaged

    code, output = _cli_on_a_tty(tmp_path, "y")
    assert code == 0, output
    assert f"the damaged one is kept at {copy}" in output and "no saved runs yet" in output
    assert quarantined(tmp_path) == [copy] and copy.read_bytes() == damaged


def test_a_journal_merged_again_after_a_crash_adds_nothing_twice(tmp_path: Path) -> None:
    """A process killed between the merge's commit and the journal's removal leaves the file behind."""
    SessionStore.open(tmp_path).close()
    with write_lock_held(tmp_path / DB_FILENAME), SessionStore.open(tmp_path) as store:
        run_id, per_level = write_full_run(store)
    (journal,) = (tmp_path / JOURNAL_DIRNAME).iterdir()
    content = journal.read_bytes()
    with SessionStore.open(tmp_path) as store:
        assert store.merged_runs == [run_id]
    journal.write_bytes(content + b'{"op": "finish", "at": "cut sh')  # and a torn last line
    with SessionStore.open(tmp_path) as store:
        assert store.merged_runs == [run_id]
        assert_run_whole(store, run_id, 2, per_level)
        assert len(store.runs.list_runs()) == 1
