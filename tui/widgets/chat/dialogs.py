"""Small dialogs of the Chat view: rename a chat, confirm a delete."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

DIALOG_CSS = """
    {name} {{ align: center middle; }}
    {name} > Vertical {{
        width: 64; height: auto; padding: 1 2; border: thick $accent; background: $surface;
    }}
    {name} Horizontal {{ height: auto; margin-top: 1; align-horizontal: right; }}
    {name} Button {{ margin-left: 1; }}
"""


class RenameChatScreen(ModalScreen[str | None]):
    """Returns the new title, or None when cancelled."""

    DEFAULT_CSS = DIALOG_CSS.format(name="RenameChatScreen")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, title: str) -> None:
        super().__init__()
        self._title = title

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Rename chat")
            yield Input(self._title, id="rename-title")
            with Horizontal():
                yield Button("Cancel", id="rename-cancel")
                yield Button("Rename", id="rename-ok", variant="primary")

    @on(Input.Submitted)
    @on(Button.Pressed, "#rename-ok")
    def _accept(self) -> None:
        title = self.query_one("#rename-title", Input).value.strip()
        if not title:
            self.notify("a chat title cannot be empty; type one or press esc", severity="warning")
            return
        self.dismiss(title)

    @on(Button.Pressed, "#rename-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDeleteScreen(ModalScreen[bool]):
    DEFAULT_CSS = DIALOG_CSS.format(name="ConfirmDeleteScreen")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,n", "cancel", "cancel"),
        Binding("y", "confirm", "delete"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self._question)
            with Horizontal():
                yield Button("Cancel", id="delete-cancel")
                yield Button("Delete", id="delete-ok", variant="error")

    @on(Button.Pressed, "#delete-ok")
    def action_confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#delete-cancel")
    def action_cancel(self) -> None:
        self.dismiss(False)
