"""NVIDIA dcgm-exporter's exposition → typed per-GPU samples.

dcgm-exporter (standalone, the GPU operator's, or GKE's managed DCGM) prints one series per GPU and field:
``DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-…",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",
Hostname="node",pod="…",namespace="…",container="…"} 113.6``. The ``pod``/``namespace``/``container``
labels are there only with Kubernetes pod mapping on, and only on GPUs a pod holds (empty or absent
otherwise). Units as the exporter's default counters declare them: utilisation in percent, PROF_* ratios
0..1, memory in MiB, power in W, energy in mJ since driver load, clocks in MHz, temperature in °C.

Anything else in the body (other exporters' metrics, DCGM fields not modelled here, labels not known
here) is kept aside, never an error: ``unknown_fields`` names the fields, ``GpuSample.labels`` keeps
every label as given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from backends.prometheus import parse_exposition
from backends.telemetry.models import GpuSummary

DCGM_PREFIX = "DCGM_FI_"

# DCGM prints "blank" sentinels for a field a GPU does not support or has no value for yet
# (dcgm_structs.h: DCGM_INT32_BLANK 0x7ffffff0, DCGM_INT64_BLANK 0x7ffffffffffffff0, DCGM_FP64_BLANK
# 140737488355328.0, each followed by NOT_FOUND / NOT_SUPPORTED / NOT_PERMISSIONED just above).
INT32_BLANK = 0x7FFFFFF0
INT64_BLANK = 0x7FFFFFFFFFFFFFF0
FP64_BLANK = 140737488355328.0

# field → (attribute of GpuSample, factor to its unit)
FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("gpu_util", 0.01),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("mem_copy_util", 0.01),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("gr_engine_active", 1.0),
    "DCGM_FI_PROF_SM_ACTIVE": ("sm_active", 1.0),
    "DCGM_FI_PROF_SM_OCCUPANCY": ("sm_occupancy", 1.0),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("tensor_active", 1.0),
    "DCGM_FI_PROF_DRAM_ACTIVE": ("dram_active", 1.0),
    "DCGM_FI_DEV_FB_USED": ("fb_used_mib", 1.0),
    "DCGM_FI_DEV_FB_FREE": ("fb_free_mib", 1.0),
    "DCGM_FI_DEV_FB_TOTAL": ("fb_total_mib", 1.0),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_j", 0.001),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_MEM_CLOCK": ("mem_clock_mhz", 1.0),
    "DCGM_FI_DEV_GPU_TEMP": ("gpu_temp_c", 1.0),
    "DCGM_FI_DEV_MEMORY_TEMP": ("memory_temp_c", 1.0),
}
_INT64_FIELDS = frozenset({"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"})

# Labels that identify a GPU or its holder; every other label is kept in ``labels`` only.
IDENTITY_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "GPU_I_ID", "pci_bus_id")


class GpuSample(BaseModel):
    """One GPU (or MIG instance) in one scrape; a field the exporter did not print is None."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    uuid: str | None = None
    model_name: str | None = None
    hostname: str | None = None
    mig_instance: str | None = None
    pod: str | None = None
    namespace: str | None = None
    container: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="every label as the exporter gave it")
    gpu_util: float | None = Field(default=None, description="0..1 (DCGM_FI_DEV_GPU_UTIL / 100)")
    mem_copy_util: float | None = None
    gr_engine_active: float | None = None
    sm_active: float | None = None
    sm_occupancy: float | None = None
    tensor_active: float | None = None
    dram_active: float | None = None
    fb_used_mib: float | None = None
    fb_free_mib: float | None = None
    fb_total_mib: float | None = None
    power_w: float | None = None
    energy_j: float | None = Field(default=None, description="since driver load (a counter)")
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    gpu_temp_c: float | None = None
    memory_temp_c: float | None = None

    @property
    def key(self) -> str:
        """Stable identity across scrapes: the UUID (plus MIG instance), else host and index."""
        base = self.uuid or f"{self.hostname or '?'}/{self.gpu}"
        return f"{base}/mig{self.mig_instance}" if self.mig_instance else base

    @property
    def utilisation(self) -> float | None:
        """The busy fraction: DCGM_FI_PROF_GR_ENGINE_ACTIVE where profiling metrics exist, else GPU_UTIL."""
        return self.gr_engine_active if self.gr_engine_active is not None else self.gpu_util


class DcgmScrape(BaseModel):
    """A parsed dcgm-exporter body."""

    gpus: list[GpuSample] = Field(default_factory=list)
    unknown_fields: list[str] = Field(default_factory=list, description="DCGM_FI_* names not modelled here")
    unlabelled: int = Field(default=0, description="DCGM_FI_* samples with no gpu label (skipped)")
    malformed: int = 0
    other_samples: int = Field(default=0, description="non-DCGM samples in the body")
    simulated: bool = Field(default=False, description="a ServeDeck twin's simulated GPUs")

    @property
    def found(self) -> bool:
        return bool(self.gpus)


