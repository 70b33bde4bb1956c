"""What a deployment costs: node $/h + cluster fee + storage -> $/s -> $ per 1M tokens at a throughput.

The article's worked example (4xL4 on g2-standard-48, us-central1, 730-hour month): cluster fee $73.00,
100 GB Hyperdisk ML at 2 GB/s $82.40, nodes $2,921.21 -> $0.001171/s; at 411.81 tok/s that is $2.84 per
1M tokens. ``ARTICLE_EXAMPLES`` keeps its published figures so they can be shown beside ours.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from manifests.catalog import Catalog, MachineType, default_catalog
from manifests.errors import CatalogError
from manifests.gpus import ACCELERATORS, GpuType
from manifests.spec import DeploymentSpec

SECONDS_PER_HOUR = 3600.0
TOKENS_PER_MILLION = 1_000_000


class CostBreakdown(BaseModel):
    """Hourly and monthly cost of one deployment; ``usd_per_second`` is what per-token cost divides."""

    model_config = ConfigDict(frozen=True)

    machine: str
    nodes: int = Field(description="nodes of ``machine`` (replicas x nodes per replica)")
    spot: bool
    node_usd_per_hour: float = Field(description="one node")
    cluster_fee_usd_per_hour: float
    storage_usd_per_month: float
    hours_per_month: float
    price_sources: tuple[str, ...]
    estimate: bool = Field(description="some price is not checked against a list price")

    @property
    def nodes_usd_per_hour(self) -> float:
        return self.node_usd_per_hour * self.nodes

    @property
    def nodes_usd_per_month(self) -> float:
        return self.nodes_usd_per_hour * self.hours_per_month

    @property
    def cluster_fee_usd_per_month(self) -> float:
        return self.cluster_fee_usd_per_hour * self.hours_per_month

    @property
    def storage_usd_per_hour(self) -> float:
        return self.storage_usd_per_month / self.hours_per_month

    @property
    def total_usd_per_month(self) -> float:
        return self.nodes_usd_per_month + self.cluster_fee_usd_per_month + self.storage_usd_per_month

    @property
    def total_usd_per_hour(self) -> float:
        return self.total_usd_per_month / self.hours_per_month

    @property
    def usd_per_second(self) -> float:
        return self.total_usd_per_hour / SECONDS_PER_HOUR

    def usd_per_million_tokens(self, tokens_per_s: float) -> float:
        if tokens_per_s <= 0:
            raise ValueError("tokens per second must be > 0")
        return self.usd_per_second / tokens_per_s * TOKENS_PER_MILLION


def usd_per_million_tokens(usd_per_hour: float | None, tokens_per_s: float) -> float | None:
    """``$/h / 3600 / (tokens/s) * 1e6``; None without a price or without throughput."""
    if (
        usd_per_hour is None
        or not usd_per_hour > 0
        or not tokens_per_s > 0
        or not math.isfinite(tokens_per_s)
    ):
        return None
    return usd_per_hour / SECONDS_PER_HOUR / tokens_per_s * TOKENS_PER_MILLION


def estimate_cost(
    catalog: Catalog,
    gpu: GpuType,
    gpu_count: int,
    *,
    replicas: int = 1,
    machine_type: str | None = None,
    spot: bool = False,
    storage_gib: float = 100,
    storage_throughput_mib_s: float = 2000,
    storage_volumes: int = 1,
    include_cluster_fee: bool = True,
) -> CostBreakdown:
    """Cost of ``replicas`` x ``gpu_count`` x ``gpu`` (multi-node when more GPUs than one machine carries)."""
    per_node_counts = catalog.node_gpu_counts(gpu)
    if not per_node_counts:
        raise CatalogError(f"the catalog has no machine type for {ACCELERATORS[gpu].display_name}")
    largest = per_node_counts[-1]
    is_cpu = ACCELERATORS[gpu].is_cpu
    gpus_per_node = gpu_count if is_cpu or gpu_count <= largest else largest
    if not is_cpu and gpu_count % gpus_per_node:
        raise CatalogError(f"{gpu_count} GPUs is not a whole number of {largest}-GPU nodes")
    nodes_per_replica = 1 if is_cpu else gpu_count // gpus_per_node
    machine: MachineType = (
        catalog.machine(machine_type) if machine_type else catalog.default_machine(gpu, gpus_per_node)
    )
    if machine.gpu != gpu or (not is_cpu and machine.gpu_count != gpus_per_node):
        raise CatalogError(
            f"machine type {machine.name} carries {machine.gpu_count}x{machine.gpu.value}, "
            f"not {gpus_per_node}x{gpu.value}"
        )
    storage = catalog.storage.usd_per_month(storage_gib, storage_throughput_mib_s) * storage_volumes
    sources = [f"{machine.name}: {machine.price_source} ({machine.region}, {machine.price_date})"]
    if include_cluster_fee:
        sources.append(f"cluster fee: {catalog.cluster_fee_source}")
    if storage_volumes:
        sources.append(f"storage: {catalog.storage.source}")
    return CostBreakdown(
        machine=machine.name,
        nodes=replicas * nodes_per_replica,
        spot=spot,
        node_usd_per_hour=machine.usd_per_hour(spot=spot),
        cluster_fee_usd_per_hour=catalog.cluster_fee_usd_per_hour if include_cluster_fee else 0.0,
        storage_usd_per_month=storage,
        hours_per_month=catalog.hours_per_month,
        price_sources=tuple(sources),
        estimate=machine.estimate,
    )


def storage_volumes_for(spec: DeploymentSpec) -> int:
    """One shared HF-cache PVC for a single-pod deployment; otherwise one ephemeral volume per pod."""
    if spec.replicas <= 1 and not spec.multi_node:
        return 1
    return spec.replicas * spec.nodes_per_replica


def deployment_usd_per_hour(spec: DeploymentSpec, catalog: Catalog | None = None) -> float:
    """The one $/h of a deployment that every view shows (table, form, $ per 1M tokens): its nodes, the
    cluster fee and its storage, as ``cost_for_spec`` breaks it down."""
    return cost_for_spec(spec, catalog).total_usd_per_hour


def cost_for_spec(
    spec: DeploymentSpec, catalog: Catalog | None = None, *, include_cluster_fee: bool = True
) -> CostBreakdown:
    catalog = catalog or default_catalog()
    return estimate_cost(
        catalog,
        spec.gpu,
        spec.gpu_count,
        replicas=spec.replicas,
        machine_type=spec.machine_type,
        spot=spec.spot,
        storage_gib=spec.storage_gib,
        storage_throughput_mib_s=spec.storage_throughput_mib_s,
        storage_volumes=storage_volumes_for(spec),
        include_cluster_fee=include_cluster_fee,
    )


class ArticleExample(BaseModel):
    """A cost figure the article published, with the inputs we recompute it from."""

    model_config = ConfigDict(frozen=True)

    label: str
    gpu: GpuType
    gpu_count: int
    tokens_per_s: float
    article_usd_per_million: float


ARTICLE_EXAMPLES: tuple[ArticleExample, ...] = (
    ArticleExample(
        label="4xL4 (g2-standard-48) at rate 1",
        gpu=GpuType.L4,
        gpu_count=4,
        tokens_per_s=411.81,
        article_usd_per_million=2.84,
    ),
    ArticleExample(
        label="4xH100 (a3-highgpu-4g) at rate 500",
        gpu=GpuType.H100,
        gpu_count=4,
        tokens_per_s=22_000,
        article_usd_per_million=0.55,
    ),
)


class ArticleComparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    example: ArticleExample
    cost: CostBreakdown
    usd_per_million: float


def compare_with_article(catalog: Catalog | None = None) -> list[ArticleComparison]:
    catalog = catalog or default_catalog()
    rows = []
    for example in ARTICLE_EXAMPLES:
        cost = estimate_cost(catalog, example.gpu, example.gpu_count)
        rows.append(
            ArticleComparison(
                example=example, cost=cost, usd_per_million=cost.usd_per_million_tokens(example.tokens_per_s)
            )
        )
    return rows
