"""The article's sweep chart, one series per target or saved run.

``SweepChart``: total token throughput as bars per level, p99 TTFT as lines on the right axis.
``CostChart``: $ per 1M tokens per level. The x axis says what was swept ("concurrency" or
"req/s"); a level where the load generator itself was the limit is marked ``*``. Both read
``SweepSeries``, built from finished levels (live or loaded from History).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from pydantic import BaseModel
from textual_plotext.plot import Plot

from backends.bench.models import Axis
from backends.bench.results import LevelResult, RunStatus
from manifests.cost import usd_per_million_tokens
from tui.widgets.bench_config import format_level
from tui.widgets.charts import LiveChart

# One series: the article's colours (green bars, blue p99 TTFT, red cost). Several: one hue per series,
# bars in the plain shade and its lines in the bright one.
SERIES_HUES = ("green", "cyan", "orange", "magenta", "blue", "white", "red", "gray")


def series_colors(index: int, count: int) -> tuple[str, str, str]:
    """(bar, p99 TTFT line, cost line) colours of series ``index`` of ``count``."""
    if count == 1:
        return "green", "blue", "red"
    hue = SERIES_HUES[index % len(SERIES_HUES)]
    return hue, f"{hue}+", f"{hue}+"


CLIENT_LIMITED_MARK = "*"


class SweepPoint(BaseModel):
    value: float
    total_tokens_per_s: float
    p99_ttft_ms: float | None
    usd_per_million: float | None
    client_limited: bool
    status: RunStatus


class SweepSeries(BaseModel):
    name: str
    axis: Axis
    points: list[SweepPoint]
    usd_per_hour: float | None = None


def point_from_level(level: LevelResult, usd_per_hour: float | None) -> SweepPoint:
    metrics = level.metrics
    completed = metrics.completed > 0
    throughput = metrics.total_token_throughput if completed else 0.0
    return SweepPoint(
        value=level.level.value,
        total_tokens_per_s=throughput,
        p99_ttft_ms=metrics.ttft.percentiles.get("99") if completed else None,
        usd_per_million=usd_per_million_tokens(usd_per_hour, throughput),
        client_limited=level.client.client_limited,
        status=level.status,
    )


def series_from_levels(
    name: str, axis: Axis, levels: Sequence[LevelResult], usd_per_hour: float | None
) -> SweepSeries:
    points = [point_from_level(level, usd_per_hour) for level in sorted(levels, key=lambda lv: lv.index)]
    return SweepSeries(name=name, axis=axis, points=points, usd_per_hour=usd_per_hour)


def axis_short(axis: Axis) -> str:
    return "concurrency" if axis is Axis.CONCURRENCY else "req/s"


def categories(series: Sequence[SweepSeries]) -> list[float]:
    return sorted({point.value for s in series for point in s.points})


def category_labels(series: Sequence[SweepSeries], values: Sequence[float]) -> list[str]:
    limited = {point.value for s in series for point in s.points if point.client_limited}
    axis = series[0].axis if series else Axis.CONCURRENCY
    return [format_level(axis, v) + (CLIENT_LIMITED_MARK if v in limited else "") for v in values]


def x_title(series: Sequence[SweepSeries]) -> str:
    axis = series[0].axis if series else Axis.CONCURRENCY
    text = "concurrency (requests in flight)" if axis is Axis.CONCURRENCY else "request rate (req/s)"
    if any(point.client_limited for s in series for point in s.points):
        text += f"   {CLIENT_LIMITED_MARK} client-limited"
    return text


class _SweepSeriesChart(LiveChart):
    def __init__(self, title: str, empty_message: str, *, id: str | None = None, classes: str | None = None):
        super().__init__(title, id=id, classes=classes)
        self.series: list[SweepSeries] = []
        self.empty_message = empty_message

    def set_series(self, series: Sequence[SweepSeries]) -> None:
        self.series = list(series)
        self.mark_dirty()


class SweepChart(_SweepSeriesChart):
    """Total token throughput bars (left axis) and p99 TTFT lines (right axis, seconds)."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            "total tokens/s (bars) · p99 TTFT s (lines)",
            "the sweep chart fills as levels finish",
            id=id,
            classes=classes,
        )

    def draw(self, plt: Plot, width: int, height: int) -> None:
        series = [s for s in self.series if s.points]
        if not series:
            self.draw_message(plt, self.empty_message)
            return
        values = categories(series)
        labels = category_labels(series, values)
        positions = {value: i + 1 for i, value in enumerate(values)}
        bars = []
        for s in series:
            by_value = {p.value: p.total_tokens_per_s for p in s.points}
            bars.append([by_value.get(v, 0.0) for v in values])
        names = [s.name for s in series]
        colors = [series_colors(i, len(series)) for i in range(len(series))]
        if len(series) == 1:
            plt.bar(labels, bars[0], color=colors[0][0], label=f"{names[0]} tok/s")
        else:
            # textual-plotext's stub omits ``labels`` and per-series colours, which plotext accepts.
            cast(Any, plt).multiple_bar(
                labels,
                bars,
                color=[bar for bar, _, _ in colors],
                labels=names,
            )
        has_ttft = False
        for i, s in enumerate(series):
            pts = [
                (positions[p.value], p.p99_ttft_ms / 1000.0) for p in s.points if p.p99_ttft_ms is not None
            ]
            if not pts:
                continue
            has_ttft = True
            xs = [float(x) for x, _ in pts]
            ys = [y for _, y in pts]
            label = "p99 TTFT" if len(series) == 1 else f"p99 TTFT {s.name}"
            line_color = colors[i][1]
            plt.plot(xs, ys, yside="right", marker="braille", color=line_color, label=label)
            plt.scatter(xs, ys, yside="right", marker="dot", color=line_color)
        if has_ttft:
            cast(Any, plt).ylim(0, None, yside="right")  # the stub types ``yside`` as a number
        plt.ylim(0, None)
        plt.xlabel(x_title(series))


class CostChart(_SweepSeriesChart):
    """$ per 1M tokens per level, one line per series that has a price."""

    no_price_message = "no $/h: set a price in Setup"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("$ per 1M tokens", "the cost line fills as levels finish", id=id, classes=classes)

    def draw(self, plt: Plot, width: int, height: int) -> None:
        series = [s for s in self.series if s.points]
        priced = [s for s in series if any(p.usd_per_million is not None for p in s.points)]
        if not series:
            self.draw_message(plt, self.empty_message)
            return
        if not priced:
            self.draw_message(plt, self.no_price_message)
            return
        values = categories(series)
        labels = category_labels(series, values)
        positions = {value: i + 1 for i, value in enumerate(values)}
        for s in priced:
            pts = [(positions[p.value], p.usd_per_million) for p in s.points if p.usd_per_million is not None]
            xs = [float(x) for x, _ in pts]
            ys = [float(y) for _, y in pts if y is not None]
            color = series_colors(series.index(s), len(series))[2]
            label = s.name if len(priced) > 1 else None
            plt.plot(xs, ys, marker="braille", color=color, label=label)
            plt.scatter(xs, ys, marker="dot", color=color)
        plt.xticks([float(p) for p in positions.values()], labels)
        plt.xlim(0.5, len(values) + 0.5)
        plt.ylim(0, None)
        plt.xlabel(axis_short(series[0].axis))
