"""Charts over sweep levels drawn cell by cell as Rich text: grouped bars and lines, one axis a panel.

The sweep chart is throughput bars per level (one colour per run) with p99 TTFT in its own panel
beneath, sharing the level axis; the cost chart is one line panel. Drawn here rather than with
plotext so that a bar has a bounded width (one level never fills the chart), every run's bar keeps
columns of its own, the legend is a line above the plot, and a line never crosses a bar.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rich.style import Style
from rich.text import Text

from backends.bench.chart_data import format_tick, nice_ceiling

BAR_EIGHTHS = " ▁▂▃▄▅▆▇█"
PARTIAL_GLYPH = "▒"
MARKER = "●"
MAX_BAR_WIDTH = 8
AXIS_STYLE = "grey62"
MUTED_STYLE = "grey62"
# Braille dot bits by (row, column) inside a cell of 2x4 dots.
BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    values: Sequence[float | None]
    partial: Sequence[bool] = ()


@dataclass(frozen=True)
class Panel:
    kind: Literal["bars", "lines"]
    series: Sequence[Series]
    unit: str | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class LegendEntry:
    glyphs: Sequence[tuple[str, str]]
    name: str


@dataclass
class Canvas:
    width: int
    height: int
    cells: list[list[tuple[str, str]]] = field(init=False)

    def __post_init__(self) -> None:
        self.cells = [[(" ", "")] * self.width for _ in range(self.height)]

    def put(self, x: int, y: int, ch: str, style: str = "") -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            self.cells[y][x] = (ch, style)

    def write(self, x: int, y: int, text: str, style: str = "") -> None:
        for i, ch in enumerate(text):
            self.put(x + i, y, ch, style)

    def centred(self, y: int, text: str, style: str = "", left: int = 0, right: int | None = None) -> None:
        right = self.width if right is None else right
        text = text[: max(0, right - left)]
        self.write(left + max(0, (right - left - len(text)) // 2), y, text, style)

    def to_text(self) -> Text:
        out = Text(no_wrap=True, overflow="crop", end="")
        for y, row in enumerate(self.cells):
            if y:
                out.append("\n")
            run, style = "", row[0][1] if row else ""
            for ch, cell_style in row:
                if cell_style != style:
                    out.append(run, Style.parse(style) if style else None)
                    run, style = "", cell_style
                run += ch
            out.append(run, Style.parse(style) if style else None)
        return out


def legend_rows(entries: Sequence[LegendEntry], width: int, max_rows: int) -> list[list[tuple[str, str]]]:
    """Legend entries flowed into at most ``max_rows`` rows of (text, style) pieces."""
    rows: list[list[tuple[str, str]]] = [[]]
    used = 0
    for entry in entries:
        glyphs = "".join(g for g, _ in entry.glyphs)
        size = len(glyphs) + 1 + len(entry.name)
        gap = 3 if rows[-1] else 0
        if rows[-1] and used + gap + size > width:
            if len(rows) == max_rows:
                break
            rows.append([])
            used, gap = 0, 0
        name = entry.name[: max(1, width - len(glyphs) - 1)]
        if gap:
            rows[-1].append((" " * gap, ""))
        rows[-1].extend(entry.glyphs)
        rows[-1].append((f" {name}", ""))
        used += gap + len(glyphs) + 1 + len(name)
    return [row for row in rows if row]


def write_pieces(canvas: Canvas, y: int, pieces: Sequence[tuple[str, str]]) -> None:
    total = sum(len(text) for text, _ in pieces)
    x = max(0, (canvas.width - total) // 2)
    for text, style in pieces:
        canvas.write(x, y, text, style)
        x += len(text)


def render_message(title: str, message: str, width: int, height: int) -> Text:
    """An empty frame under the title with one centred line (no data yet, or nothing to show)."""
    canvas = Canvas(width, height)
    canvas.centred(0, title, "bold")
    if height >= 3:
        canvas.write(0, 1, "┌" + "─" * (width - 2) + "┐", AXIS_STYLE)
        for y in range(2, height - 1):
            canvas.put(0, y, "│", AXIS_STYLE)
            canvas.put(width - 1, y, "│", AXIS_STYLE)
        canvas.write(0, height - 1, "└" + "─" * (width - 2) + "┘", AXIS_STYLE)
        canvas.centred(max(2, height // 2), message, MUTED_STYLE, 1, width - 1)
    return canvas.to_text()


def _panel_top(panel: Panel) -> float:
    values = [v for s in panel.series for v in s.values if v is not None]
    return nice_ceiling(max(values, default=0.0))


def _tick_labels(top: float, rows: int) -> dict[int, str]:
    labels = {0: format_tick(top), rows - 1: "0"}
    if rows >= 4:
        labels[round((rows - 1) / 2)] = format_tick(top / 2)
    return labels


def render_category_chart(
    title: str,
    labels: Sequence[str],
    panels: Sequence[Panel],
    *,
    legend: Sequence[LegendEntry],
    x_title: str,
    marks_note: str,
    width: int,
    height: int,
) -> Text:
    """Panels stacked over one level axis; each series keeps its own column in every level group."""
    canvas = Canvas(width, height)
    canvas.centred(0, title, "bold")
    foot = 3 if height >= 14 else 2
    entries = list(legend)
    if foot == 2 and marks_note:
        entries.append(LegendEntry((), marks_note))
    legend_lines = legend_rows(entries, width, 2 if height >= 18 else 1)
    for i, pieces in enumerate(legend_lines):
        write_pieces(canvas, 1 + i, pieces)
    head = 1 + len(legend_lines)
    body = height - head - foot
    with_units = body >= 5 * len(panels)
    unit_rows = sum(1 for p in panels if p.unit) if with_units else 0
    plot_rows = body - unit_rows
    if plot_rows < 2 * len(panels) or width < 16 or not labels:
        return render_message(title, "make the window larger to see this chart", width, height)

    weights = sum(p.weight for p in panels)
    sizes = [max(2, round(plot_rows * p.weight / weights)) for p in panels]
    sizes[0] += plot_rows - sum(sizes)
    tops = [_panel_top(p) for p in panels]
    ticks = [_tick_labels(top, rows) for top, rows in zip(tops, sizes, strict=True)]
    yw = max(len(label) for t in ticks for label in t.values())
    plot_left = yw + 1
    plot_width = width - plot_left - 1
    groups = len(labels)
    members = max(len(p.series) for p in panels)
    slot = plot_width / groups
    bar_width = max(1, min(MAX_BAR_WIDTH, int((slot - 2) // max(1, members))))
    group_width = bar_width * members

    def column(group: int, member: int) -> int:
        left = plot_left + round((group + 0.5) * slot - group_width / 2)
        return left + member * bar_width

    y = head
    for panel, rows, top, tick in zip(panels, sizes, tops, ticks, strict=True):
        if panel.unit and with_units:
            canvas.put(yw, y, "│", AXIS_STYLE)
            canvas.write(plot_left + 1, y, panel.unit[: plot_width - 1], MUTED_STYLE)
            y += 1
        for r in range(rows):
            label = tick.get(r)
            if label is not None:
                canvas.write(yw - len(label), y + r, label, AXIS_STYLE)
            canvas.put(yw, y + r, "┤" if label is not None else "│", AXIS_STYLE)
        if panel.kind == "bars":
            _draw_bars(canvas, panel, y, rows, top, column, bar_width)
        else:
            _draw_lines(canvas, panel, y, rows, top, column, bar_width, plot_left, plot_width)
        y += rows

    canvas.write(yw, y, "└" + "─" * plot_width, AXIS_STYLE)
    last_end = -1
    for i, label in enumerate(labels):
        centre = plot_left + int((i + 0.5) * slot)
        canvas.put(centre, y, "┬", AXIS_STYLE)
        start = max(plot_left, centre - len(label) // 2)
        if start > last_end + 1:
            canvas.write(start, y + 1, label, "")
            last_end = start + len(label) - 1
    if foot == 3:
        text = f"{x_title}   {marks_note}" if marks_note else x_title
        canvas.centred(y + 2, text, MUTED_STYLE, plot_left, plot_left + plot_width)
    return canvas.to_text()


def _draw_bars(
    canvas: Canvas,
    panel: Panel,
    y0: int,
    rows: int,
    top: float,
    column: Callable[[int, int], int],
    bar_width: int,
) -> None:
    for member, series in enumerate(panel.series):
        for group, value in enumerate(series.values):
            if value is None:
                continue
            eighths = round(value / top * rows * 8) if top > 0 else 0
            if value > 0:
                eighths = max(eighths, 1)
            partial = group < len(series.partial) and series.partial[group]
            if partial:
                eighths = max(8, (eighths + 4) // 8 * 8)
            left = column(group, member)
            for level in range(rows):
                fill = eighths - level * 8
                if fill <= 0:
                    break
                glyph = PARTIAL_GLYPH if partial else BAR_EIGHTHS[min(fill, 8)]
                for x in range(left, left + bar_width):
                    canvas.put(x, y0 + rows - 1 - level, glyph, series.color)


def _draw_lines(
    canvas: Canvas,
    panel: Panel,
    y0: int,
    rows: int,
    top: float,
    column: Callable[[int, int], int],
    bar_width: int,
    plot_left: int,
    plot_width: int,
) -> None:
    dot_rows = rows * 4
    owner: dict[tuple[int, int], str] = {}
    markers: list[tuple[int, int, str]] = []
    for member, series in enumerate(panel.series):
        points = []
        for group, value in enumerate(series.values):
            if value is None:
                continue
            dx = 2 * (column(group, member) - plot_left) + bar_width - 1
            dy = round((1 - min(value / top, 1.0)) * (dot_rows - 1)) if top > 0 else dot_rows - 1
            points.append((min(max(dx, 0), 2 * plot_width - 1), dy))
        for (ax, ay), (bx, by) in itertools.pairwise(points):
            for dot in _segment(ax, ay, bx, by):
                owner[dot] = series.color
        markers.extend((x // 2, y // 4, series.color) for x, y in points)
    cells: dict[tuple[int, int], tuple[int, str]] = {}
    for (dx, dy), color in owner.items():
        key = (dx // 2, dy // 4)
        bits, _ = cells.get(key, (0, color))
        cells[key] = (bits | BRAILLE_BITS[dy % 4][dx % 2], color)
    for (cx, cy), (bits, color) in cells.items():
        canvas.put(plot_left + cx, y0 + cy, chr(0x2800 + bits), color)
    for cx, cy, color in markers:
        canvas.put(plot_left + cx, y0 + cy, MARKER, color)


def _segment(ax: int, ay: int, bx: int, by: int) -> list[tuple[int, int]]:
    """The dots of a straight line from (ax, ay) to (bx, by) (Bresenham)."""
    dots = []
    dx, dy = abs(bx - ax), -abs(by - ay)
    sx, sy = (1 if ax < bx else -1), (1 if ay < by else -1)
    err = dx + dy
    x, y = ax, ay
    while True:
        dots.append((x, y))
        if x == bx and y == by:
            return dots
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x += sx
        if e2 <= dx:
            err += dx
            y += sy
