"""History view (Pilot, 120x40): saved runs from a real sessions store in a temp folder; overlay,
filter, delete with confirmation, re-run in the Bench view, chats."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
from textual.app import App
from textual.notifications import SeverityLevel
from textual.pilot import Pilot
from textual.widgets import Input, SelectionList, TabbedContent

from backends.bench.models import Axis
from backends.bench.results import RunStatus
from backends.target_types import Target, TargetKind
from sessions.run_models import RunSummary
from sessions.store import SessionStore
from tests import tui_helpers
from tests.tui.test_tui_bench import RUN_START, fixed_sweep, seed
from tui.context import AppContext
from tui.screens.bench import BenchScreen
from tui.screens.history import HistoryScreen
from tui.widgets.bench.sweep_chart import SweepChart
from tui.widgets.deploy.dialogs import ConfirmScreen
from tui.widgets.history.chats import ChatsTable
from tui.widgets.history.overlay import overlay_series, series_names
from tui.widgets.history.runs import RunsTable

pytestmark = pytest.mark.anyio

SIZE = (120, 40)


class HistoryHarness(App[None]):
    MODES: ClassVar[dict[str, Any]] = {"bench": BenchScreen, "history": HistoryScreen}

    def __init__(self, ctx: AppContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.messages: list[tuple[str, str]] = []

    def on_mount(self) -> None:
        self.switch_mode("history")

    def notify(self, message: str, *, severity: SeverityLevel = "information", **kwargs: Any) -> None:
        self.messages.append((severity, str(message)))
        super().notify(message, severity=severity, **kwargs)


wait_until = partial(tui_helpers.wait_until, timeout_s=20.0, poll_s=0.05)


def history(app: App[None]) -> HistoryScreen:
    screen = app.screen
    assert isinstance(screen, HistoryScreen)
    return screen


async def loaded(pilot: Pilot[Any], count: int) -> HistoryScreen:
    screen = history(pilot.app)
    await wait_until(pilot, lambda: screen.query_one(RunsTable).row_count == count)
    return screen


async def test_overlay_two_saved_runs(tmp_path: Path) -> None:
    seed(
        tmp_path,
        (fixed_sweep("twin-4xL4", "aaaa1111bbbb", 3.0), "4xL4"),
        (fixed_sweep("twin-1xH100", "cccc2222dddd", 1.0), "1xH100"),
    )
    app = HistoryHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, 2)
        chart = screen.query_one(SweepChart)
        await wait_until(
            pilot, lambda: [s.name for s in chart.series] == ["1xH100"]
        )  # newest first, previewed

        await pilot.press("space", "down", "space")
        await wait_until(pilot, lambda: len(chart.series) == 2)
        assert [s.name for s in chart.series] == ["1xH100", "4xL4"]
        h100, l4 = chart.series
        assert [p.value for p in h100.points] == [1.0, 4.0]
        assert h100.points[0].total_tokens_per_s > l4.points[0].total_tokens_per_s
        assert "overlay of 2 runs: 1xH100 vs 4xL4" in str(screen.query_one("#overlay-caption").content)
        await wait_until(pilot, lambda: chart.stats.redraws >= 1 and not chart.dirty)

        await pilot.press("space")  # unmark one: back to a single run
        await wait_until(pilot, lambda: [s.name for s in chart.series] == ["1xH100"])


async def test_runs_of_different_axes_are_not_overlaid(tmp_path: Path) -> None:
    rate = fixed_sweep("twin-1xH100", "eeee3333ffff", 1.0)
    rate = rate.model_copy(
        update={
            "config": rate.config.model_copy(update={"axis": Axis.REQUEST_RATE}),
            "levels": [
                lv.model_copy(update={"level": lv.level.model_copy(update={"axis": Axis.REQUEST_RATE})})
                for lv in rate.levels
            ],
        }
    )
    seed(tmp_path, (fixed_sweep("twin-4xL4", "aaaa1111bbbb", 3.0), None), (rate, None))
    app = HistoryHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, 2)
        await pilot.press("space", "down", "space")
        await wait_until(pilot, lambda: any(sev == "warning" for sev, _ in app.messages))
        (warning,) = [text for sev, text in app.messages if sev == "warning"]
        assert "swept different axes" in warning and "mark runs of one axis only" in warning
        assert len(screen.query_one(SweepChart).series) == 1


async def test_delete_asks_first_and_no_keeps_the_run(tmp_path: Path) -> None:
    seed(
        tmp_path,
        (fixed_sweep("twin-4xL4", "aaaa1111bbbb", 3.0), None),
        (fixed_sweep("twin-1xH100", "cccc2222dddd", 1.0), None),
    )
    app = HistoryHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, 2)
        await pilot.press("ctrl+d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        assert screen.query_one(RunsTable).row_count == 2

        await pilot.press("ctrl+d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.pause()
        await pilot.press("y")
        await wait_until(pilot, lambda: screen.query_one(RunsTable).row_count == 1)
        assert [run.id for run in screen.runs] == ["aaaa1111bbbb"]
    with SessionStore.open(tmp_path) as store:
        assert [run.id for run in store.runs.list_runs()] == ["aaaa1111bbbb"]


async def test_filter_narrows_inverts_and_clears(tmp_path: Path) -> None:
    seed(
        tmp_path,
        (fixed_sweep("twin-4xL4", "aaaa1111bbbb", 3.0), "4xL4"),
        (fixed_sweep("twin-1xH100", "cccc2222dddd", 1.0), "1xH100"),
        (fixed_sweep("twin-2xH100", "eeee3333ffff", 0.6), "2xH100"),
    )
    app = HistoryHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, 3)
        table = screen.query_one(RunsTable)
        await pilot.press("slash", *"h100")
        assert table.row_count == 2
        box = screen.query_one("#history-filter", Input)
        box.value = "!h100"
        await pilot.pause()
        assert table.row_count == 1
        await pilot.press("enter")
        assert screen.focused is table
        await pilot.press("escape")
        assert table.row_count == 3 and not box.display


async def test_rerun_fills_the_bench_form_with_the_saved_config(tmp_path: Path) -> None:
    sweep = fixed_sweep("twin-1xH100", "cccc2222dddd", 1.0)
    seed(tmp_path, (sweep, "1xH100"))
    app = HistoryHarness(AppContext(data_dir=tmp_path, targets=[sweep.config.target]))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, 1)
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, BenchScreen))
        bench = app.screen
        assert isinstance(bench, BenchScreen)
        await wait_until(pilot, lambda: bench.query_one("#bench-levels", Input).value == "1,4")
        assert bench.query_one("#bench-prompts", Input).value == "10"
        assert bench.query_one("#bench-label", Input).value == "1xH100"
        assert bench.query_one(SelectionList).selected == ["twin-1xH100"]
        assert bench.query_one(TabbedContent).active == "bench-setup"
        assert "filled from run cccc2222dddd" in str(bench.query_one("#bench-form-message").content)


async def test_rerun_of_a_target_that_is_gone_asks_to_pick_one(tmp_path: Path) -> None:
    seed(tmp_path, (fixed_sweep("twin-1xH100", "cccc2222dddd", 1.0), None))
    app = HistoryHarness(AppContext(data_dir=tmp_path, targets=[]))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, 1)
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, BenchScreen))
        message = app.screen.query_one("#bench-form-message")
        await wait_until(pilot, lambda: "is not available now: pick one in Targets" in str(message.content))


async def test_chats_are_listed_and_deleted_after_confirmation(tmp_path: Path) -> None:
    target = Target(
        name="local", base_url="http://127.0.0.1:8080", model="gemma-3-270m", kind=TargetKind.LLAMACPP
    )
    with SessionStore.open(tmp_path) as store:
        store.chats.create_chat(target, title="latency check")
        store.chats.create_chat(target, title="haiku")
    app = HistoryHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, 0)
        chats = screen.query_one(ChatsTable)
        await wait_until(pilot, lambda: chats.row_count == 2)
        await pilot.press("ctrl+t")
        assert screen.query_one(TabbedContent).active == "history-chats"
        chats.focus()
        await pilot.press("ctrl+d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.pause()
        await pilot.press("y")
        await wait_until(pilot, lambda: chats.row_count == 1)
    with SessionStore.open(tmp_path) as store:
        assert len(store.chats.list_chats()) == 1


async def test_empty_history_says_how_to_fill_it(tmp_path: Path) -> None:
    app = HistoryHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = await loaded(pilot, 0)
        caption = screen.query_one("#overlay-caption")
        await wait_until(pilot, lambda: "run a sweep in the Bench view" in str(caption.content))
        await pilot.press("r")
        await pilot.press("ctrl+d")
        await pilot.pause()
        assert [text for _, text in app.messages] == ["no run selected", "no run selected"]


async def test_an_unreadable_store_is_one_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    app = HistoryHarness(AppContext(data_dir=blocker))
    async with app.run_test(size=SIZE) as pilot:
        history(app)
        await wait_until(pilot, lambda: bool(app.messages))
        ((severity, text),) = app.messages
        assert severity == "error" and text.startswith("cannot read History:")


def test_series_names_prefer_own_labels_then_targets_then_ids() -> None:
    def summary(run_id: str, label: str | None, target: str) -> RunSummary:
        return _summary(run_id, target, label=label)

    runs = [
        summary("aaaa1111bbbb", "4xL4", "t1"),
        summary("bbbb2222", "demo", "t2"),
        summary("cccc3333", "demo", "t3"),
    ]
    assert series_names(runs) == ["4xL4", "t2", "t3"]
    same = [summary("aaaa1111bbbb", None, "t1"), summary("cccc2222dddd", None, "t1")]
    assert series_names(same) == ["t1 (aaaa1111)", "t1 (cccc2222)"]


async def test_in_the_shell_rerun_opens_bench_and_esc_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.app import ServeDeckApp

    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    sweep = fixed_sweep("twin-1xH100", "cccc2222dddd", 1.0)
    seed(tmp_path / "data", (sweep, "1xH100"))
    ctx = AppContext(data_dir=tmp_path / "data", targets=[sweep.config.target])
    app = ServeDeckApp(
        ctx, start_local_engine=False, show_welcome=False, check_health=False, discover_cluster=False
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("4")
        await wait_until(pilot, lambda: isinstance(app.screen, HistoryScreen))
        await loaded(pilot, 1)
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, BenchScreen))
        levels = app.screen.query_one("#bench-levels", Input)
        await wait_until(pilot, lambda: levels.value == "1,4")
        app.screen.query_one(SelectionList).focus()
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, HistoryScreen))


def _summary(run_id: str, target: str, label: str | None = None) -> RunSummary:
    return RunSummary(
        id=run_id,
        label=label,
        gpu=None,
        target_name=target,
        base_url="http://127.0.0.1:8001",
        model="m",
        axis="concurrency",
        level_values=[1, 4],
        created_at=RUN_START,
        finished_at=RUN_START,
        status=RunStatus.COMPLETE,
        message=None,
        levels_stored=2,
        records_stored=0,
    )


def test_overlay_prices_a_run_at_what_it_cost_when_it_ran() -> None:
    priced = fixed_sweep("priced", "run-a", 1.0)
    priced.config.usd_per_hour = 2.0
    older = fixed_sweep("older", "run-b", 1.0)  # saved before runs kept their price
    today = {"priced": 99.0, "older": 5.0}.get
    series = overlay_series([priced, older], [_summary("run-a", "priced"), _summary("run-b", "older")], today)
    assert [s.usd_per_hour for s in series] == [2.0, 5.0]


async def test_enter_on_a_chat_opens_it_in_the_chat_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.app import ServeDeckApp
    from tui.screens.chat import ChatScreen

    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    target = Target(
        name="local", base_url="http://127.0.0.1:9", model="gemma-3-270m", kind=TargetKind.LLAMACPP
    )
    with SessionStore.open(tmp_path / "data") as store:
        store.chats.create_chat(target, title="older")
        wanted = store.chats.create_chat(target, title="latency check")
    wanted_id = wanted.id
    app = ServeDeckApp(
        AppContext(data_dir=tmp_path / "data"),
        start_local_engine=False,
        show_welcome=False,
        check_health=False,
        discover_cluster=False,
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("4")
        await wait_until(pilot, lambda: isinstance(app.screen, HistoryScreen))
        screen = app.screen
        chats = screen.query_one(ChatsTable)
        await wait_until(pilot, lambda: chats.row_count == 2)
        await pilot.press("ctrl+t")
        chats.focus()
        chats.move_cursor(row=[str(chats.get_row_at(i)[0]) for i in range(2)].index("latency check"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await wait_until(pilot, lambda: wanted_id in chat._open_session_ids())


# -- issue 10 item 12: the runs table fits its columns, or says which are hidden ---------------------


def _seed_wide_runs(tmp_path: Path) -> None:
    seed(
        tmp_path,
        (fixed_sweep("gemma-3-270m @ 127.0.0.1:41234", "aaaa1111bbbb", 3.0), "4xL4 vs 1xH100 baseline"),
        (fixed_sweep("twin-27b-2xh100-8k-s64", "cccc2222dddd", 1.0), None),
    )


@pytest.mark.parametrize("size", [(160, 45), (100, 30)], ids=["160x45", "100x30"])
async def test_the_runs_table_fits_or_names_the_hidden_columns(tmp_path: Path, size: tuple[int, int]) -> None:
    from textual.widgets import Static

    _seed_wide_runs(tmp_path)
    app = HistoryHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=size) as pilot:
        screen = await loaded(pilot, 2)
        table = screen.query_one(RunsTable)
        await pilot.pause()
        assert table.virtual_size.width <= table.scrollable_content_region.width  # nothing cut off
        shown = [column.key.value for column in table.columns.values()]
        for key in ("id", "target", "levels", "status"):
            assert key in shown, key
        note = screen.query_one("#history-columns-note", Static)
        if size[0] >= 160:
            assert len(shown) == 10 and not note.display
            return
        hidden = [key for key in ("started", "label", "hardware", "axis", "requests") if key not in shown]
        assert hidden and note.display
        text = str(note.content)
        assert f"{len(hidden)} column{'s' if len(hidden) > 1 else ''} hidden" in text and "widen" in text
        assert "press w" in text
        await pilot.press("w")  # every column, scrolled sideways
        await pilot.pause()
        assert len(table.columns) == 10 and table.virtual_size.width > table.scrollable_content_region.width
        assert "scroll" in str(note.content)
        await pilot.press("w")
        await pilot.pause()
        assert table.virtual_size.width <= table.scrollable_content_region.width