def _is_blank(field: str, value: float) -> bool:
    if math.isnan(value) or value < 0:
        return True
    if field in _INT64_FIELDS:
        return value >= INT64_BLANK or FP64_BLANK <= value < FP64_BLANK * 1.001
    return value >= INT32_BLANK or FP64_BLANK <= value < FP64_BLANK * 1.001


def _empty_to_none(value: str | None) -> str | None:
    return value if value else None


def parse_dcgm(text: str) -> DcgmScrape:
    """Group a body's DCGM_FI_* samples by GPU; never raises on content."""
    exposition = parse_exposition(text)
    values: dict[tuple[str, str, str, str], dict[str, float | None]] = {}
    labels_of: dict[tuple[str, str, str, str], dict[str, str]] = {}
    unknown: set[str] = set()
    unlabelled = other = 0
    simulated = False
    for sample in exposition.samples:
        name = sample.name
        if not name.startswith(DCGM_PREFIX):
            other += 1
            if name.startswith("servedeck:"):
                simulated = True
            continue
        # prometheus_client-style exposition may suffix a counter with _total.
        field = name.removesuffix("_total") if name not in FIELDS else name
        spec = FIELDS.get(field)
        if spec is None:
            unknown.add(name)
            continue
        labels = sample.labels
        gpu = labels.get("gpu")
        if gpu is None:
            unlabelled += 1
            continue
        key = (
            labels.get("UUID") or "",
            labels.get("Hostname") or "",
            gpu,
            labels.get("GPU_I_ID") or "",
        )
        merged = labels_of.setdefault(key, {})
        for label, value in labels.items():
            if value or label not in merged:
                merged[label] = value
        attribute, factor = spec
        slot = values.setdefault(key, {})
        slot[attribute] = None if _is_blank(field, sample.value) else sample.value * factor
    gpus = []
    for gpu_key, fields in values.items():
        labels = labels_of[gpu_key]
        gpus.append(
            GpuSample(
                gpu=labels.get("gpu", ""),
                uuid=_empty_to_none(labels.get("UUID")),
                model_name=_empty_to_none(labels.get("modelName")),
                hostname=_empty_to_none(labels.get("Hostname")),
                mig_instance=_empty_to_none(labels.get("GPU_I_ID")),
                pod=_empty_to_none(labels.get("pod") or labels.get("exported_pod")),
                namespace=_empty_to_none(labels.get("namespace") or labels.get("exported_namespace")),
                container=_empty_to_none(labels.get("container") or labels.get("exported_container")),
                labels=labels,
                **fields,
            )
        )
    gpus.sort(key=lambda g: (g.hostname or "", _index(g.gpu), g.mig_instance or ""))
    return DcgmScrape(
        gpus=gpus,
        unknown_fields=sorted(unknown),
        unlabelled=unlabelled,
        malformed=len(exposition.malformed),
        other_samples=other,
        simulated=simulated,
    )


def _index(gpu: str) -> int:
    try:
        return int(gpu)
    except ValueError:
        return 1 << 30


def gpus_of_pods(
    gpus: Iterable[GpuSample], pods: Iterable[str], namespace: str | None = None
) -> list[GpuSample]:
    """The GPUs the exporter attributes to one of ``pods`` (in ``namespace`` when given)."""
    wanted = set(pods)
    return [
        g
        for g in gpus
        if g.pod is not None and g.pod in wanted and (namespace is None or g.namespace in (None, namespace))
    ]


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _sum_all(values: list[float | None]) -> float | None:
    """A sum only when every GPU reported the field (a partial sum would mislead)."""
    if not values or any(v is None for v in values):
        return None
    return math.fsum(v for v in values if v is not None)


def summarise(t: float, gpus: list[GpuSample]) -> GpuSummary:
    utils = [u for g in gpus if (u := g.utilisation) is not None]
    totals: list[float | None] = []
    for g in gpus:
        if g.fb_total_mib is not None:
            totals.append(g.fb_total_mib)
        elif g.fb_used_mib is not None and g.fb_free_mib is not None:
            totals.append(g.fb_used_mib + g.fb_free_mib)
        else:
            totals.append(None)
    return GpuSummary(
        t=t,
        gpus=len(gpus),
        utilisation=_mean(utils),
        dram_active=_mean([v for g in gpus if (v := g.dram_active) is not None]),
        tensor_active=_mean([v for g in gpus if (v := g.tensor_active) is not None]),
        power_w=_sum_all([g.power_w for g in gpus]),
        fb_used_mib=_sum_all([g.fb_used_mib for g in gpus]),
        fb_total_mib=_sum_all(totals),
        energy_j=_sum_all([g.energy_j for g in gpus]),
        per_gpu_power_w=[g.power_w for g in gpus if g.power_w is not None],
        per_gpu_utilisation=utils,
    )
