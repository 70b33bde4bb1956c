"""GCE machine types per accelerator and GPU count, their on-demand prices, and user price overrides.

Shapes: SkyPilot ``sky/catalog/gcp_catalog.py`` and the GCE machine-type tables (vllm_k8s_facts.md §5b).
Prices: USD per hour, on-demand, Linux; each machine names its source, date and region, and ``estimate``
marks figures we could not check against Google's list price. A user price file (YAML or JSON, path given
by the caller) overrides any of them; see ``load_catalog``.

Accelerator specs (memory, bandwidth, bf16 TFLOPs, interconnect) live in ``manifests.gpus``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from manifests.errors import CatalogError, PriceFileError
from manifests.gpus import ACCELERATORS, AcceleratorProfile, GpuType

HOURS_PER_MONTH = 730.0  # GCP's pricing calculator month, used by the article
MAX_NODES_PER_REPLICA = 8  # LeaderWorkerSet groups we are willing to render

# G2 prices are host + L4 GPU rows of SkyPilot's GCP catalog (v8 vms.csv, us-central1): the host costs the
# same per vCPU on every G2 shape (g2-standard-4 host 0.146792 = 4 x 0.036698) and each L4 $0.56004/h. The
# sums match Google's list price for g2-standard-4 ($0.706832) and the article's g2-standard-48 figure
# ($2,921.21 per 730-hour month = $4.001664/h).
_G2_HOST_PER_VCPU = 0.036698
_L4_PER_GPU = 0.56004
_G2_SOURCE = (
    "SkyPilot GCP catalog v8 (host + L4 rows, us-central1); g2-standard-4 = GCP list $0.706832/h, "
    "g2-standard-48 = article's $2,921.21/730 h"
)
# C4 (Intel Emerald Rapids) us-central1 list rates per vCPU-hour and GB-hour, as recalled from GCP's VM
# pricing page; cross-check: europe-west4's c4-standard-192 list is $7,272/month, ~5% above this.
_C4_PER_VCPU = 0.03465
_C4_PER_GB = 0.003938


class MachineType(BaseModel):
    """One GCE machine shape as a GKE node: what it carries and what an hour of it costs."""

    model_config = ConfigDict(frozen=True)

    name: str
    family: str
    gpu: GpuType
    gpu_count: int = Field(ge=0, description="accelerators attached; 0 for CPU nodes")
    vcpus: int
    memory_gib: float
    on_demand_usd_per_hour: float = Field(gt=0)
    spot_usd_per_hour: float | None = Field(default=None, gt=0)
    region: str = "us-central1"
    price_source: str
    price_date: str
    estimate: bool = False

    @property
    def accelerator(self) -> AcceleratorProfile:
        return ACCELERATORS[self.gpu]

    def usd_per_hour(self, *, spot: bool) -> float:
        if not spot:
            return self.on_demand_usd_per_hour
        if self.spot_usd_per_hour is None:
            raise CatalogError(
                f"no spot price for {self.name} in the catalog; add spot_usd_per_hour for it in a price file "
                "(--price-file) or drop --spot"
            )
        return self.spot_usd_per_hour


class StoragePrices(BaseModel):
    """Hyperdisk ML, the HF-cache volume of the article (provisioned capacity + throughput)."""

    model_config = ConfigDict(frozen=True)

    hyperdisk_ml_usd_per_gib_month: float = Field(ge=0)
    hyperdisk_ml_usd_per_mibps_month: float = Field(ge=0)
    source: str
    price_date: str

    def usd_per_month(self, size_gib: float, throughput_mib_s: float) -> float:
        return (
            size_gib * self.hyperdisk_ml_usd_per_gib_month
            + throughput_mib_s * self.hyperdisk_ml_usd_per_mibps_month
        )


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    machines: dict[str, MachineType]
    cluster_fee_usd_per_hour: float = Field(ge=0)
    cluster_fee_source: str
    storage: StoragePrices
    hours_per_month: float = HOURS_PER_MONTH
    price_file: str | None = None

    def machine(self, name: str) -> MachineType:
        try:
            return self.machines[name]
        except KeyError:
            known = ", ".join(sorted(self.machines))
            raise CatalogError(f"unknown machine type {name!r}; known: {known}") from None

    def machines_for(self, gpu: GpuType, gpus_per_node: int) -> list[MachineType]:
        """Machine types that carry exactly ``gpus_per_node`` of ``gpu`` (any count for CPU nodes)."""
        return [
            m
            for m in self.machines.values()
            if m.gpu == gpu and (m.gpu_count == gpus_per_node or ACCELERATORS[gpu].is_cpu)
        ]

    def node_gpu_counts(self, gpu: GpuType) -> tuple[int, ...]:
        """GPU counts one node of this accelerator can carry (TP ranks on a CPU node)."""
        if ACCELERATORS[gpu].is_cpu:
            return CPU_TP_RANKS
        return tuple(sorted({m.gpu_count for m in self.machines.values() if m.gpu == gpu}))

    def allowed_gpu_counts(self, gpu: GpuType) -> tuple[int, ...]:
        """Single-node counts, then multiples of the largest node for LeaderWorkerSet (multi-node) groups."""
        per_node = self.node_gpu_counts(gpu)
        if ACCELERATORS[gpu].is_cpu or not per_node:
            return per_node
        largest = per_node[-1]
        return per_node + tuple(largest * nodes for nodes in range(2, MAX_NODES_PER_REPLICA + 1))

    def default_machine(self, gpu: GpuType, gpus_per_node: int) -> MachineType:
        name = DEFAULT_MACHINES.get((gpu, gpus_per_node))
        if name is None or name not in self.machines:
            candidates = self.machines_for(gpu, gpus_per_node)
            if not candidates:
                counts = ", ".join(str(c) for c in self.node_gpu_counts(gpu))
                raise CatalogError(
                    f"no machine type carries {gpus_per_node}x{ACCELERATORS[gpu].display_name}; "
                    f"choose {counts} per node"
                )
            return min(candidates, key=lambda m: m.on_demand_usd_per_hour)
        return self.machines[name]


CPU_TP_RANKS = (1, 2)  # vLLM CPU: one TP rank per NUMA node; the c4/c4d shapes here have at most 2 sockets


def _g2(name: str, gpus: int, vcpus: int) -> MachineType:
    return MachineType(
        name=name,
        family="g2",
        gpu=GpuType.L4,
        gpu_count=gpus,
        vcpus=vcpus,
        memory_gib=vcpus * 4,
        on_demand_usd_per_hour=round(vcpus * _G2_HOST_PER_VCPU + gpus * _L4_PER_GPU, 6),
        price_source=_G2_SOURCE,
        price_date="2025-04",
    )


def _fixed(
    name: str,
    family: str,
    gpu: GpuType,
    gpus: int,
    vcpus: int,
    memory_gib: float,
    usd_per_hour: float,
    source: str,
    *,
    region: str = "us-central1",
    estimate: bool = False,
    date: str = "2025-04",
) -> MachineType:
    return MachineType(
        name=name,
        family=family,
        gpu=gpu,
        gpu_count=gpus,
        vcpus=vcpus,
        memory_gib=memory_gib,
        on_demand_usd_per_hour=usd_per_hour,
        region=region,
        price_source=source,
        price_date=date,
        estimate=estimate,
    )


def _c4(vcpus: int) -> MachineType:
    memory_gb = vcpus * 3.75
    return _fixed(
        f"c4-standard-{vcpus}",
        "c4",
        GpuType.CPU_EMERALD,
        0,
        vcpus,
        memory_gb,
        round(vcpus * _C4_PER_VCPU + memory_gb * _C4_PER_GB, 5),
        "GCP C4 list rates $0.03465/vCPU-h + $0.003938/GB-h (us-central1), not re-checked here",
        estimate=True,
    )


_A2_SOURCE = "SkyPilot GCP catalog v8 host + A100 rows (us-central1) = GCP list a2-highgpu-1g $3.673385/h"
_A2_ULTRA_SOURCE = (
    "GCP list price for a2-ultragpu-1g ($5.06879/h, us-central1) scaled by GPU count; SkyPilot's "
    "A100-80GB GPU row looked wrong (spot above on-demand), so not re-checked here"
)
_A3_SOURCE = (
    "SkyPilot GCP catalog v8: a3-highgpu host row + H100 GPU row at the us-east4 rate "
    "($9.79655/GPU-h; the us-central1 GPU row looked like a discounted SKU)"
)

_MACHINES: tuple[MachineType, ...] = (
    _g2("g2-standard-4", 1, 4),
    _g2("g2-standard-8", 1, 8),
    _g2("g2-standard-12", 1, 12),
    _g2("g2-standard-16", 1, 16),
    _g2("g2-standard-32", 1, 32),
    _g2("g2-standard-24", 2, 24),
    _g2("g2-standard-48", 4, 48),
    _g2("g2-standard-96", 8, 96),
    _fixed("a2-highgpu-1g", "a2-highgpu", GpuType.A100_40, 1, 12, 85, 3.673385, _A2_SOURCE),
    _fixed("a2-highgpu-2g", "a2-highgpu", GpuType.A100_40, 2, 24, 170, 7.34677, _A2_SOURCE),
    _fixed("a2-highgpu-4g", "a2-highgpu", GpuType.A100_40, 4, 48, 340, 14.69354, _A2_SOURCE),
    _fixed("a2-highgpu-8g", "a2-highgpu", GpuType.A100_40, 8, 96, 680, 29.38708, _A2_SOURCE),
    _fixed(
        "a2-megagpu-16g",
        "a2-megagpu",
        GpuType.A100_40,
        16,
        96,
        1360,
        55.739504,
        "GCP list price as recalled (us-central1); europe-west4 list is $41,396.86/month",
        estimate=True,
    ),
    _fixed(
        "a2-ultragpu-1g", "a2-ultragpu", GpuType.A100_80, 1, 12, 170, 5.06879, _A2_ULTRA_SOURCE, estimate=True
    ),
    _fixed(
        "a2-ultragpu-2g",
        "a2-ultragpu",
        GpuType.A100_80,
        2,
        24,
        340,
        10.13758,
        _A2_ULTRA_SOURCE,
        estimate=True,
    ),
    _fixed(
        "a2-ultragpu-4g",
        "a2-ultragpu",
        GpuType.A100_80,
        4,
        48,
        680,
        20.27516,
        _A2_ULTRA_SOURCE,
        estimate=True,
    ),
    _fixed(
        "a2-ultragpu-8g",
        "a2-ultragpu",
        GpuType.A100_80,
        8,
        96,
        1360,
        40.55032,
        _A2_ULTRA_SOURCE,
        estimate=True,
    ),
    _fixed("a3-highgpu-1g", "a3-highgpu", GpuType.H100, 1, 26, 234, 10.97906, _A3_SOURCE, region="us-east4"),
    _fixed("a3-highgpu-2g", "a3-highgpu", GpuType.H100, 2, 52, 468, 21.95812, _A3_SOURCE, region="us-east4"),
    _fixed("a3-highgpu-4g", "a3-highgpu", GpuType.H100, 4, 104, 936, 43.91624, _A3_SOURCE, region="us-east4"),
    _fixed(
        "a3-highgpu-8g", "a3-highgpu", GpuType.H100, 8, 208, 1872, 87.83247, _A3_SOURCE, region="us-east4"
    ),
    _fixed(
        "a3-megagpu-8g",
        "a3-megagpu",
        GpuType.H100_MEGA,
        8,
        208,
        1872,
        round(86312 / HOURS_PER_MONTH, 4),
        "europe-west4 $86,312/month (Cyclenerd gcp-compute list, 2024-08-17: not in the public price list)",
        region="europe-west4",
        estimate=True,
        date="2024-08",
    ),
    _c4(48),
    _c4(96),
    _c4(192),
    _c4(288),
    _fixed(
        "c4d-standard-192",
        "c4d",
        GpuType.CPU_TURIN,
        0,
        192,
        744,
        round(12527 / HOURS_PER_MONTH / 2, 4),
        "half of c4d-standard-384 (see there)",
        region="europe-west4",
        estimate=True,
        date="2024-08",
    ),
    _fixed(
        "c4d-standard-384",
        "c4d",
        GpuType.CPU_TURIN,
        0,
        384,
        1488,
        round(12527 / HOURS_PER_MONTH, 4),
        "C4D had no published price; like the article we use c3d-standard-360 "
        "(europe-west4 list $12,527/month)",
        region="europe-west4",
        estimate=True,
        date="2024-08",
    ),
)

# The shape a deployment gets unless the spec names one: the article's g2-standard-48 for 4xL4, the CPU
# nodes it benchmarked (c4-standard-192, c4d-standard-384), and a mid-size G2 host for one L4.
DEFAULT_MACHINES: dict[tuple[GpuType, int], str] = {
    (GpuType.L4, 1): "g2-standard-8",
    (GpuType.L4, 2): "g2-standard-24",
    (GpuType.L4, 4): "g2-standard-48",
    (GpuType.L4, 8): "g2-standard-96",
    (GpuType.A100_40, 1): "a2-highgpu-1g",
    (GpuType.A100_40, 2): "a2-highgpu-2g",
    (GpuType.A100_40, 4): "a2-highgpu-4g",
    (GpuType.A100_40, 8): "a2-highgpu-8g",
    (GpuType.A100_40, 16): "a2-megagpu-16g",
    (GpuType.A100_80, 1): "a2-ultragpu-1g",
    (GpuType.A100_80, 2): "a2-ultragpu-2g",
    (GpuType.A100_80, 4): "a2-ultragpu-4g",
    (GpuType.A100_80, 8): "a2-ultragpu-8g",
    (GpuType.H100, 1): "a3-highgpu-1g",
    (GpuType.H100, 2): "a3-highgpu-2g",
    (GpuType.H100, 4): "a3-highgpu-4g",
    (GpuType.H100, 8): "a3-highgpu-8g",
    (GpuType.H100_MEGA, 8): "a3-megagpu-8g",
    (GpuType.CPU_EMERALD, 1): "c4-standard-192",
    (GpuType.CPU_EMERALD, 2): "c4-standard-192",
    (GpuType.CPU_TURIN, 1): "c4d-standard-384",
    (GpuType.CPU_TURIN, 2): "c4d-standard-384",
}

_DEFAULT_STORAGE = StoragePrices(
    # The article's $82.40/month for 100 GB of Hyperdisk ML at 2 GB/s provisioned throughput. The split
    # between capacity and throughput is ours (capacity at $0.08/GiB-month); only the total is sourced.
    hyperdisk_ml_usd_per_gib_month=0.08,
    hyperdisk_ml_usd_per_mibps_month=0.0372,
    source="article: 100 GB Hyperdisk ML with 2 GB/s provisioned throughput = $82.40/month (split is ours)",
    price_date="2025-04",
)


def default_catalog() -> Catalog:
    return Catalog(
        machines={m.name: m for m in _MACHINES},
        cluster_fee_usd_per_hour=0.10,
        cluster_fee_source="GKE cluster management fee $0.10/h per cluster ($73.00 per 730-hour month)",
        storage=_DEFAULT_STORAGE,
    )


class _MachinePriceOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on_demand_usd_per_hour: float | None = Field(default=None, gt=0)
    spot_usd_per_hour: float | None = Field(default=None, gt=0)
    region: str | None = None


class _StorageOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperdisk_ml_usd_per_gib_month: float | None = Field(default=None, ge=0)
    hyperdisk_ml_usd_per_mibps_month: float | None = Field(default=None, ge=0)


class PriceFile(BaseModel):
    """What a user price file may say. Unknown keys are an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    date: str | None = None
    cluster_fee_usd_per_hour: float | None = Field(default=None, ge=0)
    storage: _StorageOverride | None = None
    machines: dict[str, _MachinePriceOverride] = Field(default_factory=dict)


