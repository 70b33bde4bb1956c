"""Accelerator and CPU node profiles: what the catalog, the fit model and the twin read.

Pure data. Sources are in ``/work/shared/reference/vllm_k8s_facts.md`` §5 and §7 (GPU datasheets,
GKE accelerator labels, GCE machine shapes) and are named beside each figure.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

GIB = 1024**3
GB = 1000**3


class Interconnect(StrEnum):
    NVLINK = "nvlink"
    PCIE = "pcie"
    NONE = "none"


class GpuType(StrEnum):
    L4 = "l4"
    A100_40 = "a100-40gb"
    A100_80 = "a100-80gb"
    H100 = "h100"
    H100_MEGA = "h100-mega"
    CPU_EMERALD = "cpu-c4"
    CPU_TURIN = "cpu-c4d"


class AcceleratorProfile(BaseModel):
    """One accelerator (or one CPU node) as a roofline sees it."""

    model_config = ConfigDict(frozen=True)

    gpu: GpuType
    display_name: str
    gke_accelerator: str | None
    is_cpu: bool = False
    memory_bytes: int
    usable_memory_bytes: int
    bandwidth_bytes_per_s: float
    bf16_flops: float
    interconnect: Interconnect
    interconnect_bytes_per_s: float
    vllm_device_name: str
    source: str


ACCELERATORS: dict[GpuType, AcceleratorProfile] = {
    profile.gpu: profile
    for profile in (
        AcceleratorProfile(
            gpu=GpuType.L4,
            display_name="NVIDIA L4 24GB",
            gke_accelerator="nvidia-l4",
            memory_bytes=24 * GB,
            usable_memory_bytes=int(22.0 * GIB),
            bandwidth_bytes_per_s=300e9,
            bf16_flops=121e12,
            interconnect=Interconnect.PCIE,
            # PCIe Gen4 x16: 32 GB/s per direction, no NVLink on G2 machines.
            interconnect_bytes_per_s=32e9,
            vllm_device_name="nvidia l4",
            source="NVIDIA L4 datasheet (24 GB GDDR6, 300 GB/s, 121 TFLOPS bf16 dense); GKE label nvidia-l4",
        ),
        AcceleratorProfile(
            gpu=GpuType.A100_40,
            display_name="NVIDIA A100 40GB",
            gke_accelerator="nvidia-tesla-a100",
            memory_bytes=40 * GB,
            usable_memory_bytes=int(39.4 * GIB),
            bandwidth_bytes_per_s=1555e9,
            bf16_flops=312e12,
            interconnect=Interconnect.NVLINK,
            interconnect_bytes_per_s=600e9,
            vllm_device_name="nvidia a100-sxm4-40gb",
            source="NVIDIA A100 datasheet (1.555 TB/s, 312 TFLOPS bf16); A2 NVLink full mesh 600 GB/s",
        ),
        AcceleratorProfile(
            gpu=GpuType.A100_80,
            display_name="NVIDIA A100 80GB",
            gke_accelerator="nvidia-a100-80gb",
            memory_bytes=80 * GB,
            usable_memory_bytes=int(79.2 * GIB),
            bandwidth_bytes_per_s=2039e9,
            bf16_flops=312e12,
            interconnect=Interconnect.NVLINK,
            interconnect_bytes_per_s=600e9,
            vllm_device_name="nvidia a100-sxm4-80gb",
            source="NVIDIA A100 datasheet (2.039 TB/s, 312 TFLOPS bf16); A2 Ultra NVLink 600 GB/s",
        ),
        AcceleratorProfile(
            gpu=GpuType.H100,
            display_name="NVIDIA H100 80GB",
            gke_accelerator="nvidia-h100-80gb",
            memory_bytes=80 * GB,
            usable_memory_bytes=int(79.2 * GIB),
            bandwidth_bytes_per_s=3350e9,
            bf16_flops=989e12,
            interconnect=Interconnect.NVLINK,
            interconnect_bytes_per_s=900e9,
            vllm_device_name="nvidia h100 80gb hbm3",
            source="NVIDIA H100 SXM5 (3.35 TB/s HBM3, 989 TFLOPS bf16 dense); A3 High NVLink 900 GB/s",
        ),
        AcceleratorProfile(
            gpu=GpuType.CPU_EMERALD,
            display_name="CPU node (c4, Intel Emerald Rapids)",
            gke_accelerator=None,
            is_cpu=True,
            # vLLM's CPU backend keeps its KV cache in VLLM_CPU_KVCACHE_SPACE of host RAM.
            memory_bytes=192 * GIB,
            usable_memory_bytes=176 * GIB,
            # 8 channels DDR5-5600 per socket ~ 358 GB/s peak; ~60% is what STREAM-like reads reach.
            bandwidth_bytes_per_s=215e9,
            # AMX bf16 on 48 physical cores at ~2.3 GHz: 1024 bf16 FLOP/cycle/core ~ 113 TFLOPS peak; vLLM CPU
            # kernels reach a small fraction of it.
            bf16_flops=113e12,
            interconnect=Interconnect.NONE,
            interconnect_bytes_per_s=0.0,
            vllm_device_name="cpu",
            source="c4-standard-96 (Emerald Rapids, DDR5-5600, AMX); estimates, see CALIBRATION.md",
        ),
        AcceleratorProfile(
            gpu=GpuType.CPU_TURIN,
            display_name="CPU node (c4d, AMD Turin)",
            gke_accelerator=None,
            is_cpu=True,
            memory_bytes=192 * GIB,
            usable_memory_bytes=176 * GIB,
            # 12 channels DDR5-6000 ~ 576 GB/s peak per socket; ~60% sustained.
            bandwidth_bytes_per_s=345e9,
            # AVX-512 bf16 (no AMX) on 96 cores at ~2.7 GHz: 128 bf16 FLOP/cycle/core ~ 33 TFLOPS peak.
            bf16_flops=33e12,
            interconnect=Interconnect.NONE,
            interconnect_bytes_per_s=0.0,
            vllm_device_name="cpu",
            source="c4d-standard-192 (Zen 5 Turin, DDR5-6000, AVX-512 bf16); estimates, see CALIBRATION.md",
        ),
    )
}


# A3 Mega carries the same H100 SXM5 parts as A3 High; only its GKE label (and host network) differ.
ACCELERATORS[GpuType.H100_MEGA] = ACCELERATORS[GpuType.H100].model_copy(
    update={
        "gpu": GpuType.H100_MEGA,
        "display_name": "NVIDIA H100 80GB (A3 Mega)",
        "gke_accelerator": "nvidia-h100-mega-80gb",
        "source": "as H100; GKE label nvidia-h100-mega-80gb (A3 Mega)",
    }
)


def accelerator(gpu: GpuType | str) -> AcceleratorProfile:
    try:
        return ACCELERATORS[GpuType(gpu)]
    except ValueError:
        known = ", ".join(g.value for g in GpuType)
        raise ValueError(f"unknown GPU type {gpu!r}; known: {known}") from None


def vllm_scheduler_defaults(gpu: GpuType, world_size: int) -> tuple[int, int]:
    """vLLM ``serve`` defaults (max_num_batched_tokens, max_num_seqs) for the OpenAI server context.

    ``EngineArgs`` uses the large defaults only for >= 70 GiB devices whose name does not contain "a100"
    (reference/vllm_k8s_facts.md §4); CPU: 2048 x world and 128 x world.
    """
    profile = ACCELERATORS[gpu]
    if profile.is_cpu:
        return 2048 * world_size, 128 * world_size
    if profile.memory_bytes >= 70 * GIB and "a100" not in profile.vllm_device_name:
        return 8192, 1024
    return 2048, 256
