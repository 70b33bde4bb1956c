"""A Bench sweep's GPU telemetry when the form leaves it automatic (blank GPU metrics).

A twin is read at its own /dcgm by the sweep itself. A Kubernetes deployment target (a port-forwarded
row of the registry) gets the dcgm-exporters on its pods' nodes, found and port-forwarded by the
registry and held for the sweep, reading only its pods' GPUs (the CLI's ``--gpu-deployment``).
Blocking: called from the sweep's worker thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from backends.target_registry import TargetRegistry, TargetSource
from backends.telemetry.scrape import app_hint
from tui.services.bench_config import PlannedRun


@contextlib.contextmanager
def automatic_gpu_telemetry(
    registry: TargetRegistry | None, planned: list[PlannedRun]
) -> Iterator[tuple[list[PlannedRun], list[str]]]:
    """The runs with a deployment's exporter filled in where it was found, and one note per target
    whose exporter was not; the exporters stay forwarded inside the block."""
    if registry is None:
        yield planned, []
        return
    deployments = {
        row.target.base_url: row.key
        for row in registry.rows()
        if row.source is TargetSource.KUBERNETES and row.key.startswith("kube:") and row.target is not None
    }
    notes: list[str] = []
    runs: list[PlannedRun] = []
    with contextlib.ExitStack() as stack:
        for run in planned:
            config = run.config
            key = deployments.get(config.target.base_url)
            if config.gpu_metrics_url or key is None:
                runs.append(run)
                continue
            found = stack.enter_context(registry.pinned_gpu_exporter(key))
            if found.message:
                notes.append(f"{config.target.name}: {app_hint(found.message)}")
            if found.url is None:
                runs.append(run)
                continue
            update = {"gpu_metrics_url": found.url, "gpu_metrics_pods": found.pods}
            runs.append(PlannedRun(config=config.model_copy(update=update)))
        yield runs, notes
