"""The per-level metrics table: a row appears when a level starts and is filled in place when it ends.

A level where the load generator itself was the limit is marked ``*`` (its numbers understate the
server). Why a level is marked (client-limited, host contention, prefix-cache hits on prompts that were
not meant to repeat) is the tooltip of its cell and a line of ``notes``; ``NotesChanged`` tells the panel."""

from __future__ import annotations

from typing import Self

from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist

from backends.bench.models import LoadLevel
from backends.bench.results import LevelResult, RunStatus
from backends.prometheus import prefix_cache_hit_rate, prefix_cache_warning
from backends.telemetry.models import LevelGpuTelemetry
from manifests.cost import usd_per_million_tokens
from tui.services.bench_config import format_level
from tui.services.bench_cost import format_usd
from tui.widgets.bench.progress import format_rate
from tui.widgets.bench.sweep_chart import CLIENT_LIMITED_MARK

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
    ("gpu_util", "GPU util"),
    ("gpu_power", "GPU W"),
    ("kj_per_m", "kJ/1M out"),
    ("prefix_hit", "prefix hit"),
)
GPU_COLUMNS = ("gpu_util", "gpu_power", "kj_per_m")


def gpu_cells(gpu: LevelGpuTelemetry | None) -> dict[str, str]:
    """Mean GPU utilisation, mean power of the target's GPUs and energy per 1M output tokens; "-" for
    a level without GPU telemetry (the cell's tooltip says why)."""
    if gpu is None or gpu.state != "ok":
        return dict.fromkeys(GPU_COLUMNS, "-")
    return {
        "gpu_util": "-" if gpu.gpu_util_mean is None else f"{gpu.gpu_util_mean:.0%}",
        "gpu_power": "-" if gpu.power_w_mean is None else f"{gpu.power_w_mean:,.0f}",
        "kj_per_m": "-" if gpu.kj_per_1m_output_tokens is None else f"{gpu.kj_per_1m_output_tokens:,.0f}",
    }


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


PREFIX_WARNING_MARK = "!"


def level_cells(result: LevelResult, target_name: str, usd_per_hour: float | None) -> dict[str, str]:
    metrics = result.metrics
    completed = metrics.completed > 0
    status = result.status.value
    hit_rate = prefix_cache_hit_rate(result.server_snapshots)
    warned = prefix_cache_warning(hit_rate, result.prompt_sampling) is not None
    return {
        "target": target_name,
        "level": format_level(result.level.axis, result.level.value)
        + (CLIENT_LIMITED_MARK if result.client.client_limited else ""),
        "prefix_hit": "n/a" if hit_rate is None else f"{hit_rate:.0%}{PREFIX_WARNING_MARK if warned else ''}",
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
        **gpu_cells(result.gpu),
    }


def level_tooltips(result: LevelResult) -> dict[str, str]:
    """Column key -> why that cell is marked."""
    tips: dict[str, str] = {}
    client = result.client
    lines = []
    if client.client_limited and client.reason:
        lines.append(f"{CLIENT_LIMITED_MARK} client-limited: {client.reason}")
    if client.note:
        lines.append(client.note)
    if lines:
        tips["level"] = "\n".join(lines)
    hit_rate = prefix_cache_hit_rate(result.server_snapshots)
    if hit_rate is None:
        tips["prefix_hit"] = "the server reports no prefix-cache counters"
    else:
        warning = prefix_cache_warning(hit_rate, result.prompt_sampling)
        tips["prefix_hit"] = warning or f"prefix cache answered {hit_rate:.0%} of this level's prompt tokens"
    gpu = result.gpu
    if gpu is None or gpu.state != "ok":
        why = "no GPU telemetry was read" if gpu is None else gpu.message or f"GPU telemetry: {gpu.state}"
        tips.update(dict.fromkeys(GPU_COLUMNS, why))
    else:
        simulated = " (simulated: the twin's /dcgm)" if gpu.simulated else ""
        energy = "" if gpu.energy_source is None else f", energy from {gpu.energy_source}"
        tips.update(dict.fromkeys(GPU_COLUMNS, f"{gpu.gpus} GPU(s){simulated}{energy}"))
    return tips


def level_notes(result: LevelResult, target_name: str) -> list[str]:
    """One line for each reason the level is marked."""
    label = f"{target_name} {format_level(result.level.axis, result.level.value)}"
    notes = []
    client = result.client
    if client.client_limited and client.reason:
        notes.append(f"{label}{CLIENT_LIMITED_MARK} client-limited: {client.reason}")
    if client.note:
        notes.append(f"{label}: {client.note}")
    warning = prefix_cache_warning(prefix_cache_hit_rate(result.server_snapshots), result.prompt_sampling)
    if warning:
        notes.append(f"{label}{PREFIX_WARNING_MARK} {warning}")
    return notes


class LevelTable(DataTable[str]):
    DEFAULT_CSS = """
    LevelTable {
        height: 1fr;
    }
    """

    class NotesChanged(Message):
        def __init__(self, notes: list[str]) -> None:
            super().__init__()
            self.notes = notes

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._tooltips: dict[str, dict[str, str]] = {}
        self._notes: dict[str, list[str]] = {}

    @property
    def notes(self) -> list[str]:
        return [note for key in self.rows if key.value in self._notes for note in self._notes[key.value]]

    def _set_notes(self, key: str, notes: list[str]) -> None:
        if self._notes.get(key, []) == notes:
            return
        if notes:
            self._notes[key] = notes
        else:
            self._notes.pop(key, None)
        self.post_message(self.NotesChanged(self.notes))

    def clear(self, columns: bool = False) -> Self:
        had_notes = bool(self._notes)
        self._tooltips.clear()
        self._notes.clear()
        super().clear(columns)
        if had_notes:
            self.post_message(self.NotesChanged([]))
        return self

    def tooltip_at(self, coordinate: Coordinate) -> str | None:
        try:
            row_key, column_key = self.coordinate_to_cell_key(coordinate)
        except CellDoesNotExist:
            return None
        if row_key.value is None or column_key.value is None:
            return None
        return self._tooltips.get(row_key.value, {}).get(column_key.value)

    def watch_hover_coordinate(self, old: Coordinate, value: Coordinate) -> None:
        super().watch_hover_coordinate(old, value)
        self.tooltip = self.tooltip_at(value)

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
        self._tooltips.pop(key, None)
        self._set_notes(key, [])
        self.add_row(*(cells[name] for name, _ in COLUMNS), key=key)

    def level_finished(
        self, run_index: int, target_name: str, result: LevelResult, usd_per_hour: float | None
    ) -> None:
        key = self.row_key(run_index, result.index)
        cells = level_cells(result, target_name, usd_per_hour)
        self._tooltips[key] = level_tooltips(result)
        self._set_notes(key, level_notes(result, target_name))
        if key not in self.rows:
            self.add_row(*(cells[name] for name, _ in COLUMNS), key=key)
            return
        for name, _ in COLUMNS:
            self.update_cell(key, name, cells[name], update_width=True)
