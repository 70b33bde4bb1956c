"""Live terminal charts on textual-plotext: bounded series, downsampling, throttled redraws.

Every chart is one ``PlotextPlot`` with its own plotext figure (no global plotext state). Data goes
into bounded buffers; ``mark_dirty`` asks for a redraw, which happens at most ``REDRAW_HZ`` times a
second and only while the chart is on screen (a chart in a hidden tab or a background view redraws
once when it is shown again). Each redraw re-plots a series downsampled to the plot's width.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

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


def downsample_mean(
    xs: Sequence[float], ys: Sequence[float], buckets: int
) -> tuple[list[float], list[float]]:
    """At most ``buckets`` points: consecutive runs of points averaged (for lines)."""
    n = len(xs)
    if n <= buckets or buckets < 1:
        return list(xs), list(ys)
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(buckets):
        lo = b * n // buckets
        hi = (b + 1) * n // buckets
        if hi <= lo:
            continue
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
    for b in range(buckets):
        lo = b * n // buckets
        hi = (b + 1) * n // buckets
        if hi <= lo:
            continue
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
        plt = self.plt
        plt.clear_figure()
        plt.title(self.chart_title)
        self.draw(plt, max(self.size.width, 10), max(self.size.height, 4))
        self._picture = (self._picture_key(), super().render())
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
        result = super().render()
        self._picture = (key, result)
        self.stats.record((time.perf_counter() - started) * 1000.0, time.monotonic())
        if self.stats.redraws > 1:
            self.call_later(self.mark_dirty)  # resized: re-plot with the new width's downsampling
        return result

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


@dataclass(frozen=True)
class SeriesStyle:
    name: str
    color: str
    kind: SeriesKind = "line"


class TimeSeriesChart(LiveChart):
    """Named series over time (seconds), each bounded; vertical markers where a level starts."""

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
        self.markers: deque[float] = deque(maxlen=32)
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

    def add_marker(self, x: float) -> None:
        self.markers.append(x)
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

    def draw(self, plt: Plot, width: int, height: int) -> None:
        if not any(len(buffer) for buffer in self.buffers.values()):
            self.draw_message(plt, self.note or self.empty_message)
            return
        max_points = max(8, width - 8)
        top = 0.0
        first_x = math.inf
        for name, buffer in self.buffers.items():
            if not len(buffer):
                continue
            style = self.styles_by_name[name]
            xs, ys = buffer.points(max_points, style.kind)
            first_x = min(first_x, xs[0])
            label = name if len(self.buffers) > 1 else None
            if style.kind == "scatter":
                plt.scatter(xs, ys, marker="dot", color=style.color, label=label)
            else:
                plt.plot(xs, ys, marker="braille", color=style.color, label=label)
            top = max(top, buffer.max_y() or 0.0)
        for x in self.markers:
            if x > first_x:
                plt.vline(x, "gray")
        plt.ylim(0, top * 1.1 if top > 0 else 1.0)
        plt.xlabel("s")
        if self.y_label:
            plt.ylabel(self.y_label)
