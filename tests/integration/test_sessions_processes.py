"""Real processes on one database: a writer killed with SIGKILL, a reader during writes, two writers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backends.bench.results import RunStatus
from sessions import MessageRole, SessionStore, run_rows
from tests.sessions_helpers import make_target

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 120.0
BATCH = 25


@contextmanager
def writer_process(data_dir: Path, batches: int | None = None) -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "tests.sessions_helpers", str(data_dir), str(BATCH)]
    if batches is not None:
        command.append(str(batches))
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def read_until_stored(proc: subprocess.Popen[str], at_least: int) -> tuple[str, int]:
    """The run id and the last count the writer reported as committed."""
    assert proc.stdout is not None
    run_id = ""
    stored = 0
    deadline = time.monotonic() + DEADLINE_S
    while stored < at_least:
        assert time.monotonic() < deadline, "writer process too slow"
        line = proc.stdout.readline()
        if not line:
            assert proc.stderr is not None
            raise AssertionError(f"writer exited early: {proc.stderr.read()}")
        word, value = line.split()
        if word == "run":
            run_id = value
        else:
            stored = int(value)
    return run_id, stored


def test_sigkill_mid_run_keeps_finished_requests_and_marks_partial(tmp_path: Path) -> None:
    with writer_process(tmp_path) as proc:
        run_id, reported = read_until_stored(proc, at_least=8 * BATCH)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

    with SessionStore.open(tmp_path) as store:
        assert store.recovered_runs == [run_id]
        summary = store.runs.summary(run_id)
        assert summary.status is RunStatus.PARTIAL
        assert summary.message is not None and "stopped before it finished" in summary.message
        detail = store.runs.detail(run_id)
        assert [(level.index, level.status) for level in detail.levels] == [
            (0, RunStatus.COMPLETE),
            (1, RunStatus.PARTIAL),
        ]
        level1 = store.runs.level_records(run_id, 1)
        # Everything reported as committed is there; whole batches only (each batch is one transaction).
        assert len(level1) >= reported - BATCH
        assert len(level1) % BATCH == 0
        assert [record.index for record in level1] == list(range(len(level1)))
        assert detail.levels[1].records_stored == len(level1)
        assert len(store.runs.level_records(run_id, 0)) == BATCH
        with store.db.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    with SessionStore.open(tmp_path) as again:  # recovery happens once
        assert again.recovered_runs == []


def test_reader_sees_a_consistent_view_while_a_writer_process_writes(tmp_path: Path) -> None:
    SessionStore.open(tmp_path).close()
    with writer_process(tmp_path) as proc, SessionStore.open(tmp_path) as reader:
        run_id, _ = read_until_stored(proc, at_least=BATCH)
        observed: list[int] = []
        deadline = time.monotonic() + DEADLINE_S
        while not observed or observed[-1] < 20 * BATCH or len(set(observed)) <= 3:
            assert time.monotonic() < deadline, f"reader saw only {sorted(set(observed))}"
            with reader.db.read() as conn:  # one snapshot: the count row and the chunks must agree
                levels = {level.index: level for level in run_rows.fetch_levels(conn, run_id)}
                records = run_rows.fetch_records(conn, run_id, 1) if 1 in levels else []
            count = levels[1].records_stored if 1 in levels else 0
            assert len(records) == count
            assert [record.index for record in records] == list(range(count))
            assert count % BATCH == 0
            assert not observed or count >= observed[-1]
            observed.append(count)
        assert proc.poll() is None, "the writer must still be running while we read"


def test_two_writer_processes_and_a_chat_on_one_database(tmp_path: Path) -> None:
    batches = 30
    with writer_process(tmp_path, batches) as first, writer_process(tmp_path, batches) as second:
        with SessionStore.open(tmp_path) as store:  # a third writer: a chat in this process
            chat = store.chats.create_chat(make_target())
            for turn in range(20):
                store.chats.append_message(chat.id, MessageRole.USER, f"turn {turn}")
        for proc in (first, second):
            assert proc.wait(timeout=DEADLINE_S) == 0, proc.stderr.read() if proc.stderr else ""

    with SessionStore.open(tmp_path) as store:
        summaries = store.runs.list_runs()
        assert len(summaries) == 2
        for summary in summaries:
            assert summary.status is RunStatus.COMPLETE
            records = store.runs.level_records(summary.id, 1)
            assert [record.index for record in records] == list(range(batches * BATCH))
            assert summary.records_stored == (batches + 1) * BATCH
        assert len(store.chats.load_chat(chat.id).messages) == 20
        with store.db.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
