"""The twin's simulated GPUs as NVIDIA dcgm-exporter would show them (served on ``/dcgm``).

Each engine step is split the way the roofline timed it (``roofline.Roofline``): the GPU is busy for
the step less its host-side overhead; DRAM moves the weights streamed, the KV read and written and the
elementwise traffic; the tensor pipes do the linear and attention FLOPs. Over a window (1 s, as a
dcgm-exporter sampling a few times a second and averaging would) that gives

- ``DCGM_FI_DEV_GPU_UTIL`` / ``DCGM_FI_PROF_GR_ENGINE_ACTIVE``: busy seconds / wall seconds;
- ``DCGM_FI_PROF_DRAM_ACTIVE``: bytes / (peak HBM bandwidth x wall seconds);
- ``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE``: FLOPs / (peak dense bf16 x wall seconds);
- ``DCGM_FI_DEV_POWER_USAGE``: ``PowerModel`` of the DRAM and tensor activity, per step, averaged
  over the window;
- ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``: the integral of that power since the twin started (mJ);
- ``DCGM_FI_DEV_FB_USED`` / ``FB_FREE``: what vLLM allocates at start-up (weights, runtime,
  activation peak, the KV cache pool: ``capacity.plan_memory``), constant as on a real GPU; how full
  the KV pool is stays ``vllm:kv_cache_usage_perc``.

Every tensor-parallel rank does the same work (the roofline is per shard), so the GPUs read alike.
Temperature and clocks are not modelled and not emitted. A CPU twin has no GPUs: ``/dcgm`` answers 404.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from backends.twin.capacity import MemoryPlan
from backends.twin.engine_config import TwinConfig
from backends.twin.metrics_text import _Writer
from backends.twin.roofline import GPU_WEIGHT_BANDWIDTH_EFFICIENCY, Roofline, StepCost
from manifests.gpus import GpuType

MIB = 1024**2
WINDOW_S = 1.0
_SNAPSHOT_EVERY_S = 0.05


class PowerModel(BaseModel):
    """Board power of one GPU: ``idle + dram x min(d / dram_full, 1) + tensor x t`` W, capped at ``tdp``.

    ``d`` and ``t`` are the fractions of peak HBM bandwidth and of peak dense bf16 the interval
    reached. ``dram_full`` is the ``d`` of memory streaming flat out (the roofline's weight-streaming
    efficiency), so the DRAM term is its full ``dram_w`` whenever the step is bandwidth-bound, however
    close to the datasheet peak a part gets. ``idle`` is a GPU with memory allocated and no kernel
    running. H100: fitted to scripts/gpu_power.py on the lent H100 (CALIBRATION.md, "GPU power"); the
    other GPUs are the H100's terms scaled by their TDP (no measurement of them).
    """

    model_config = ConfigDict(frozen=True)

    idle_w: float
    dram_w: float
    tensor_w: float
    tdp_w: float
    dram_full: float = GPU_WEIGHT_BANDWIDTH_EFFICIENCY
    source: str

    def watts(self, dram: float, tensor: float) -> float:
        # No busy term: on the measured GPU every busy interval was DRAM- or tensor-active (util 99 %
        # in every loaded phase), so busy and DRAM activity cannot be told apart by the fit.
        power = self.idle_w + self.dram_w * min(dram / self.dram_full, 1.0) + self.tensor_w * tensor
        return min(power, self.tdp_w)


# H100 SXM, least-squares fit to scripts/gpu_power.py's phases below the cap (tests/benchmarks/
# twin_calibration/h100_power.json: idle before and after, decode M = 1, 16, 64): idle W, the DRAM term at
# full streaming (M = 1 streamed at 0.79 of 3.35 TB/s, util 99 %), the tensor term per unit of 989 TFLOP/s.
H100_IDLE_W = 124.9
H100_DRAM_W = 340.7
H100_TENSOR_W = 1145.0
H100_TDP_W = 700.0  # datasheet; M >= 256 read 697-698 W with the SM clock held down to ~1360 MHz

H100_POWER = PowerModel(
    idle_w=H100_IDLE_W,
    dram_w=H100_DRAM_W,
    tensor_w=H100_TENSOR_W,
    tdp_w=H100_TDP_W,
    source="measured: H100 80GB HBM3, scripts/gpu_power.py (CALIBRATION.md, GPU power); 700 W TDP",
)


def _scaled(tdp_w: float, source: str) -> PowerModel:
    """A GPU not measured here: the H100's idle, DRAM and tensor terms scaled by TDP / 700 W."""
    scale = tdp_w / H100_TDP_W
    return PowerModel(
        idle_w=H100_IDLE_W * scale,
        dram_w=H100_DRAM_W * scale,
        tensor_w=H100_TENSOR_W * scale,
        tdp_w=tdp_w,
        source=source,
    )


