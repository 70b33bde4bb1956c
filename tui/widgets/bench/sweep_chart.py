"""The article's sweep chart, one series per target or saved run.

``SweepChart``: total token throughput as bars per level, and p99 TTFT in ms in its own panel
beneath on the same level axis (a line never crosses a bar). ``CostChart``: $ per 1M tokens per
level and, where GPU telemetry was read, GPU energy in kJ per 1M output tokens in a panel beneath.
The legend is a line under the title, never over the data. A level where the load generator itself
was the limit is marked ``*``, a partial level ``†`` and its bars hatched. Both read ``SweepSeries``
(backends/bench/chart_data.py), built from finished levels (live or from History); the SVG export
draws the same series (backends/bench/chart_svg.py; throughput, p99 TTFT and $/1M only).
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import RenderResult
from textual_plotext.plot import Plot

from backends.bench.chart_data import (
    CLIENT_LIMITED_MARK,
    PARTIAL_MARK,
    SweepPoint,
    SweepSeries,
    axis_short,
    categories,
    category_labels,
    marks_note,
    point_from_level,
    series_colors,
    series_from_levels,
    x_title,
)
from tui.widgets.category_plot import (
    PARTIAL_GLYPH,
    LegendEntry,
    Panel,
    Series,
    render_category_chart,
    render_message,
)
from tui.widgets.charts import LiveChart

__all__ = [
    "CLIENT_LIMITED_MARK",
    "PARTIAL_MARK",
    "CostChart",
    "SweepChart",
    "SweepPoint",
    "SweepSeries",
    "axis_short",
    "point_from_level",
    "series_colors",
    "series_from_levels",
]

LATENCY_PANEL_WEIGHT = 0.6


class _SweepSeriesChart(LiveChart):
    def __init__(self, title: str, empty_message: str, *, id: str | None = None, classes: str | None = None):
        super().__init__(title, id=id, classes=classes)
        self.series: list[SweepSeries] = []
        self.empty_message = empty_message

    def set_series(self, series: Sequence[SweepSeries]) -> None:
        self.series = list(series)
        self.mark_dirty()

    def draw(self, plt: Plot, width: int, height: int) -> None:
        """Unused: these charts are drawn cell by cell (``build_picture``), not with plotext."""

    def _chart_size(self) -> tuple[int, int]:
        return max(self.size.width, 16), max(self.size.height, 6)


def _values(series: SweepSeries, values: Sequence[float], field: str) -> list[float | None]:
    by_value = {p.value: getattr(p, field) for p in series.points}
    return [by_value.get(v) for v in values]


def _partial(series: SweepSeries, values: Sequence[float]) -> list[bool]:
    by_value = {p.value: p.partial for p in series.points}
    return [by_value.get(v, False) for v in values]


class SweepChart(_SweepSeriesChart):
    """Total token throughput bars (tok/s) over p99 TTFT markers and lines (ms), per level."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            "throughput (bars, tok/s) · p99 TTFT (ms, below)",
            "the sweep chart fills as levels finish",
            id=id,
            classes=classes,
        )

    def build_picture(self) -> RenderResult:
        width, height = self._chart_size()
        series = [s for s in self.series if s.points]
        if not series:
            return render_message(self.chart_title, self.empty_message, width, height)
        values = categories(series)
        colors = [series_colors(i, len(series)) for i in range(len(series))]
        bars = [
            Series(s.name, c.bar, _values(s, values, "total_tokens_per_s"), _partial(s, values))
            for s, c in zip(series, colors, strict=True)
        ]
        lines = [
            Series(s.name, c.line, _values(s, values, "p99_ttft_ms"))
            for s, c in zip(series, colors, strict=True)
        ]
        legend = [
            LegendEntry(((("█", c.bar)), ("●", c.line)), s.name) for s, c in zip(series, colors, strict=True)
        ]
        if any(p.partial for s in series for p in s.points):
            legend.append(LegendEntry(((PARTIAL_GLYPH, "grey62"),), "partial"))
        panels = [
            Panel("bars", bars, "total tokens/s"),
            Panel("lines", lines, "p99 TTFT (ms)", LATENCY_PANEL_WEIGHT),
        ]
        return render_category_chart(
            self.chart_title,
            category_labels(series, values),
            panels,
            legend=legend,
            x_title=x_title(series),
            marks_note=marks_note(series),
            width=width,
            height=height,
        )


class CostChart(_SweepSeriesChart):
    """$ per 1M tokens per level, one line per series that has a price; beneath it kJ of GPU energy
    per 1M output tokens, one line per series with GPU telemetry."""

    no_price_message = "no $/h: set a price in Setup"
    title_with_energy = "$ and GPU kJ per 1M tokens"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("$ per 1M tokens", "the cost line fills as levels finish", id=id, classes=classes)

    def build_picture(self) -> RenderResult:
        width, height = self._chart_size()
        series = [s for s in self.series if s.points]
        if not series:
            return render_message(self.chart_title, self.empty_message, width, height)
        colors = [series_colors(i, len(series)).cost for i in range(len(series))]
        priced = [
            (s, color)
            for s, color in zip(series, colors, strict=True)
            if any(p.usd_per_million is not None for p in s.points)
        ]
        metered = [
            (s, color)
            for s, color in zip(series, colors, strict=True)
            if any(p.kj_per_million is not None for p in s.points)
        ]
        if not priced and not metered:
            return render_message(self.chart_title, self.no_price_message, width, height)
        values = categories(series)
        panels = []
        if priced:
            cost = [Series(s.name, color, _values(s, values, "usd_per_million")) for s, color in priced]
            panels.append(Panel("lines", cost, "$/1M tok" if metered else None))
        if metered:
            energy = [Series(s.name, color, _values(s, values, "kj_per_million")) for s, color in metered]
            panels.append(Panel("lines", energy, "kJ/1M out"))
        shown = {s.name: color for s, color in priced + metered}
        legend = [LegendEntry((("●", color),), name) for name, color in shown.items()]
        return render_category_chart(
            self.title_with_energy if metered else self.chart_title,
            category_labels(series, values),
            panels,
            legend=legend,
            x_title=axis_short(series[0].axis),
            marks_note="",
            width=width,
            height=height,
        )
