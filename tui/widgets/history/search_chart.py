"""History's chart of an SLO-search run: the levels tried on the x axis (lowest first), one panel per SLO
target with the measured value of each level as a bar (green pass, red fail, yellow client-limited), the
target as a horizontal line and the knee marked. Data from ``backends.bench.search_chart``.

Plain text drawn to the widget's size (no plotting library): a handful of levels, one bar each.
"""

from __future__ import annotations

import math

from rich.console import RenderableType
from rich.text import Text
from textual.widget import Widget

from backends.bench.search_chart import SearchChart, SearchPanel

COLOURS = {"pass": "green", "fail": "red", "client-limited": "yellow"}
LINE_STYLE = "bold cyan"  # apart from the verdict colours
AXIS_WIDTH = 8
MAX_BAR = 6


def _value_text(value: float, axis: str) -> str:
    return f"{value:g}" if axis == "concurrency" else f"{value:.3g}"


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def draw_panel(panel: SearchPanel, axis: str, width: int, rows: int) -> Text:
    """A title line, ``rows`` plot rows (at least 2), then the x axis and two label lines."""
    points = panel.points
    out = Text()
    out.append(panel.title, style="bold")
    if panel.limit_ms is not None:
        out.append(f"   ━ SLO {_ms(panel.limit_ms)} ms", style=LINE_STYLE)
    out.append("\n")
    if not points:
        out.append("no level tried\n", style="dim")
        return out
    measured = [p.measured_ms for p in points if p.measured_ms is not None]
    top = max([*measured, (panel.limit_ms or 0.0) * 1.25, 1e-9])
    slot = max(3, min(MAX_BAR + 2, (width - AXIS_WIDTH) // len(points)))
    bar = max(1, slot - 2)
    line_row = None
    if panel.limit_ms is not None:
        # the row whose band (``top / rows`` wide) holds the limit
        line_row = min(rows - 1, max(0, rows - math.ceil(panel.limit_ms * rows / top)))
    for row in range(rows):
        level_low = top * (rows - row - 1) / rows  # this row is filled when the value reaches above it
        label = ""
        if row == 0:
            label = _ms(top)
        elif row == line_row and panel.limit_ms is not None:
            label = _ms(panel.limit_ms)
        out.append(label.rjust(AXIS_WIDTH - 2) + " │", style="dim")
        on_line = row == line_row
        for point in points:
            value = point.measured_ms
            filled = value is not None and value > level_low
            if on_line and value is not None and panel.limit_ms is not None:
                filled = value > panel.limit_ms  # a bar within the SLO stays under its line
            gap = "━" if on_line else " "
            out.append(gap, style=LINE_STYLE)
            if filled:
                out.append("█" * bar, style=COLOURS[point.verdict])
            elif value is None and row == rows - 1:
                out.append("?".center(bar), style="dim")
            else:
                out.append(("━" if on_line else " ") * bar, style=LINE_STYLE)
            out.append(gap * (slot - bar - 1), style=LINE_STYLE)
        out.append("\n")
    out.append(" " * (AXIS_WIDTH - 1) + "└" + "─" * (slot * len(points)) + "\n", style="dim")
    out.append(" " * AXIS_WIDTH)
    for point in points:
        out.append(
            _value_text(point.value, axis)[: slot - 1].center(slot), style="bold" if point.knee else ""
        )
    out.append("\n" + " " * AXIS_WIDTH)
    for point in points:
        mark = "▲knee" if point.knee else f"#{point.order}" + ("!" if point.stopped_early else "")
        out.append(mark[: slot - 1].center(slot), style="bold green" if point.knee else "dim")
    out.append("\n")
    return out


class SearchChartView(Widget):
    """Draws the chart to its size; ``show(None, caption)`` for a message only."""

    DEFAULT_CSS = """
    SearchChartView {
        height: 1fr;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.chart: SearchChart | None = None
        self.caption = ""

    def show(self, chart: SearchChart | None, caption: str) -> None:
        self.chart = chart
        self.caption = caption
        self.refresh()

    def render(self) -> RenderableType:
        chart = self.chart
        out = Text()
        if self.caption:
            out.append(self.caption + "\n", style="dim")
        if chart is None:
            return out
        out.append(chart.summary + "\n")
        out.append("■ pass", style=COLOURS["pass"])
        out.append("  ")
        out.append("■ fail", style=COLOURS["fail"])
        out.append("  ")
        out.append("■ client-limited", style=COLOURS["client-limited"])
        out.append("  #n: order tried, !: stopped early\n", style="dim")
        panels = chart.panels
        width = max(20, self.size.width - 2)
        spare = max(0, self.size.height - 3 - len(panels) * 4)
        rows = max(2, spare // max(1, len(panels)))
        for panel in panels:
            out.append_text(draw_panel(panel, chart.axis, width, min(rows, 12)))
        return out
