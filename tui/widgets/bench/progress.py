"""Progress of a running sweep: which target and level, a bar for the level, the live numbers, and
one mark per level (done, partial, failed, running, waiting)."""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from backends.bench.models import Axis, ProgressSnapshot
from backends.bench.results import LevelResult, RunStatus
from tui.services.bench_config import format_level

STATUS_MARKS = {
    RunStatus.COMPLETE: "[green]✓[/]",
    RunStatus.PARTIAL: "[yellow]~[/]",
    RunStatus.FAILED: "[red]✗[/]",
    RunStatus.RUNNING: "[cyan]…[/]",
}


def format_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def snapshot_line(snapshot: ProgressSnapshot) -> str:
    done = snapshot.completed + snapshot.failed
    parts = [
        f"{done}/{snapshot.total} done",
        f"{snapshot.failed} failed" if snapshot.failed else "",
        f"{snapshot.in_flight} in flight",
        f"{format_rate(snapshot.output_tokens_per_s)} output tok/s",
    ]
    server = snapshot.server
    if server is not None:
        if server.running is not None:
            parts.append(f"server {server.running:.0f} running")
        if server.waiting is not None:
            parts.append(f"{server.waiting:.0f} waiting")
        if server.kv_cache_usage is not None:
            parts.append(f"KV {server.kv_cache_usage * 100:.0f}%")
    return " · ".join(part for part in parts if part)


@dataclass
class _LevelMark:
    label: str
    status: RunStatus = RunStatus.RUNNING
    throughput: float | None = None


@dataclass
class _Progress:
    run_label: str = ""
    axis: Axis = Axis.CONCURRENCY
    levels: list[float] = field(default_factory=list)
    marks: dict[int, _LevelMark] = field(default_factory=dict)


class SweepProgressPanel(Vertical):
    DEFAULT_CSS = """
    SweepProgressPanel {
        height: 5;
        padding: 0 1;
    }
    SweepProgressPanel #progress-title {
        text-style: bold;
    }
    SweepProgressPanel ProgressBar {
        width: 1fr;
    }
    SweepProgressPanel #progress-bar Bar {
        width: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._progress = _Progress()

    def compose(self) -> ComposeResult:
        yield Static("no sweep yet: fill in Setup and press ctrl+r", id="progress-title")
        yield ProgressBar(total=None, show_eta=False, id="progress-bar")
        yield Static("", id="progress-numbers")
        yield Static("", id="progress-levels")

    def _static(self, widget_id: str) -> Static:
        return self.query_one(f"#{widget_id}", Static)

    def set_status(self, text: str) -> None:
        self._static("progress-title").update(text)

    def begin_run(self, run_label: str, axis: Axis, levels: list[float]) -> None:
        self._progress = _Progress(run_label=run_label, axis=axis, levels=list(levels))
        self.set_status(f"{run_label} · starting")
        self.query_one(ProgressBar).update(total=None, progress=0)
        self._static("progress-numbers").update("")
        self._render_levels()

    def begin_level(self, level_index: int, total: int) -> None:
        state = self._progress
        label = (
            format_level(state.axis, state.levels[level_index]) if level_index < len(state.levels) else "?"
        )
        state.marks[level_index] = _LevelMark(label=label)
        axis_word = "concurrency" if state.axis is Axis.CONCURRENCY else "req/s"
        value_text = f"{axis_word} {label}" if state.axis is Axis.CONCURRENCY else f"{label} req/s"
        self.set_status(f"{state.run_label} · level {level_index + 1}/{len(state.levels)}: {value_text}")
        self.query_one(ProgressBar).update(total=total, progress=0)
        self._render_levels()

    def show_snapshot(self, snapshot: ProgressSnapshot) -> None:
        self.query_one(ProgressBar).update(
            total=snapshot.total, progress=snapshot.completed + snapshot.failed
        )
        self._static("progress-numbers").update(snapshot_line(snapshot))

    def show_counts(self, done: int, failed: int, total: int) -> None:
        """Finished requests between snapshots: moves the bar (the numbers line waits for a snapshot)."""
        self.query_one(ProgressBar).update(total=total, progress=done + failed)

    def finish_level(self, result: LevelResult) -> None:
        mark = self._progress.marks.setdefault(
            result.index, _LevelMark(label=format_level(self._progress.axis, result.level.value))
        )
        mark.status = result.status
        mark.throughput = result.metrics.total_token_throughput if result.metrics.completed else None
        # The last snapshot's live counts ("server 8 running") are stale once the level is over.
        metrics = result.metrics
        line = f"level {mark.label} {result.status.value}: {metrics.completed} done"
        if metrics.failed:
            line += f" · {metrics.failed} failed"
        if mark.throughput is not None:
            line += f" · {format_rate(mark.throughput)} tok/s"
        self._static("progress-numbers").update(line)
        self._render_levels()

    def _render_levels(self) -> None:
        state = self._progress
        parts = []
        for index, value in enumerate(state.levels):
            mark = state.marks.get(index)
            label = format_level(state.axis, value)
            if mark is None:
                parts.append(f"[dim]{label} ·[/]")
                continue
            text = f"{label} {STATUS_MARKS[mark.status]}"
            if mark.throughput is not None:
                text += f" {format_rate(mark.throughput)} tok/s"
            parts.append(text)
        self._static("progress-levels").update("levels: " + "  │  ".join(parts) if parts else "")
