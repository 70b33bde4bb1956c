"""The Deployments table: one row per target, updated in place, with a k9s-style text filter.

GPU util and power come from the target's GPU telemetry where the screen reads it (a twin's own /dcgm,
a Kubernetes deployment's dcgm-exporters):
their columns appear once a row has telemetry, with a dash for the rows without."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowDoesNotExist

from backends.target_registry import DeploymentRow, TargetStatus
from backends.telemetry.models import GpuSummary
from tui.widgets.table_filter import filter_matches

COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("engine", "Engine"),
    ("model", "Model"),
    ("accelerator", "Accelerator"),
    ("replicas", "Ready"),
    ("status", "Status"),
    ("gpu_util", "GPU"),
    ("gpu_power", "GPU W"),
    ("price", "$/h"),
    ("endpoint", "Endpoint"),
)
GPU_COLUMNS = ("gpu_util", "gpu_power")

STATUS_STYLES: dict[TargetStatus, str] = {
    TargetStatus.READY: "bold green",
    TargetStatus.STARTING: "yellow",
    TargetStatus.ROLLING_OUT: "yellow",
    TargetStatus.FAILED: "bold red",
    TargetStatus.UNREACHABLE: "red",
    TargetStatus.STOPPED: "dim",
    TargetStatus.AVAILABLE: "cyan",
    TargetStatus.NOT_CHECKED: "dim",
    TargetStatus.SCALED_TO_ZERO: "dim",
    TargetStatus.NO_CLUSTER: "dim",
}

SELECTED_MARK = "● "


def matches_filter(row: DeploymentRow, text: str) -> bool:
    """k9s filter: case-insensitive substring of any column; a leading ``!`` inverts it."""
    fields = [row.name, row.engine, row.model, row.accelerator, row.status.value, row.endpoint or ""]
    return filter_matches(text, [*fields, row.source.value])


def format_price(price: float | None) -> str:
    if price is None:
        return "-"
    return f"{price:,.2f}"


def gpu_texts(gpu: GpuSummary | None) -> tuple[Text, Text]:
    """Mean utilisation of the target's GPUs and their total power; dim dashes without telemetry."""
    util = None if gpu is None or gpu.utilisation is None else f"{gpu.utilisation:.0%}"
    power = None if gpu is None or gpu.power_w is None else f"{gpu.power_w:,.0f}"
    return (
        Text(util or "-", justify="right", style="" if util else "dim"),
        Text(power or "-", justify="right", style="" if power else "dim"),
    )


def row_cells(row: DeploymentRow, selected: str | None, gpu: GpuSummary | None = None) -> tuple[Text, ...]:
    mark = SELECTED_MARK if selected is not None and row.target is not None and row.name == selected else "  "
    return (
        Text(mark + row.name, style="bold" if mark.strip() else ""),
        Text(row.engine),
        Text(row.model),
        Text(row.accelerator),
        Text(row.replicas, justify="right"),
        Text(row.status.value, style=STATUS_STYLES.get(row.status, "")),
        *gpu_texts(gpu),
        Text(format_price(row.price_per_hour), justify="right"),
        Text(row.endpoint.removesuffix("/v1") if row.endpoint else "-", style="" if row.endpoint else "dim"),
    )


class DeploymentTable(DataTable[Text]):
    """Rows keyed by ``DeploymentRow.key``; ``show`` updates changed cells in place."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._rows: dict[str, DeploymentRow] = {}
        self._shown: list[str] = []
        self._cells: dict[str, tuple[Text, ...]] = {}
        self._columns = tuple(column for column in COLUMNS if column[0] not in GPU_COLUMNS)

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        for key, label in self._columns:
            self.add_column(label, key=key)

    @property
    def with_gpu_columns(self) -> bool:
        return len(self._columns) == len(COLUMNS)

    @property
    def highlighted(self) -> DeploymentRow | None:
        if not self._shown or self.cursor_row < 0 or self.cursor_row >= len(self._shown):
            return None
        return self._rows.get(self._shown[self.cursor_row])

    def show(
        self,
        rows: Sequence[DeploymentRow],
        filter_text: str,
        selected: str | None,
        gpus: Mapping[str, GpuSummary] | None = None,
        *,
        gpu_columns: bool = False,
    ) -> None:
        """``gpus``: GPU telemetry by row key, for the rows that have it; ``gpu_columns``: show the GPU
        columns without any (a deployment's telemetry was looked for and its dash needs a column)."""
        visible = [row for row in rows if matches_filter(row, filter_text)]
        keys = [row.key for row in visible]
        self._rows = {row.key: row for row in rows}
        gpus = gpus or {}
        current = self._shown[self.cursor_row] if 0 <= self.cursor_row < len(self._shown) else None
        if (gpus or gpu_columns) and not self.with_gpu_columns:
            self._columns = COLUMNS
            self.clear(columns=True)
            self._add_columns()
            self._shown = []
        shown = [i for i, column in enumerate(COLUMNS) if column in self._columns]
        cells: dict[str, tuple[Text, ...]] = {}
        for row in visible:
            full = row_cells(row, selected, gpus.get(row.key))
            cells[row.key] = tuple(full[i] for i in shown)
        if keys == self._shown:
            self._update_in_place(cells)
        else:
            self._rebuild(keys, cells, current)
        self._cells = cells

    def move_cursor_to_key(self, key: str) -> None:
        if key in self._shown:
            self.move_cursor(row=self._shown.index(key), animate=False)

    def _update_in_place(self, cells: dict[str, tuple[Text, ...]]) -> None:
        changed: set[int] = set()
        for key, new in cells.items():
            old = self._cells.get(key)
            for index, ((column, _), before, after) in enumerate(
                zip(self._columns, old or (None,) * len(new), new, strict=True)
            ):
                if before is None or before.plain != after.plain or before.style != after.style:
                    try:
                        self.update_cell(key, column, after, update_width=True)
                    except (CellDoesNotExist, RowDoesNotExist):
                        continue
                    changed.add(index)
        for index in changed:
            self._fit_column(index, cells)

    def _fit_column(self, index: int, cells: dict[str, tuple[Text, ...]]) -> None:
        # DataTable widens a column in its idle pass, but a paint before that pass is cached at the
        # old width and stayed on screen (an endpoint drawn as "http://1"): size it now.
        column = self.columns.get(ColumnKey(self._columns[index][0]))
        if column is None or not column.auto_width:
            return
        widths = [row[index].cell_len for row in cells.values()]
        column.content_width = max([column.label.cell_len, *widths])
        self.refresh()

    def _rebuild(self, keys: list[str], cells: dict[str, tuple[Text, ...]], current: str | None) -> None:
        self.clear()
        for key in keys:
            self.add_row(*cells[key], key=key)
        self._shown = keys
        if current in keys:
            self.move_cursor(row=keys.index(current), animate=False)
