"""The Deployments table: one row per target, updated in place, with a k9s-style text filter."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowDoesNotExist

from backends.target_registry import DeploymentRow, TargetStatus
from tui.widgets.table_filter import filter_matches

COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("engine", "Engine"),
    ("model", "Model"),
    ("accelerator", "Accelerator"),
    ("replicas", "Ready"),
    ("status", "Status"),
    ("price", "$/h"),
    ("endpoint", "Endpoint"),
)

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


def row_cells(row: DeploymentRow, selected: str | None) -> tuple[Text, ...]:
    mark = SELECTED_MARK if selected is not None and row.target is not None and row.name == selected else "  "
    return (
        Text(mark + row.name, style="bold" if mark.strip() else ""),
        Text(row.engine),
        Text(row.model),
        Text(row.accelerator),
        Text(row.replicas, justify="right"),
        Text(row.status.value, style=STATUS_STYLES.get(row.status, "")),
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

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    @property
    def highlighted(self) -> DeploymentRow | None:
        if not self._shown or self.cursor_row < 0 or self.cursor_row >= len(self._shown):
            return None
        return self._rows.get(self._shown[self.cursor_row])

    def show(self, rows: Sequence[DeploymentRow], filter_text: str, selected: str | None) -> None:
        visible = [row for row in rows if matches_filter(row, filter_text)]
        keys = [row.key for row in visible]
        self._rows = {row.key: row for row in rows}
        cells = {row.key: row_cells(row, selected) for row in visible}
        if keys == self._shown:
            self._update_in_place(cells)
        else:
            self._rebuild(keys, cells)
        self._cells = cells

    def move_cursor_to_key(self, key: str) -> None:
        if key in self._shown:
            self.move_cursor(row=self._shown.index(key), animate=False)

    def _update_in_place(self, cells: dict[str, tuple[Text, ...]]) -> None:
        changed: set[int] = set()
        for key, new in cells.items():
            old = self._cells.get(key)
            for index, ((column, _), before, after) in enumerate(
                zip(COLUMNS, old or (None,) * len(new), new, strict=True)
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
        column = self.columns.get(ColumnKey(COLUMNS[index][0]))
        if column is None or not column.auto_width:
            return
        widths = [row[index].cell_len for row in cells.values()]
        column.content_width = max([column.label.cell_len, *widths])
        self.refresh()

    def _rebuild(self, keys: list[str], cells: dict[str, tuple[Text, ...]]) -> None:
        current = self._shown[self.cursor_row] if 0 <= self.cursor_row < len(self._shown) else None
        self.clear()
        for key in keys:
            self.add_row(*cells[key], key=key)
        self._shown = keys
        if current in keys:
            self.move_cursor(row=keys.index(current), animate=False)
