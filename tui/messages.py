"""App-wide messages.

``TargetsChanged`` is delivered by ``ServeDeckApp`` to every screen of every mode whenever the set of
targets or their state changes (the local engine became ready, a twin started, a manual URL was added).
Screens that list targets handle it and re-read ``self.app.ctx``; the message carries a snapshot too.
``SweepHostEvent`` carries one typed event of the sweep host to the Bench view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

from backends.target_types import Target

if TYPE_CHECKING:  # the app starts without the sweep code; only the Bench view posts these
    from tui.services.sweep_host import HostEvent


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


class SweepHostEvent(Message):
    """One event of the sweep host (``tui.services.sweep_host``), posted as it came over the pipe.

    There is one message for every kind of host event: a consumer handles ``SweepHostEvent`` once and
    dispatches on the typed ``event`` with ``match``.
    """

    def __init__(self, event: HostEvent) -> None:
        super().__init__()
        self.event = event
