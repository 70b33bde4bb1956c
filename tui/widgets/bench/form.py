"""The Bench view's setup form: targets, dataset, axis and levels, sizes, SLOs, price source.

The form only holds text; ``values()`` reads it into ``BenchFormValues`` and ``bench_config``
checks it. Fields that only apply to one choice (a dataset path, random lengths, a custom $/h)
are shown only when that choice is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Input, Label, Select, SelectionList, Static

from backends.bench.input_grammar import parse_levels
from backends.bench.models import Axis
from backends.errors import ServeDeckError
from backends.target_types import Target, TargetKind
from tui.services.bench_config import BenchFormValues, DatasetKind, RampUp, _whole
from tui.services.bench_cost import PRICE_SOURCE_LABELS, PriceSource
from tui.widgets.bench.estimate import (
    GPU_DEFAULTS,
    LOCAL_DEFAULTS,
    defaults_for,
    format_estimate,
    sweep_seconds,
)

DATASET_OPTIONS: list[tuple[str, DatasetKind]] = [
    ("ShareGPT (bundled, real chats)", "sharegpt"),
    ("random (synthetic lengths)", "random"),
    ("ShareGPT-format file", "file"),
    ("multi-turn conversations (ShareGPT)", "multi_turn"),
    ("shared prefixes (K x P tokens)", "prefix_repetition"),
    ("trace replay (Mooncake/BurstGPT)", "trace"),
]
RAMP_OPTIONS: list[tuple[str, str]] = [
    ("none (a steady rate per level)", "none"),
    ("linear, start -> end req/s", "linear"),
    ("exponential, start -> end req/s", "exponential"),
]
# The rows each dataset choice shows (the others are hidden).
DATASET_ROWS: dict[str, tuple[str, ...]] = {
    "file": ("bench-row-path",),
    "random": ("bench-row-random-in", "bench-row-random-out"),
    "multi_turn": ("bench-row-turns", "bench-row-think", "bench-row-think-exp", "bench-row-answers"),
    "prefix_repetition": ("bench-row-prefixes", "bench-row-prefix-len", "bench-row-suffix-len"),
    "trace": ("bench-row-trace", "bench-row-trace-scale"),
}
AXIS_OPTIONS: list[tuple[str, Axis]] = [
    ("concurrency (closed loop)", Axis.CONCURRENCY),
    ("request rate, req/s (open loop)", Axis.REQUEST_RATE),
]
HELP = (
    "[b]concurrency[/b]: N requests kept in flight, the next sent as one finishes (vLLM --max-concurrency).\n"
    "[b]request rate[/b]: Poisson arrivals, N per second, however many are in flight (vLLM --request-rate).\n"
    "The article's 'concurrency=1..500' were request rates. Each level sends its own sampled prompts.\n"
    "[b]multi-turn[/b]: each level's sessions replay conversations turn by turn (concurrency = users, "
    "request rate = sessions/s). [b]ramp-up[/b]: one level whose rate climbs from start to end (vLLM).\n"
    "[b]SLOs[/b] give goodput: requests per second that meet every SLO (keys ttft, tpot, e2el in ms).\n"
    "[b]$ per 1M tokens[/b] = $/h / 3600 / total tokens per s x 1,000,000."
)


def _row(label: str, widget: Widget, *, row_id: str | None = None) -> Horizontal:
    return Horizontal(Label(label, classes="bench-field-label"), widget, classes="bench-field", id=row_id)


class BenchForm(VerticalScroll):
    DEFAULT_CSS = """
    BenchForm {
        height: 1fr;
        padding: 0 1;
    }
    BenchForm #bench-form-columns {
        height: auto;
    }
    BenchForm .bench-column {
        width: 1fr;
        height: auto;
        padding-right: 2;
    }
    BenchForm .bench-section {
        color: $text-muted;
        text-style: bold;
        margin-top: 1;
    }
    BenchForm .bench-field {
        height: 1;
        margin-bottom: 1;
    }
    BenchForm .bench-field-label {
        width: 18;
        color: $text-muted;
    }
    BenchForm .bench-field Input, BenchForm .bench-field Select {
        width: 1fr;
    }
    BenchForm #bench-ramp-rates {
        width: 1fr;
        height: 1;
    }
    BenchForm #bench-ramp-rates Input {
        width: 1fr;
        margin-right: 1;
    }
    BenchForm #bench-targets {
        height: 7;
        border: round $primary-background;
    }
    BenchForm #bench-targets:focus {
        border: round $primary;
    }
    /* Ticked and unticked rows looked alike (a green X or a dark one): a ticked one is filled. */
    BenchForm #bench-targets > .selection-list--button-selected,
    BenchForm #bench-targets > .selection-list--button-selected-highlighted {
        color: $text;
        background: $success;
        text-style: bold;
    }
    BenchForm #bench-actions {
        height: 3;
        margin-top: 1;
    }
    BenchForm #bench-form-message {
        height: auto;
        margin-top: 1;
    }
    BenchForm #bench-form-message.error {
        color: $error;
    }
    BenchForm #bench-help {
        height: auto;
        margin-top: 1;
        color: $text-muted;
    }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="bench-form-columns"):
            with Vertical(classes="bench-column"):
                yield Static("Targets (space ticks one or more)", classes="bench-section")
                yield SelectionList[str](id="bench-targets")
                yield Static("Dataset", classes="bench-section")
                yield _row(
                    "prompts from",
                    Select(
                        DATASET_OPTIONS, value="sharegpt", allow_blank=False, compact=True, id="bench-dataset"
                    ),
                )
                yield _row(
                    "file path",
                    Input(
                        placeholder="path to a ShareGPT-format .json", compact=True, id="bench-dataset-path"
                    ),
                    row_id="bench-row-path",
                )
                yield _row(
                    "input tokens",
                    Input("1024", compact=True, type="integer", id="bench-random-in"),
                    row_id="bench-row-random-in",
                )
                yield _row(
                    "output tokens",
                    Input("128", compact=True, type="integer", id="bench-random-out"),
                    row_id="bench-row-random-out",
                )
                yield _row(
                    "turns",
                    Input("4", compact=True, type="integer", id="bench-turns"),
                    row_id="bench-row-turns",
                )
                yield _row(
                    "think time (s)", Input("0", compact=True, id="bench-think"), row_id="bench-row-think"
                )
                yield _row(
                    "",
                    Checkbox("exponential think time", compact=True, id="bench-think-exp"),
                    row_id="bench-row-think-exp",
                )
                yield _row(
                    "",
                    Checkbox("history has the dataset's answers", compact=True, id="bench-dataset-answers"),
                    row_id="bench-row-answers",
                )
                yield _row(
                    "prefixes (K)",
                    Input("10", compact=True, type="integer", id="bench-prefixes"),
                    row_id="bench-row-prefixes",
                )
                yield _row(
                    "prefix tokens (P)",
                    Input("256", compact=True, type="integer", id="bench-prefix-len"),
                    row_id="bench-row-prefix-len",
                )
                yield _row(
                    "suffix tokens",
                    Input("256", compact=True, type="integer", id="bench-suffix-len"),
                    row_id="bench-row-suffix-len",
                )
                yield _row(
                    "trace file",
                    Input(
                        placeholder="Mooncake .jsonl or BurstGPT .csv", compact=True, id="bench-trace-path"
                    ),
                    row_id="bench-row-trace",
                )
                yield _row(
                    "time scale",
                    Input("1", placeholder="0.5 replays twice as fast", compact=True, id="bench-trace-scale"),
                    row_id="bench-row-trace-scale",
                )
                yield _row("label", Input(placeholder="e.g. 4xL4 vs 1xH100", compact=True, id="bench-label"))
            with Vertical(classes="bench-column"):
                yield Static("Load", classes="bench-section")
                yield _row(
                    "axis",
                    Select(
                        AXIS_OPTIONS, value=Axis.CONCURRENCY, allow_blank=False, compact=True, id="bench-axis"
                    ),
                )
                yield _row(
                    "ramp-up",
                    Select(RAMP_OPTIONS, value="none", allow_blank=False, compact=True, id="bench-ramp"),
                    row_id="bench-row-ramp",
                )
                yield _row(
                    "ramp req/s",
                    Horizontal(
                        Input(placeholder="start", compact=True, id="bench-ramp-start"),
                        Input(placeholder="end", compact=True, id="bench-ramp-end"),
                        id="bench-ramp-rates",
                    ),
                    row_id="bench-row-ramp-rates",
                )
                yield _row(
                    "levels", Input("1,4,16", compact=True, id="bench-levels"), row_id="bench-row-levels"
                )
                yield _row(
                    "prompts per level", Input("100", compact=True, type="integer", id="bench-prompts")
                )
                yield _row(
                    "output length",
                    Input("256", placeholder="blank: the dataset's", compact=True, id="bench-output-len"),
                )
                yield _row(
                    "",
                    Checkbox("ignore EOS (full output length)", compact=True, id="bench-ignore-eos"),
                )
                yield _row(
                    "",
                    Checkbox("same prompts every level (vLLM)", compact=True, id="bench-same-prompts"),
                )
                yield Static("Goodput and cost", classes="bench-section")
                yield _row(
                    "SLOs (ms)", Input(placeholder="e.g. ttft:500,tpot:50", compact=True, id="bench-slos")
                )
                yield _row(
                    "price source",
                    Select(
                        [(label, source) for source, label in PRICE_SOURCE_LABELS.items()],
                        value=PriceSource.CATALOG,
                        allow_blank=False,
                        compact=True,
                        id="bench-price",
                    ),
                )
                yield _row(
                    "custom $/h",
                    Input(placeholder="dollars per hour, e.g. 4.00", compact=True, id="bench-usd-per-hour"),
                    row_id="bench-row-price",
                )
                yield _row(
                    "GPU metrics",
                    Input(
                        placeholder="blank: auto; or dcgm-exporter URL",
                        compact=True,
                        id="bench-gpu-metrics",
                    ),
                )
                with Horizontal(id="bench-actions"):
                    yield Button("Run sweep (ctrl+r)", variant="success", id="bench-run")
                yield Static("", id="bench-estimate")
        yield Static("", id="bench-form-message")
        yield Static(HELP, id="bench-help")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._kinds: dict[str, TargetKind] = {}
        self._prompts: list[str] = []

    def on_mount(self) -> None:
        self._sync_visibility()
        self._update_estimate()

    # -- reading and filling --------------------------------------------------------------------------

    def _input(self, widget_id: str) -> Input:
        return self.query_one(f"#{widget_id}", Input)

    def _select_value(self, widget_id: str) -> Any:
        return self.query_one(f"#{widget_id}", Select).value

    def values(self) -> BenchFormValues:
        targets = self.query_one("#bench-targets", SelectionList)
        return BenchFormValues(
            targets=[str(value) for value in targets.selected],
            dataset=self._select_value("bench-dataset"),
            dataset_path=self._input("bench-dataset-path").value,
            random_input_len=self._input("bench-random-in").value,
            random_output_len=self._input("bench-random-out").value,
            turns=self._input("bench-turns").value,
            think_time=self._input("bench-think").value,
            think_exponential=self.query_one("#bench-think-exp", Checkbox).value,
            dataset_answers=self.query_one("#bench-dataset-answers", Checkbox).value,
            num_prefixes=self._input("bench-prefixes").value,
            prefix_len=self._input("bench-prefix-len").value,
            suffix_len=self._input("bench-suffix-len").value,
            trace_path=self._input("bench-trace-path").value,
            trace_time_scale=self._input("bench-trace-scale").value,
            ramp_up=self._ramp() if self.query_one("#bench-row-ramp").display else "",
            ramp_start_rps=self._input("bench-ramp-start").value,
            ramp_end_rps=self._input("bench-ramp-end").value,
            axis=self._select_value("bench-axis"),
            levels=self._input("bench-levels").value,
            num_prompts=self._input("bench-prompts").value,
            output_len=self._input("bench-output-len").value,
            ignore_eos=self.query_one("#bench-ignore-eos", Checkbox).value,
            same_prompts=self.query_one("#bench-same-prompts", Checkbox).value,
            slos=self._input("bench-slos").value,
            price_source=self._select_value("bench-price"),
            usd_per_hour=self._input("bench-usd-per-hour").value,
            gpu_metrics=self._input("bench-gpu-metrics").value,
            label=self._input("bench-label").value,
        )

    def fill(self, values: BenchFormValues) -> None:
        self.query_one("#bench-dataset", Select).value = values.dataset
        self._input("bench-dataset-path").value = values.dataset_path
        self._input("bench-random-in").value = values.random_input_len
        self._input("bench-random-out").value = values.random_output_len
        self._input("bench-turns").value = values.turns
        self._input("bench-think").value = values.think_time
        self.query_one("#bench-think-exp", Checkbox).value = values.think_exponential
        self.query_one("#bench-dataset-answers", Checkbox).value = values.dataset_answers
        self._input("bench-prefixes").value = values.num_prefixes
        self._input("bench-prefix-len").value = values.prefix_len
        self._input("bench-suffix-len").value = values.suffix_len
        self._input("bench-trace-path").value = values.trace_path
        self._input("bench-trace-scale").value = values.trace_time_scale
        self.query_one("#bench-ramp", Select).value = values.ramp_up or "none"
        self._input("bench-ramp-start").value = values.ramp_start_rps
        self._input("bench-ramp-end").value = values.ramp_end_rps
        self.query_one("#bench-axis", Select).value = values.axis
        self._input("bench-levels").value = values.levels
        self._input("bench-prompts").value = values.num_prompts
        self._input("bench-output-len").value = values.output_len
        self.query_one("#bench-ignore-eos", Checkbox).value = values.ignore_eos
        self.query_one("#bench-same-prompts", Checkbox).value = values.same_prompts
        self._input("bench-slos").value = values.slos
        self.query_one("#bench-price", Select).value = values.price_source
        self._input("bench-usd-per-hour").value = values.usd_per_hour
        self._input("bench-gpu-metrics").value = values.gpu_metrics
        self._input("bench-label").value = values.label
        targets = self.query_one("#bench-targets", SelectionList)
        targets.deselect_all()
        for name in values.targets:
            try:
                targets.select(name)
            except Exception:  # a name no longer listed: the user picks again
                continue
        self._sync_visibility()

    def set_targets(self, targets: Sequence[Target], selected: str | None) -> None:
        """Replace the target list, keeping what was picked (or ``selected`` when nothing was)."""
        widget = self.query_one("#bench-targets", SelectionList)
        picked = [str(value) for value in widget.selected]
        names = [target.name for target in targets]
        keep = [name for name in picked if name in names]
        if not keep and selected in names:
            keep = [selected] if selected is not None else []
        prompts = [f"{t.name}  [dim]{t.kind.value} · {t.model}[/]" for t in targets]
        listed = [str(widget.get_option_at_index(i).value) for i in range(widget.option_count)]
        index = widget.highlighted
        cursor = listed[index] if index is not None and 0 <= index < len(listed) else None
        if names == listed:
            # Refilling the list (every health check) put the cursor back on the first row, so
            # Down+Space ticked the wrong target: the same targets are updated in place.
            if self._prompts != prompts:
                for i, prompt in enumerate(prompts):
                    widget.replace_option_prompt_at_index(i, prompt)
            for name in names:
                if (name in keep) != (name in picked):
                    widget.toggle(name)
        else:
            widget.clear_options()
            widget.add_options(
                [(prompt, t.name, t.name in keep) for prompt, t in zip(prompts, targets, strict=True)]
            )
            if cursor in names:
                widget.highlighted = names.index(cursor)
        self._prompts = prompts
        self._kinds = {target.name: target.kind for target in targets}
        self._targets_picked()

    # -- defaults per target and the estimate --------------------------------------------------------

    def _picked_kinds(self) -> list[TargetKind]:
        picked = self.query_one("#bench-targets", SelectionList).selected
        return [self._kinds[str(name)] for name in picked if str(name) in self._kinds]

    @on(SelectionList.SelectedChanged, "#bench-targets")
    def _targets_picked(self) -> None:
        levels, prompts, out = (self._input(i) for i in ("bench-levels", "bench-prompts", "bench-output-len"))
        shown = (levels.value, prompts.value, out.value)
        # Only defaults the user has not changed follow the target.
        if any(shown == (d.levels, d.num_prompts, d.output_len) for d in (GPU_DEFAULTS, LOCAL_DEFAULTS)):
            wanted = defaults_for(self._picked_kinds())
            levels.value, prompts.value, out.value = wanted.levels, wanted.num_prompts, wanted.output_len
        self._update_estimate()

    @on(Input.Changed)
    def _update_estimate(self) -> None:
        line = self.query_one("#bench-estimate", Static)
        kinds = self._picked_kinds()
        if not kinds or not self.query_one("#bench-row-levels").display:  # a ramp-up: no levels to estimate
            line.update("")
            return
        try:
            axis = Axis(self._select_value("bench-axis"))
            levels = parse_levels(axis, self._input("bench-levels").value)
            prompts = _whole("prompts per level", self._input("bench-prompts").value) or 1
            out = _whole("output length", self._input("bench-output-len").value, blank_ok=True)
        except ServeDeckError:
            line.update("")
            return
        seconds = sweep_seconds(kinds, axis, levels, prompts, out)
        line.update(f"estimated duration: {format_estimate(seconds)} (rough)")
        line.tooltip = (
            "every answer at the full output length, at a typical decode rate for the target's kind "
            "(the local CPU engine: ~30 tokens/s a stream, ~60 in all)"
        )

    def show_message(self, text: str, *, error: bool = False) -> None:
        message = self.query_one("#bench-form-message", Static)
        message.update(text)
        message.set_class(error, "error")

    # -- dependent fields -----------------------------------------------------------------------------

    @on(Select.Changed)
    def _choice_changed(self) -> None:
        self._sync_visibility()
        self._update_estimate()

    def _ramp(self) -> RampUp:
        value = str(self._select_value("bench-ramp"))
        return value if value in ("linear", "exponential") else ""  # type: ignore[return-value]

    def _sync_visibility(self) -> None:
        dataset = self._select_value("bench-dataset")
        shown = DATASET_ROWS.get(str(dataset), ())
        for rows in DATASET_ROWS.values():
            for row in rows:
                self.query_one(f"#{row}").display = row in shown
        rate_axis = self._select_value("bench-axis") == Axis.REQUEST_RATE
        ramp = rate_axis and bool(self._ramp())
        self.query_one("#bench-row-ramp").display = rate_axis and dataset != "trace"
        self.query_one("#bench-row-ramp-rates").display = ramp and dataset != "trace"
        self.query_one("#bench-row-levels").display = not (ramp and dataset != "trace")
        self.query_one("#bench-row-price").display = self._select_value("bench-price") == PriceSource.CUSTOM
