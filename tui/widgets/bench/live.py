"""Live time series of a running sweep, from the coalesced progress snapshots (about 1 Hz).

Four charts: output tokens/s (client), requests (client in flight; server running and waiting),
KV-cache use (server) and TTFT of each finished request. Each level takes an equal share of the x
axis, drawn over the time within it (labelled with the level under the axis), so a short first level
is not squeezed by a long last one; a dotted line separates levels. Server series need the target's
/metrics.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid

from backends.bench.models import ProgressSnapshot
from tui.widgets.charts import SeriesStyle, TimeSeriesChart

NO_SERVER_METRICS = "no server metrics from this target (/metrics)"
# One point a second for an hour per series; TTFT keeps the newest 20k requests.
SERIES_CAPACITY = 3600
TTFT_CAPACITY = 20_000


class LiveCharts(Grid):
    DEFAULT_CSS = """
    LiveCharts {
        grid-size: 2 2;
        grid-gutter: 0 1;
        height: 1fr;
    }
    """

    def compose(self) -> ComposeResult:
        yield TimeSeriesChart(
            "output tokens/s",
            [SeriesStyle("output tok/s", "green")],
            capacity=SERIES_CAPACITY,
            id="live-tokens",
        )
        yield TimeSeriesChart(
            "requests",
            [
                SeriesStyle("in flight", "cyan"),
                SeriesStyle("running", "green"),
                SeriesStyle("waiting", "orange"),  # plotext's name for ANSI yellow
            ],
            capacity=SERIES_CAPACITY,
            id="live-requests",
        )
        yield TimeSeriesChart(
            "KV cache %",
            [SeriesStyle("KV cache %", "magenta")],
            capacity=SERIES_CAPACITY,
            id="live-kv",
        )
        yield TimeSeriesChart(
            "TTFT ms (each finished request)",
            [SeriesStyle("TTFT ms", "blue", kind="scatter")],
            capacity=TTFT_CAPACITY,
            id="live-ttft",
        )

    def chart(self, chart_id: str) -> TimeSeriesChart:
        return self.query_one(f"#{chart_id}", TimeSeriesChart)

    @property
    def charts(self) -> list[TimeSeriesChart]:
        return list(self.query(TimeSeriesChart))

    def clear(self) -> None:
        for chart in self.charts:
            chart.clear()

    def mark_level(self, x: float, label: str = "") -> None:
        """A level starts at ``x`` seconds; from here it takes its own equal share of each chart."""
        for chart in self.charts:
            chart.add_marker(x, label)

    def add_sample(
        self, x: float, snapshot: ProgressSnapshot, ttft_points: list[tuple[float, float]]
    ) -> None:
        self.chart("live-tokens").append("output tok/s", x, snapshot.output_tokens_per_s)
        requests = self.chart("live-requests")
        requests.append("in flight", x, float(snapshot.in_flight))
        server = snapshot.server
        kv = self.chart("live-kv")
        if server is not None:
            requests.append("running", x, server.running)
            requests.append("waiting", x, server.waiting)
            if server.kv_cache_usage is not None:
                kv.append("KV cache %", x, server.kv_cache_usage * 100.0)
        if server is None or server.kv_cache_usage is None:
            kv.set_note(NO_SERVER_METRICS)
        self.add_ttft(ttft_points)

    def add_ttft(self, points: list[tuple[float, float]]) -> None:
        if points:
            self.chart("live-ttft").extend("TTFT ms", points)
