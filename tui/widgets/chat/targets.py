"""The Chat view's target list: ``[x]``/``[ ]`` marks, ticked rows highlighted, a cursor that stays put.

Textual's SelectionList drew ticked and unticked rows nearly alike and lost its cursor whenever the
list was refilled (every registry refresh). This list repaints rows in place when the targets are the
same ones, and otherwise puts the cursor back on the target it was on.
"""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.content import Content
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from backends.target_types import Target


def target_row(target: Target, ticked: bool) -> Content:
    label = f"{target.name} · {target.model}"
    if ticked:
        return Content.assemble(("[x] ", "bold $success"), (label, "bold $text-success"))
    return Content.assemble(("[ ] ", "$text-muted"), (label, ""))


class TargetPicker(OptionList):
    """Space or enter ticks or unticks the highlighted target; ``selected`` keeps the list's order."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "tick", "tick/untick", id="chat.targets.toggle"),
    ]

    class Toggled(Message):
        def __init__(self, picker: TargetPicker, name: str) -> None:
            super().__init__()
            self.picker = picker
            self.name = name

        @property
        def control(self) -> TargetPicker:
            return self.picker

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._targets: list[Target] = []
        self._ticked: set[str] = set()

    @property
    def names(self) -> list[str]:
        return [target.name for target in self._targets]

    @property
    def selected(self) -> list[str]:
        return [name for name in self.names if name in self._ticked]

    @property
    def highlighted_name(self) -> str | None:
        index = self.highlighted
        if index is None or not 0 <= index < len(self._targets):
            return None
        return self._targets[index].name

    def show(self, targets: list[Target], ticked: list[str]) -> None:
        """List ``targets`` with ``ticked`` marked; the cursor stays on the target it was on."""
        keep = self.highlighted_name
        same = [target.name for target in targets] == self.names
        self._targets = list(targets)
        self._ticked = {name for name in ticked if name in self.names}
        if same:
            self._repaint()
            return
        self.set_options([Option(target_row(t, t.name in self._ticked), id=t.name) for t in targets])
        if keep in self.names:
            self.highlighted = self.names.index(keep)
        elif targets:
            self.highlighted = 0

    def _repaint(self) -> None:
        for index, target in enumerate(self._targets):
            self.replace_option_prompt_at_index(index, target_row(target, target.name in self._ticked))

    def select(self, name: str) -> None:
        if name in self.names:
            self._ticked.add(name)
            self._repaint()

    def deselect(self, name: str) -> None:
        self._ticked.discard(name)
        self._repaint()

    def action_tick(self) -> None:
        name = self.highlighted_name
        if name is None:
            return
        if name in self._ticked:
            self.deselect(name)
        else:
            self.select(name)
        self.post_message(self.Toggled(self, name))

    def action_select(self) -> None:
        self.action_tick()
