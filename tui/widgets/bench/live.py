"""Live time series of a running sweep, from the coalesced progress snapshots (about 1 Hz).

Six charts: output tokens/s (client), requests (client in flight; server running and waiting),
KV-cache use (server) beside GPU memory used, TTFT of each finished request, GPU utilisation beside
DRAM activity, and GPU power. Each level takes an equal share of the x axis, drawn over the time within
it (labelled with the level under the axis), so a short first level is not squeezed by a long last
one; a dotted line separates levels. Server series need the target's /metrics; GPU series need GPU
telemetry (a twin's own /dcgm, or dcgm-exporter), means over the target's GPUs, power their sum;
the two GPU charts appear with the first reading (until then the KV chart's title says there is none).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid

from backends.bench.models import ProgressSnapshot
from backends.telemetry.models import GpuSummary
from tui.widgets.charts import SeriesStyle, TimeSeriesChart

NO_SERVER_METRICS = "no server metrics from this target (/metrics)"
NO_GPU_TELEMETRY = "no GPU telemetry"
KV_TITLE = "KV cache %"
KV_GPU_TITLE = "KV cache % · GPU memory %"
KV_NO_GPU_TITLE = f"KV cache % · {NO_GPU_TELEMETRY}"
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
    LiveCharts.-gpu {
        grid-size: 3 2;
    }
    LiveCharts .gpu-chart {
        display: none;
    }
    LiveCharts.-gpu .gpu-chart {
        display: block;
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
            KV_TITLE,
            [SeriesStyle("KV cache %", "magenta"), SeriesStyle("GPU mem %", "gray")],
            capacity=SERIES_CAPACITY,
            id="live-kv",
        )
        yield TimeSeriesChart(
            "TTFT ms (each finished request)",
            [SeriesStyle("TTFT ms", "blue", kind="scatter")],
            capacity=TTFT_CAPACITY,
            id="live-ttft",
        )
        yield TimeSeriesChart(
            "GPU util % · DRAM active %",
            [SeriesStyle("GPU util %", "green"), SeriesStyle("DRAM active %", "cyan")],
            capacity=SERIES_CAPACITY,
            id="live-gpu",
            classes="gpu-chart",
        )
        yield TimeSeriesChart(
            "GPU power W",
            [SeriesStyle("power W", "red")],
            capacity=SERIES_CAPACITY,
            id="live-power",
            classes="gpu-chart",
        )

    def chart(self, chart_id: str) -> TimeSeriesChart:
        return self.query_one(f"#{chart_id}", TimeSeriesChart)

    @property
    def charts(self) -> list[TimeSeriesChart]:
        """The charts on show (the GPU ones only once GPU telemetry arrived)."""
        return [chart for chart in self.query(TimeSeriesChart) if chart.display]

    @property
    def with_gpu(self) -> bool:
        return self.has_class("-gpu")

    def clear(self) -> None:
        for chart in self.query(TimeSeriesChart):
            chart.clear()
        self.remove_class("-gpu")
        self._set_kv_title(KV_TITLE)

    def _set_kv_title(self, title: str) -> None:
        kv = self.chart("live-kv")
        if kv.chart_title != title:
            kv.chart_title = title
            kv.mark_dirty()

    def mark_level(self, x: float, label: str = "") -> None:
        """A level starts at ``x`` seconds; from here it takes its own equal share of each chart."""
        for chart in self.query(TimeSeriesChart):
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
        self.add_gpu(x, snapshot.gpu)
        self.add_ttft(ttft_points)

    def add_gpu(self, x: float, gpu: GpuSummary | None) -> None:
        """GPU series; without telemetry (none read yet in this sweep) the KV chart's title says so."""
        util, power = self.chart("live-gpu"), self.chart("live-power")
        if gpu is None:
            if not self.with_gpu:
                self._set_kv_title(KV_NO_GPU_TITLE)
            return
        self.add_class("-gpu")
        self._set_kv_title(KV_GPU_TITLE)
        util.append("GPU util %", x, _percent(gpu.utilisation))
        util.append("DRAM active %", x, _percent(gpu.dram_active))
        power.append("power W", x, gpu.power_w)
        if gpu.fb_used_mib is not None and gpu.fb_total_mib:
            self.chart("live-kv").append("GPU mem %", x, gpu.fb_used_mib / gpu.fb_total_mib * 100.0)

    def add_ttft(self, points: list[tuple[float, float]]) -> None:
        if points:
            self.chart("live-ttft").extend("TTFT ms", points)


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else fraction * 100.0
