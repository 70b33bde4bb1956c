"""Small dialogs of the Deployments view: add a manual URL, confirm a deletion, scale a deployment."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static
from textual.worker import get_current_worker

from backends.errors import ServeDeckError
from backends.target_registry import DeploymentRow, TargetRegistry


class AddUrlScreen(ModalScreen[DeploymentRow | None]):
    """Ask an OpenAI-compatible server what it serves and add it; failures stay inline, input is kept."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, registry: TargetRegistry) -> None:
        super().__init__()
        self._registry = registry

    def compose(self) -> ComposeResult:
        with Vertical(id="add-url-box", classes="dialog") as box:
            box.border_title = "Add an OpenAI-compatible URL"
            yield Label("URL")
            yield Input(placeholder="http://127.0.0.1:8000", id="add-url-url")
            yield Label("Name (optional)")
            yield Input(placeholder="defaults to model @ host:port", id="add-url-name")
            yield Label("API key: name of the environment variable that holds it (optional)")
            yield Input(placeholder="e.g. OPENAI_API_KEY", id="add-url-key-env")
            yield Label("Model (optional; default: the server's first model)")
            yield Input(placeholder="e.g. google/gemma-3-27b-it", id="add-url-model")
            yield Static("", id="add-url-message")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Add", variant="primary", id="add-url-add")
                yield Button("Cancel", id="add-url-cancel")

    def _value(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value.strip()

    @on(Button.Pressed, "#add-url-add")
    @on(Input.Submitted)
    def _add(self) -> None:
        url = self._value("add-url-url")
        message = self.query_one("#add-url-message", Static)
        if not url:
            message.update("give the server's URL, like http://127.0.0.1:8000")
            message.set_class(True, "error")
            return
        message.set_class(False, "error")
        message.update(f"asking {url} what it serves ...")
        self.query_one("#add-url-add", Button).disabled = True
        self._discover(
            url, self._value("add-url-name"), self._value("add-url-key-env"), self._value("add-url-model")
        )

    @work(thread=True, exclusive=True, group="add-url", exit_on_error=False, name="add URL")
    def _discover(self, url: str, name: str, key_env: str, model: str) -> None:
        worker = get_current_worker()
        try:
            row = asyncio.run(
                self._registry.add_manual_url(
                    url, name=name or None, api_key_env=key_env or None, model=model or None
                )
            )
        except ServeDeckError as err:
            if not worker.is_cancelled:
                self.app.call_from_thread(self._failed, str(err))
            return
        if not worker.is_cancelled:
            self.app.call_from_thread(self.dismiss, row)

    def _failed(self, text: str) -> None:
        message = self.query_one("#add-url-message", Static)
        message.update(text)
        message.set_class(True, "error")
        self.query_one("#add-url-add", Button).disabled = False

    @on(Button.Pressed, "#add-url-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; ``y`` or ``enter`` confirms, ``n`` or ``esc`` cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"),
        Binding("enter", "answer(True)", "yes", show=False),
        Binding("n", "answer(False)", "no"),
        Binding("escape", "answer(False)", "cancel", show=False),
    ]

    def __init__(self, question: str, confirm_label: str = "Delete") -> None:
        super().__init__()
        self._question = question
        self._confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog") as box:
            box.border_title = "Confirm"
            yield Static(self._question, id="confirm-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self._confirm_label} (y)", variant="error", id="confirm-yes")
                yield Button("Cancel (n)", id="confirm-no")

    @on(Button.Pressed, "#confirm-yes")
    def _yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#confirm-no")
    def _no(self) -> None:
        self.dismiss(False)

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class ScaleScreen(ModalScreen[int | None]):
    """Ask for a replica count (0 to 64)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]
    MAX_REPLICAS = 64

    def __init__(self, name: str, current: int) -> None:
        super().__init__()
        self._name = name
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="scale-box", classes="dialog") as box:
            box.border_title = f"Scale {self._name}"
            yield Label(f"Replicas (now {self._current}; 0 stops every pod and keeps the deployment)")
            yield Input(str(self._current), type="integer", id="scale-replicas")
            yield Static("", id="scale-message")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Scale", variant="primary", id="scale-ok")
                yield Button("Cancel", id="scale-cancel")

    @on(Button.Pressed, "#scale-ok")
    @on(Input.Submitted, "#scale-replicas")
    def _ok(self) -> None:
        text = self.query_one("#scale-replicas", Input).value.strip()
        message = self.query_one("#scale-message", Static)
        try:
            replicas = int(text)
        except ValueError:
            message.update(f"replicas must be a whole number from 0 to {self.MAX_REPLICAS}, got {text!r}")
            message.set_class(True, "error")
            return
        if not 0 <= replicas <= self.MAX_REPLICAS:
            message.update(f"replicas must be from 0 to {self.MAX_REPLICAS}, got {replicas}")
            message.set_class(True, "error")
            return
        self.dismiss(replicas)

    @on(Button.Pressed, "#scale-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
