"""How long one engine step takes: a roofline of model and accelerator, plus TP all-reduces and overhead.

A step runs its scheduled tokens (decodes and prefill chunks) through every layer once. Per GPU (TP shard):

- linear layers: weight bytes over effective bandwidth vs matmul FLOPs over effective compute (the LM head
  reads its weights once a step and multiplies only the sampled rows);
- attention, per layer type (full / sliding window): KV bytes over effective bandwidth vs attention FLOPs over
  effective compute, never under one small kernel's time;
- the other per-layer kernels (norms, rotary, activation, cache write) vLLM runs fused: a floor per layer
  plus their activation traffic;
- with TP > 1, two all-reduces per layer of ``tokens x hidden`` bf16 values (latency + ring bandwidth);
- a per-step host overhead (schedule, prepare inputs, sample, hand outputs over) and a per-sequence part.

Mixture-of-experts layers read only the experts the step's tokens are routed to: with ``E`` experts,
``k`` per token and ``T`` tokens routed independently and uniformly (what the load-balancing loss aims
for), the expected number of distinct experts touched is ``E x (1 - (1 - k/E)^T)`` (the occupancy
problem: Feller, *An Introduction to Probability Theory*, vol. 1, ch. II; the same estimate as
MoE-Lightning, arXiv:2411.11217, and Huang et al., arXiv:2303.06182, for batched expert loads). FLOPs
count ``k`` experts a token. Quantized weights stream at their stored size; their GEMMs dequantize in the
main loop and reach a lower fraction of the bf16 peak (``GPU_QUANTIZED_MATMUL_EFFICIENCY``).

Every efficiency factor is a named constant with where its value comes from. "Measured" means
``tests/benchmarks/twin_calibration/h100_layer_timing.py`` on an H200 (same SMs, clocks and tensor peak as
the H100 SXM, more HBM bandwidth); the raw numbers are in ``h200_measurements.json`` beside it and the
derivations in CALIBRATION.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from backends.twin.engine_config import TwinConfig
from manifests.gpus import Interconnect

BF16_BYTES = 2

# --- GPU efficiency factors (fractions of the datasheet peaks in manifests/gpus.py) ------------------------
# Weight streaming when HBM is the limit. Measured: the Gemma 3 LM head (2.8 GB, one GEMV) read at 4.26 TB/s
# = 0.89 of the H200's 4.8 TB/s. The layer GEMMs of TP 1/2/4 shards streamed at 3.92/3.28/3.09 TB/s there,
# all above 0.89 x 3.35 = 2.98 TB/s, so on an H100 (and slower parts) HBM, not the SMs, is the limit.
GPU_WEIGHT_BANDWIDTH_EFFICIENCY = 0.89
# Large-M linear layers: fraction of dense bf16 peak. Measured on Gemma-3-27B shard GEMMs at M = 8192:
# 668 (TP 1), 668 (TP 2), 649 (TP 4) TFLOP/s of 989 = 0.66-0.68 (an 8192^3 GEMM reached 785 = 0.79).
GPU_MATMUL_EFFICIENCY = 0.66
# Decode attention reading K/V. Measured (dense FlashAttention via torch SDPA, GQA folded into the query):
# 0.93-0.96 of peak bandwidth at batch >= 64; vLLM's paged kernels read through block tables, taken as
# the lower end.
GPU_ATTENTION_BANDWIDTH_EFFICIENCY = 0.93
# Large-M GEMMs of quantized weights (int4/int8 weight-only through Marlin/Machete, fp8 block-scaled):
# the weights are dequantized to bf16 in the main loop, so compute-bound steps reach less of the bf16
# peak. Marlin (Frantar et al., arXiv:2408.11743) is near its ideal speed-up up to batch 16-32 and falls to
# about bf16 speed by batch 128+; 0.50 of peak is taken for the compute-bound side (unmeasured estimate).
GPU_QUANTIZED_MATMUL_EFFICIENCY = 0.50
# Prefill (causal) attention, per layer: FLOPs at this fraction of peak, plus a time per query row of
# prefill and a fixed time per kernel. Fitted to 18 measured fresh causal chunks (torch SDPA on an H200,
# TP 1/2/4 x M = 256-8192; tests/benchmarks/twin_calibration/h200_measurements.json): within 16% for
# M >= 1024, where a fixed 0.40 of peak was 54% slow at TP 1 x 8192 and 40% fast at TP 4 x 2048. The
# per-row time does not shrink with the heads a TP shard holds (they run side by side), which is why a
# TP 4 shard reached 0.24 of peak at M = 2048 and TP 1 0.40; long chunks approach 0.62 (TP 1 x 8192).
GPU_ATTENTION_COMPUTE_EFFICIENCY = 0.62
GPU_PREFILL_ATTENTION_ROW_S = 5.75e-9
GPU_PREFILL_ATTENTION_KERNEL_S = 15e-6
# The smallest attention kernel: measured 12 us per layer for batch 1-8 at short context.
GPU_ATTENTION_FLOOR_S = 12e-6
# Non-GEMM kernels per layer in vLLM's Gemma 3 (fused add+RMSNorm x4, q/k norm x2, rotary, KV-cache write,
# GeGLU) and the time of one such small kernel under a CUDA graph: measured 80 us for the ~44 unfused
# elementwise kernels of one layer = 1.8 us each.
GPU_SMALL_KERNELS_PER_LAYER = 9
GPU_SMALL_KERNEL_S = 1.8e-6
# Bytes those kernels move per token and layer, in hidden-size bf16 vectors (each fused norm reads x and
# the residual and writes both: 4 vectors, x4 norms) plus the GeGLU reading 2 and writing 1 of
# intermediate/TP.
ELEMENTWISE_HIDDEN_VECTORS = 16
ELEMENTWISE_INTERMEDIATE_VECTORS = 3

# --- CPU efficiency factors (vLLM's CPU backend; unmeasured estimates) ------------------------------------
# manifests/gpus.py already gives CPU bandwidth as a sustained (STREAM-like) figure; a GEMV kernel reaches
# most of it.
CPU_WEIGHT_BANDWIDTH_EFFICIENCY = 0.8
# bf16 GEMMs through oneDNN: AMX (Emerald Rapids) and AVX-512 bf16 (Turin) reach well under half their peak
# on LLM shapes in vendor results; 0.35 is taken for both.
CPU_MATMUL_EFFICIENCY = 0.35
CPU_ATTENTION_BANDWIDTH_EFFICIENCY = 0.5
CPU_ATTENTION_COMPUTE_EFFICIENCY = 0.2
# OpenMP fork/join per operator: tens of microseconds.
CPU_ATTENTION_FLOOR_S = 20e-6
CPU_SMALL_KERNELS_PER_LAYER = 9
CPU_SMALL_KERNEL_S = 10e-6

# --- Overheads (not measurable without vLLM itself; estimates) --------------------------------------------
# Host time per step that the GPU waits for in vLLM V1: scheduling, input preparation, CUDA-graph launch,
# sampler synchronisation, output hand-off. V1 overlaps detokenisation and HTTP in other processes.
GPU_STEP_OVERHEAD_S = 2.0e-3
# Per scheduled sequence: input-preparation rows, sampler row, output object.
GPU_PER_SEQUENCE_OVERHEAD_S = 4.0e-6
CPU_STEP_OVERHEAD_S = 5.0e-3
CPU_PER_SEQUENCE_OVERHEAD_S = 20e-6

# --- Tensor-parallel all-reduce ----------------------------------------------------------------------------
ALLREDUCES_PER_LAYER = 2  # after attention's o_proj and after the MLP's down_proj (Megatron-style TP)
# NVLink latency of one all-reduce under a CUDA graph, a + b x (ranks - 1). Measured with NCCL on H200s
# (NVSwitch, NV18): 10.0 us at 2 ranks and 13.3 us at 4 for 10 KiB. vLLM's custom all-reduce targets the
# same small messages and is at least as fast.
NVLINK_ALLREDUCE_BASE_S = 8.35e-6
NVLINK_ALLREDUCE_PER_EXTRA_RANK_S = 1.65e-6
# PCIe-only machines (L4 on G2): vLLM disables its custom all-reduce for more than two PCIe GPUs and NCCL
# rings through the host bridge; nccl-tests show a few tens of microseconds for small messages (estimate).
PCIE_ALLREDUCE_BASE_S = 20e-6
PCIE_ALLREDUCE_PER_EXTRA_RANK_S = 5e-6
# Ring bus bandwidth over one direction of the link. Measured on 86 MB: 0.63 (2 ranks) and 0.72 (4 ranks) of
# the 450 GB/s per direction of NVLink 4.
ALLREDUCE_BANDWIDTH_EFFICIENCY = 0.68
# manifests/gpus.py gives NVLink as the bidirectional aggregate (900 GB/s on H100) and PCIe per direction.
NVLINK_FIGURE_IS_BIDIRECTIONAL = True


@dataclass(slots=True)
class StepCost:
    """What one step computes, summed over its scheduled requests (the engine fills it in)."""

    tokens: int = 0  # new tokens through the model (decodes + prefill chunk tokens)
    sampled: int = 0  # rows through the LM head and sampler (decodes + prefills that finish)
    sequences: int = 0  # scheduled requests
    kv_full_tokens: int = 0  # sum of each request's context read by full-attention layers
    kv_sliding_tokens: int = 0  # same, capped at the window, for sliding-window layers
    attn_full_pairs: float = 0.0  # sum over new tokens of their attended context (full layers)
    attn_sliding_pairs: float = 0.0  # same, capped at the window
    prefill_tokens: int = 0  # of ``tokens``, those in prefill chunks (the rest are one-token decodes)


class StepTimeBreakdown(BaseModel):
    model_config = ConfigDict(frozen=True)

    linear_s: float
    attention_s: float
    elementwise_s: float
    allreduce_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return self.linear_s + self.attention_s + self.elementwise_s + self.allreduce_s + self.overhead_s


class Roofline:
    """Step times for one TwinConfig; every figure is per GPU (one TP shard)."""

    def __init__(self, config: TwinConfig) -> None:
        model, acc = config.model, config.accelerator
        tp = config.tensor_parallel_size
        self.tp = tp
        self.num_layers = model.num_layers
        self.global_layers = model.num_global_layers
        self.sliding_layers = model.num_sliding_layers
        self.hidden = model.hidden_size
        self.linear_params = linear_params(config)
        bytes_per_param = model.weight_bytes / model.params
        lm_head = model.vocab_size * model.hidden_size
        # Routed experts: all held, only the touched ones read (see moe_weight_read_s).
        self.moe_layers = model.num_moe_layers if model.is_moe else 0
        self.num_experts, self.experts_per_token = model.num_experts, model.experts_per_token
        self.expert_bytes = model.expert_params * bytes_per_param / tp
        streamed = model.always_on_params if model.is_moe else self.linear_params
        self.weight_bytes = (streamed + lm_head) * bytes_per_param / tp
        self.linear_flops_per_token = 2.0 * self.linear_params / tp
        self.lm_head_flops_per_row = 2.0 * lm_head / tp
        self.kv_bytes_per_token_layer = model.kv_bytes_per_token_layer_per_gpu(tp, config.kv_dtype_bytes)
        if model.is_mla:
            # vLLM's MLA decode absorbs W_UK/W_UV: each head scores the latent + rotary key and sums latents.
            rank = model.kv_lora_rank or 0
            self.attn_flops_per_pair_layer = (
                2.0 * (model.num_attention_heads // tp) * (2 * rank + model.qk_rope_head_dim)
            )
        else:
            self.attn_flops_per_pair_layer = 4.0 * (model.num_attention_heads // tp) * model.head_dim
        self.elementwise_bytes_per_token = (
            model.num_layers
            * BF16_BYTES
            * (
                ELEMENTWISE_HIDDEN_VECTORS * model.hidden_size
                + ELEMENTWISE_INTERMEDIATE_VECTORS * model.peak_intermediate_size // tp
            )
        )
        if acc.is_cpu:
            weight_eff, matmul_eff = CPU_WEIGHT_BANDWIDTH_EFFICIENCY, CPU_MATMUL_EFFICIENCY
            attn_bw_eff, attn_fl_eff = CPU_ATTENTION_BANDWIDTH_EFFICIENCY, CPU_ATTENTION_COMPUTE_EFFICIENCY
            self.attention_floor_s = CPU_ATTENTION_FLOOR_S
            self.prefill_row_s, self.prefill_kernel_s = 0.0, 0.0
            layer_floor = CPU_SMALL_KERNELS_PER_LAYER * CPU_SMALL_KERNEL_S
            self.step_overhead_s, self.per_sequence_s = CPU_STEP_OVERHEAD_S, CPU_PER_SEQUENCE_OVERHEAD_S
        else:
            weight_eff, matmul_eff = GPU_WEIGHT_BANDWIDTH_EFFICIENCY, GPU_MATMUL_EFFICIENCY
            if model.is_quantized:
                matmul_eff = GPU_QUANTIZED_MATMUL_EFFICIENCY
            attn_bw_eff, attn_fl_eff = GPU_ATTENTION_BANDWIDTH_EFFICIENCY, GPU_ATTENTION_COMPUTE_EFFICIENCY
            self.attention_floor_s = GPU_ATTENTION_FLOOR_S
            self.prefill_row_s, self.prefill_kernel_s = (
                GPU_PREFILL_ATTENTION_ROW_S,
                GPU_PREFILL_ATTENTION_KERNEL_S,
            )
            layer_floor = GPU_SMALL_KERNELS_PER_LAYER * GPU_SMALL_KERNEL_S
            self.step_overhead_s, self.per_sequence_s = GPU_STEP_OVERHEAD_S, GPU_PER_SEQUENCE_OVERHEAD_S
        constants = config.constants
        self.step_overhead_s *= constants.step_overhead_scale
        self.per_sequence_s *= constants.per_sequence_scale
        # A calibrated efficiency never exceeds the datasheet peak.
        weight_eff = min(1.0, weight_eff * constants.bandwidth_scale)
        attn_bw_eff = min(1.0, attn_bw_eff * constants.bandwidth_scale)
        matmul_eff = min(1.0, matmul_eff * constants.matmul_scale)
        attn_fl_eff = min(1.0, attn_fl_eff * constants.matmul_scale)
        self.elementwise_floor_s = layer_floor * model.num_layers
        self.weight_bw = acc.bandwidth_bytes_per_s * weight_eff
        self.matmul_flops = acc.bf16_flops * matmul_eff
        self.attn_bw = acc.bandwidth_bytes_per_s * attn_bw_eff
        self.attn_flops = acc.bf16_flops * attn_fl_eff
        self.weight_read_s = self.weight_bytes / self.weight_bw
        self.allreduce_latency_s = 0.0
        self.allreduce_s_per_byte = 0.0
        if tp > 1:
            link = acc.interconnect_bytes_per_s
            if acc.interconnect is Interconnect.NVLINK:
                per_direction = link / 2 if NVLINK_FIGURE_IS_BIDIRECTIONAL else link
                self.allreduce_latency_s = NVLINK_ALLREDUCE_BASE_S + NVLINK_ALLREDUCE_PER_EXTRA_RANK_S * (
                    tp - 1
                )
            else:
                per_direction = link if link > 0 else 16e9
                self.allreduce_latency_s = PCIE_ALLREDUCE_BASE_S + PCIE_ALLREDUCE_PER_EXTRA_RANK_S * (tp - 1)
            # Ring all-reduce: each rank sends and receives 2(N-1)/N of the message over one link direction.
            self.allreduce_s_per_byte = 2 * (tp - 1) / tp / (per_direction * ALLREDUCE_BANDWIDTH_EFFICIENCY)

    def breakdown(self, cost: StepCost) -> StepTimeBreakdown:
        if cost.tokens == 0:
            return StepTimeBreakdown(
                linear_s=0.0, attention_s=0.0, elementwise_s=0.0, allreduce_s=0.0, overhead_s=0.0
            )
        linear_flops = self.linear_flops_per_token * cost.tokens + self.lm_head_flops_per_row * cost.sampled
        linear = max(
            self.weight_read_s + self.moe_weight_read_s(cost.tokens), linear_flops / self.matmul_flops
        )
        write = cost.tokens  # every new token's K/V is written once per layer
        prefill_s = (
            self.prefill_kernel_s + cost.prefill_tokens * self.prefill_row_s if cost.prefill_tokens else 0.0
        )
        attention = self._attention(
            self.global_layers, cost.kv_full_tokens + write, cost.attn_full_pairs, prefill_s
        ) + self._attention(
            self.sliding_layers, cost.kv_sliding_tokens + write, cost.attn_sliding_pairs, prefill_s
        )
        elementwise = (
            self.elementwise_floor_s + cost.tokens * self.elementwise_bytes_per_token / self.weight_bw
        )
        allreduce = 0.0
        if self.tp > 1:
            per_call = (
                self.allreduce_latency_s + cost.tokens * self.hidden * BF16_BYTES * self.allreduce_s_per_byte
            )
            allreduce = ALLREDUCES_PER_LAYER * self.num_layers * per_call
        overhead = self.step_overhead_s + self.per_sequence_s * cost.sequences
        return StepTimeBreakdown(
            linear_s=linear,
            attention_s=attention,
            elementwise_s=elementwise,
            allreduce_s=allreduce,
            overhead_s=overhead,
        )

    def _attention(self, layers: int, kv_tokens: float, pairs: float, prefill_s: float) -> float:
        """``prefill_s``: the per-layer time of the step's prefill rows beyond their FLOPs (0 for decodes)."""
        if layers == 0:
            return 0.0
        per_layer = max(
            self.attention_floor_s,
            kv_tokens * self.kv_bytes_per_token_layer / self.attn_bw,
            pairs * self.attn_flops_per_pair_layer / self.attn_flops + prefill_s,
        )
        return layers * per_layer

    def moe_weight_read_s(self, tokens: int) -> float:
        """Seconds to stream the routed experts ``tokens`` tokens touch, over all MoE layers."""
        if not self.moe_layers:
            return 0.0
        touched = expected_unique_experts(self.num_experts, self.experts_per_token, tokens)
        return self.moe_layers * touched * self.expert_bytes / self.weight_bw

    def step_seconds(self, cost: StepCost) -> float:
        if cost.tokens == 0:
            return 0.0
        return self.breakdown(cost).total_s

    def decode_seconds(self, batch: int, kv_full: np.ndarray, kv_sliding: np.ndarray) -> np.ndarray:
        """``step_seconds`` of pure-decode steps of ``batch`` sequences, one per element of the context sums.

        For a decode the attended pairs equal the context read, so one array per layer type suffices.
        """
        linear = max(
            self.weight_read_s + self.moe_weight_read_s(batch),
            (self.linear_flops_per_token + self.lm_head_flops_per_row) * batch / self.matmul_flops,
        )
        fixed = linear + self.elementwise_floor_s + batch * self.elementwise_bytes_per_token / self.weight_bw
        if self.tp > 1:
            per_call = self.allreduce_latency_s + batch * self.hidden * BF16_BYTES * self.allreduce_s_per_byte
            fixed += ALLREDUCES_PER_LAYER * self.num_layers * per_call
        fixed += self.step_overhead_s + self.per_sequence_s * batch
        bytes_s = self.kv_bytes_per_token_layer / self.attn_bw
        flops_s = self.attn_flops_per_pair_layer / self.attn_flops
        total = np.full(len(kv_full), fixed, dtype=np.float64)
        for layers, context in ((self.global_layers, kv_full), (self.sliding_layers, kv_sliding)):
            if layers:
                per_layer = np.maximum((context + batch) * bytes_s, context * flops_s)
                total += layers * np.maximum(per_layer, self.attention_floor_s)
        return total