def _parse_price_text(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise PriceFileError(
                f"price file {path} is not valid JSON: line {err.lineno} column {err.colno}: {err.msg}"
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise PriceFileError(f"price file {path} is not valid YAML: {where}{problem}") from None


def _validation_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "top level"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def read_price_file(path: Path) -> PriceFile:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PriceFileError(f"price file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PriceFileError(f"cannot read price file {path}: {err}") from None
    data = _parse_price_text(path, text)
    if data is None:
        raise PriceFileError(f"price file {path} is empty; see CAPACITY.md for its format")
    if not isinstance(data, dict):
        raise PriceFileError(
            f"price file {path} must be a mapping (machines:, cluster_fee_usd_per_hour:, ...)"
        )
    try:
        return PriceFile.model_validate(data)
    except ValidationError as err:
        raise PriceFileError(f"price file {path}: {_validation_line(err)}") from None


def apply_prices(catalog: Catalog, prices: PriceFile, *, origin: str) -> Catalog:
    machines = dict(catalog.machines)
    source = prices.source or f"user price file {origin}"
    date = prices.date or "user-supplied"
    for name, override in prices.machines.items():
        if name not in machines:
            known = ", ".join(sorted(machines))
            raise PriceFileError(f"price file {origin}: unknown machine type {name!r}; known: {known}")
        changes: dict[str, Any] = {"price_source": source, "price_date": date, "estimate": False}
        for field in ("on_demand_usd_per_hour", "spot_usd_per_hour", "region"):
            value = getattr(override, field)
            if value is not None:
                changes[field] = value
        machines[name] = machines[name].model_copy(update=changes)
    storage = catalog.storage
    if prices.storage is not None:
        storage_changes = {k: v for k, v in prices.storage.model_dump().items() if v is not None}
        storage = storage.model_copy(update={**storage_changes, "source": source, "price_date": date})
    return catalog.model_copy(
        update={
            "machines": machines,
            "storage": storage,
            "cluster_fee_usd_per_hour": (
                prices.cluster_fee_usd_per_hour
                if prices.cluster_fee_usd_per_hour is not None
                else catalog.cluster_fee_usd_per_hour
            ),
            "cluster_fee_source": (
                source if prices.cluster_fee_usd_per_hour is not None else catalog.cluster_fee_source
            ),
            "price_file": origin,
        }
    )


def load_catalog(price_file: Path | None = None) -> Catalog:
    """The built-in catalog, with a user price file (YAML, or JSON by ``.json`` suffix) applied on top."""
    catalog = default_catalog()
    if price_file is None:
        return catalog
    return apply_prices(catalog, read_price_file(price_file), origin=str(price_file))
