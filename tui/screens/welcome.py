"""One screen on the first start: what ServeDeck is doing and which keys to press."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from backends.target_registry import LOCAL_KEY, TargetStatus
from tui.messages import TargetsChanged
from tui.shell import target_registry

KEYS: tuple[tuple[str, str], ...] = (
    ("u", "use the highlighted row as the target for Chat and Bench"),
    ("t", "start or stop the local engine or a twin profile"),
    ("n", "new deployment: fit, KV capacity, cost and YAML"),
    ("a", "add an OpenAI-compatible URL"),
    (":", "jump to a view: deployments, chat, bench, history"),
    ("/", "filter the list"),
    ("ctrl+p", "command palette with every action"),
    ("?", "all keys of the current view"),
)


class WelcomeScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "close"),
        Binding("enter", "close", "start", show=False),
    ]

    def __init__(self, *, local_engine_starting: bool) -> None:
        super().__init__()
        self._local_engine_starting = local_engine_starting

    def _engine_line(self) -> str:
        # Read from the registry each time: the engine is often ready while this screen is still up.
        registry = target_registry(self)
        row = registry.row(LOCAL_KEY) if registry is not None else None
        if row is not None and row.status is TargetStatus.READY:
            return (
                "The local engine (Gemma 3 270M on llama.cpp, on this CPU) is ready: it is the selected "
                "target for Chat and Bench."
            )
        if row is not None and row.status is TargetStatus.FAILED:
            return f"The local engine did not start: {row.detail}. Highlight it and press t to try again."
        if self._local_engine_starting or (row is not None and row.status is TargetStatus.STARTING):
            return (
                "The local engine (Gemma 3 270M on llama.cpp, on this CPU) is starting in the background; "
                "it becomes the selected target as soon as it is ready."
            )
        return "The local engine (Gemma 3 270M on llama.cpp) is off; highlight it and press t to start it."

    def _text(self) -> Text:
        return Text.assemble(
            "Deploy vLLM, chat with it to feel its latency, and run sweeps with live charts.\n\n",
            self._engine_line(),
            "\n\nTwin profiles simulate vLLM on GPUs (L4, A100, H100, CPU nodes) over real HTTP, "
            "so every view works without a cluster. With a kubeconfig, your cluster's vLLM "
            "deployments appear too.",
        )

    def compose(self) -> ComposeResult:
        keys = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
        keys.add_column(style="bold", min_width=7)
        keys.add_column()
        for key, what in KEYS:
            keys.add_row(key, what)
        with Vertical(id="welcome-box") as box:
            box.border_title = "Welcome to ServeDeck"
            yield Static(self._text(), id="welcome-text")
            yield Static(keys, id="welcome-keys")
            yield Button("Start  (enter)", variant="primary", id="welcome-start")

    @on(TargetsChanged)
    def _targets_changed(self) -> None:
        self.query_one("#welcome-text", Static).update(self._text())

    @on(Button.Pressed, "#welcome-start")
    def action_close(self) -> None:
        self.dismiss(None)
