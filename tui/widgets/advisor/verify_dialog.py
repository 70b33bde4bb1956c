"""The Advisor's "verify on a target" dialog: which ready target, how many prompts and levels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from backends.target_types import Target

DEFAULT_PROMPTS = 100
DEFAULT_LEVELS = 6


@dataclass(frozen=True)
class VerifyChoice:
    target: Target
    prompts: int
    max_levels: int


class VerifyScreen(ModalScreen[VerifyChoice | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, targets: list[Target], shape: str, slo: str) -> None:
        super().__init__()
        self._targets = {target.name: target for target in targets}
        self._shape = shape
        self._slo = slo

    def compose(self) -> ComposeResult:
        with Vertical(id="verify-box", classes="dialog") as box:
            box.border_title = "Verify on a target"
            yield Static(
                f"SLO search (bench --find-max request-rate) within {self._slo}, starting from the "
                f"advisor's prediction for {self._shape}; saved to History."
            )
            yield Label("Target (ready ones)")
            names = list(self._targets)
            yield Select(
                [(name, name) for name in names], value=names[0], allow_blank=False, id="verify-target"
            )
            yield Label("Prompts per level")
            yield Input(str(DEFAULT_PROMPTS), type="integer", id="verify-prompts")
            yield Label("Levels at most")
            yield Input(str(DEFAULT_LEVELS), type="integer", id="verify-levels")
            yield Static("", id="verify-message", classes="error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Verify", variant="warning", id="verify-start")
                yield Button("Cancel", id="verify-cancel")

    def _whole(self, widget_id: str, what: str, low: int) -> int | None:
        text = self.query_one(f"#{widget_id}", Input).value.strip()
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            self.query_one("#verify-message", Static).update(
                f"{what} must be a whole number >= {low}, got {text!r}"
            )
            return None
        return value

    @on(Button.Pressed, "#verify-start")
    @on(Input.Submitted)
    def _start(self) -> None:
        prompts = self._whole("verify-prompts", "prompts per level", 1)
        levels = self._whole("verify-levels", "levels", 2)
        if prompts is None or levels is None:
            return
        target = self._targets[str(self.query_one("#verify-target", Select).value)]
        self.dismiss(VerifyChoice(target=target, prompts=prompts, max_levels=levels))

    @on(Button.Pressed, "#verify-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
