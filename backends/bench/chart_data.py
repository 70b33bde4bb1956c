"""What the sweep charts draw, read from finished levels: one series per target or saved run.

Shared by the terminal charts (tui/widgets/bench/sweep_chart.py) and the SVG export
(backends/bench/chart_svg.py), so both show the same numbers, marks and colours. Latency is in ms
everywhere, as in the level table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from pydantic import BaseModel

from backends.bench.models import Axis
from backends.bench.results import LevelResult, RunStatus, SweepResult
from manifests.cost import usd_per_million_tokens

CLIENT_LIMITED_MARK = "*"
PARTIAL_MARK = "†"


class SeriesColors(NamedTuple):
    bar: str
    line: str
    cost: str


# One series: the article's colours (green bars, blue p99 TTFT, red cost). Several: one hue per
# series, bars in the plain shade and its lines in a lighter one (hex, for the terminal and the SVG).
SINGLE_SERIES = SeriesColors("#2ca02c", "#4c9be8", "#e5484d")
SERIES_HUES = (
    ("#2ca02c", "#98df8a"),  # green
    ("#17becf", "#9edae5"),  # cyan
    ("#ff7f0e", "#ffbb78"),  # orange
    ("#c451b0", "#f7b6d2"),  # magenta
    ("#1f77b4", "#aec7e8"),  # blue
    ("#c7c7c7", "#f0f0f0"),  # white
    ("#d62728", "#ff9896"),  # red
    ("#7f7f7f", "#bdbdbd"),  # grey
)


def series_colors(index: int, count: int) -> SeriesColors:
    """(bar, p99 TTFT line, cost line) colours of series ``index`` of ``count``."""
    if count == 1:
        return SINGLE_SERIES
    bar, line = SERIES_HUES[index % len(SERIES_HUES)]
    return SeriesColors(bar, line, line)


class SweepPoint(BaseModel):
    value: float
    total_tokens_per_s: float
    p99_ttft_ms: float | None
    usd_per_million: float | None
    client_limited: bool
    status: RunStatus
    kj_per_million: float | None = None  # GPU energy per 1M output tokens, where GPU telemetry was read

    @property
    def partial(self) -> bool:
        """Cancelled or failed part-way: fewer requests than planned stand behind the numbers."""
        return self.status is not RunStatus.COMPLETE


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
        kj_per_million=level.gpu.kj_per_1m_output_tokens if level.gpu is not None else None,
    )


def series_from_levels(
    name: str, axis: Axis, levels: Sequence[LevelResult], usd_per_hour: float | None
) -> SweepSeries:
    points = [point_from_level(level, usd_per_hour) for level in sorted(levels, key=lambda lv: lv.index)]
    return SweepSeries(name=name, axis=axis, points=points, usd_per_hour=usd_per_hour)


def series_from_results(
    results: Sequence[SweepResult], names: Sequence[str] | None = None
) -> list[SweepSeries]:
    """One series per saved run, priced at what the run recorded (``config.usd_per_hour``)."""
    chosen = list(names) if names is not None else [result.config.target.name for result in results]
    return [
        series_from_levels(name, result.config.axis, result.levels, result.config.usd_per_hour)
        for name, result in zip(chosen, results, strict=True)
    ]


def format_level(axis: Axis, value: float) -> str:
    return f"{int(value)}" if axis is Axis.CONCURRENCY else f"{value:g}"


def axis_short(axis: Axis) -> str:
    return "concurrency" if axis is Axis.CONCURRENCY else "req/s"


def categories(series: Sequence[SweepSeries]) -> list[float]:
    return sorted({point.value for s in series for point in s.points})


def category_labels(series: Sequence[SweepSeries], values: Sequence[float]) -> list[str]:
    """Level labels; ``*`` where the load generator was the limit, ``†`` where a level is partial."""
    limited = {point.value for s in series for point in s.points if point.client_limited}
    partial = {point.value for s in series for point in s.points if point.partial}
    axis = series[0].axis if series else Axis.CONCURRENCY
    return [
        format_level(axis, v)
        + (CLIENT_LIMITED_MARK if v in limited else "")
        + (PARTIAL_MARK if v in partial else "")
        for v in values
    ]


def x_title(series: Sequence[SweepSeries]) -> str:
    axis = series[0].axis if series else Axis.CONCURRENCY
    return "concurrency (requests in flight)" if axis is Axis.CONCURRENCY else "request rate (req/s)"


def marks_note(series: Sequence[SweepSeries]) -> str:
    """What the level marks mean, for the marks this chart has ("" when none)."""
    notes = []
    if any(point.client_limited for s in series for point in s.points):
        notes.append(f"{CLIENT_LIMITED_MARK} client-limited")
    if any(point.partial for s in series for point in s.points):
        notes.append(f"{PARTIAL_MARK} partial level")
    return "   ".join(notes)


def nice_ceiling(value: float) -> float:
    """A round axis top at least ``value``: 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten."""
    if value <= 0:
        return 1.0
    power = 10.0 ** (len(str(int(value))) - 1) if value >= 1 else 1.0
    while power > value:
        power /= 10.0
    for step in (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10.0 * power


def format_tick(value: float) -> str:
    """A short axis number: 0, 2.5, 40, 600, 1.2k, 15k, 2.5M."""
    if value >= 1e6:
        text = f"{value / 1e6:.1f}".rstrip("0").rstrip(".")
        return f"{text}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        text = f"{value / 1e3:.1f}".rstrip("0").rstrip(".")
        return f"{text}k"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.2f}".rstrip("0").rstrip(".")
