"""The TUI meets a damaged sessions store: it offers a fresh one and replaces it only on yes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessions.database import DB_FILENAME
from sessions.store import SessionStore
from tests.cli.test_sessions_store_faults import corrupt_a_table_page, quarantined, store_with_runs
from tests.tui.test_tui_history import SIZE, HistoryHarness, history, wait_until
from tui.context import AppContext
from tui.widgets.deploy.dialogs import ConfirmScreen
from tui.widgets.history.runs import RunsTable

pytestmark = pytest.mark.anyio


def damaged_store(folder: Path) -> bytes:
    store_with_runs(folder, runs=2)
    corrupt_a_table_page(folder / DB_FILENAME)
    return (folder / DB_FILENAME).read_bytes()


async def test_no_keeps_the_damaged_store_and_says_where_its_copy_is(tmp_path: Path) -> None:
    damaged = damaged_store(tmp_path)
    app = HistoryHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        (copy,) = quarantined(tmp_path)
        await pilot.press("n")
        await wait_until(pilot, lambda: any(severity == "error" for severity, _ in app.messages))
        errors = [text for severity, text in app.messages if severity == "error"]
        assert all(str(copy) in text for text in errors), errors
        assert any(text.startswith("cannot read History:") for text in errors)
        await pilot.pause(0.3)
        history(app)  # asked once: a declined store is not offered again
    assert (tmp_path / DB_FILENAME).read_bytes() == damaged
    assert copy.read_bytes() == damaged


async def test_yes_starts_a_fresh_store_and_keeps_the_copy(tmp_path: Path) -> None:
    damaged = damaged_store(tmp_path)
    app = HistoryHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_until(pilot, lambda: any("fresh sessions store" in text for _, text in app.messages))
        screen = history(app)
        await wait_until(
            pilot,
            lambda: "run a sweep in the Bench view" in str(screen.query_one("#overlay-caption").content),
        )
        assert screen.query_one(RunsTable).row_count == 0
        assert not any(severity == "error" for severity, _ in app.messages)
    (copy,) = quarantined(tmp_path)
    assert copy.read_bytes() == damaged
    with SessionStore.open(tmp_path) as store:
        assert store.runs.list_runs() == []