def expected_unique_experts(num_experts: int, experts_per_token: int, tokens: int) -> float:
    """Distinct experts ``tokens`` tokens touch when each picks ``experts_per_token`` of ``num_experts``
    uniformly: ``E (1 - (1 - k/E)^T)`` (occupancy; see the module docstring)."""
    if tokens <= 0 or num_experts <= 0:
        return 0.0
    miss = 1.0 - min(experts_per_token, num_experts) / num_experts
    return num_experts * (1.0 - miss**tokens)


def linear_params(config: TwinConfig) -> float:
    """Parameters every token multiplies through (decoder layers), without embeddings or a vision tower.

    From the layer shapes (q/k/v/o projections and a gated MLP) when they account for the model's size;
    otherwise (a generic dense profile whose shapes are guesses) params minus the embedding table. A MoE
    token multiplies its ``experts_per_token`` routed experts plus the always-on layers.
    """
    model = config.model
    if model.is_moe or model.is_mla:
        return model.active_params - model.embedding_params
    per_layer = (
        model.hidden_size * (model.num_attention_heads + 2 * model.num_kv_heads) * model.head_dim
        + model.num_attention_heads * model.head_dim * model.hidden_size
        + 3 * model.hidden_size * model.intermediate_size
    )
    from_shapes = float(per_layer * model.num_layers)
    embedding = float(model.vocab_size * model.hidden_size)
    if abs(from_shapes + embedding - model.params) <= 0.05 * model.params:
        return from_shapes
    return max(model.params - embedding, 0.5 * model.params)
