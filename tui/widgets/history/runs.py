"""History's runs table: one row per saved sweep, newest first, with marks for overlaying and a
k9s-style filter (case-insensitive substring of any column; a leading ``!`` inverts it)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from backends.bench.models import Axis
from backends.bench.results import RunStatus
from sessions.run_models import RunSummary
from tui.services.bench_config import format_level
from tui.widgets.table_cursor import cursor_row_key
from tui.widgets.table_filter import filter_matches

MARK = "●"
COLUMNS: tuple[tuple[str, str], ...] = (
    ("mark", " "),
    ("id", "run"),
    ("started", "started"),
    ("label", "label"),
    ("target", "target"),
    ("hardware", "hardware"),
    ("axis", "axis"),
    ("levels", "levels"),
    ("status", "status"),
    ("requests", "requests"),
)
STATUS_STYLES = {
    RunStatus.COMPLETE: "green",
    RunStatus.PARTIAL: "yellow",
    RunStatus.FAILED: "red",
    RunStatus.RUNNING: "cyan",
}
SHORT_ID = 8
# Column widths are fitted to the table (100 columns is a common terminal): long names are cut with an
# ellipsis first, then the year and long headers go, then low-value columns, last to first in this order.
WIDE_CAPS = {"label": 24, "target": 32, "levels": 24}
COMPACT_CAPS = {"label": 14, "target": 22, "levels": 16}
COMPACT_TITLES = {"hardware": "hw", "requests": "reqs"}
DROP_ORDER = ("requests", "axis", "hardware", "label", "started")
ALL_COLUMNS = [key for key, _ in COLUMNS]
TITLES = dict(COLUMNS)


def local_time(moment: datetime) -> str:
    """Local wall time, minutes precision (stored times are UTC)."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def axis_word(axis: str) -> str:
    return "conc." if axis == Axis.CONCURRENCY.value else "req/s"


def levels_text(summary: RunSummary) -> str:
    try:
        axis = Axis(summary.axis)
    except ValueError:
        return ",".join(f"{v:g}" for v in summary.level_values)
    return ",".join(format_level(axis, v) for v in summary.level_values)


def row_texts(summary: RunSummary) -> dict[str, str]:
    return {
        "id": summary.id[:SHORT_ID],
        "started": local_time(summary.created_at),
        "label": summary.label or "",
        "target": summary.target_name,
        "hardware": summary.gpu or "",
        "axis": axis_word(summary.axis),
        "levels": levels_text(summary),
        "status": summary.status.value,
        "requests": str(summary.records_stored),
    }


def matches_filter(summary: RunSummary, text: str) -> bool:
    return filter_matches(text, [summary.id, summary.model, summary.base_url, *row_texts(summary).values()])


def compact_texts(texts: dict[str, str]) -> dict[str, str]:
    return {**texts, "started": texts["started"][5:]}  # 2025-04-04 14:09 -> 04-04 14:09


@dataclass(frozen=True)
class ColumnLayout:
    columns: list[str]
    compact: bool

    @property
    def hidden(self) -> list[str]:
        return [key for key in ALL_COLUMNS if key not in self.columns]


def fit_columns(rows: Sequence[dict[str, str]], width: int | None, padding: int = 1) -> ColumnLayout:
    """The columns (and whether compacted) that fit ``width`` cells; None: any width (all columns)."""

    def needed(columns: list[str], compact: bool) -> int:
        caps = COMPACT_CAPS if compact else WIDE_CAPS
        titles = {**TITLES, **COMPACT_TITLES} if compact else TITLES
        total = 0
        for key in columns:
            cells = [len(compact_texts(r)[key] if compact else r[key]) for r in rows if key in r]
            content = max([len(titles[key]), 1, *cells])
            total += min(content, caps.get(key, content)) + 2 * padding
        return total

    if width is None or needed(ALL_COLUMNS, False) <= width:
        return ColumnLayout(list(ALL_COLUMNS), compact=False)
    columns = list(ALL_COLUMNS)
    for drop in (None, *DROP_ORDER):
        if drop is not None:
            columns.remove(drop)
        if needed(columns, True) <= width:
            break
    return ColumnLayout(columns, compact=True)


