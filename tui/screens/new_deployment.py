"""New deployment: a form whose fit / KV-capacity / cost panel and YAML preview follow every keystroke.

The model is a built-in one (Gemma 3 and the catalog of ``manifests.model_catalog``) or any model from its
Hugging Face config.json (a path typed or picked; read in a worker, a bad file is one line in the panel).
The same spec goes to a Kubernetes cluster ("apply") or to a local vLLM twin ("start as twin").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from rich.syntax import Syntax
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Button, DirectoryTree, Header, Input, Label, Select, Static, Switch

from backends.config import data_dir
from manifests.catalog import default_catalog
from manifests.errors import ManifestError
from manifests.gpus import ACCELERATORS, GpuType
from manifests.model_catalog import all_profiles, load_custom_profile
from manifests.model_profiles import ModelProfile
from manifests.spec import DeploymentSpec, build_spec
from tui.shell import Shell, guarded, shell
from tui.widgets.deploy.plan import DeploymentPlan, plan_deployment, plan_renderable
from tui.widgets.footer import KeysFooter

DEFAULT_MODEL = "google/gemma-3-27b-it"
DEFAULT_GPU = GpuType.H100
YAML_DEBOUNCE_S = 0.25
CONFIG_DEBOUNCE_S = 0.3  # a typed config path is read once typing pauses
MANIFESTS_DIR = "manifests"
COUNT_LABELS = {False: "GPU count", True: "TP ranks/node"}
UTIL_LABELS = {False: "gpu-memory-util", True: "memory-util"}


class FormError(ValueError):
    """A field that cannot be read; the message names the field and what it takes."""


def _optional_int(text: str, field: str, low: int) -> int | None:
    value = text.strip().replace("_", "").replace(",", "")
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise FormError(
            f"{field} must be a whole number (or empty for vLLM's default), got {text.strip()!r}"
        ) from None
    if number < low:
        raise FormError(f"{field} must be at least {low}, got {number}")
    return number


def _fraction(text: str, field: str) -> float:
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        raise FormError(f"{field} must be a number in (0, 1], e.g. 0.9, got {value!r}") from None
    if not 0 < number <= 1:
        raise FormError(f"{field} must be in (0, 1], e.g. 0.9, got {number:g}")
    return number


def gpu_counts(gpu: GpuType) -> tuple[int, ...]:
    return default_catalog().allowed_gpu_counts(gpu)


def read_model_config(text: str) -> ModelProfile:
    """The profile of the config.json (or folder holding one) at ``text``; FormError (one line) if not."""
    path = Path(text).expanduser()
    try:
        return load_custom_profile(path)
    except ManifestError as err:
        raise FormError(str(err)) from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        # a config.json of valid JSON but odd values (a list where a number belongs)
        raise FormError(f"cannot read model config {path}: {type(err).__name__}: {err}") from None


class ConfigPickerScreen(ModalScreen[str | None]):
    """Pick a model's config.json, or the folder holding it (with model.safetensors.index.json)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    DEFAULT_CSS = """
    ConfigPickerScreen #picker-box {
        width: 90%;
        height: 85%;
    }
    ConfigPickerScreen DirectoryTree {
        height: 1fr;
        border: round $primary-background;
    }
    """

    def __init__(self, start: str = "") -> None:
        super().__init__()
        path = Path(start).expanduser() if start else Path.cwd()
        self._root = path if path.is_dir() else path.parent if path.parent.is_dir() else Path.cwd()
        self._start = start

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box", classes="dialog") as box:
            box.border_title = "Model config: a config.json or the folder holding it"
            yield DirectoryTree(self._root, id="picker-tree")
            yield Input(self._start, placeholder="PATH/config.json or PATH/", id="picker-path")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Use", variant="primary", id="picker-use")
                yield Button("Cancel", id="picker-cancel")

    @on(DirectoryTree.FileSelected)
    def _file(self, event: DirectoryTree.FileSelected) -> None:
        self.query_one("#picker-path", Input).value = str(event.path)

    @on(DirectoryTree.DirectorySelected)
    def _folder(self, event: DirectoryTree.DirectorySelected) -> None:
        self.query_one("#picker-path", Input).value = str(event.path)

    @on(Button.Pressed, "#picker-use")
    @on(Input.Submitted, "#picker-path")
    def _use(self) -> None:
        self.dismiss(self.query_one("#picker-path", Input).value.strip() or None)

    @on(Button.Pressed, "#picker-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class NewDeploymentScreen(Screen[None]):
    TITLE = "New deployment"

    DEFAULT_CSS = """
    NewDeploymentScreen #nd-browse {
        width: 5;
        min-width: 5;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "back", id="new.back"),
        Binding("ctrl+t", "start_twin", "start as twin", id="new.twin"),
        Binding("ctrl+s", "apply", "apply to cluster", id="new.apply"),
        Binding("ctrl+y", "copy_yaml", "copy YAML", id="new.copy_yaml"),
        Binding("ctrl+w", "save_yaml", "save YAML", id="new.save_yaml"),
    ]

    class ConfigRead(Message):
        """A worker read the config path ``text``: its profile, or the line saying why not."""

        def __init__(self, text: str, profile: ModelProfile | None, error: str | None) -> None:
            super().__init__()
            self.text, self.profile, self.error = text, profile, error

    def __init__(self) -> None:
        super().__init__()
        self.plan = DeploymentPlan(error="fill in the form")
        self._yaml_timer: Timer | None = None
        self._yaml_shown: str | None = None
        self._config_timer: Timer | None = None
        self.custom_profile: ModelProfile | None = None
        self._config_error: str | None = None
        self._pending_fill: tuple[str | ModelProfile, GpuType, int, bool] | None = None

    @property
    def deck(self) -> Shell:
        return shell(self)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="new-deployment-body"):
            with VerticalScroll(id="new-deployment-form") as form:
                form.border_title = "Spec"
                yield from self._field("Model", Select(
                    [(profile.name, profile.hf_id) for profile in all_profiles().values()],
                    value=DEFAULT_MODEL, allow_blank=False, id="nd-model",
                ))  # fmt: skip
                with Horizontal(classes="field-row"):
                    yield Label("or config.json", classes="field-label", id="nd-config-label")
                    yield Input(placeholder="PATH", id="nd-config")
                    yield Button("…", id="nd-browse", tooltip="pick a config.json or its folder")
                yield from self._field("GPU type", Select(
                    [(ACCELERATORS[gpu].display_name, gpu.value) for gpu in GpuType],
                    value=DEFAULT_GPU.value, allow_blank=False, id="nd-gpu",
                ))  # fmt: skip
                yield from self._field(COUNT_LABELS[False], Select(
                    [(str(n), n) for n in gpu_counts(DEFAULT_GPU)], value=1, allow_blank=False, id="nd-count",
                ))  # fmt: skip
                yield from self._field("max-model-len", Input(placeholder="model's maximum", id="nd-max-len"))
                yield from self._field(UTIL_LABELS[False], Input("0.9", id="nd-util"))
                yield from self._field("max-num-seqs", Input(placeholder="vLLM default", id="nd-max-seqs"))
                yield from self._field("Spot VMs", Switch(value=False, id="nd-spot"))
                yield from self._field("Name", Input(placeholder="from model and GPUs", id="nd-name"))
                yield from self._field("Namespace", Input("vllm", id="nd-namespace"))
            with Vertical(id="new-deployment-right"):
                fit = Static("", id="new-deployment-fit")
                fit.border_title = "Fit · KV capacity · cost"
                yield fit
                with VerticalScroll(id="new-deployment-yaml") as yaml_box:
                    yaml_box.border_title = "YAML"
                    yield Static("", id="nd-yaml")
                with Horizontal(id="new-deployment-buttons"):
                    # Short labels so all four fit at 100 columns; the footer shows their keys.
                    yield Button("Start twin", variant="primary", id="nd-twin", tooltip="ctrl+t")
                    yield Button("Apply", variant="warning", id="nd-apply", tooltip="ctrl+s")
                    yield Button("Save YAML", id="nd-save", tooltip="ctrl+w (ctrl+y copies it)")
                    yield Button("Cancel", id="nd-cancel", tooltip="esc")
        yield KeysFooter()

    @staticmethod
    def _field(label: str, control: Any) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield Label(label, classes="field-label", id=f"{control.id}-label")
            yield control

    def on_mount(self) -> None:
        if self._pending_fill is not None:
            self._apply_fill(*self._pending_fill)
        self.recompute()
        # The YAML follows right after the first paint, so the form itself appears at once.
        self.call_after_refresh(self._show_yaml)
        self.query_one("#nd-model", Select).focus()

    def on_screen_resume(self) -> None:
        # Opened again: start at the top, not on the button pressed last time (Tab+Enter would apply).
        self.query_one("#nd-model", Select).focus()
        self._show_plan()

    # -- reading the form -----------------------------------------------------------------------------

    def _input(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value

    def read_spec(self) -> DeploymentSpec:
        """The spec the form describes; FormError or ManifestError (one line) when it cannot be built."""
        if self._config_error is not None:
            raise FormError(self._config_error)
        model = str(self.query_one("#nd-model", Select).value)
        gpu = GpuType(str(self.query_one("#nd-gpu", Select).value))
        count_value = self.query_one("#nd-count", Select).value
        count = count_value if isinstance(count_value, int) else 1
        fields: dict[str, Any] = {
            "model": model,
            "gpu": gpu,
            "gpu_count": count,
            "max_model_len": _optional_int(self._input("nd-max-len"), "max-model-len", 16),
            "gpu_memory_utilization": _fraction(self._input("nd-util"), "gpu-memory-utilization"),
            "max_num_seqs": _optional_int(self._input("nd-max-seqs"), "max-num-seqs", 1),
            "spot": self.query_one("#nd-spot", Switch).value,
            "namespace": self._input("nd-namespace").strip() or "vllm",
        }
        if self.custom_profile is not None:
            fields.update(model=self.custom_profile.hf_id, custom_profile=self.custom_profile)
        name = self._input("nd-name").strip()
        if name:
            fields["name"] = name
        return build_spec(fields)

    def recompute(self) -> None:
        try:
            spec = self.read_spec()
        except (FormError, ManifestError) as err:
            self.plan = DeploymentPlan(error=str(err))
        else:
            self.plan = plan_deployment(spec)
        self._show_plan()

    def _show_plan(self) -> None:
        plan = self.plan
        fit_panel = self.query_one("#new-deployment-fit", Static)
        fit_panel.update(plan_renderable(plan))
        fit_panel.set_class(not plan.deployable, "does-not-fit")
        self.query_one("#nd-twin", Button).disabled = not plan.deployable
        apply = self.query_one("#nd-apply", Button)
        no_cluster = self.deck.registry.cluster_problem()
        apply.disabled = not plan.deployable or no_cluster is not None
        apply.tooltip = no_cluster or "ctrl+s"
        self.query_one("#nd-save", Button).disabled = not plan.deployable
        cpu = plan.spec is not None and plan.spec.is_cpu
        self.query_one("#nd-count-label", Label).update(COUNT_LABELS[cpu])
        self.query_one("#nd-util-label", Label).update(UTIL_LABELS[cpu])
        # vLLM's CPU backend sizes its KV cache from VLLM_CPU_KVCACHE_SPACE, not a memory fraction.
        self.query_one("#nd-util", Input).disabled = cpu
        # Highlighting and laying out ~170 lines of YAML is the costly part of a keystroke: it waits until
        # typing pauses, while the fit panel above follows every key.
        if self._yaml_timer is not None:
            self._yaml_timer.stop()
            self._yaml_timer = None
        if not plan.deployable:
            self._show_yaml()
        else:
            self._yaml_timer = self.set_timer(YAML_DEBOUNCE_S, self._show_yaml)

    @property
    def yaml_pending(self) -> bool:
        """True while the YAML pane waits for typing to pause before it follows the form."""
        return self._yaml_timer is not None

    def _show_yaml(self) -> None:
        self._yaml_timer = None
        text = self.plan.yaml_text
        if text == self._yaml_shown:
            return
        self._yaml_shown = text
        yaml_view = self.query_one("#nd-yaml", Static)
        if text:
            yaml_view.update(Syntax(text, "yaml", theme="ansi_dark").highlight(text))
        else:
            yaml_view.update(Text("no YAML: fix what the panel above says", style="dim"))

    @on(Select.Changed, "#nd-gpu")
    def _gpu_changed(self, event: Select.Changed) -> None:
        count = self.query_one("#nd-count", Select)
        allowed = gpu_counts(GpuType(str(event.value)))
        current = count.value if isinstance(count.value, int) else 1
        count.set_options([(str(n), n) for n in allowed])
        count.value = current if current in allowed else allowed[0]
        self.recompute()

    @on(Select.Changed)
    @on(Input.Changed)
    @on(Switch.Changed)
    def _changed(self, event: Message) -> None:
        if isinstance(event, Input.Changed) and event.input.id == "nd-config":
            self._config_changed(event.value)
            return
        self.recompute()

    # -- the model from a config.json -----------------------------------------------------------------

    def _config_changed(self, text: str) -> None:
        if self._config_timer is not None:
            self._config_timer.stop()
            self._config_timer = None
        if not text.strip():
            self._set_custom(None, None)
            return
        self._config_timer = self.set_timer(CONFIG_DEBOUNCE_S, lambda: self._read_config(text.strip()))

    @work(thread=True, exclusive=True, group="model-config", exit_on_error=False, name="model config")
    def _read_config(self, text: str) -> None:
        try:
            profile: ModelProfile | None = read_model_config(text)
            error = None
        except FormError as err:
            profile, error = None, str(err)
        self.post_message(self.ConfigRead(text, profile, error))

    @on(ConfigRead)
    def _config_read(self, message: ConfigRead) -> None:
        if message.text != self._input("nd-config").strip():
            return  # the path changed again meanwhile; its own read follows
        self._set_custom(message.profile, message.error)

    def _set_custom(self, profile: ModelProfile | None, error: str | None) -> None:
        self._config_timer = None
        self.custom_profile = profile
        self._config_error = error
        self.query_one("#nd-model", Select).disabled = profile is not None or error is not None
        self.recompute()

    @on(Button.Pressed, "#nd-browse")
    def _browse(self) -> None:
        def picked(path: str | None) -> None:
            if path:
                self.query_one("#nd-config", Input).value = path

        self.app.push_screen(ConfigPickerScreen(self._input("nd-config").strip()), picked)

    # -- filled from elsewhere (the Advisor's "deploy this") ------------------------------------------

    def fill(self, model: str | ModelProfile, gpu: GpuType, count: int, *, spot: bool = False) -> None:
        """Set model, GPU type and count (and spot); the panel and YAML follow as if typed."""
        if not self.is_mounted:
            self._pending_fill = (model, gpu, count, spot)
            return
        self._apply_fill(model, gpu, count, spot)
        self.recompute()

    def _apply_fill(self, model: str | ModelProfile, gpu: GpuType, count: int, spot: bool) -> None:
        self._pending_fill = None
        if isinstance(model, ModelProfile) and model.name not in all_profiles():
            # a model from a config.json: the advisor read it already
            self.custom_profile, self._config_error = model, None
            self.query_one("#nd-model", Select).disabled = True
        else:
            name = model.name if isinstance(model, ModelProfile) else model
            profile = all_profiles().get(name)
            self.custom_profile, self._config_error = None, None
            self.query_one("#nd-config", Input).value = ""
            model_select = self.query_one("#nd-model", Select)
            model_select.disabled = False
            if profile is not None:
                model_select.value = profile.hf_id
        self.query_one("#nd-gpu", Select).value = gpu.value
        counts = gpu_counts(gpu)
        count_select = self.query_one("#nd-count", Select)
        count_select.set_options([(str(n), n) for n in counts])
        count_select.value = count if count in counts else counts[0]
        self.query_one("#nd-spot", Switch).value = spot

    # -- actions --------------------------------------------------------------------------------------

    def _deployable_spec(self) -> DeploymentSpec | None:
        if not self.plan.deployable or self.plan.spec is None:
            reason = self.plan.error or (self.plan.fit.message if self.plan.fit else "the form is incomplete")
            self.notify(f"cannot deploy this spec: {reason}", severity="error", timeout=8)
            return None
        return self.plan.spec

    @on(Button.Pressed, "#nd-twin")
    @guarded
    def action_start_twin(self) -> None:
        spec = self._deployable_spec()
        if spec is None:
            return
        key = self.deck.registry.add_twin(spec)
        self.deck.start_twin(key)
        self.notify(f"starting twin of {spec.name} ({spec.hardware_label}) ...", timeout=4)
        self.dismiss(None)

    @on(Button.Pressed, "#nd-apply")
    @guarded
    def action_apply(self) -> None:
        spec = self._deployable_spec()
        if spec is None:
            return
        problem = self.deck.registry.cluster_problem()
        if problem is not None:
            # Stay here: the ctrl+t the message points to works on this form.
            self.notify(problem, severity="error", timeout=10)
            return
        self.deck.apply_deployment(spec)
        self.notify(f"applying {spec.name} to {self.deck.ctx.context_label} ...", timeout=4)
        self.dismiss(None)

    def action_copy_yaml(self) -> None:
        spec = self._deployable_spec()
        if spec is None:
            return
        self.app.copy_to_clipboard(self.plan.yaml_text)
        self.notify(f"copied the YAML of {spec.name} to the clipboard", timeout=4)

    @on(Button.Pressed, "#nd-save")
    def action_save_yaml(self) -> None:
        spec = self._deployable_spec()
        if spec is None:
            return
        folder = data_dir() / MANIFESTS_DIR
        path = folder / f"{spec.name}.yaml"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(self.plan.yaml_text, encoding="utf-8")
        except OSError as exc:
            self.notify(f"cannot save {path}: {exc.strerror or exc}", severity="error", timeout=10)
            return
        self.notify(f"saved {path} (kubectl apply -f it)", timeout=8)

    @on(Button.Pressed, "#nd-cancel")
    def action_back(self) -> None:
        self.dismiss(None)
