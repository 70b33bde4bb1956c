"""The Bench view's results: the sweep chart and the cost chart side by side, the level table below."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from tui.widgets.bench.sweep_chart import CostChart, SweepChart, SweepSeries
from tui.widgets.bench.table import LevelTable


class SweepResultsPanel(Vertical):
    DEFAULT_CSS = """
    SweepResultsPanel {
        height: 1fr;
    }
    SweepResultsPanel #results-charts {
        height: 3fr;
    }
    SweepResultsPanel #results-sweep-chart {
        width: 2fr;
    }
    SweepResultsPanel #results-cost-chart {
        width: 1fr;
        margin-left: 2;
    }
    SweepResultsPanel #results-caption {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    SweepResultsPanel #results-notes {
        height: auto;
        max-height: 4;
        padding: 0 1;
        color: $warning;
    }
    SweepResultsPanel LevelTable {
        height: 2fr;
    }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="results-charts"):
            yield SweepChart(id="results-sweep-chart")
            yield CostChart(id="results-cost-chart")
        yield Static("", id="results-caption")
        notes = Static("", id="results-notes")
        notes.display = False
        yield notes
        yield LevelTable(id="results-table")

    @property
    def table(self) -> LevelTable:
        return self.query_one(LevelTable)

    def set_series(self, series: list[SweepSeries]) -> None:
        self.query_one(SweepChart).set_series(series)
        self.query_one(CostChart).set_series(series)

    def set_caption(self, text: str) -> None:
        self.query_one("#results-caption", Static).update(text)

    @on(LevelTable.NotesChanged)
    def _notes_changed(self, message: LevelTable.NotesChanged) -> None:
        notes = self.query_one("#results-notes", Static)
        # Markup off: the notes quote server and client text.
        notes.update(Text("\n".join(message.notes)))
        notes.display = bool(message.notes)

    def clear(self) -> None:
        self.set_series([])
        self.table.clear()
        self.set_caption("")
