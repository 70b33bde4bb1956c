"""The per-level metrics table: a row appears when a level starts and is filled in place when it ends.

A level where the load generator itself was the limit is marked ``*`` (its numbers understate the
server)."""

from __future__ import annotations

from textual.widgets import DataTable

from backends.bench.models import LoadLevel
from backends.bench.results import LevelResult, RunStatus
from manifests.cost import usd_per_million_tokens
from tui.widgets.bench_config import format_level
from tui.widgets.bench_cost import format_usd
from tui.widgets.bench_progress import format_rate
from tui.widgets.bench_sweep_chart import CLIENT_LIMITED_MARK

COLUMNS: tuple[tuple[str, str], ...] = (
    ("target", "target"),
    ("level", "level"),
    ("status", "status"),
    ("done", "ok/fail"),
    ("req_s", "req/s"),
    ("out_tok_s", "out tok/s"),
    ("total_tok_s", "tot tok/s"),
    ("ttft_p99", "p99 TTFT"),
    ("tpot_mean", "TPOT"),
    ("e2el_p99", "p99 E2E"),
    ("goodput", "goodput"),
    ("usd_per_m", "$/1M tok"),
)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return (
        f"{value / 1000:.2f} s"
        if value >= 10_000
        else f"{value:,.0f} ms"
        if value >= 100
        else f"{value:.1f} ms"
    )


def level_cells(result: LevelResult, target_name: str, usd_per_hour: float | None) -> dict[str, str]:
    metrics = result.metrics
    completed = metrics.completed > 0
    status = result.status.value
    return {
        "target": target_name,
        "level": format_level(result.level.axis, result.level.value)
        + (CLIENT_LIMITED_MARK if result.client.client_limited else ""),
        "status": status,
        "done": f"{metrics.completed}/{metrics.failed}",
        "req_s": f"{metrics.request_throughput:.2f}",
        "out_tok_s": format_rate(metrics.output_throughput),
        "total_tok_s": format_rate(metrics.total_token_throughput),
        "ttft_p99": _ms(metrics.ttft.percentiles.get("99")) if completed else "-",
        "tpot_mean": _ms(metrics.tpot.mean) if completed else "-",
        "e2el_p99": _ms(metrics.e2el.percentiles.get("99")) if completed else "-",
        "goodput": "-" if metrics.request_goodput is None else f"{metrics.request_goodput:.2f}/s",
        "usd_per_m": format_usd(usd_per_million_tokens(usd_per_hour, metrics.total_token_throughput)),
    }


class LevelTable(DataTable[str]):
    DEFAULT_CSS = """
    LevelTable {
        height: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        for key, title in COLUMNS:
            self.add_column(title, key=key)

    @staticmethod
    def row_key(run_index: int, level_index: int) -> str:
        return f"{run_index}:{level_index}"

    def level_started(self, run_index: int, target_name: str, level_index: int, level: LoadLevel) -> None:
        key = self.row_key(run_index, level_index)
        cells = {name: "" for name, _ in COLUMNS}
        cells.update(
            target=target_name, level=format_level(level.axis, level.value), status=RunStatus.RUNNING.value
        )
        if key in self.rows:
            self.remove_row(key)
        self.add_row(*(cells[name] for name, _ in COLUMNS), key=key)

    def level_finished(
        self, run_index: int, target_name: str, result: LevelResult, usd_per_hour: float | None
    ) -> None:
        key = self.row_key(run_index, result.index)
        cells = level_cells(result, target_name, usd_per_hour)
        if key not in self.rows:
            self.add_row(*(cells[name] for name, _ in COLUMNS), key=key)
            return
        for name, _ in COLUMNS:
            self.update_cell(key, name, cells[name], update_width=True)
