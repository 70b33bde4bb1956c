"""Export a finished (or cancelled) sweep: vLLM-compatible JSON and CSV per target, and the sweep
chart as a clean SVG (title, axes with units, legend; no UI chrome) drawn from the results by
backends/bench/chart_svg.py. ``ExportDialog`` asks for the folder; ``write_exports`` does the I/O
(call it from a worker thread)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from backends.bench.chart_svg import sweep_svg_for_results
from backends.bench.export import sweep_to_csv, write_level_results
from backends.bench.results import SweepResult
from backends.errors import ConfigError


def export_stem(result: SweepResult) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in result.config.target.name)
    return f"servedeck-{result.run_id}-{safe}"


def write_exports(
    folder: Path, results: Sequence[SweepResult], *, names: Sequence[str] | None = None
) -> list[Path]:
    """Write ``<stem>.json`` (vLLM result keys per level) and ``<stem>.csv`` per result, and one
    ``<stem of the first>.svg``: the sweep chart of all results (``names`` label the runs; default
    their target names). Returns the paths written; ConfigError when the folder is not writable."""
    folder = folder.expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create export folder {folder}: {err.strerror}; choose another folder"
        ) from None
    written: list[Path] = []
    try:
        for result in results:
            stem = export_stem(result)
            written.append(write_level_results(result, folder / f"{stem}.json"))
            csv_path = folder / f"{stem}.csv"
            csv_path.write_text(sweep_to_csv(result), encoding="utf-8")
            written.append(csv_path)
        if results:
            svg_path = folder / f"{export_stem(results[0])}.svg"
            svg_path.write_text(sweep_svg_for_results(results, names), encoding="utf-8")
            written.append(svg_path)
    except OSError as err:
        raise ConfigError(
            f"cannot write exports to {folder}: {err.strerror}; choose a writable folder"
        ) from None
    return written


class ExportDialog(ModalScreen[Path | None]):
    """Asks where to write the exports; ``enter`` exports, ``esc`` cancels."""

    DEFAULT_CSS = """
    ExportDialog {
        align: center middle;
    }
    ExportDialog #export-box {
        width: 80;
        height: auto;
        padding: 1 2;
        border: thick $primary;
        background: $surface;
    }
    ExportDialog #export-buttons {
        height: auto;
        margin-top: 1;
        align-horizontal: right;
    }
    ExportDialog #export-buttons Button {
        margin-left: 2;
    }
    ExportDialog #export-error {
        color: $error;
        height: auto;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, default_folder: Path, runs: int) -> None:
        super().__init__()
        self._default_folder = default_folder
        self._runs = runs

    def compose(self) -> ComposeResult:
        with Vertical(id="export-box") as box:
            box.border_title = "Export sweep"
            yield Static(
                f"Writes vLLM-compatible JSON and CSV for {self._runs} run(s) and an SVG of the sweep chart."
            )
            yield Label("folder")
            yield Input(str(self._default_folder), id="export-folder")
            yield Static("", id="export-error")
            with Horizontal(id="export-buttons"):
                yield Button("Export", variant="primary", id="export-ok")
                yield Button("Cancel", id="export-cancel")

    @on(Input.Submitted, "#export-folder")
    @on(Button.Pressed, "#export-ok")
    def _ok(self) -> None:
        text = self.query_one("#export-folder", Input).value.strip()
        if not text:
            self.query_one("#export-error", Static).update("type a folder to write the files into")
            return
        self.dismiss(Path(text))

    @on(Button.Pressed, "#export-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
