"""What every screen of the app shares, reached as ``self.app.ctx`` (see ``tui.app.ServeDeckApp``).

Screens read targets and open the sessions store through this object; they never build their own
paths or global state. Tests construct an ``AppContext`` with fixed data so snapshots are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backends.target_types import Target

if TYPE_CHECKING:
    from sessions.store import SessionStore


@dataclass
class AppContext:
    data_dir: Path | None = None
    targets: list[Target] = field(default_factory=list)
    selected_target: str | None = None
    kube_context: str | None = None

    def open_store(self) -> SessionStore:
        """A new connection to the sessions store; callers close it (workers open their own)."""
        from sessions.store import SessionStore  # numpy and sqlite stay off the first frame's path

        return SessionStore.open(self.data_dir)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    @property
    def context_label(self) -> str:
        return self.kube_context or "local"
