"""Live terminal charts on textual-plotext: bounded series, downsampling, throttled redraws.

Every chart is one ``PlotextPlot`` with its own plotext figure (no global plotext state). Data goes
into bounded buffers; ``mark_dirty`` asks for a redraw, which happens at most ``REDRAW_HZ`` times a
second and only while the chart is on screen (a chart in a hidden tab or a background view redraws
once when it is shown again). Each redraw re-plots a series downsampled to the plot's width.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from rich.text import Text
from textual import events
from textual.app import RenderResult
from textual.dom import DOMNode, NoScreen
from textual.timer import Timer
from textual_plotext import PlotextPlot
from textual_plotext.plot import Plot

REDRAW_HZ = 4.0
SHOW_STAGGER_S = 0.015
MIN_TIMER_S = 0.001
SeriesKind = Literal["line", "scatter"]


def _bucket_bounds(n: int, buckets: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) of each of ``buckets`` consecutive, non-empty runs of ``n`` points."""
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        if hi > lo:
            yield lo, hi


def downsample_mean(
    xs: Sequence[float], ys: Sequence[float], buckets: int
) -> tuple[list[float], list[float]]:
    """At most ``buckets`` points: consecutive runs of points averaged (for lines)."""
    n = len(xs)
    if n <= buckets or buckets < 1:
        return list(xs), list(ys)
    out_x: list[float] = []
    out_y: list[float] = []
    for lo, hi in _bucket_bounds(n, buckets):
        out_x.append(sum(xs[lo:hi]) / (hi - lo))
        out_y.append(sum(ys[lo:hi]) / (hi - lo))
    return out_x, out_y


