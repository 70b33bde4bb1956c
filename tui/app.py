"""ServeDeck's Textual app: the shell (header, footer, command palette, help, `:` jump) and its views.

Views are Textual modes, each a screen imported lazily by name, so a view whose module is not
installed is simply absent. The app owns the ``TargetRegistry`` (local engine, twins, Kubernetes,
manual URLs) and the ``AppContext`` (``self.ctx``) every screen reads. All blocking work runs in
worker threads that never touch widgets: the registry calls back, the app posts ``RegistryChanged``
to itself, and its handler (on the UI thread) updates ``ctx`` and broadcasts ``TargetsChanged`` to
every screen. Worker failures become notifications that say what to do next, never tracebacks.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.suggester import SuggestFromList
from textual.widgets import Input, Label, Select, TextArea
from textual.worker import Worker, WorkerFailed, WorkerState

from backends.config import config_dir, data_dir
from backends.errors import ServeDeckError
from backends.target_registry import LOCAL_TARGET_NAME, ManualTargetStore, TargetRegistry
from tui.context import AppContext
from tui.gc_policy import GcPolicy
from tui.messages import RegistryChanged, TargetsChanged
from tui.shell import View

if TYPE_CHECKING:
    from backends.engines.local import LocalEngineConfig
    from manifests.spec import DeploymentSpec

WELCOME_MARKER = "welcomed"
HEALTH_INTERVAL_S = 15.0
SCREENSHOTS_DIR = "screenshots"


VIEWS: tuple[View, ...] = (
    View(
        "deployments",
        "tui.screens.deployments",
        "DeploymentsScreen",
        "Deployments",
        ("dp", "deploy", "targets"),
    ),
    View("chat", "tui.screens.chat", "ChatScreen", "Chat", ("c", "race")),
    View("bench", "tui.screens.bench", "BenchScreen", "Bench", ("b", "sweep")),
    View("history", "tui.screens.history", "HistoryScreen", "History", ("h", "hist", "runs")),
    View("advisor", "tui.screens.advisor", "AdvisorScreen", "Advisor", ("adv", "advise", "plan")),
)


def resolve_view(text: str, views: Sequence[View] = VIEWS) -> View | None:
    """The view named ``text`` (name, alias or unique prefix, case-insensitive), or None."""
    word = text.strip().lstrip(":").strip().lower()
    if not word:
        return None
    for view in views:
        if word == view.mode or word in view.aliases:
            return view
    starting = [view for view in views if view.mode.startswith(word)]
    return starting[0] if len(starting) == 1 else None


def _view_available(view: View) -> bool:
    try:
        return importlib.util.find_spec(view.module) is not None
    except ModuleNotFoundError:
        return False


def _screen_factory(view: View) -> Callable[[], Screen[Any]]:
    def build() -> Screen[Any]:
        module = importlib.import_module(view.module)
        screen: Screen[Any] = getattr(module, view.screen_class)()
        return screen

    return build


class JumpScreen(ModalScreen[str | None]):
    """k9s-style command line: type a view's name and press enter."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self._names = names

    def compose(self) -> ComposeResult:
        with Vertical(id="jump-box"):
            yield Label(f"jump to: {', '.join(self._names)}", id="jump-hint")
            yield Input(
                placeholder="view name, e.g. chat",
                suggester=SuggestFromList(self._names, case_sensitive=False),
                id="jump-input",
            )

    @on(Input.Submitted, "#jump-input")
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ServeDeckApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "ServeDeck"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("colon", "jump", "jump", key_display=":", tooltip="jump to a view by name", id="app.jump"),
        Binding(
            "question_mark",
            "help",
            "help",
            key_display="?",
            tooltip="keys of the current view",
            id="app.help",
        ),
        Binding(
            "escape",
            "go_back",
            "back",
            show=False,
            tooltip="go back (close a dialog, previous view)",
            id="app.back",
        ),
        Binding("1", "view('deployments')", "deployments view", show=False, id="app.view.deployments"),
        Binding("2", "view('chat')", "chat view", show=False, id="app.view.chat"),
        Binding("3", "view('bench')", "bench view", show=False, id="app.view.bench"),
        Binding("4", "view('history')", "history view", show=False, id="app.view.history"),
        Binding(
            "ctrl+q",
            "quit",
            "quit",
            tooltip="quit (stops the engines and twins ServeDeck started)",
            id="app.quit",
        ),
    ]

    def __init__(
        self,
        ctx: AppContext | None = None,
        *,
        start_local_engine: bool = True,
        show_welcome: bool | None = None,
        check_health: bool = True,
        discover_cluster: bool = True,
        local_engine_config: LocalEngineConfig | None = None,
        views: Sequence[View] = VIEWS,
    ) -> None:
        """``show_welcome=None`` shows the welcome screen on the first start only (a marker in the config
        folder); ``check_health=False`` skips probing endpoints and ``discover_cluster=False`` skips reading
        the kubeconfig (fixed pictures in tests). ``views`` are the modes offered (those whose module is
        installed); the first one opens."""
        super().__init__()
        self.available_views = [view for view in views if _view_available(view)]
        for view in self.available_views:
            self.add_mode(view.mode, _screen_factory(view))
        self.ctx = ctx if ctx is not None else AppContext()
        self._start_local_engine = start_local_engine
        self._show_welcome = show_welcome
        self._check_health = check_health
        self._discover_cluster = discover_cluster
        self._config_dir = config_dir()
        self.registry = TargetRegistry(
            manual_store=ManualTargetStore(self._config_dir),
            given=list(self.ctx.targets),
            local_config=local_engine_config,
            on_change=self._registry_changed_from_any_thread,
        )
        self._mode_history: list[str] = []
        self._closed = False
        self._last_input_at = time.monotonic()
        self.gc_policy = GcPolicy(self.input_quiet_s)

    # -- start and stop -------------------------------------------------------------------------------

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key | events.MouseDown | events.MouseScrollDown | events.MouseScrollUp):
            self._last_input_at = time.monotonic()
        await super().on_event(event)

    def input_quiet_s(self) -> float:
        """Seconds since the last key press or mouse click or scroll: background work waits for quiet."""
        return time.monotonic() - self._last_input_at

    def on_mount(self) -> None:
        # What exists after the first frame lives as long as the app: keep it out of the garbage
        # collector's full passes, which otherwise pause the UI for ~100 ms at a time.
        self.call_after_refresh(self.gc_policy.start, self)
        self.sub_title = self._context_line()
        self.switch_mode(self.available_views[0].mode)
        self._load_manual_targets()
        if self._start_local_engine:
            self.start_local_engine()
        if self._discover_cluster:
            self.refresh_cluster()
        if self._check_health:
            self.set_interval(HEALTH_INTERVAL_S, self.check_health)
        if self._should_welcome():
            from tui.screens.welcome import WelcomeScreen

            self.push_screen(WelcomeScreen(local_engine_starting=self._start_local_engine))
            self._remember_welcomed()

    def _should_welcome(self) -> bool:
        if self._show_welcome is not None:
            return self._show_welcome
        return not (self._config_dir / WELCOME_MARKER).exists()

    @work(thread=True, group="config", exit_on_error=False)
    def _remember_welcomed(self) -> None:
        marker: Path = self._config_dir / WELCOME_MARKER
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass  # only means the welcome shows again next time

    async def action_quit(self) -> None:
        from tui.widgets.deploy.dialogs import ConfirmScreen

        if self._sweep_running() and not isinstance(self.screen, ConfirmScreen):

            def answered(yes: bool | None) -> None:
                if yes:
                    self.call_later(self._quit_now)

            question = "A sweep is running; quitting cancels it. Quit anyway? (ctrl+q again also quits)"
            self.push_screen(ConfirmScreen(question, "Quit"), answered)
            return
        await self._quit_now()

    def _sweep_running(self) -> bool:
        try:
            screens = self.get_screen_stack("bench")
        except KeyError:
            return False
        return any(getattr(screen, "running", False) is True for screen in screens)

    async def _quit_now(self) -> None:
        self.notify("stopping the engines ServeDeck started ...", timeout=3)
        await asyncio.to_thread(self._close_registry)
        self.exit()

    def _close_registry(self) -> None:
        if not self._closed:
            self._closed = True
            self.registry.close()

    async def on_unmount(self) -> None:
        await asyncio.to_thread(self._close_registry)

    # -- targets --------------------------------------------------------------------------------------

    def _registry_changed_from_any_thread(self) -> None:
        self.post_message(RegistryChanged())

    @on(RegistryChanged)
    def _registry_changed(self) -> None:
        self.ctx.targets = self.registry.known_targets()
        names = {target.name for target in self.ctx.targets}
        ready = {target.name for target in self.registry.ready_targets()}
        if self.ctx.selected_target not in names:
            self.ctx.selected_target = None
        if self.ctx.selected_target is None and LOCAL_TARGET_NAME in ready:
            self.ctx.selected_target = LOCAL_TARGET_NAME
        self.sub_title = self._context_line()
        self.broadcast_targets_changed()

    def broadcast_targets_changed(self) -> None:
        """Deliver ``TargetsChanged`` to every screen of every mode (they may be in the background)."""
        screens: list[Screen[Any]] = []
        for view in self.available_views:
            try:
                screens.extend(self.get_screen_stack(view.mode))
            except KeyError:
                continue
        for screen in dict.fromkeys(screens):
            screen.post_message(TargetsChanged(list(self.ctx.targets), self.ctx.selected_target))

    def select_target(self, name: str) -> None:
        self.ctx.selected_target = name
        self.sub_title = self._context_line()
        self.broadcast_targets_changed()

    def _context_line(self) -> str:
        target = self.ctx.selected_target or "none"
        return f"context: {self.ctx.context_label}  ·  target: {target}"

    @work(thread=True, group="config", exit_on_error=False)
    def _load_manual_targets(self) -> None:
        self.registry.load_manual()
        if self.registry.load_error is not None:
            self.call_from_thread(self.notify, self.registry.load_error, severity="error", timeout=15)
        elif self._check_health:
            self.call_from_thread(self.check_health)

    @work(thread=True, exclusive=True, group="local-engine", exit_on_error=False, name="local engine")
    def start_local_engine(self) -> None:
        self.registry.start_local_engine()
        self.call_from_thread(self.notify, "local engine ready: Gemma 3 270M on llama.cpp", timeout=4)

    @work(thread=True, exclusive=True, group="local-engine", exit_on_error=False, name="local engine")
    def stop_local_engine(self) -> None:
        self.registry.stop_local_engine()

    @work(thread=True, exclusive=True, group="health", exit_on_error=False, name="health check")
    def check_health(self) -> None:
        # Its own event loop on a worker thread: building TLS contexts and parsing answers stay off the UI.
        asyncio.run(self.registry.probe())

    def refresh_targets(self) -> None:
        self.check_health()
        self.refresh_cluster()

    @work(thread=True, exclusive=True, group="cluster-list", exit_on_error=False, name="cluster listing")
    def refresh_cluster(self) -> None:
        self.registry.refresh_cluster()
        context = self.registry.cluster_context
        if context is not None and self.ctx.kube_context != context:
            self.call_from_thread(self._set_kube_context, context)

    def _set_kube_context(self, context: str) -> None:
        self.ctx.kube_context = context
        self.sub_title = self._context_line()

    @work(thread=True, group="twins", exit_on_error=False, name="twin")
    def start_twin(self, key: str) -> None:
        target = self.registry.start_twin(key)
        self.call_from_thread(self.notify, f"twin ready: {target.name} at {target.base_url}", timeout=4)

    @work(thread=True, group="twins", exit_on_error=False, name="twin")
    def stop_twin(self, key: str) -> None:
        self.registry.stop_twin(key)

    @work(thread=True, group="cluster", exit_on_error=False, name="apply")
    def apply_deployment(self, spec: DeploymentSpec) -> None:
        summary = self.registry.apply_spec(spec)
        self.call_from_thread(self.notify, summary, timeout=6)

    @work(thread=True, group="cluster", exit_on_error=False, name="port-forward")
    def port_forward(self, key: str) -> None:
        url = self.registry.port_forward(key)
        self.call_from_thread(self.notify, f"port-forward ready: {url}", timeout=6)

    @work(thread=True, group="cluster", exit_on_error=False, name="scale")
    def scale_deployment(self, key: str, replicas: int) -> None:
        summary = self.registry.scale(key, replicas)
        self.call_from_thread(self.notify, summary, timeout=5)

    @work(thread=True, group="cluster", exit_on_error=False, name="delete")
    def delete_row(self, key: str) -> None:
        summary = self.registry.delete(key)
        self.call_from_thread(self.notify, summary, timeout=5)

    # -- errors ---------------------------------------------------------------------------------------

    async def _dispatch_action(self, namespace: Any, action_name: str, params: Any) -> bool:
        # Every key binding and palette command passes here: a user-fixable failure is a toast.
        try:
            return await super()._dispatch_action(namespace, action_name, params)
        except ServeDeckError as err:
            self.notify(str(err), severity="error", timeout=12)
            return True

    def _handle_exception(self, error: Exception) -> None:
        # Last line of defence (a worker started with exit_on_error, a timer): a ServeDeckError is a
        # toast; anything else is a bug and ends the app with its traceback, as Textual does.
        cause = error.error if isinstance(error, WorkerFailed) else error
        if isinstance(cause, ServeDeckError):
            self.notify(str(cause), severity="error", timeout=12)
            return
        super()._handle_exception(error)

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """The palette's screenshot, saved under the data folder (``~/Downloads`` may not exist)."""
        if path is None:
            folder = data_dir() / SCREENSHOTS_DIR
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.notify(f"cannot create {folder}: {exc.strerror or exc}", severity="error")
                return None
            path = str(folder)
        return super().deliver_screenshot(filename, path, time_format)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is not WorkerState.ERROR:
            return
        self.notify(worker_error_text(event.worker), severity="error", timeout=12)

    # -- navigation -----------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "view" and parameters:
            if self._typing_into_a_field():
                return False  # "8192" typed into a form field is not four view switches
            return any(view.mode == parameters[0] for view in self.available_views)
        return True

    def _typing_into_a_field(self) -> bool:
        focused = self.focused
        if focused is None:
            return False
        return any(isinstance(node, Input | Select | TextArea) for node in focused.ancestors_with_self)

    def action_view(self, mode: str) -> None:
        view = resolve_view(mode, self.available_views)
        if view is None:
            self.notify(
                f"the {mode} view is not part of this build; available: {self._view_names()}",
                severity="warning",
            )
            return
        if view.mode != self.current_mode:
            self._mode_history.append(self.current_mode)
            del self._mode_history[:-20]
            self.switch_mode(view.mode)

    def _view_names(self) -> str:
        return ", ".join(view.mode for view in self.available_views)

    def action_jump(self) -> None:
        def jump(answer: str | None) -> None:
            if not answer or not answer.strip():
                return
            view = resolve_view(answer, self.available_views)
            if view is None:
                self.notify(
                    f"no view called {answer.strip()!r}; try one of: {self._view_names()}", severity="warning"
                )
                return
            self.action_view(view.mode)

        self.push_screen(JumpScreen([view.mode for view in self.available_views]), jump)

    def action_go_back(self) -> None:
        if len(self.screen_stack) > 1:
            self.pop_screen()
        elif self._mode_history:
            self.switch_mode(self._mode_history.pop())

    def action_help(self) -> None:
        from tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen.for_screen(self.screen, self.available_views))

    # -- command palette ------------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        for view in self.available_views:
            yield SystemCommand(
                f"Go to {view.title}",
                f"switch to the {view.title} view",
                partial(self.action_view, view.mode),
            )
        seen: set[str] = set()
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if not binding.description or binding.action in seen or binding.action.startswith("view("):
                continue
            seen.add(binding.action)
            yield SystemCommand(
                binding.description[:1].upper() + binding.description[1:],
                f"key {binding.key_display or key}",
                partial(self.run_action, binding.action, active.node),
            )
        yield from super().get_system_commands(screen)


def worker_error_text(worker: Worker[Any]) -> str:
    """One line for a failed worker: the ServeDeckError's own message, or a plain summary of a bug."""
    error = worker.error
    if isinstance(error, ServeDeckError):
        return str(error)
    what = worker.name or "a background task"
    return (
        f"{what} failed unexpectedly ({type(error).__name__}: {error}); "
        "the app keeps running, please report this"
    )
