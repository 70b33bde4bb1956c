"""History's runs table: one row per saved sweep, newest first, with marks for overlaying and a
k9s-style filter (case-insensitive substring of any column; a leading ``!`` inverts it)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from backends.bench.models import Axis
from backends.bench.results import RunStatus
from sessions.run_models import RunSummary
from tui.widgets.bench_config import format_level
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


class RunsTable(DataTable[Text]):
    DEFAULT_CSS = """
    RunsTable {
        height: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.marked: list[str] = []
        self.summaries: dict[str, RunSummary] = {}

    def on_mount(self) -> None:
        for key, title in COLUMNS:
            self.add_column(title, key=key)

    def show(self, runs: Sequence[RunSummary], filter_text: str) -> None:
        """Replace the rows, keeping the cursor on the same run when it is still listed."""
        current = self.current_run_id
        self.summaries = {run.id: run for run in runs}
        self.marked = [run_id for run_id in self.marked if run_id in self.summaries]
        self.clear()
        for run in runs:
            if not matches_filter(run, filter_text):
                continue
            texts = row_texts(run)
            cells = [Text(MARK if run.id in self.marked else "", style="bold cyan")]
            for key, _ in COLUMNS[1:]:
                style = STATUS_STYLES.get(run.status, "") if key == "status" else ""
                cells.append(Text(texts[key], style=style))
            self.add_row(*cells, key=run.id)
        if current is not None:
            with contextlib.suppress(RowDoesNotExist):
                self.move_cursor(row=self.get_row_index(current))

    @property
    def current_run_id(self) -> str | None:
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return None if key.value is None else str(key.value)

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
