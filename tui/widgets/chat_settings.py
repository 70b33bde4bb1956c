"""The Chat view's settings: which targets answer (one = chat, two or three = race) and the parameters."""

from __future__ import annotations

import json

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Label, SelectionList
from textual.widgets.selection_list import Selection

from backends.bench.models import Target
from backends.chat import ChatParams

MAX_LANES = 3


class ChatSettings(Vertical):
    DEFAULT_CSS = """
    ChatSettings { height: auto; border: round $panel; padding: 0 1; }
    ChatSettings > Label { margin-top: 1; color: $text-muted; }
    ChatSettings > SelectionList { height: auto; max-height: 6; border: none; padding: 0; }
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
        yield SelectionList[str](id="chat-targets")
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
    def target_list(self) -> SelectionList[str]:
        return self.query_one("#chat-targets", SelectionList)

    def show_targets(self, targets: list[Target], picked: list[str]) -> None:
        """List ``targets`` with ``picked`` ticked (names not in ``targets`` are dropped)."""
        names = [target.name for target in targets]
        ticked = [name for name in picked if name in names][:MAX_LANES]
        listing = self.target_list
        listing.clear_options()
        listing.add_options(
            [Selection(f"{t.name} · {t.model}", t.name, t.name in ticked, id=t.name) for t in targets]
        )

    def picked_targets(self) -> list[str]:
        listing = self.target_list
        chosen = set(listing.selected)
        return [
            option.value
            for option in (listing.get_option_at_index(i) for i in range(listing.option_count))
            if option.value in chosen
        ]

    def lock_targets(self, reason: str | None) -> None:
        """While answers stream the lanes cannot change; ``reason`` is told to a user who tries."""
        self._locked_reason = reason

    @on(SelectionList.SelectionToggled)
    def _toggled(self, event: SelectionList.SelectionToggled[str]) -> None:
        event.stop()
        listing = self.target_list
        value = event.selection.value
        if self._locked_reason is not None:
            self._revert(listing, value)
            self.notify(self._locked_reason, severity="warning")
            return
        if len(listing.selected) > MAX_LANES:
            listing.deselect(value)
            self.notify(f"race mode takes at most {MAX_LANES} targets; untick one first", severity="warning")
            return
        self.post_message(self.TargetsPicked(self.picked_targets()))

    @staticmethod
    def _revert(listing: SelectionList[str], value: str) -> None:
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
