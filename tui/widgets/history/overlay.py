"""Several saved runs in one sweep chart (e.g. 4xL4 vs 1xH100 vs 2xH100).

Runs overlay only when they swept the same axis: a concurrency sweep and a request-rate sweep have
different x axes and are never drawn on one. Each run is named by its label when that label is its
own, else by its target; names that still collide get the run id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from backends.bench.results import SweepConfig, SweepResult
from backends.errors import ConfigError
from sessions.run_models import RunSummary
from tui.widgets.bench.sweep_chart import CostChart, SweepChart, SweepSeries, series_from_levels
from tui.widgets.history.runs import SHORT_ID


def series_names(summaries: Sequence[RunSummary]) -> list[str]:
    labels = [summary.label for summary in summaries]
    names = [
        summary.label if summary.label and labels.count(summary.label) == 1 else summary.target_name
        for summary in summaries
    ]
    return [
        f"{name} ({summary.id[:SHORT_ID]})" if names.count(name) > 1 else name
        for name, summary in zip(names, summaries, strict=True)
    ]


def overlay_series(
    sweeps: Sequence[SweepResult],
    summaries: Sequence[RunSummary],
    price_per_hour: Callable[[str], float | None],
) -> list[SweepSeries]:
    """One series per run, in the given order; ConfigError when the runs swept different axes."""
    axes = {sweep.config.axis for sweep in sweeps}
    if len(axes) > 1:
        raise ConfigError(
            "these runs swept different axes (concurrency and request rate) and cannot share a chart; "
            "mark runs of one axis only"
        )
    names = series_names(summaries)
    return [
        series_from_levels(name, sweep.config.axis, sweep.levels, _price(sweep.config, price_per_hour))
        for name, sweep in zip(names, sweeps, strict=True)
    ]


def _price(config: SweepConfig, price_per_hour: Callable[[str], float | None]) -> float | None:
    """The price saved with the run; runs saved without one take today's catalog price of their target."""
    return config.usd_per_hour if config.usd_per_hour is not None else price_per_hour(config.target.name)


class OverlayPanel(Vertical):
    DEFAULT_CSS = """
    OverlayPanel {
        height: 1fr;
    }
    OverlayPanel #overlay-caption {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    OverlayPanel #overlay-charts {
        height: 1fr;
    }
    OverlayPanel #overlay-sweep-chart {
        width: 2fr;
    }
    OverlayPanel #overlay-cost-chart {
        width: 1fr;
        margin-left: 2;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static("", id="overlay-caption")
        with Horizontal(id="overlay-charts"):
            yield SweepChart(id="overlay-sweep-chart")
            yield CostChart(id="overlay-cost-chart")

    def on_mount(self) -> None:
        self.query_one(SweepChart).empty_message = "highlight a run, or mark several with space"
        self.query_one(CostChart).empty_message = "highlight a run, or mark several with space"
        self.query_one(CostChart).no_price_message = "no $/h known for these targets"

    def show(self, series: list[SweepSeries], caption: str) -> None:
        self.query_one(SweepChart).set_series(series)
        self.query_one(CostChart).set_series(series)
        self.query_one("#overlay-caption", Static).update(caption)

    @property
    def series(self) -> list[SweepSeries]:
        return self.query_one(SweepChart).series
