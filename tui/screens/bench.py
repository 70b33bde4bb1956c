"""Bench view: set up a sweep, watch it draw itself, keep and export the results.

Tabs: Setup (the form), Live (progress and time series while a level runs) and Sweep (the article's
chart: throughput bars, p99 TTFT, $ per 1M tokens, plus the per-level table). The screen is thin:
``SweepRunner`` (on a worker thread) runs the sweeps in a separate sweep-host process, which has
load-generator processes of its own and saves to History, and posts each of its typed events as one
``SweepHostEvent`` message; the one handler here dispatches with ``match`` and only updates widgets.
Cancelling keeps every finished level and the finished requests of the current one, saved in
History as a partial run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import Button, Header, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from backends.bench.results import LevelResult, RunStatus, SweepConfig, SweepResult
from backends.config import data_dir
from backends.errors import ConfigError, ServeDeckError
from sessions.run_models import RunFilter
from sessions.store import SessionStore
from tui.context import AppContext
from tui.messages import SweepHostEvent, TargetsChanged
from tui.services.bench_config import PlannedRun, build_runs, format_level, values_from_config
from tui.services.bench_cost import catalog_price_per_hour
from tui.services.bench_gpu import automatic_gpu_telemetry
from tui.services.sweep_host import (
    HostAllDone,
    HostFailed,
    HostFinished,
    HostLevelBegan,
    HostLevelDone,
    HostPreparing,
    HostSample,
    HostStarted,
    HostTick,
)
from tui.services.sweep_runner import SweepRunner
from tui.shell import app_context, target_registry
from tui.store_access import open_store
from tui.widgets.bench.export import ExportDialog, write_exports
from tui.widgets.bench.form import BenchForm
from tui.widgets.bench.live import LiveCharts
from tui.widgets.bench.progress import SweepProgressPanel
from tui.widgets.bench.results import SweepResultsPanel
from tui.widgets.bench.sweep_chart import SweepSeries, series_from_levels
from tui.widgets.footer import KeysFooter

if TYPE_CHECKING:
    from backends.target_registry import TargetRegistry

TABS = ("bench-setup", "bench-live", "bench-sweep")

SWEEP_WORKER_GROUP = "bench-sweep"


@dataclass
class _RunState:
    planned: PlannedRun
    run_id: str | None = None
    levels: dict[int, LevelResult] = field(default_factory=dict)
    result: SweepResult | None = None
    saved: bool = False
    failed: str | None = None

    @property
    def name(self) -> str:
        return self.planned.config.target.name


class BenchScreen(Screen[None]):
    TITLE = "Bench"

    class Prefill(Message):
        """Fill the form from a saved run (History's re-run); handled once the screen is composed."""

        def __init__(self, config: SweepConfig, run_id: str | None) -> None:
            super().__init__()
            self.config = config
            self.run_id = run_id

    DEFAULT_CSS = """
    BenchScreen TabbedContent {
        height: 1fr;
    }
    BenchScreen TabPane {
        padding: 0;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "run", "run sweep", id="bench.run"),
        Binding("ctrl+g", "cancel", "cancel sweep", id="bench.cancel"),
        Binding("ctrl+s", "export", "export", id="bench.export"),
        Binding("ctrl+t", "next_tab", "next tab", id="bench.next_tab"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._runs: list[_RunState] = []
        self._runner: SweepRunner | None = None
        self._registry: TargetRegistry | None = None
        self._sweeping = False
        self._x_end = 0.0
        self._run_offset = 0.0
        self._base_config: SweepConfig | None = None
        self._deleted_note = ""

    # -- layout ---------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="bench-tabs", initial="bench-setup"):
            with TabPane("Setup", id="bench-setup"):
                yield BenchForm(id="bench-form")
            with TabPane("Live", id="bench-live"):
                yield SweepProgressPanel(id="bench-progress")
                yield LiveCharts(id="bench-live-charts")
            with TabPane("Sweep", id="bench-sweep"):
                yield SweepResultsPanel(id="bench-results")
        yield KeysFooter()

    @property
    def ctx(self) -> AppContext:
        return app_context(self)

    @property
    def form(self) -> BenchForm:
        return self.query_one(BenchForm)

    @property
    def progress(self) -> SweepProgressPanel:
        return self.query_one(SweepProgressPanel)

    @property
    def live(self) -> LiveCharts:
        return self.query_one(LiveCharts)

    @property
    def results(self) -> SweepResultsPanel:
        return self.query_one(SweepResultsPanel)

    @property
    def running(self) -> bool:
        return self._sweeping

    @property
    def saved_run_ids(self) -> list[str]:
        """Runs of the last sweep that reached History (exports read them back from there)."""
        return [run.run_id for run in self._runs if run.result is not None and run.saved and run.run_id]

    def on_mount(self) -> None:
        self.form.set_targets(self.ctx.targets, self.ctx.selected_target)

    def on_unmount(self) -> None:
        if self._runner is not None:
            self._runner.cancel()

    def on_screen_resume(self) -> None:
        # History (or `servedeck runs delete`) may have deleted a run this view still shows.
        run_ids = self.saved_run_ids
        if run_ids and not self._sweeping:
            self._check_saved_runs(run_ids)

    @work(thread=True, exclusive=True, group="bench-saved", exit_on_error=False, name="bench saved runs")
    def _check_saved_runs(self, run_ids: list[str]) -> None:
        try:
            with open_store(self.ctx) as store:
                missing = _missing_runs(store, run_ids)
        except ServeDeckError as err:
            self.log.warning(f"bench: cannot check the saved runs: {err}")
            return
        if missing:
            self.app.call_from_thread(self._forget_runs, missing)

    def _forget_runs(self, run_ids: list[str]) -> None:
        """Take runs deleted from History out of the charts, the table and the export."""
        gone = [run for run in self._runs if run.run_id in run_ids]
        if not gone or self._sweeping:
            return
        self._runs = [run for run in self._runs if run.run_id not in run_ids]
        self.results.clear()
        for index, run in enumerate(self._runs):  # row keys carry the run's index: rebuilt
            for result in sorted(run.levels.values(), key=lambda level: level.index):
                self.results.table.level_finished(index, run.name, result, run.planned.usd_per_hour)
        self.results.set_series(self.series())
        note = "deleted in History: " + ", ".join(f"{run.name} ({run.run_id})" for run in gone)
        caption = self._caption()
        self.results.set_caption(f"{caption} · {note}" if caption else f"{note}; ctrl+r runs a new sweep")
        self._deleted_note = note

    @on(TargetsChanged)
    def _targets_changed(self, message: TargetsChanged) -> None:
        self.form.set_targets(message.targets, message.selected)

    def show_tab(self, tab_id: str) -> None:
        self.query_one(TabbedContent).active = tab_id

    def action_next_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        current = TABS.index(tabs.active) if tabs.active in TABS else 0
        tabs.active = TABS[(current + 1) % len(TABS)]

    # -- re-run from History --------------------------------------------------------------------------

    @on(Prefill)
    def _prefill_requested(self, message: Prefill) -> None:
        self.prefill(message.config, message.run_id)

    def prefill(self, config: SweepConfig, run_id: str | None = None) -> None:
        """Fill the form from a saved run; settings the form does not show are kept from it."""
        values = values_from_config(config, self.ctx.targets)
        self.form.fill(values)
        self._base_config = config
        self.show_tab("bench-setup")
        source = f"run {run_id}" if run_id else "a saved run"
        note = f"filled from {source}; seed, percentiles and endpoint are kept from it. ctrl+r runs it."
        if not values.targets:
            note += f" Its target {config.target.name!r} is not available now: pick one in Targets."
        self.form.show_message(note, error=not values.targets)

    # -- running --------------------------------------------------------------------------------------

    @on(Button.Pressed, "#bench-run")
    def _run_pressed(self) -> None:
        self.action_run()

    def action_run(self) -> None:
        if self._sweeping:
            self.notify("a sweep is running; ctrl+g cancels it", severity="warning")
            return
        ctx = self.ctx
        try:
            planned = build_runs(
                self.form.values(),
                ctx.targets,
                lambda name: catalog_price_per_hour(target_registry(self), name),
                base=self._base_config,
            )
        except ConfigError as err:
            self.form.show_message(str(err), error=True)
            self.notify(str(err), severity="error", timeout=8)
            return
        self.form.show_message("")
        self._start(planned, ctx.data_dir)

    def _start(self, planned: list[PlannedRun], data: Path | None) -> None:
        self._runs = [_RunState(planned=p) for p in planned]
        self._deleted_note = ""
        self._sweeping = True
        self._x_end = self._run_offset = 0.0
        self.live.clear()
        self.results.clear()
        self.progress.set_status(f"starting {len(planned)} sweep(s) ...")
        self.show_tab("bench-live")
        self._runner = SweepRunner(lambda event: self.post_message(SweepHostEvent(event)), data)
        self._registry = target_registry(self)
        self._run_sweeps(self._runner, planned)

    @work(thread=True, exclusive=True, group=SWEEP_WORKER_GROUP, exit_on_error=False, name="bench sweep")
    def _run_sweeps(self, runner: SweepRunner, planned: list[PlannedRun]) -> None:
        with automatic_gpu_telemetry(self._registry, planned) as (runs, notes):
            for note in notes:
                self.app.call_from_thread(self.notify, note, severity="warning", timeout=10)
            runner.run(runs)

    def action_cancel(self) -> None:
        if not self._sweeping or self._runner is None:
            self.notify("no sweep is running", severity="information")
            return
        self._runner.cancel()
        self.progress.set_status("cancelling: finished levels and requests are kept ...")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != SWEEP_WORKER_GROUP or event.state is not WorkerState.ERROR:
            return
        event.stop()
        error = event.worker.error
        text = (
            str(error)
            if isinstance(error, ServeDeckError)
            else f"the sweep stopped: {type(error).__name__}: {error}"
        )
        self._sweeping = False
        self.progress.set_status(text)
        self.notify(text, severity="error", timeout=12)

    # -- runner messages ------------------------------------------------------------------------------

    def _run(self, index: int) -> _RunState | None:
        return self._runs[index] if 0 <= index < len(self._runs) else None

    def _label(self, index: int) -> str:
        run = self._run(index)
        name = run.name if run is not None else "?"
        return f"{name} ({index + 1}/{len(self._runs)})" if len(self._runs) > 1 else name

    @on(SweepHostEvent)
    def _host_event(self, message: SweepHostEvent) -> None:
        match message.event:
            case HostPreparing() as event:
                self.progress.set_status(f"{self._label(event.run_index)} · {event.what} ...")
            case HostStarted() as event:
                self._run_started(event)
            case HostLevelBegan() as event:
                self._level_began(event)
            case HostSample() as event:
                self._live_sample(event)
            case HostTick() as event:
                self._live_tick(event)
            case HostLevelDone() as event:
                self._level_done(event)
            case HostFinished() as event:
                self._run_finished(event)
            case HostFailed() as event:
                self._run_failed(event)
            case HostAllDone() as event:
                self._all_done(event)

    def _run_started(self, event: HostStarted) -> None:
        run = self._run(event.run_index)
        if run is None:
            return
        run.run_id = event.run_id
        self._run_offset = self._x_end
        config = event.config
        self.progress.begin_run(self._label(event.run_index), config.axis, config.levels)
        for note in event.notes:
            self.log.info(f"bench {run.name}: {note}")

    def _level_began(self, event: HostLevelBegan) -> None:
        run = self._run(event.run_index)
        if run is None:
            return
        self.progress.begin_level(event.level_index, event.total)
        label = format_level(event.level.axis, event.level.value)
        self.live.mark_level(self._run_offset + event.x, label)
        self.results.table.level_started(event.run_index, run.name, event.level_index, event.level)

    def _live_sample(self, event: HostSample) -> None:
        offset = self._run_offset
        self._x_end = offset + event.x
        self.progress.show_snapshot(event.snapshot)
        points = [(offset + x, y) for x, y in event.ttft_points] if offset else event.ttft_points
        self.live.add_sample(self._x_end, event.snapshot, points)

    def _live_tick(self, event: HostTick) -> None:
        self.progress.show_counts(event.done, event.failed, event.total)
        if event.ttft_points:
            offset = self._run_offset
            self.live.add_ttft([(offset + x, y) for x, y in event.ttft_points])

    def _level_done(self, event: HostLevelDone) -> None:
        run = self._run(event.run_index)
        if run is None:
            return
        result = event.result
        run.levels[result.index] = result
        self.progress.finish_level(result)
        self.results.table.level_finished(event.run_index, run.name, result, run.planned.usd_per_hour)
        self.results.set_series(self.series())
        if result.message:
            severity: SeverityLevel = "error" if result.status is RunStatus.FAILED else "warning"
            self.notify(f"{run.name}, {result.level.label}: {result.message}", severity=severity, timeout=8)

    def _run_finished(self, event: HostFinished) -> None:
        run = self._run(event.run_index)
        if run is None:
            return
        run.result = event.result
        run.run_id = event.saved_as or run.run_id
        run.saved = event.saved_as is not None and event.save_error is None
        if event.save_error:
            self.notify(f"{run.name}: {event.save_error}", severity="warning", timeout=10)
        self.results.set_caption(self._caption())

    def _run_failed(self, event: HostFailed) -> None:
        run = self._run(event.run_index)
        if run is not None:
            run.failed = event.message
        self.progress.set_status(f"[red]{event.message}[/]")
        self.form.show_message(event.message, error=True)
        self.notify(event.message, severity="error", timeout=12)

    def _all_done(self, event: HostAllDone) -> None:
        self._sweeping = False
        self._runner = None
        finished = [run for run in self._runs if run.result is not None]
        failed = [run for run in self._runs if run.failed is not None]
        self.results.set_caption(self._caption())
        if event.cancelled:
            text = "sweep cancelled: finished levels and requests were kept and saved as a partial run"
            self.notify(text, severity="warning", timeout=8)
        elif finished and not failed:
            text = "sweep finished: ctrl+s exports JSON, CSV and SVG; History overlays runs"
            self.notify(text, timeout=6)
        else:
            text = "sweep ended with errors (see the messages)" if failed else "nothing was run"
        self.progress.set_status(text)
        if finished:
            self.show_tab("bench-sweep")

    def series(self) -> list[SweepSeries]:
        out = []
        for run in self._runs:
            if run.levels:
                config = run.planned.config
                out.append(
                    series_from_levels(
                        run.name, config.axis, list(run.levels.values()), run.planned.usd_per_hour
                    )
                )
        return out

    def _caption(self) -> str:
        parts = []
        for run in self._runs:
            if run.result is not None:
                saved = f"saved as {run.run_id}" if run.saved else "not saved"
                parts.append(f"{run.name}: {run.result.status.value}, {saved}")
            elif run.failed is not None:
                parts.append(f"{run.name}: did not run")
        return " · ".join(parts)

    # -- export ---------------------------------------------------------------------------------------

    def action_export(self) -> None:
        run_ids = self.saved_run_ids
        if not run_ids:
            if self._deleted_note and not any(run.result is not None for run in self._runs):
                text = f"nothing to export: {self._deleted_note}"
            elif any(run.result is not None for run in self._runs):
                text = "this sweep was not saved to History, so there is nothing to export (see the warning)"
            else:
                text = "nothing to export yet: run a sweep first (ctrl+r)"
            self.notify(text, severity="warning")
            return
        folder = data_dir(self.ctx.data_dir) / "exports"

        def chosen(path: Path | None) -> None:
            if path is not None:
                self._write_exports(path, run_ids)

        self.app.push_screen(ExportDialog(folder, len(run_ids)), chosen)

    @work(thread=True, group="bench-export", exit_on_error=False, name="bench export")
    def _write_exports(self, folder: Path, run_ids: list[str]) -> None:
        try:
            with open_store(self.ctx) as store:
                missing = _missing_runs(store, run_ids)
                present = [run_id for run_id in run_ids if run_id not in missing]
                sweeps = store.runs.load_sweeps(present, with_records=True, with_snapshots=True)
            written = write_exports(folder, sweeps) if sweeps else []
        except ServeDeckError as err:
            self.app.call_from_thread(self.notify, str(err), severity="error", timeout=10)
            return
        deleted = f"run {', '.join(missing)} was deleted in History" if missing else ""
        if missing:
            self.app.call_from_thread(self._forget_runs, missing)
        if not written:
            self.app.call_from_thread(
                self.notify, f"nothing exported: {deleted}", severity="warning", timeout=10
            )
            return
        names = ", ".join(path.name for path in written)
        text = f"exported to {folder}: {names}" + (f" ({deleted}, so it is not included)" if deleted else "")
        self.app.call_from_thread(self.notify, text, timeout=10)


def _missing_runs(store: SessionStore, run_ids: list[str]) -> list[str]:
    """Those of ``run_ids`` that are no longer in the store."""
    listed = {summary.id for summary in store.runs.list_runs(RunFilter())}
    return [run_id for run_id in run_ids if run_id not in listed]
