"""The Chat view's settings: which targets answer (one = chat, two or three = race) and the parameters."""

from __future__ import annotations

import json

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label

from backends.chat import ChatParams
from backends.target_types import Target
from tui.widgets.chat.targets import TargetPicker

MAX_LANES = 3
CHAT_MODE_LINE = "chat · space ticks · ctrl+t race"


class ChatSettings(Vertical):
    DEFAULT_CSS = """
    ChatSettings { height: auto; border: round $panel; padding: 0 1; }
    ChatSettings > Label { margin-top: 1; color: $text-muted; }
    ChatSettings > TargetPicker { height: auto; max-height: 6; border: none; padding: 0; }
    ChatSettings > .mode-line { margin-top: 0; color: $text-muted; }
    ChatSettings.-race > .mode-line { color: $warning; text-style: bold; }
    ChatSettings Input { width: 1fr; }
    ChatSettings > Horizontal { height: 1; margin-top: 1; }
    ChatSettings > Horizontal > Label { width: auto; color: $text-muted; padding-right: 1; }
    ChatSettings > Horizontal > Input { width: 1fr; margin-right: 1; }
    """

    class TargetsPicked(Message):
        """The user changed which targets answer; ``names`` keep the list's order."""

        def __init__(self, names: list[str]) -> None:
            super().__init__()
            self.names = names

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "targets & parameters"
        self._locked_reason: str | None = None

    def compose(self) -> ComposeResult:
        yield Label(CHAT_MODE_LINE, classes="mode-line", id="chat-mode")
        yield TargetPicker(id="chat-targets")
        yield Label("system prompt")
        yield Input(placeholder="e.g. Answer in one sentence.", id="chat-system", compact=True)
        with Horizontal():
            yield Label("temp")
            yield Input("0.7", id="chat-temperature", compact=True)
            yield Label("max tok")
            yield Input("256", id="chat-max-tokens", compact=True)
        yield Label("extra request fields (JSON)")
        yield Input(placeholder='{"top_k": 40}', id="chat-extra", compact=True)

    @property
    def target_list(self) -> TargetPicker:
        return self.query_one("#chat-targets", TargetPicker)

    def show_targets(self, targets: list[Target], picked: list[str]) -> None:
        """List ``targets`` with ``picked`` ticked (names not in ``targets`` are dropped)."""
        names = [target.name for target in targets]
        self.target_list.show(targets, [name for name in picked if name in names][:MAX_LANES])
        self._show_mode()

    def picked_targets(self) -> list[str]:
        return self.target_list.selected

    def _show_mode(self) -> None:
        count = len(self.target_list.selected)
        race = count > 1
        self.set_class(race, "-race")
        line = f"RACE · {count} targets · ctrl+t ends" if race else CHAT_MODE_LINE
        self.query_one("#chat-mode", Label).update(line)

    def lock_targets(self, reason: str | None) -> None:
        """While answers stream the lanes cannot change; ``reason`` is told to a user who tries."""
        self._locked_reason = reason

    def pick(self, names: list[str]) -> None:
        """Tick exactly ``names`` (the race key uses it) and tell the screen."""
        listing = self.target_list
        for name in listing.selected:
            if name not in names:
                listing.deselect(name)
        for name in names[:MAX_LANES]:
            listing.select(name)
        self._show_mode()
        self.post_message(self.TargetsPicked(self.picked_targets()))

    @property
    def locked_reason(self) -> str | None:
        return self._locked_reason

    @on(TargetPicker.Toggled)
    def _toggled(self, event: TargetPicker.Toggled) -> None:
        event.stop()
        listing = self.target_list
        value = event.name
        if self._locked_reason is not None:
            self._revert(listing, value)
            self.notify(self._locked_reason, severity="warning")
            return
        if len(listing.selected) > MAX_LANES:
            listing.deselect(value)
            self.notify(f"race mode takes at most {MAX_LANES} targets; untick one first", severity="warning")
            return
        self._show_mode()
        self.post_message(self.TargetsPicked(self.picked_targets()))

    @staticmethod
    def _revert(listing: TargetPicker, value: str) -> None:
        if value in listing.selected:
            listing.deselect(value)
        else:
            listing.select(value)

    def read_params(self) -> ChatParams:
        """The parameters as typed; raises ``ChatParamsError`` naming the field to fix."""
        return ChatParams.from_form(
            system_prompt=self.query_one("#chat-system", Input).value,
            temperature=self.query_one("#chat-temperature", Input).value,
            max_tokens=self.query_one("#chat-max-tokens", Input).value,
            extra_body=self.query_one("#chat-extra", Input).value,
        )

    def show_params(self, params: ChatParams) -> None:
        self.query_one("#chat-system", Input).value = params.system_prompt
        self.query_one("#chat-temperature", Input).value = f"{params.temperature:g}"
        self.query_one("#chat-max-tokens", Input).value = str(params.max_tokens)
        extra = json.dumps(params.extra_body) if params.extra_body else ""
        self.query_one("#chat-extra", Input).value = extra