POWER_MODELS: dict[GpuType, PowerModel] = {
    GpuType.H100: H100_POWER,
    GpuType.H100_MEGA: H100_POWER,
    GpuType.A100_80: _scaled(400.0, "A100 SXM4 80GB: 400 W TDP (NVIDIA A100 datasheet), H100 fit x 400/700"),
    GpuType.A100_40: _scaled(400.0, "A100 SXM4 40GB: 400 W TDP (NVIDIA A100 datasheet), H100 fit x 400/700"),
    # 72 W: /work/shared/reference/vllm_k8s_facts.md section 7.
    GpuType.L4: _scaled(72.0, "L4: 72 W TDP (vllm_k8s_facts.md section 7), H100 fit x 72/700"),
}


@dataclass(slots=True)
class _Totals:
    t: float
    busy_s: float
    dram_bytes: float
    flops: float
    active_extra_j: float  # energy above idle, from steps


class GpuActivity:
    """Accumulates the twin's steps into per-GPU activity and energy; read by ``render_dcgm``."""

    def __init__(self, config: TwinConfig, memory: MemoryPlan, roofline: Roofline, start: float) -> None:
        acc = config.accelerator
        self.config = config
        self.gpus = config.tensor_parallel_size
        self.power = POWER_MODELS.get(config.gpu)
        self.enabled = not acc.is_cpu and self.power is not None
        self.peak_bw = acc.bandwidth_bytes_per_s
        self.peak_flops = acc.bf16_flops
        self.roofline = roofline
        self.start = start
        self.total_mib = acc.usable_memory_bytes / MIB
        used = (
            memory.weight_bytes
            + memory.non_torch_bytes
            + memory.activation_peak_bytes
            + memory.num_gpu_blocks * memory.layout.page_bytes_per_gpu
        )
        self.used_mib = min(used / MIB, self.total_mib)
        self.model_name = acc.display_name
        name = f"servedeck-twin/{config.gpu.value}/{config.model.hf_id}"
        self.uuids = [f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'{name}/{i}')}" for i in range(self.gpus)]
        self.totals = _Totals(start, 0.0, 0.0, 0.0, 0.0)
        self.history: deque[_Totals] = deque()
        self.history.append(_Totals(start, 0.0, 0.0, 0.0, 0.0))

    def step_activity(self, cost: StepCost, duration_s: float) -> tuple[float, float, float]:
        """(busy seconds, DRAM bytes, FLOPs) of one step on one GPU."""
        r = self.roofline
        if cost.tokens == 0 or duration_s <= 0:
            return 0.0, 0.0, 0.0
        overhead = r.step_overhead_s + r.per_sequence_s * cost.sequences
        busy = max(duration_s - overhead, 0.0)
        kv_tokens = r.global_layers * (cost.kv_full_tokens + cost.tokens) + r.sliding_layers * (
            cost.kv_sliding_tokens + cost.tokens
        )
        dram = (
            r.weight_bytes
            + r.moe_weight_read_s(cost.tokens) * r.weight_bw
            + kv_tokens * r.kv_bytes_per_token_layer
            + cost.tokens * r.elementwise_bytes_per_token
        )
        pairs = r.global_layers * cost.attn_full_pairs + r.sliding_layers * cost.attn_sliding_pairs
        flops = (
            r.linear_flops_per_token * cost.tokens
            + r.lm_head_flops_per_row * cost.sampled
            + r.attn_flops_per_pair_layer * pairs
        )
        return busy, dram, flops

    def on_step(self, started_at: float, duration_s: float, cost: StepCost | None) -> None:
        if not self.enabled or cost is None or self.power is None:
            return
        busy, dram, flops = self.step_activity(cost, duration_s)
        if busy == 0.0:
            return
        power = self.power.watts(
            min(dram / (self.peak_bw * duration_s), 1.0),
            min(flops / (self.peak_flops * duration_s), 1.0),
        )
        t = self.totals
        t.busy_s += busy
        t.dram_bytes += dram
        t.flops += flops
        t.active_extra_j += (power - self.power.idle_w) * duration_s
        t.t = started_at + duration_s
        last = self.history[-1]
        if t.t - last.t >= _SNAPSHOT_EVERY_S:
            self.history.append(_Totals(t.t, t.busy_s, t.dram_bytes, t.flops, t.active_extra_j))
            while len(self.history) > 2 and self.history[1].t <= t.t - 2 * WINDOW_S:
                self.history.popleft()

    def reading(self, now: float) -> GpuReading:
        """The window's mean activity and power per GPU, and the energy counter, at ``now``."""
        assert self.power is not None
        t = self.totals
        base = self.history[0]
        for snap in self.history:
            if snap.t <= now - WINDOW_S:
                base = snap
            else:
                break
        span = max(now - base.t, 1e-9)
        busy = min((t.busy_s - base.busy_s) / span, 1.0)
        dram = min((t.dram_bytes - base.dram_bytes) / (self.peak_bw * span), 1.0)
        tensor = min((t.flops - base.flops) / (self.peak_flops * span), 1.0)
        extra = (t.active_extra_j - base.active_extra_j) / span
        energy = self.power.idle_w * max(now - self.start, 0.0) + t.active_extra_j
        return GpuReading(
            busy=busy,
            dram_active=dram,
            tensor_active=tensor,
            power_w=min(self.power.idle_w + extra, self.power.tdp_w),
            energy_j=energy,
        )


class GpuReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    busy: float
    dram_active: float
    tensor_active: float
    power_w: float
    energy_j: float


def render_dcgm(activity: GpuActivity, now: float) -> str:
    """dcgm-exporter's exposition for the twin's GPUs (its field names, help strings and units)."""
    reading = activity.reading(now)
    out = _Writer()
    out.family("servedeck:simulated", "gauge", "1: these GPUs are a ServeDeck twin's (simulated).")
    out.sample("servedeck:simulated", {}, 1)
    families = (
        ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", round(reading.busy * 100.0)),
        (
            "DCGM_FI_DEV_FB_FREE",
            "gauge",
            "Framebuffer memory free (in MiB).",
            activity.total_mib - activity.used_mib,
        ),
        ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", activity.used_mib),
        ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", reading.power_w),
        (
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "counter",
            "Total energy consumption since boot (in mJ).",
            reading.energy_j * 1000.0,
        ),
        (
            "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
            "gauge",
            "Ratio of time the graphics engine is active.",
            reading.busy,
        ),
        (
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
            "gauge",
            "Ratio of cycles the tensor (HMMA) pipe is active.",
            reading.tensor_active,
        ),
        (
            "DCGM_FI_PROF_DRAM_ACTIVE",
            "gauge",
            "Ratio of cycles the device memory interface is active sending or receiving data.",
            reading.dram_active,
        ),
    )
    for name, kind, help_text, value in families:
        out.family(name, kind, help_text)
        for i, gpu_uuid in enumerate(activity.uuids):
            labels = {
                "gpu": str(i),
                "UUID": gpu_uuid,
                "device": f"nvidia{i}",
                "modelName": activity.model_name,
                "Hostname": "servedeck-twin",
            }
            out.sample(name, labels, float(value))
    return out.text()
