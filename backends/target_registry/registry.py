"""``TargetRegistry``: every target ServeDeck can talk to, as rows of one table.

The registry is headless and thread-safe: the TUI calls its blocking methods from worker threads and
reads ``rows()`` / ``ready_targets()`` from the UI thread. Every state change calls the ``on_change``
callback (from whatever thread made it), which the app turns into one message. Each kind of target has
its own module (cluster, local, twins, manual_urls); this one joins them and holds what spans them all.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from backends.errors import ConfigError, EngineError, TargetError
from backends.target_registry.cluster import ClusterConnection, ClusterTargets
from backends.target_registry.health import PROBE_TIMEOUT_S, probe_endpoint
from backends.target_registry.local import LOCAL_KEY, LocalEngineTarget, LocalSlot
from backends.target_registry.logs import follow_log_file
from backends.target_registry.manual_urls import ManualTargets, ManualTargetStore
from backends.target_registry.rows import DeploymentRow, TargetSource, endpoint_row
from backends.target_registry.twins import (
    TWIN_STOP_TIMEOUT_S,
    TwinSlot,
    TwinTargets,
    default_twin_specs,
    twin_key,
)
from backends.target_types import Target
from manifests.spec import DeploymentSpec

if TYPE_CHECKING:
    from backends.engines.local import LocalEngineConfig


class TargetRegistry(ClusterTargets, LocalEngineTarget, TwinTargets, ManualTargets):
    """Rows for the Deployments table and the targets the other views may use; see the module docstring."""

    def __init__(
        self,
        *,
        manual_store: ManualTargetStore,
        given: Sequence[Target] = (),
        local_config: LocalEngineConfig | None = None,
        twin_specs: Sequence[DeploymentSpec] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._manual_store = manual_store
        self._manual = []
        self._manual_health = {}
        self._given = list(given)
        self._given_health: dict[str, str | None] = {}
        self._local = LocalSlot(local_config)
        specs = default_twin_specs() if twin_specs is None else list(twin_specs)
        self._twins = {twin_key(spec): TwinSlot(spec, builtin=True) for spec in specs}
        self._on_change = on_change
        self._cluster = ClusterConnection()
        self._closing = False
        self.load_error = None

    # -- reading ---------------------------------------------------------------------------------------

    def rows(self) -> list[DeploymentRow]:
        with self._lock:
            rows = self._cluster_rows()
            rows.append(self._local_row())
            rows.extend(self._twin_row(key, slot) for key, slot in self._twins.items())
            rows.extend(self._manual_row(entry) for entry in self._manual)
            rows.extend(self._given_row(target) for target in self._given)
        return rows

    def row(self, key: str) -> DeploymentRow | None:
        return next((row for row in self.rows() if row.key == key), None)

    def ready_targets(self) -> list[Target]:
        return [row.target for row in self.rows() if row.target is not None and row.usable]

    def known_targets(self) -> list[Target]:
        """Targets with an endpoint, reachable or not (screens may still try them and say why they fail)."""
        return [row.target for row in self.rows() if row.target is not None]

    # -- every kind of row ---------------------------------------------------------------------------

    def delete(self, key: str) -> str:
        """Remove the row ``key``: delete a cluster deployment, stop an engine or twin, forget a URL."""
        if key.startswith("kube:"):
            return self._delete_cluster_deployment(key)
        if key == LOCAL_KEY:
            self.stop_local_engine()
            return "stopped the local engine"
        if key.startswith("twin:"):
            self.stop_twin(key)
            return f"stopped {key.removeprefix('twin:')}"
        if key.startswith("manual:"):
            name = key.removeprefix("manual:")
            self.remove_manual(name)
            return f"removed {name} from the list"
        raise ConfigError(f"{key} cannot be deleted from ServeDeck")

    # -- targets given by the caller -------------------------------------------------------------------

    def _given_row(self, target: Target) -> DeploymentRow:
        health = self._given_health.get(target.name, "")
        return endpoint_row(f"given:{target.name}", TargetSource.GIVEN, target, health)

    # -- health of endpoints we do not run -------------------------------------------------------------

    async def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        """Check every manual and given endpoint at once and note whether it answers."""
        with self._lock:
            manual = list(self._manual)
            given = list(self._given)
        changed = self._check_local_alive() | self._check_twins_alive()
        targets = [entry.as_target() for entry in manual] + given
        results = await asyncio.gather(*(probe_endpoint(target, timeout_s) for target in targets))
        with self._lock:
            for entry, result in zip(manual, results[: len(manual)], strict=True):
                self._manual_health[entry.name] = result
            for target, result in zip(given, results[len(manual) :], strict=True):
                self._given_health[target.name] = result
        if changed or targets:
            self._changed()

    # -- logs --------------------------------------------------------------------------------------

    def follow_logs(self, key: str, cancelled: Callable[[], bool]) -> Iterator[list[str]]:
        """Batches of log lines of the row ``key`` (blocking; run it in a worker thread)."""
        if key.startswith("kube:"):
            return self._follow_cluster_logs(key, cancelled)
        if key == LOCAL_KEY:
            engine = self._local.engine
            if engine is None:
                raise EngineError("the local engine has not been started; press t to start it")
            return follow_log_file(engine.log_path, cancelled)
        with self._lock:
            twin = self._twins.get(key)
            twin_log = twin.log_path if twin is not None else None
        if twin is not None:
            if twin_log is None:
                raise EngineError(f"{twin.name} has not been started; press t to start it")
            return follow_log_file(twin_log, cancelled)
        row = self.row(key)
        what = row.name if row is not None else key
        raise TargetError(
            f"ServeDeck has no logs for {what}: it does not run that server; read its logs where it runs"
        )

    # -- shutting down ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything ServeDeck started (blocking). Later starts are refused."""
        with self._lock:
            self._closing = True
            engine = self._local.engine
            children = [slot.child for slot in self._twins.values() if slot.child is not None]
            forwards = list(self._cluster.forwards)
        for key in forwards:
            self._stop_forward(key)
        self.stop_gpu_exporters()
        for child in children:
            child.terminate(TWIN_STOP_TIMEOUT_S)
        if engine is not None:
            engine.stop()