def downsample_envelope(
    xs: Sequence[float], ys: Sequence[float], buckets: int
) -> tuple[list[float], list[float]]:
    """At most ``2 * buckets`` points: the lowest and highest point of each run (for scatter plots,
    so outliers such as a slow TTFT survive downsampling)."""
    n = len(xs)
    if n <= 2 * buckets or buckets < 1:
        return list(xs), list(ys)
    out_x: list[float] = []
    out_y: list[float] = []
    for lo, hi in _bucket_bounds(n, buckets):
        low = min(range(lo, hi), key=ys.__getitem__)
        high = max(range(lo, hi), key=ys.__getitem__)
        for i in sorted({low, high}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


class SeriesBuffer:
    """The newest ``capacity`` (x, y) points of one series; older points fall off."""

    def __init__(self, capacity: int) -> None:
        self._xs: deque[float] = deque(maxlen=capacity)
        self._ys: deque[float] = deque(maxlen=capacity)

    def append(self, x: float, y: float) -> None:
        if math.isfinite(x) and math.isfinite(y):
            self._xs.append(x)
            self._ys.append(y)

    def extend(self, points: Iterable[tuple[float, float]]) -> None:
        for x, y in points:
            self.append(x, y)

    def clear(self) -> None:
        self._xs.clear()
        self._ys.clear()

    def __len__(self) -> int:
        return len(self._xs)

    @property
    def capacity(self) -> int:
        return self._xs.maxlen or 0

    def points(self, max_points: int, kind: SeriesKind = "line") -> tuple[list[float], list[float]]:
        if kind == "scatter":
            return downsample_envelope(list(self._xs), list(self._ys), max(1, max_points // 2))
        return downsample_mean(list(self._xs), list(self._ys), max_points)

    def raw(self) -> tuple[list[float], list[float]]:
        return list(self._xs), list(self._ys)

    def max_y(self) -> float | None:
        return max(self._ys) if self._ys else None


@dataclass
class RedrawStats:
    """What redrawing one chart has cost so far (plot setup plus plotext's build)."""

    redraws: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    recent_ms: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    redraw_times: deque[float] = field(default_factory=lambda: deque(maxlen=256))

    def record(self, elapsed_ms: float, at: float) -> None:
        self.redraws += 1
        self.total_ms += elapsed_ms
        self.max_ms = max(self.max_ms, elapsed_ms)
        self.recent_ms.append(elapsed_ms)
        self.redraw_times.append(at)


class LiveChart(PlotextPlot):
    """A plot that redraws from its own data, throttled to ``REDRAW_HZ`` and only when visible.

    Subclasses implement ``draw(plt, width, height)``; they call ``mark_dirty()`` when data changes.
    """

    REDRAW_HZ: ClassVar[float] = REDRAW_HZ

    DEFAULT_CSS = """
    LiveChart {
        width: 1fr;
        height: 1fr;
        min-height: 6;
    }
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.chart_title = title
        self.stats = RedrawStats()
        self._dirty = True
        self._redraw_timer: Timer | None = None
        self._last_redraw = -math.inf
        self._picture: tuple[tuple[int, int, str], RenderResult] | None = None
        self._slot: int | None = None

    # -- scheduling -----------------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return self._dirty

    def mark_dirty(self) -> None:
        """Ask for a redraw at the next allowed moment (at most ``REDRAW_HZ`` a second)."""
        self._dirty = True
        if self._redraw_timer is not None or not self.is_mounted:
            return
        # Never in the caller's turn: charts fed by one message build on their own timers, one
        # after another, so a key that arrives meanwhile is handled between two builds.
        wait = max(self._last_redraw + 1.0 / self.REDRAW_HZ - time.monotonic(), 0.0) + self._stagger()
        # Never a 0 s timer: Textual's timer divides by its interval when the loop runs late.
        self._redraw_timer = self.set_timer(max(wait, MIN_TIMER_S), self._on_pending_timer)

    def _stagger(self) -> float:
        # A chart's place among its screen's charts never changes: looked up once (a DOM walk).
        if self._slot is None:
            try:
                self._slot = self.screen.query(LiveChart).nodes.index(self)
            except (NoScreen, ValueError):
                return 0.0
        return SHOW_STAGGER_S * self._slot

    def _on_pending_timer(self) -> None:
        self._redraw_timer = None
        self._redraw_if_visible()

    @property
    def on_screen_now(self) -> bool:
        """On the current screen and not inside anything hidden (an inactive tab, say).

        Decided from the DOM, not from the last frame: between a message and the next frame the
        compositor's map can be stale, and a chart would skip a redraw it is owed.
        """
        try:
            if not self.screen.is_current:
                return False
        except NoScreen:  # not attached to a screen (yet or any more)
            return False
        node: DOMNode | None = self
        while node is not None and node is not self.screen:
            if not node.display or not node.visible:
                return False
            node = node.parent
        return True

    def _redraw_if_visible(self) -> None:
        if self._dirty and self.on_screen_now:
            self.redraw_now()

    def on_show(self, event: events.Show) -> None:
        """Shown again (a tab or a view switched back): the last picture shows at once, and a chart
        that got data while hidden rebuilds on its own timer, charts one after another, so the frame
        that answers the key is not held up by every chart's build."""
        if self._dirty:
            # After the frame that shows the tab: a build started before it would hold that frame back.
            self.call_after_refresh(self._schedule_after_show)

    def _schedule_after_show(self) -> None:
        if self._dirty and self._redraw_timer is None and self.is_mounted:
            self._redraw_timer = self.set_timer(SHOW_STAGGER_S + self._stagger(), self._on_pending_timer)

    def redraw_now(self) -> None:
        """Rebuild the figure from the data and its picture, then repaint (ignores the throttle)."""
        started = time.perf_counter()
        self._dirty = False
        self._last_redraw = time.monotonic()
        self._picture = (self._picture_key(), self.build_picture())
        self.stats.record((time.perf_counter() - started) * 1000.0, self._last_redraw)
        self.refresh()

    def _picture_key(self) -> tuple[int, int, str]:
        return self.size.width, self.size.height, self.app.theme

    def render(self) -> RenderResult:
        """The picture built by the last redraw; rebuilt here only when the size or theme changed."""
        key = self._picture_key()
        if self._picture is not None and self._picture[0] == key:
            return self._picture[1]
        started = time.perf_counter()
        result = self.build_picture()
        self._picture = (key, result)
        self.stats.record((time.perf_counter() - started) * 1000.0, time.monotonic())
        return result

    def build_picture(self) -> RenderResult:
        """The title and legend as lines of their own above the plot (never drawn over data), then
        the plotext figure from ``draw`` at the size that is left."""
        width, height = max(self.size.width, 10), max(self.size.height, 4)
        header = self.header_lines(width)
        plot_height = max(height - len(header), 3)
        plt = self.plt
        plt.clear_figure()
        self.draw(plt, width, plot_height)
        plt.plotsize(width, plot_height)
        plt._set_size(width, plot_height)  # see PlotextPlot.render: plotsize alone does not stick
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        return Text("\n").join([*header, Text.from_ansi(plt.build())])

    def legend(self) -> list[tuple[str, str]]:
        """(name, Rich colour) of each series to name above the plot; none by default."""
        return []

    def header_lines(self, width: int) -> list[Text]:
        title = Text(self.chart_title, style="bold")
        entries = self.legend()
        if not entries:
            return [_centred(title, width)]
        legend = Text()
        for i, (name, color) in enumerate(entries):
            if i:
                legend.append("   ")
            legend.append("━━ ", style=color)
            legend.append(name)
        one_line = title + Text("   ") + legend
        if one_line.cell_len <= width:
            return [_centred(one_line, width)]
        legend.truncate(width)
        return [_centred(title, width), _centred(legend, width)]

    def draw(self, plt: Plot, width: int, height: int) -> None:
        raise NotImplementedError

    @staticmethod
    def draw_message(plt: Plot, message: str) -> None:
        """An empty frame with one centred line (no data yet, or nothing to show)."""
        plt.xlim(0, 1)
        plt.ylim(0, 1)
        plt.xticks([], [])
        plt.yticks([], [])
        plt.text(message, 0.5, 0.5, alignment="center", color="gray+", background="default")


def _centred(text: Text, width: int) -> Text:
    text.truncate(width)
    return Text(" " * max(0, (width - text.cell_len) // 2)) + text


# plotext's colour names and the ANSI colour each one prints (plotext's own table), so a legend
# above the plot shows the very colour of its line under any Textual theme.
PLOTEXT_ANSI = {
    "black": 0,
    "red": 1,
    "green": 2,
    "orange": 3,
    "blue": 4,
    "magenta": 5,
    "cyan": 6,
    "gray+": 7,
    "gray": 8,
    "red+": 9,
    "green+": 10,
    "orange+": 11,
    "blue+": 12,
    "magenta+": 13,
    "cyan+": 14,
    "white": 15,
}


def rich_color(plotext_color: str) -> str:
    """The Rich colour of a plotext colour name ("default" for a name plotext does not know)."""
    code = PLOTEXT_ANSI.get(plotext_color)
    return f"color({code})" if code is not None else "default"


@dataclass(frozen=True)
class SeriesStyle:
    name: str
    color: str
    kind: SeriesKind = "line"


class TimeSeriesChart(LiveChart):
    """Named series over time, each bounded. With level markers, every level gets an equal share
    of the width and is drawn over the time within it, so a short level is as readable as a long one
    (wall time would squeeze it to a sliver); a grey line inside the frame separates the levels."""

    def __init__(
        self,
        title: str,
        series: Sequence[SeriesStyle],
        *,
        capacity: int = 3600,
        y_label: str = "",
        empty_message: str = "waiting for data",
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(title, id=id, classes=classes)
        self.styles_by_name = {style.name: style for style in series}
        self.buffers = {style.name: SeriesBuffer(capacity) for style in series}
        self.markers: deque[tuple[float, str]] = deque(maxlen=MAX_LEVEL_MARKERS)
        self.y_label = y_label
        self.empty_message = empty_message
        self.note: str | None = None

    def append(self, name: str, x: float, y: float | None) -> None:
        if y is not None:
            self.buffers[name].append(x, y)
            self.mark_dirty()

    def extend(self, name: str, points: Iterable[tuple[float, float]]) -> None:
        self.buffers[name].extend(points)
        self.mark_dirty()

    def add_marker(self, x: float, label: str = "") -> None:
        """A level starts at ``x`` (seconds); ``label`` names it under the x axis."""
        self.markers.append((x, label))
        self.mark_dirty()

    def set_note(self, note: str | None) -> None:
        """A line shown instead of the plot while no series has data (e.g. why a metric is missing)."""
        if note != self.note:
            self.note = note
            self.mark_dirty()

    def clear(self) -> None:
        for buffer in self.buffers.values():
            buffer.clear()
        self.markers.clear()
        self.note = None
        self.mark_dirty()

    def legend(self) -> list[tuple[str, str]]:
        if len(self.buffers) < 2:
            return []
        return [
            (name, rich_color(self.styles_by_name[name].color))
            for name, buffer in self.buffers.items()
            if len(buffer)
        ]

    def draw(self, plt: Plot, width: int, height: int) -> None:
        if not any(len(buffer) for buffer in self.buffers.values()):
            self.draw_message(plt, self.note or self.empty_message)
            return
        max_points = max(8, width - 8)
        raw = {name: buffer.raw() for name, buffer in self.buffers.items() if len(buffer)}
        last_x = max(xs[-1] for xs, _ in raw.values())
        markers = sorted(self.markers)
        segments = level_segments([x for x, _ in markers], last_x)
        top = 0.0
        for name, (xs, ys) in raw.items():
            style = self.styles_by_name[name]
            px, py = segment_points(xs, ys, segments, max_points, style.kind)
            if not px:
                continue
            if style.kind == "scatter":
                plt.scatter(px, py, marker="dot", color=style.color)
            else:
                plt.plot(px, py, marker="braille", color=style.color)
            top = max(top, max(ys))
        y_top = top * 1.1 if top > 0 else 1.0
        plt.ylim(0, y_top)
        if segments:
            for i in range(1, len(segments)):
                plt.plot([float(i), float(i)], [0.0, y_top], marker="┊", color="gray")
            plt.xlim(0.0, float(len(segments)))
            labels = [label or f"L{i + 1}" for i, (_, label) in enumerate(markers)]
            shown = _fit_labels(labels, width - 8)
            plt.xticks([i + 0.5 for i in shown], [labels[i] for i in shown])
            plt.xlabel("level · time within each level")
        else:
            first_x = min(xs[0] for xs, _ in raw.values())
            plt.xlim(first_x, max(last_x, first_x + 1e-6))
            plt.xlabel("s")
        if self.y_label:
            plt.ylabel(self.y_label)


MAX_LEVEL_MARKERS = 256


def level_segments(starts: Sequence[float], last_x: float) -> list[tuple[float, float]]:
    """(start, end) in seconds of each level; the running level ends at the newest point."""
    ordered = sorted(starts)
    ends = [*ordered[1:], max(last_x, ordered[-1])] if ordered else []
    return [(start, max(end, start + 1e-6)) for start, end in zip(ordered, ends, strict=True)]


def segment_points(
    xs: Sequence[float],
    ys: Sequence[float],
    segments: Sequence[tuple[float, float]],
    max_points: int,
    kind: SeriesKind,
) -> tuple[list[float], list[float]]:
    """Points mapped to level-relative x (level ``i`` spans ``[i, i + 1]``), each level downsampled to
    its share of ``max_points``; without segments, the points downsampled as they are."""
    if not segments:
        if kind == "scatter":
            return downsample_envelope(xs, ys, max(1, max_points // 2))
        return downsample_mean(xs, ys, max_points)
    per_segment = max(2, max_points // len(segments))
    starts = [start for start, _ in segments]
    # The mapping is linear within a level, so each level is downsampled in seconds and only the
    # points that are drawn are mapped.
    chunks: list[tuple[Sequence[float], Sequence[float]]]
    if all(a <= b for a, b in itertools.pairwise(xs)):  # samples arrive in time order: slice
        cuts = [0, *(bisect.bisect_left(xs, start) for start in starts[1:]), len(xs)]
        chunks = [(xs[cuts[i] : cuts[i + 1]], ys[cuts[i] : cuts[i + 1]]) for i in range(len(segments))]
    else:
        lists: list[tuple[list[float], list[float]]] = [([], []) for _ in segments]
        for x, y in zip(xs, ys, strict=True):
            i = max(0, bisect.bisect_right(starts, x) - 1)
            lists[i][0].append(x)
            lists[i][1].append(y)
        chunks = list(lists)
    out_x: list[float] = []
    out_y: list[float] = []
    for i, ((start, end), (cx, cy)) in enumerate(zip(segments, chunks, strict=True)):
        if kind == "scatter":
            dx, dy = downsample_envelope(cx, cy, max(1, per_segment // 2))
        else:
            dx, dy = downsample_mean(cx, cy, per_segment)
        scale = 1.0 / (end - start)
        out_x.extend(i + min(max((x - start) * scale, 0.0), 1.0) for x in dx)
        out_y.extend(dy)
    return out_x, out_y


def _fit_labels(labels: Sequence[str], width: int) -> list[int]:
    """Indices of the level labels that fit under the axis without touching (every n-th one)."""
    if not labels:
        return []
    widest = max(len(label) for label in labels) + 1
    step = 1
    while len(labels) // step * widest > width and step < len(labels):
        step += 1
    return list(range(0, len(labels), step))
