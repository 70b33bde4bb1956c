"""The new-deployment form's live panel: fit, KV capacity and cost of a spec, and its YAML.

``plan_deployment`` is pure and fast (about a millisecond for fit and cost), so the form recomputes it on
every change; the YAML (tens of milliseconds to render and highlight) is produced only when asked for.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from manifests.cost import CostBreakdown, cost_for_spec
from manifests.errors import ManifestError
from manifests.fit import FitResult, fit_spec
from manifests.gpus import GIB
from manifests.render import render_yaml
from manifests.spec import DeploymentSpec

CONTEXTS_SHOWN = (2048, 8192, 32768)


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything the panel shows for one state of the form. ``error`` is set when there is no spec."""

    spec: DeploymentSpec | None = None
    fit: FitResult | None = None
    cost: CostBreakdown | None = None
    error: str | None = None

    @property
    def deployable(self) -> bool:
        return self.spec is not None and self.fit is not None and self.fit.fits and self.error is None

    @functools.cached_property
    def yaml_text(self) -> str:
        """The manifests as YAML ("" when the spec cannot be deployed); rendered on first use."""
        if not self.deployable or self.spec is None:
            return ""
        return render_yaml(self.spec)


def plan_deployment(spec: DeploymentSpec) -> DeploymentPlan:
    try:
        fit = fit_spec(spec)
    except ManifestError as err:
        return DeploymentPlan(spec=spec, error=str(err))
    try:
        # The breakdown of the same $/h the Deployments table shows (manifests.cost.deployment_usd_per_hour).
        cost: CostBreakdown | None = cost_for_spec(spec)
    except ManifestError:
        cost = None
    return DeploymentPlan(spec=spec, fit=fit, cost=cost)


def _gib(value: float) -> str:
    return f"{value / GIB:,.1f} GiB"


def plan_renderable(plan: DeploymentPlan) -> RenderableType:
    if plan.fit is None:
        return Text(plan.error or "fill in the form", style="bold red")
    fit = plan.fit
    verdict = Text("✔ fits  ", style="bold green") if fit.fits else Text("✘ does not fit  ", style="bold red")
    verdict.append(fit.message, style="" if fit.fits else "red")
    parts: list[RenderableType] = [verdict]
    if plan.error:
        parts.append(Text(plan.error, style="bold red"))

    numbers = Table(show_header=False, box=None, padding=(0, 1, 0, 0), expand=False)
    numbers.add_column(style="bold", min_width=12, no_wrap=True)
    numbers.add_column()
    memory = fit.memory
    cpu = plan.spec is not None and plan.spec.is_cpu
    # One KV figure: what vLLM allocates (on a CPU node VLLM_CPU_KVCACHE_SPACE per TP rank), not the
    # memory left over.
    kv_text = _gib(memory.kv_bytes)
    if cpu and plan.spec is not None and fit.tensor_parallel_size > 1:
        kv_text += f" ({fit.tensor_parallel_size} ranks x {plan.spec.cpu_kv_cache_gib} GiB)"
    numbers.add_row(
        "memory/node" if cpu else "memory/GPU",
        f"weights {_gib(memory.weights_bytes)} · KV cache {kv_text} · activations "
        f"{_gib(memory.activation_bytes + memory.sampler_bytes)} · runtime {_gib(memory.runtime_bytes)} "
        f"of {_gib(memory.budget_bytes)}" + (" host RAM" if cpu else ""),
    )
    kv = fit.kv
    if kv is not None and fit.fits:
        numbers.add_row(
            "KV cache",
            f"{kv.tokens:,} tokens ({fit.allocator.value} allocator) · max-model-len {fit.max_model_len:,} · "
            f"max-num-seqs {fit.max_num_seqs}",
        )
        shown = [ctx for ctx in CONTEXTS_SHOWN if ctx <= fit.max_model_len] or [fit.max_model_len]
        layout = (
            f"{fit.tensor_parallel_size} TP rank{'s' if fit.tensor_parallel_size > 1 else ''} on one node"
            if cpu
            else f"TP {fit.tensor_parallel_size}, PP {fit.pipeline_parallel_size}"
        )
        numbers.add_row(
            "concurrency",
            " · ".join(f"{kv.max_concurrency(ctx):,.1f}x at {ctx:,} tokens" for ctx in shown)
            + f"  ({layout})",
        )
    cost = plan.cost
    if cost is not None:
        numbers.add_row(
            "cost",
            f"${cost.total_usd_per_hour:,.2f}/h · ${cost.total_usd_per_month:,.0f}/month · "
            + ("estimated price" if cost.estimate else "list price"),
        )
        numbers.add_row(
            "",
            f"{cost.nodes}x {cost.machine}{' spot' if cost.spot else ''} ${cost.nodes_usd_per_hour:,.2f}/h"
            f" + cluster fee ${cost.cluster_fee_usd_per_hour:,.2f}/h"
            f" + storage ${cost.storage_usd_per_hour:,.2f}/h",
        )
    parts.append(numbers)
    return Group(*parts)
