"""App-wide messages.

``TargetsChanged`` is delivered by ``ServeDeckApp`` to every screen of every mode whenever the set of
targets or their state changes (the local engine became ready, a twin started, a manual URL was added).
Screens that list targets handle it and re-read ``self.app.ctx``; the message carries a snapshot too.
"""

from __future__ import annotations

from textual.message import Message

from backends.target_types import Target


class TargetsChanged(Message):
    """The targets in ``app.ctx`` changed; ``targets`` are those usable now, ``selected`` the active one."""

    def __init__(self, targets: list[Target], selected: str | None) -> None:
        super().__init__()
        self.targets = targets
        self.selected = selected

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TargetsChanged)


class RegistryChanged(Message):
    """Posted (from any thread) by the target registry's callback; the app coalesces and re-broadcasts."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RegistryChanged)
