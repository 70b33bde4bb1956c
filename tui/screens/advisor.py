"""Advisor view: the cheapest catalog hardware for a request rate within an SLO (``plan --advise``).

Thin: the advisor runs in a child process (``backends.advisor.host``) driven by a thread worker, whose
progress (one message per shape) and ranking come back as Textual messages. ``ctrl+o`` opens the
new-deployment form filled with the highlighted shape; ``ctrl+e`` runs the SLO search (``bench
--find-max``) from that shape's predicted knee against a ready target, saves it to History (kind
"search") and shows predicted vs measured side by side.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, ClassVar, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, DataTable, Header, Input, Label, ProgressBar, Select, Static, Switch

from backends.advisor.advise import Advice, ShapeAdvice, Verdict
from backends.advisor.host import (
    DEFAULT_ADVISOR_PROMPTS,
    AdviseJob,
    AdvisorProgress,
    HostMessage,
    VerifyJob,
    VerifyLevel,
    run_in_child,
)
from backends.bench.models import Axis
from backends.bench.results import SweepConfig
from backends.bench.search_record import SearchLevel, SearchRecord
from backends.errors import ConfigError, ServeDeckError
from backends.target_types import Target
from backends.twin.calibration import (
    UNCALIBRATED_NOTE,
    level_errors_line,
    list_profiles,
    load_profile,
    prediction_note,
)
from manifests.errors import ManifestError
from manifests.gpus import GpuType
from manifests.model_catalog import all_profiles, load_custom_profile
from manifests.model_profiles import ModelProfile
from tui.services.sweep_runner import start_resource_tracker
from tui.shell import app_context, open_view, shell
from tui.widgets.advisor.verify_dialog import VerifyChoice, VerifyScreen
from tui.widgets.footer import KeysFooter

DEFAULT_MODEL = "gemma-3-27b-it"
DEFAULT_SLO = "p99_ttft:2000,p99_tpot:100"
CHART_MIN_HEIGHT = 40  # the $/1M chart shows below the table only on screens at least this tall
BAR_WIDTH = 36
WORKLOAD_HINT = "1 = single requests; more: ShareGPT sessions, rate = new sessions/s"
COLUMNS = (
    *("#", "shape", "req/s/replica", "replicas", "headroom", "$/h", "$/1M tok"),
    *("p99 TTFT", "prefix hit", "why not"),
)


def columns(multi_turn: bool) -> tuple[str, ...]:
    """The table's titles: a multi-turn advice's rates are new sessions/s."""
    return tuple(title.replace("req/s", "sessions/s") for title in COLUMNS) if multi_turn else COLUMNS


def rate_unit(multi_turn: bool) -> str:
    return "sessions/s" if multi_turn else "req/s"


def _number(text: str, what: str, *, integer: bool = False, low: float = 0.0) -> float:
    value = text.strip().replace(",", "").replace("_", "")
    try:
        number = float(int(value)) if integer else float(value)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{what} must be {kind}, got {text.strip()!r}") from None
    if not math.isfinite(number) or number <= low:
        raise ConfigError(f"{what} must be more than {low:g}, got {text.strip()}")
    return number


def _seconds(text: str, what: str) -> float:
    value = text.strip() or "0"
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{what} must be 0 or more, got {value}")
    return number


def parse_gpus(text: str) -> list[GpuType] | None:
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not parts:
        return None
    gpus: list[GpuType] = []
    for part in parts:
        try:
            gpus.append(GpuType(part))
        except ValueError:
            raise ConfigError(
                f"GPUs: unknown type {part!r}; known: {', '.join(g.value for g in GpuType)}"
            ) from None
    return gpus


def _money(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.2f}"


def knee_cells(shape: ShapeAdvice) -> tuple[str, str]:
    """p99 TTFT and the prefix-cache hit rate of the level at the knee (as `plan --advise` prints)."""
    knee = shape.knee
    for trial in knee.trials:
        if knee.rate is not None and trial.passed and math.isclose(trial.rate, knee.rate):
            hit = trial.prefix_cache_hit_rate
            return f"{trial.p99_ttft_ms:,.0f} ms", "n/a" if hit is None else f"{hit:.0%}"
    return "-", "-"


def row_cells(rank: int | None, shape: ShapeAdvice) -> list[str | Text]:
    ok = shape.verdict is Verdict.OK
    rate = shape.knee.rate
    return [
        str(rank) if rank is not None else "-",
        Text(shape.label, style="bold green" if rank == 1 else ""),
        "-" if rate is None else f"{rate:,.2f}",
        "-" if shape.replicas is None else str(shape.replicas),
        "-" if shape.headroom is None else f"{shape.headroom:.0%}",
        _money(shape.usd_per_hour) + ("*" if shape.price_estimate else ""),
        _money(shape.usd_per_million),
        *knee_cells(shape),
        Text("" if ok else shape.why, style="red" if shape.verdict is Verdict.SLO else "yellow"),
    ]


class CostChart(Widget):
    """The article-style ranking: $ per 1M tokens of every passing shape, cheapest first."""

    DEFAULT_CSS = """
    CostChart {
        height: auto;
        max-height: 12;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.advice: Advice | None = None

    def show(self, advice: Advice | None) -> None:
        self.advice = advice
        self.refresh(layout=True)

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:
        advice = self.advice
        return 0 if advice is None else 1 + min(len(advice.passing), 10)

    def render(self) -> Text:
        advice = self.advice
        out = Text()
        if advice is None or not advice.passing:
            return out
        passing = advice.passing[:10]
        unit = rate_unit(advice.multi_turn)
        out.append(f"$ per 1M tokens at {advice.rate:g} {unit} (lower is better)\n", style="bold")
        top = max(s.usd_per_million or 0.0 for s in passing) or 1.0
        name = max(len(s.label) for s in passing)
        room = max(8, min(BAR_WIDTH, self.size.width - name - 30))
        for i, shape in enumerate(passing):
            value = shape.usd_per_million or 0.0
            out.append(shape.label.ljust(name) + "  ")
            out.append("█" * max(1, round(value / top * room)), style="green" if i == 0 else "cyan")
            out.append(f" ${value:,.2f}  ({shape.replicas} replica{'s' if shape.replicas != 1 else ''})")
            if i < len(passing) - 1:
                out.append("\n")
        return out


class AdvisorScreen(Screen[None]):
    TITLE = "Advisor"

    DEFAULT_CSS = """
    AdvisorScreen #advisor-inputs, AdvisorScreen #advisor-inputs-2, AdvisorScreen #advisor-inputs-3 {
        height: 1;
        padding: 0 1;
    }
    AdvisorScreen .adv-label {
        width: auto;
        padding: 0 1 0 0;
    }
    AdvisorScreen #adv-model { width: 24; }
    AdvisorScreen #adv-config { width: 1fr; }
    AdvisorScreen #adv-rate { width: 8; }
    AdvisorScreen #adv-slo { width: 1fr; }
    AdvisorScreen #adv-gpus { width: 1fr; }
    AdvisorScreen #adv-max-gpus { width: 4; }
    AdvisorScreen #adv-prompts { width: 7; }
    AdvisorScreen #adv-turns { width: 4; }
    AdvisorScreen #adv-think { width: 5; }
    AdvisorScreen #adv-workload-hint { width: 1fr; color: $text-muted; }
    AdvisorScreen #adv-calibration-select { width: 18; }
    AdvisorScreen Input, AdvisorScreen Select { margin-right: 1; }
    AdvisorScreen #advisor-progress-row {
        height: 1;
        padding: 0 1;
    }
    AdvisorScreen #adv-progress { width: 30; }
    AdvisorScreen Switch { height: 1; border: none; padding: 0; }
    AdvisorScreen #adv-status { width: 1fr; padding-left: 1; }
    AdvisorScreen #adv-calibration { height: auto; max-height: 3; padding: 0 1; color: $text-muted; }
    AdvisorScreen #adv-table { height: 1fr; }
    AdvisorScreen #adv-verify {
        height: auto;
        max-height: 6;
        padding: 0 1;
        border-top: solid $primary-background;
    }
    AdvisorScreen #advisor-buttons {
        height: 1;
        padding: 0 1;
    }
    AdvisorScreen #advisor-buttons Button { margin-right: 1; min-width: 8; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "run", "run advisor", id="advisor.run"),
        Binding("ctrl+o", "deploy", "deploy this", id="advisor.deploy"),
        Binding("ctrl+e", "verify", "verify on a target", id="advisor.verify"),
        Binding("escape", "cancel", "cancel / back", show=False, id="advisor.cancel"),
    ]

    class Progress(Message):
        def __init__(self, done: int, total: int, label: str) -> None:
            super().__init__()
            self.done, self.total, self.label = done, total, label

    class Advised(Message):
        def __init__(self, advice: Advice, notes: list[str], calibration: str = UNCALIBRATED_NOTE) -> None:
            super().__init__()
            self.advice, self.notes, self.calibration = advice, notes, calibration

    class Failed(Message):
        def __init__(self, what: str, text: str) -> None:
            super().__init__()
            self.what, self.text = what, text

    class LevelTried(Message):
        def __init__(self, level: SearchLevel) -> None:
            super().__init__()
            self.level = level

    class Verified(Message):
        def __init__(self, record: SearchRecord, target: str, run_id: str, saved: str | None) -> None:
            super().__init__()
            self.record, self.target, self.run_id, self.saved = record, target, run_id, saved

    def __init__(self) -> None:
        super().__init__()
        self.advice: Advice | None = None
        self.running: str | None = None  # "advisor" | "verify" while a job runs
        self._cancel = threading.Event()
        self._model: str | ModelProfile = DEFAULT_MODEL
        self._verify_shape: ShapeAdvice | None = None
        self._verify_lines: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="advisor-inputs"):
            yield Label("model", classes="adv-label")
            yield Select(
                [(name, name) for name in all_profiles()],
                value=DEFAULT_MODEL,
                allow_blank=False,
                compact=True,
                id="adv-model",
            )
            yield Input(placeholder="or config.json PATH", compact=True, id="adv-config")
            yield Label("rate req/s", classes="adv-label", id="adv-rate-label")
            yield Input("10", compact=True, id="adv-rate")
            yield Label("SLO", classes="adv-label")
            yield Input(DEFAULT_SLO, compact=True, id="adv-slo")
        with Horizontal(id="advisor-inputs-2"):
            yield Label("GPUs", classes="adv-label")
            yield Input(placeholder="all, or e.g. l4,h100", compact=True, id="adv-gpus")
            yield Label("max GPUs", classes="adv-label")
            yield Input("8", compact=True, id="adv-max-gpus")
            yield Label("prompts", classes="adv-label")
            yield Input(str(DEFAULT_ADVISOR_PROMPTS), compact=True, id="adv-prompts")
            yield Label("spot", classes="adv-label")
            yield Switch(False, id="adv-spot")
            yield Label("calibration", classes="adv-label")
            yield Select(
                [(name, name) for name in list_profiles()],
                prompt="uncalibrated",
                compact=True,
                id="adv-calibration-select",
            )
        with Horizontal(id="advisor-inputs-3"):
            yield Label("turns", classes="adv-label")
            yield Input(
                "1", compact=True, id="adv-turns", tooltip="user turns per conversation; 1 = single-turn"
            )
            yield Label("think s", classes="adv-label")
            yield Input("0", compact=True, id="adv-think", tooltip="multi-turn: seconds between turns")
            yield Static(WORKLOAD_HINT, id="adv-workload-hint")
        with Horizontal(id="advisor-progress-row"):
            yield ProgressBar(total=None, show_eta=False, id="adv-progress")
            yield Static("ctrl+r runs the advisor (vLLM twin, simulated)", id="adv-status")
        yield Static("", id="adv-calibration")
        table: DataTable[Any] = DataTable(cursor_type="row", zebra_stripes=True, id="adv-table")
        yield table
        yield CostChart(id="adv-chart")
        yield Static("", id="adv-verify")
        with Horizontal(id="advisor-buttons"):
            yield Button("Run", variant="primary", compact=True, id="adv-run", tooltip="ctrl+r")
            yield Button("Deploy this", compact=True, id="adv-deploy", tooltip="ctrl+o", disabled=True)
            yield Button("Verify", variant="warning", compact=True, id="adv-verify-button", tooltip="ctrl+e",
                         disabled=True)  # fmt: skip
            yield Button("Cancel", compact=True, id="adv-cancel", tooltip="esc", disabled=True)
        yield KeysFooter()

    def on_mount(self) -> None:
        self._add_columns(multi_turn=False)
        self.query_one("#adv-verify", Static).display = False
        self.query_one("#adv-calibration", Static).display = False
        self._place_chart()
        self.query_one("#adv-rate", Input).focus()

    def _add_columns(self, *, multi_turn: bool) -> None:
        table = self.query_one("#adv-table", DataTable)
        table.clear(columns=True)
        for title in columns(multi_turn):
            table.add_column(title, key=title)

    def _turns(self) -> int:
        try:
            return int(self._value("adv-turns").strip())
        except ValueError:
            return 1

    @on(Input.Changed, "#adv-turns")
    def _turns_changed(self) -> None:
        label = self.query_one("#adv-rate-label", Label)
        label.update(f"rate {rate_unit(self._turns() > 1)}")

    def on_resize(self) -> None:
        self._place_chart()

    def _place_chart(self) -> None:
        self.query_one(CostChart).display = self.size.height >= CHART_MIN_HEIGHT

    # -- status ---------------------------------------------------------------------------------------

    def _status(self, text: str | Text, *, error: bool = False) -> None:
        status = self.query_one("#adv-status", Static)
        status.update(Text(str(text), style="bold red") if error else text)

    def _set_running(self, what: str | None) -> None:
        self.running = what
        self.query_one("#adv-run", Button).disabled = what is not None
        self.query_one("#adv-cancel", Button).disabled = what is None
        has_pick = self.advice is not None and bool(self.advice.passing)
        self.query_one("#adv-deploy", Button).disabled = not has_pick
        self.query_one("#adv-verify-button", Button).disabled = what is not None or not has_pick
        bar = self.query_one("#adv-progress", ProgressBar)
        if what is None:
            bar.update(total=1, progress=1)

    # -- reading the inputs ---------------------------------------------------------------------------

    def _value(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value

    def read_job(self) -> AdviseJob:
        """The advisor's inputs; ConfigError (one line) when one cannot be read."""
        config_path = self._value("adv-config").strip()
        model: str | ModelProfile = str(self.query_one("#adv-model", Select).value)
        if config_path:
            try:
                model = load_custom_profile(Path(config_path).expanduser())
            except ManifestError as err:
                raise ConfigError(str(err)) from None
            except (OSError, ValueError, TypeError) as err:
                raise ConfigError(f"cannot read model config {config_path}: {err}") from None
        turns = int(_number(self._value("adv-turns"), "turns", integer=True))
        think_s = _seconds(self._value("adv-think"), "think time (s)")
        return AdviseJob(
            model=model,
            rate=_number(self._value("adv-rate"), f"rate ({rate_unit(turns > 1)})"),
            slo=self._value("adv-slo").strip(),
            gpus=parse_gpus(self._value("adv-gpus")),
            max_gpus=int(_number(self._value("adv-max-gpus"), "max GPUs", integer=True)),
            num_prompts=int(_number(self._value("adv-prompts"), "prompts", integer=True)),
            spot=self.query_one("#adv-spot", Switch).value,
            calibration=self._calibration(),
            turns=turns,
            think_time_s=think_s,
        )

    def _calibration(self) -> str | None:
        value = self.query_one("#adv-calibration-select", Select).value
        return value if isinstance(value, str) else None

    @on(Select.Changed, "#adv-calibration-select")
    def _calibration_picked(self) -> None:
        name = self._calibration()
        line = self.query_one("#adv-calibration", Static)
        if name is None:
            line.display = False
            return
        try:
            profile = load_profile(name)
        except ConfigError as err:
            self._status(str(err), error=True)
            return
        levels = "; ".join(level_errors_line(fit) for fit in profile.levels)
        line.update(
            f"picked {profile.note()} (defaults: {profile.error_summary(profile.error_before)}); "
            f"twin error per level, defaults->calibrated: {levels}"
        )
        line.display = True

    # -- the advisor ----------------------------------------------------------------------------------

    @on(Button.Pressed, "#adv-run")
    @on(Input.Submitted)
    def action_run(self) -> None:
        if self.running is not None:
            self.notify(f"the {self.running} is running; esc cancels it", severity="warning")
            return
        self._cancel = threading.Event()
        self._set_running("advisor")
        self.query_one("#adv-progress", ProgressBar).update(total=None, progress=0)
        self._status("reading the inputs ...")
        self._advise(self._cancel)

    @work(thread=True, exclusive=True, group="advisor", exit_on_error=False, name="advisor")
    def _advise(self, cancel: threading.Event) -> None:
        try:
            job = self.app.call_from_thread(self.read_job)
            self._model = job.model
            profile = None if job.calibration is None else load_profile(job.calibration)
            note = prediction_note(profile)

            def relay(message: HostMessage) -> None:
                if isinstance(message, AdvisorProgress):
                    self.post_message(self.Progress(message.done, message.total, message.label))

            start_resource_tracker()
            done = run_in_child(job, relay, cancel)
        except ServeDeckError as err:
            self.post_message(self.Failed("advisor", str(err)))
            return
        if done.advice is not None:
            self.post_message(self.Advised(done.advice, done.notes, note))

    @on(Progress)
    def _progress(self, message: Progress) -> None:
        self.query_one("#adv-progress", ProgressBar).update(total=message.total, progress=message.done)
        if message.label != "done":
            self._status(f"shape {message.done + 1} of {message.total}: {message.label}")

    @on(Failed)
    def _failed(self, message: Failed) -> None:
        self._set_running(None)
        self._status(message.text, error=True)

    @on(Advised)
    def _advised(self, message: Advised) -> None:
        advice = message.advice
        self.advice = advice
        self._add_columns(multi_turn=advice.multi_turn)
        table = self.query_one("#adv-table", DataTable)
        rank = 0
        for index, shape in enumerate(advice.shapes):
            ok = shape.verdict is Verdict.OK
            rank += ok
            table.add_row(*row_cells(rank if ok else None, shape), key=str(index))
        for skipped in advice.skipped:
            table.add_row(
                "-",
                skipped.label,
                *["-"] * (len(COLUMNS) - 3),
                Text(f"does not fit: {skipped.why}", style="dim"),
            )
        self.query_one(CostChart).show(advice)
        calibration_line = self.query_one("#adv-calibration", Static)
        calibration_line.update(f"predictions: {message.calibration}")
        calibration_line.display = True
        self._set_running(None)
        if advice.passing:
            best = advice.passing[0]
            what = "multi-turn sessions" if advice.multi_turn else "prompts"
            self._status(
                Text.assemble(
                    ("cheapest: ", "bold"),
                    (f"{best.replicas} x {best.label}", "bold green"),
                    f" ${_money(best.usd_per_million)}/1M tok, ${_money(best.usd_per_hour)}/h "
                    f"(twin, simulated; {advice.num_prompts:,} {what} a level) · ctrl+o deploys, "
                    "ctrl+e verifies",
                )
            )
            table.move_cursor(row=0)
            table.focus()
        else:
            from backends.advisor.advise import unservable_line

            self._status(unservable_line(advice) or "no shape meets the SLO", error=True)

    def highlighted_shape(self) -> ShapeAdvice | None:
        advice = self.advice
        if advice is None:
            self.notify("run the advisor first (ctrl+r)", severity="warning")
            return None
        table = self.query_one("#adv-table", DataTable)
        index = table.cursor_row
        if not 0 <= index < len(advice.shapes) or advice.shapes[index].verdict is not Verdict.OK:
            self.notify("highlight a ranked shape (one with a # and a price)", severity="warning")
            return None
        return advice.shapes[index]

    # -- deploy this ----------------------------------------------------------------------------------

    @on(Button.Pressed, "#adv-deploy")
    def action_deploy(self) -> None:
        shape = self.highlighted_shape()
        if shape is None or self.advice is None:
            return
        from tui.screens.deployments import NEW_DEPLOYMENT_SCREEN
        from tui.screens.new_deployment import NewDeploymentScreen

        if open_view(self, "deployments") is None:
            self.notify("the Deployments view is not part of this build", severity="error")
            return
        app = self.app
        if not app.is_screen_installed(NEW_DEPLOYMENT_SCREEN):
            app.install_screen(NewDeploymentScreen(), NEW_DEPLOYMENT_SCREEN)
        form = cast(NewDeploymentScreen, app.get_screen(NEW_DEPLOYMENT_SCREEN))
        form.fill(self._model, shape.gpu, shape.gpu_count, spot=self.advice.spot)
        app.push_screen(NEW_DEPLOYMENT_SCREEN)
        if (shape.replicas or 1) > 1:
            app.notify(
                f"the advice is {shape.replicas} replicas of {shape.label}: scale to {shape.replicas} "
                "after it is applied (s in Deployments)",
                timeout=8,
            )

    # -- verify on a target ---------------------------------------------------------------------------

    @on(Button.Pressed, "#adv-verify-button")
    def action_verify(self) -> None:
        if self.running is not None:
            self.notify(f"the {self.running} is running; esc cancels it", severity="warning")
            return
        shape = self.highlighted_shape()
        if shape is None or self.advice is None:
            return
        targets = shell(self).registry.ready_targets()
        if not targets:
            self.notify(
                "no ready target: deploy this shape (ctrl+o), start a twin or add a URL in Deployments",
                severity="warning",
                timeout=8,
            )
            return
        advice = self.advice
        if advice.multi_turn:
            # the search measures single requests/s: a sessions/s knee is no start for it
            self.notify(
                "verify searches single-turn requests/s: run the advice with turns 1 to verify it",
                severity="warning",
                timeout=8,
            )
            return

        def chosen(choice: VerifyChoice | None) -> None:
            if choice is not None:
                self._start_verify(shape, advice, choice)

        self.app.push_screen(VerifyScreen(targets, shape.label, advice.slo), chosen)

    def _start_verify(self, shape: ShapeAdvice, advice: Advice, choice: VerifyChoice) -> None:
        predicted = shape.knee.rate
        base = SweepConfig(
            target=choice.target, axis=Axis.REQUEST_RATE, levels=[1.0], num_prompts=choice.prompts
        )
        job = VerifyJob(
            base=base,
            slo=advice.slo,
            start=predicted,
            start_source=f"advisor prediction for {shape.label}: {predicted:.3g} req/s per replica"
            if predicted
            else "probe",
            max_levels=choice.max_levels,
        )
        self._verify_shape = shape
        self._verify_lines = []
        self._cancel = threading.Event()
        self._set_running("verify")
        self.query_one("#adv-progress", ProgressBar).update(total=choice.max_levels, progress=0)
        self._status(
            f"verifying {shape.label} on {choice.target.name}: SLO search from {predicted or 1:.3g} req/s"
        )
        self._show_verify()
        self._verify(job, choice.target, self._cancel)

    @work(thread=True, exclusive=True, group="advisor", exit_on_error=False, name="verify")
    def _verify(self, job: VerifyJob, target: Target, cancel: threading.Event) -> None:
        try:

            def relay(message: HostMessage) -> None:
                if isinstance(message, VerifyLevel):
                    self.post_message(self.LevelTried(message.level))

            start_resource_tracker()
            done = run_in_child(job, relay, cancel)
        except ServeDeckError as err:
            self.post_message(self.Failed("verify", str(err)))
            return
        search = done.search
        if search is None or search.run.config.search is None:
            self.post_message(self.Failed("verify", "the search returned no result"))
            return
        saved = save_search(search.run, app_context(self).data_dir)
        self.post_message(self.Verified(search.run.config.search, target.name, search.run.run_id, saved))

    @on(LevelTried)
    def _level_tried(self, message: LevelTried) -> None:
        level = message.level
        why = "; ".join(level.reasons) if level.verdict != "pass" else ""
        self._verify_lines.append(
            f"{level.value:.3g} req/s: {level.verdict} (p99 TTFT {level.p99_ttft_ms:,.0f} ms, "
            f"{level.request_throughput:.2f} req/s){'  ' + why if why else ''}"
        )
        bar = self.query_one("#adv-progress", ProgressBar)
        bar.advance(1)
        self._show_verify()

    def _show_verify(self, head: Text | None = None) -> None:
        panel = self.query_one("#adv-verify", Static)
        panel.display = True
        out = Text()
        if head is not None:
            out.append_text(head)
        for line in self._verify_lines[-4:]:
            if out:
                out.append("\n")
            out.append(line, style="dim")
        panel.update(out)

    @on(Verified)
    def _verified(self, message: Verified) -> None:
        self._set_running(None)
        shape = self._verify_shape
        predicted = shape.knee.rate if shape is not None else None
        measured = message.record.knee
        head = Text()
        head.append("predicted ", style="bold")
        head.append(f"{predicted:.3g} req/s" if predicted else "none", style="cyan")
        head.append(f" per replica ({shape.label if shape else '?'}, twin)  ·  ")
        head.append("measured ", style="bold")
        head.append(
            f"{measured:.3g} req/s" if measured else "no level passed", style="green" if measured else "red"
        )
        head.append(f" on {message.target}")
        if predicted and measured:
            head.append(f"  ·  twin error {predicted / measured - 1:+.0%}")
        self._show_verify(head)
        where = (
            f"saved to History as run {message.run_id[:8]} (kind search)"
            if message.saved is None
            else message.saved
        )
        self._status(f"verified: {len(message.record.levels)} levels, {where}")

    # -- cancel ---------------------------------------------------------------------------------------

    @on(Button.Pressed, "#adv-cancel")
    def action_cancel(self) -> None:
        if self.running is None:
            shell(self).action_go_back()
            return
        self._cancel.set()
        self._status(f"cancelling the {self.running} ...")


def save_search(run: Any, data_dir: Path | None) -> str | None:
    """The search's levels replayed into History as one run; None when saved, else why not."""
    from sessions.run_recorder import save_finished_run

    problem: str | None = save_finished_run(run, data_dir)
    return problem
