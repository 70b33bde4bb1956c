"""The built-in local engine (llama.cpp's llama-server with Gemma 3 270M) as one row of the registry.

The engine module is imported where it is used: the app's first frame does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backends.errors import EngineError, ServeDeckError
from backends.target_registry.core import RegistryCore
from backends.target_registry.rows import DeploymentRow, TargetSource, TargetStatus
from backends.target_types import Target

if TYPE_CHECKING:
    from backends.engines.local import LocalEngine, LocalEngineConfig

LOCAL_KEY = "local"
LOCAL_TARGET_NAME = "local"
LOCAL_START_DEADLINE_S = 180.0


class LocalSlot:
    """The local engine's config, and the engine once started."""

    def __init__(self, config: LocalEngineConfig | None) -> None:
        self.config = config
        self.engine: LocalEngine | None = None
        self.status = TargetStatus.STOPPED
        self.detail = "press t to start it"


class LocalEngineTarget(RegistryCore):
    """The local engine of ``TargetRegistry``."""

    _local: LocalSlot

    def _local_row(self) -> DeploymentRow:
        slot = self._local
        engine = slot.engine
        ready = slot.status is TargetStatus.READY and engine is not None
        return DeploymentRow(
            key=LOCAL_KEY,
            name=LOCAL_TARGET_NAME,
            source=TargetSource.LOCAL,
            engine="llama.cpp",
            model="gemma-3-270m",
            accelerator="CPU",
            replicas="1/1" if ready else "0/1",
            status=slot.status,
            endpoint=engine.openai_base_url if ready and engine is not None else None,
            detail=slot.detail,
            target=engine.target(LOCAL_TARGET_NAME) if ready and engine is not None else None,
        )

    @property
    def local_engine(self) -> LocalEngine | None:
        return self._local.engine

    def start_local_engine(self, deadline_s: float = LOCAL_START_DEADLINE_S) -> Target:
        """Start llama-server (blocking: call from a worker thread) and return its target."""
        with self._lock:
            slot = self._local
            if self._closing:
                raise EngineError("ServeDeck is closing; the local engine was not started")
            if slot.status is TargetStatus.READY and slot.engine is not None:
                return slot.engine.target(LOCAL_TARGET_NAME)
            if slot.status is TargetStatus.STARTING:
                raise EngineError("the local engine is already starting; wait for it to become ready")
            from backends.engines.local import LocalEngine

            engine = LocalEngine(slot.config)
            slot.engine = engine
            slot.status = TargetStatus.STARTING
            slot.detail = "starting llama-server with Gemma 3 270M"
        self._changed()
        try:
            engine.start(deadline_s=deadline_s)
        except ServeDeckError as err:
            self._start_failed(slot, err)
            raise
        with self._lock:
            if self._closing:
                engine.stop()
                raise EngineError("ServeDeck is closing; the local engine was stopped")
            slot.status = TargetStatus.READY
            slot.detail = f"pid {engine.pid}, log {engine.log_path}"
        self._changed()
        return engine.target(LOCAL_TARGET_NAME)

    def stop_local_engine(self) -> None:
        """Stop llama-server (blocking up to ~10 s). Safe when it is not running."""
        with self._lock:
            engine = self._local.engine
        if engine is not None:
            engine.stop()
        with self._lock:
            if self._local.engine is engine:
                self._local.status = TargetStatus.STOPPED
                self._local.detail = "stopped; press t to start it again"
        self._changed()

    def _check_local_alive(self) -> bool:
        """Mark the local engine failed when llama-server died under us; True when that changed it."""
        with self._lock:
            slot = self._local
            if slot.status is not TargetStatus.READY or slot.engine is None or slot.engine.running:
                return False
            slot.status = TargetStatus.FAILED
            slot.detail = str(slot.engine.unexpected_exit_error()).splitlines()[0]
        return True
