"""History view: saved bench runs and chats from the sessions store.

Runs: the highlighted run is drawn in the sweep chart (an SLO search, kind "search", in its own
chart: the levels tried, the SLO as a line, the knee); ``space`` marks runs to overlay several in
one chart (4xL4 vs 1xH100 vs 2xH100), ``r`` re-runs the highlighted run's config in the Bench view,
``ctrl+d`` deletes it after a confirmation, ``/`` filters. Chats: the saved chat sessions. Every
store access runs in a worker thread with its own connection; errors become notifications.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Static, TabbedContent, TabPane

from backends.bench.results import SweepConfig
from backends.bench.search_chart import SearchChart, search_chart
from backends.errors import ServeDeckError
from sessions.chats import ChatSummary
from sessions.run_models import RunFilter, RunSummary
from tui.context import AppContext
from tui.screens.bench import BenchScreen
from tui.services.bench_cost import catalog_price_per_hour
from tui.shell import app_context, open_view, target_registry
from tui.store_access import open_store
from tui.widgets.bench.sweep_chart import SweepSeries
from tui.widgets.deploy.dialogs import ConfirmScreen
from tui.widgets.footer import KeysFooter
from tui.widgets.history.chats import ChatsTable
from tui.widgets.history.overlay import OverlayPanel, overlay_series
from tui.widgets.history.runs import SHORT_ID, RunsTable
from tui.widgets.history.search_chart import SearchChartView

LIST_LIMIT = 500
RUNS_TAB = "history-runs"
CHATS_TAB = "history-chats"
HINT = "space marks runs to overlay · r re-runs · ctrl+d deletes · / filters"


class HistoryScreen(Screen[None]):
    TITLE = "History"

    DEFAULT_CSS = """
    HistoryScreen TabbedContent {
        height: 1fr;
    }
    HistoryScreen TabPane {
        padding: 0;
    }
    HistoryScreen #history-filter {
        margin: 0 1;
        display: none;
    }
    HistoryScreen #history-runs-table {
        height: 2fr;
    }
    HistoryScreen #history-columns-note {
        height: 1;
        padding: 0 1;
        color: $text-muted;
        display: none;
    }
    HistoryScreen OverlayPanel {
        height: 3fr;
    }
    HistoryScreen #history-search-chart {
        height: 3fr;
        display: none;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "mark", "mark for overlay", id="history.mark"),
        Binding("o", "overlay", "overlay marked", show=False, id="history.overlay"),
        Binding("u", "unmark", "unmark all", show=False, id="history.unmark"),
        Binding("r", "rerun", "re-run", id="history.rerun"),
        Binding("ctrl+d", "delete", "delete", id="history.delete"),
        Binding("slash", "filter", "filter", key_display="/", id="history.filter"),
        Binding("escape", "clear_filter", "clear filter", show=False, id="history.clear_filter"),
        Binding("f5", "reload", "reload", show=False, id="history.reload"),
        Binding("ctrl+t", "next_tab", "runs/chats", id="history.next_tab"),
        Binding(
            "w",
            "all_columns",
            "all columns",
            show=False,
            tooltip="every column of the runs table, scrolled sideways (w again fits them)",
            id="history.all_columns",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._filter = ""
        self._runs: list[RunSummary] = []
        self._chats: list[ChatSummary] = []
        self._shown_ids: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter (! inverts); enter keeps it, esc clears it", id="history-filter")
        with TabbedContent(id="history-tabs", initial=RUNS_TAB):
            with TabPane("Runs", id=RUNS_TAB):
                yield Static("", id="history-columns-note")
                yield RunsTable(id="history-runs-table")
                yield OverlayPanel(id="history-overlay")
                yield SearchChartView(id="history-search-chart")
            with TabPane("Chats", id=CHATS_TAB):
                yield ChatsTable(id="history-chats-table")
        yield KeysFooter()

    @property
    def ctx(self) -> AppContext:
        return app_context(self)

    @property
    def runs_table(self) -> RunsTable:
        return self.query_one(RunsTable)

    @property
    def chats_table(self) -> ChatsTable:
        return self.query_one(ChatsTable)

    @property
    def overlay(self) -> OverlayPanel:
        return self.query_one(OverlayPanel)

    @property
    def search_view(self) -> SearchChartView:
        return self.query_one(SearchChartView)

    @property
    def runs(self) -> list[RunSummary]:
        return list(self._runs)

    def on_mount(self) -> None:
        self.overlay.show([], "no saved runs yet: run a sweep in the Bench view")
        self.runs_table.focus()

    def on_screen_resume(self) -> None:
        """Read the store each time the view is shown (a sweep may have finished meanwhile)."""
        self.action_reload()

    def _on_runs_tab(self) -> bool:
        return self.query_one(TabbedContent).active != CHATS_TAB

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_filter":
            return bool(self._filter) or self.query_one("#history-filter").display
        if action in ("mark", "overlay", "unmark", "rerun", "all_columns"):
            return self._on_runs_tab()
        return True

    def action_next_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = CHATS_TAB if tabs.active == RUNS_TAB else RUNS_TAB

    def action_all_columns(self) -> None:
        self.runs_table.show_all = not self.runs_table.show_all

    @on(RunsTable.ColumnsChanged)
    def _columns_changed(self, message: RunsTable.ColumnsChanged) -> None:
        note = self.query_one("#history-columns-note", Static)
        if message.show_all:
            note.update("all columns: left/right scroll sideways · press w to fit them to the window")
        elif message.hidden:
            count = len(message.hidden)
            names = ", ".join(message.hidden)
            note.update(
                f"{count} column{'s' if count > 1 else ''} hidden ({names}): widen the window, "
                "or press w for all columns"
            )
        note.display = message.show_all or bool(message.hidden)

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.refresh_bindings()

    # -- loading --------------------------------------------------------------------------------------

    def action_reload(self) -> None:
        self._load_lists()

    @work(thread=True, exclusive=True, group="history-load", exit_on_error=False, name="history load")
    def _load_lists(self) -> None:
        try:
            with open_store(self.ctx) as store:
                runs = store.runs.list_runs(RunFilter(limit=LIST_LIMIT))
                chats = store.chats.list_chats(limit=LIST_LIMIT)
        except ServeDeckError as err:
            self.app.call_from_thread(
                self.notify, f"cannot read History: {err}", severity="error", timeout=10
            )
            return
        self.app.call_from_thread(self._show_lists, runs, chats)

    def _show_lists(self, runs: list[RunSummary], chats: list[ChatSummary]) -> None:
        before = {run.id: run for run in self._runs}
        after = {run.id: run for run in runs}
        if any(before.get(run_id) != after.get(run_id) for run_id in self._shown_ids):
            self._shown_ids = []  # a drawn run changed (it was still running, or was relabelled)
        self._runs = runs
        self._chats = chats
        self.runs_table.show(runs, self._filter)
        self.chats_table.show(chats, self._filter)
        self._refresh_overlay()

    # -- overlay --------------------------------------------------------------------------------------

    def _overlay_ids(self) -> list[str]:
        table = self.runs_table
        if table.marked:
            return list(table.marked)
        current = table.current_run_id
        return [current] if current is not None else []

    def _refresh_overlay(self) -> None:
        ids = self._overlay_ids()
        if not ids:
            caption = "no saved runs yet: run a sweep in the Bench view" if not self._runs else HINT
            self._shown_ids = []
            self._show_sweeps([], caption)
            return
        if ids == self._shown_ids:
            return
        self._shown_ids = ids  # asked for once per selection, even when it cannot be drawn
        self._load_overlay(ids)

    @on(DataTable.RowHighlighted, "#history-runs-table")
    def _row_highlighted(self) -> None:
        if not self.runs_table.marked:
            self._refresh_overlay()

    def action_mark(self) -> None:
        run_id = self.runs_table.current_run_id
        if run_id is None:
            return
        self.runs_table.toggle_mark(run_id)
        self._refresh_overlay()

    def action_overlay(self) -> None:
        self._shown_ids = []
        self._refresh_overlay()

    def action_unmark(self) -> None:
        table = self.runs_table
        for run_id in list(table.marked):
            table.toggle_mark(run_id)
        self._refresh_overlay()

    @work(thread=True, exclusive=True, group="history-overlay", exit_on_error=False, name="history overlay")
    def _load_overlay(self, run_ids: list[str]) -> None:
        summaries = {run.id: run for run in self._runs}
        chosen = [summaries[run_id] for run_id in run_ids if run_id in summaries]
        if len(chosen) == 1 and chosen[0].kind == "search":
            self._load_search(chosen[0])
            return
        try:
            with open_store(self.ctx) as store:
                sweeps = store.runs.load_sweeps([summary.id for summary in chosen])
            series = overlay_series(
                sweeps, chosen, lambda name: catalog_price_per_hour(target_registry(self), name)
            )
        except ServeDeckError as err:
            self.app.call_from_thread(self.notify, str(err), severity="warning", timeout=10)
            return
        self.app.call_from_thread(self._show_overlay, [summary.id for summary in chosen], series)

    def _load_search(self, summary: RunSummary) -> None:
        """A highlighted SLO search: its own chart (levels tried, the SLO line, the knee), not a sweep."""
        try:
            with open_store(self.ctx) as store:
                detail = store.runs.detail(summary.id)
            chart = search_chart(detail.config, [level.metrics for level in detail.levels])
        except ServeDeckError as err:
            self.app.call_from_thread(self.notify, str(err), severity="warning", timeout=10)
            return
        self.app.call_from_thread(self._show_search, summary, chart)

    def _show_search(self, summary: RunSummary, chart: SearchChart | None) -> None:
        caption = f"run {summary.id[:SHORT_ID]}: {summary.label or summary.target_name}  ·  {HINT}"
        self.overlay.display = False
        self.search_view.display = True
        self.search_view.show(chart, caption)

    def _show_overlay(self, run_ids: list[str], series: list[SweepSeries]) -> None:
        if len(run_ids) > 1:
            caption = f"overlay of {len(run_ids)} runs: " + " vs ".join(s.name for s in series)
        else:
            caption = f"run {run_ids[0][:SHORT_ID]}: {series[0].name}" if series else ""
            caption += f"  ·  {HINT}"
        if series and not any(s.points for s in series):
            caption += "  ·  no finished level to draw"
        self._show_sweeps(series, caption)

    def _show_sweeps(self, series: list[SweepSeries], caption: str) -> None:
        self.search_view.display = False
        self.overlay.display = True
        self.overlay.show(series, caption)

    # -- filter ---------------------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#history-filter", Input)
        box.display = True
        box.focus()
        self.refresh_bindings()

    @on(Input.Changed, "#history-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self._filter = event.value
        self.runs_table.show(self._runs, self._filter)
        self.chats_table.show(self._chats, self._filter)
        if not self.runs_table.marked:
            self._refresh_overlay()

    @on(Input.Submitted, "#history-filter")
    def _filter_submitted(self) -> None:
        box = self.query_one("#history-filter", Input)
        if not box.value:
            box.display = False
        (self.runs_table if self._on_runs_tab() else self.chats_table).focus()
        self.refresh_bindings()

    def action_clear_filter(self) -> None:
        box = self.query_one("#history-filter", Input)
        box.value = ""
        box.display = False
        self._filter = ""
        (self.runs_table if self._on_runs_tab() else self.chats_table).focus()
        self.refresh_bindings()

    # -- open a chat ------------------------------------------------------------------------------------

    @on(DataTable.RowSelected, "#history-chats-table")
    def _chat_selected(self) -> None:
        chat_id = self.chats_table.current_chat_id
        if chat_id is None:
            return
        stack = open_view(self, "chat")
        if stack is None:
            self.notify("the Chat view is not part of this build", severity="error")
            return
        from tui.screens.chat import ChatScreen

        chat = next((s for s in stack if isinstance(s, ChatScreen)), None)
        if chat is not None:
            # After the view's first frame: a Chat view opened just now is still composing.
            chat.call_after_refresh(chat.resume_chat, chat_id)

    # -- delete ---------------------------------------------------------------------------------------

    def action_delete(self) -> None:
        if self._on_runs_tab():
            run_id = self.runs_table.current_run_id
            if run_id is None:
                self.notify("no run selected", severity="warning")
                return
            summary = self.runs_table.summaries.get(run_id)
            what = (
                f"run {run_id[:SHORT_ID]} ({summary.target_name}, {summary.status.value})"
                if summary
                else run_id
            )
            question = f"Delete {what} and all its requests from History? This cannot be undone."

            def confirmed_run(yes: bool | None) -> None:
                if yes:
                    self._delete_run(run_id)

            self.app.push_screen(ConfirmScreen(question), confirmed_run)
            return
        chat_id = self.chats_table.current_chat_id
        if chat_id is None:
            self.notify("no chat selected", severity="warning")
            return
        title = next((chat.title for chat in self._chats if chat.id == chat_id), chat_id)
        question = f"Delete the chat {title!r} and its messages? This cannot be undone."

        def confirmed_chat(yes: bool | None) -> None:
            if yes:
                self._delete_chat(chat_id)

        self.app.push_screen(ConfirmScreen(question), confirmed_chat)

    @work(thread=True, group="history-write", exit_on_error=False, name="history delete")
    def _delete_run(self, run_id: str) -> None:
        try:
            with open_store(self.ctx) as store:
                store.runs.delete_run(run_id)
        except ServeDeckError as err:
            self.app.call_from_thread(self.notify, str(err), severity="error", timeout=10)
            return
        self.app.call_from_thread(self._after_delete, f"deleted run {run_id[:SHORT_ID]}", run_id)

    @work(thread=True, group="history-write", exit_on_error=False, name="history delete")
    def _delete_chat(self, chat_id: str) -> None:
        try:
            with open_store(self.ctx) as store:
                store.chats.delete_chat(chat_id)
        except ServeDeckError as err:
            self.app.call_from_thread(self.notify, str(err), severity="error", timeout=10)
            return
        self.app.call_from_thread(self._after_delete, "deleted the chat", None)

    def _after_delete(self, text: str, run_id: str | None) -> None:
        if run_id is not None and run_id in self.runs_table.marked:
            self.runs_table.toggle_mark(run_id)
        self._shown_ids = []
        self.notify(text)
        self.action_reload()

    # -- re-run ---------------------------------------------------------------------------------------

    def action_rerun(self) -> None:
        run_id = self.runs_table.current_run_id
        if run_id is None:
            self.notify("no run selected", severity="warning")
            return
        self._load_config(run_id)

    @work(thread=True, group="history-rerun", exit_on_error=False, name="history re-run")
    def _load_config(self, run_id: str) -> None:
        try:
            with open_store(self.ctx) as store:
                detail = store.runs.detail(run_id)
            # The run's label may have been changed since it ran; the stored one is what the user sees.
            config = detail.config.model_copy(update={"label": detail.summary.label})
        except ServeDeckError as err:
            self.app.call_from_thread(self.notify, str(err), severity="error", timeout=10)
            return
        self.app.call_from_thread(self._open_in_bench, config, run_id)

    def _open_in_bench(self, config: SweepConfig, run_id: str) -> None:
        stack = open_view(self, "bench")
        if stack is None:
            self.notify("the Bench view is not part of this build", severity="error")
            return
        bench = next((screen for screen in stack if isinstance(screen, BenchScreen)), None)
        if bench is None:
            self.notify("the Bench view is not part of this build", severity="error")
            return
        bench.post_message(BenchScreen.Prefill(config, run_id))
