"""Chart data of an SLO-search run: the levels tried on the x axis (by value), one panel per SLO target
with the measured statistic of every level, its verdict, the knee marked and the target as a line."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from backends.bench.metrics import BenchmarkMetrics
from backends.bench.results import SweepConfig
from backends.bench.search_record import SearchLevel, Verdict
from backends.bench.slo import SloTarget, parse_slo
from backends.errors import ConfigError


class SearchPoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: float
    order: int  # 1 = the first level tried
    verdict: Verdict
    measured_ms: float | None  # None: the level has no figure for this target (cut off before it finished)
    knee: bool
    stopped_early: bool


class SearchPanel(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str  # "p99 TTFT ms"
    limit_ms: float | None
    points: tuple[SearchPoint, ...]  # by value, lowest first


class SearchChart(BaseModel):
    model_config = ConfigDict(frozen=True)

    axis: str
    slo: str
    knee: float | None
    start_source: str
    panels: tuple[SearchPanel, ...]

    @property
    def summary(self) -> str:
        unit = "" if self.axis == "concurrency" else " req/s"
        knee = "none passed" if self.knee is None else f"knee {self.knee:.4g}{unit}"
        tried = len(self.panels[0].points) if self.panels else 0
        return f"SLO search within {self.slo}: {knee} ({tried} levels; start: {self.start_source})"


def _measured(target: SloTarget, level: SearchLevel, metrics: BenchmarkMetrics | None) -> float | None:
    if metrics is not None:
        try:
            return target.value(metrics)
        except KeyError:
            pass
    if target.stat == "99" and target.metric in ("ttft", "tpot"):
        figure = level.p99_ttft_ms if target.metric == "ttft" else level.p99_tpot_ms
        return figure if figure > 0 else None
    return None


def search_chart(config: SweepConfig, metrics: Sequence[BenchmarkMetrics | None]) -> SearchChart | None:
    """None for a run that is not a search. ``metrics``: the stored levels' metrics, in the order tried."""
    record = config.search
    if record is None:
        return None
    try:
        targets = [t for t in parse_slo(record.slo).targets if t.stat != "each"]
    except ConfigError:
        targets = []
    shown: list[tuple[SloTarget, float | None]] = [(t, t.limit_ms) for t in targets]
    if not shown:  # per-request targets only: chart p99 TTFT, without a line
        shown = [(SloTarget(metric="ttft", stat="99", limit_ms=0.0), None)]
    order = sorted(range(len(record.levels)), key=lambda i: (record.levels[i].value, i))
    panels: list[SearchPanel] = []
    for target, limit in shown:
        points = []
        for i in order:
            level = record.levels[i]
            points.append(
                SearchPoint(
                    value=level.value,
                    order=i + 1,
                    verdict=level.verdict,
                    measured_ms=_measured(target, level, metrics[i] if i < len(metrics) else None),
                    knee=record.knee is not None and level.verdict == "pass" and level.value == record.knee,
                    stopped_early=level.stopped_by is not None,
                )
            )
        panels.append(SearchPanel(title=f"{target.label} ms", limit_ms=limit, points=tuple(points)))
    return SearchChart(
        axis=config.axis.value,
        slo=record.slo,
        knee=record.knee,
        start_source=record.start_source,
        panels=tuple(panels),
    )
