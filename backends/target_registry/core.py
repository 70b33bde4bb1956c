"""What every part of the registry shares: one lock, the closing flag and the change callback."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from typing import Protocol

from backends.errors import ServeDeckError
from backends.target_registry.rows import DeploymentRow, TargetStatus


class SlotState(Protocol):
    """A target ServeDeck starts itself (the local engine, a twin): its status and one line of detail."""

    status: TargetStatus
    detail: str


class RegistryCore(abc.ABC):
    """The base of ``TargetRegistry`` and of the classes that give it one kind of target each."""

    _lock: threading.RLock
    _closing: bool
    _on_change: Callable[[], None] | None

    @abc.abstractmethod
    def rows(self) -> list[DeploymentRow]: ...

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _start_failed(self, slot: SlotState, err: ServeDeckError) -> None:
        with self._lock:
            slot.status = TargetStatus.FAILED
            slot.detail = str(err).splitlines()[0]
        self._changed()