class RunsTable(DataTable[Text]):
    """Saved runs; columns fit the table's width (``hidden`` says which did not) unless ``show_all``."""

    DEFAULT_CSS = """
    RunsTable {
        height: 1fr;
    }
    """

    class ColumnsChanged(Message):
        def __init__(self, hidden: list[str], show_all: bool) -> None:
            super().__init__()
            self.hidden = hidden
            self.show_all = show_all

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.marked: list[str] = []
        self.summaries: dict[str, RunSummary] = {}
        self._runs: list[RunSummary] = []
        self._filter = ""
        self._layout = ColumnLayout(list(ALL_COLUMNS), compact=False)
        self._show_all = False
        self._width = 0
        self._told: tuple[list[str], bool] = ([], False)

    @property
    def hidden(self) -> list[str]:
        return [] if self._show_all else self._layout.hidden

    @property
    def show_all(self) -> bool:
        return self._show_all

    @show_all.setter
    def show_all(self, value: bool) -> None:
        self._show_all = value
        self._draw()

    def on_mount(self) -> None:
        self._draw()

    def on_resize(self) -> None:
        if self.size.width != self._width:
            self._draw()

    def show(self, runs: Sequence[RunSummary], filter_text: str) -> None:
        """Replace the rows, keeping the cursor on the same run when it is still listed."""
        self._runs = list(runs)
        self._filter = filter_text
        self.summaries = {run.id: run for run in runs}
        self.marked = [run_id for run_id in self.marked if run_id in self.summaries]
        self._draw()

    def _available_width(self, rows: int) -> int | None:
        if self.size.width <= 0:
            return None
        scrollbar = self.styles.scrollbar_size_vertical if rows + 1 > self.size.height else 0
        return self.size.width - scrollbar

    def _draw(self) -> None:
        current = self.current_run_id
        runs = [run for run in self._runs if matches_filter(run, self._filter)]
        texts = {run.id: row_texts(run) for run in runs}
        self._width = self.size.width
        padding = self.cell_padding
        width = None if self._show_all else self._available_width(len(runs))
        self._layout = layout = fit_columns(list(texts.values()), width, padding)
        caps = COMPACT_CAPS if layout.compact else WIDE_CAPS
        titles = {**TITLES, **COMPACT_TITLES} if layout.compact else TITLES
        self.clear(columns=True)
        for key in layout.columns:
            self.add_column(titles[key], key=key)
        for run in runs:
            row = compact_texts(texts[run.id]) if layout.compact else texts[run.id]
            cells = []
            for key in layout.columns:
                if key == "mark":
                    cells.append(Text(MARK if run.id in self.marked else "", style="bold cyan"))
                    continue
                style = STATUS_STYLES.get(run.status, "") if key == "status" else ""
                text = Text(row[key], style=style)
                if key in caps:
                    text.truncate(caps[key], overflow="ellipsis")
                cells.append(text)
            self.add_row(*cells, key=run.id)
        if current is not None:
            with contextlib.suppress(RowDoesNotExist):
                self.move_cursor(row=self.get_row_index(current), animate=False)
        if (self.hidden, self._show_all) != self._told:
            self._told = (self.hidden, self._show_all)
            self.post_message(self.ColumnsChanged(self.hidden, self._show_all))

    @property
    def current_run_id(self) -> str | None:
        return cursor_row_key(self)

    def toggle_mark(self, run_id: str) -> bool:
        """Mark or unmark a run; returns whether it is marked now."""
        if run_id in self.marked:
            self.marked.remove(run_id)
            marked = False
        else:
            self.marked.append(run_id)
            marked = True
        with contextlib.suppress(CellDoesNotExist):  # filtered out of view: the mark still counts
            self.update_cell(run_id, "mark", Text(MARK if marked else "", style="bold cyan"))
        return marked
