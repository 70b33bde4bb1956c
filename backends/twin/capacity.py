"""Where a twin's GPU memory goes, and how many paged KV blocks that leaves, the way vLLM V1 sizes it.

Per GPU, vLLM reserves ``total x gpu_memory_utilization`` and gives the KV cache what is left after the
weights (split by TP), the non-torch memory (CUDA context, NCCL buffers) and the activation peak of its
profiling forward pass (``gpu_worker.determine_available_memory``). The cache is cut into pages of
``block_size`` tokens. With the hybrid allocator (vLLM >= 0.10) full-attention and sliding-window layers
are grouped (``min(#full, #sliding)`` layers a group) and share one page pool; a sliding group only keeps
the blocks of its window (reference/vllm_k8s_facts.md §6a).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from backends.errors import ConfigError
from backends.twin.engine_config import TwinConfig
from manifests.fit import too_large_for_one_node
from manifests.model_profiles import ModelProfile

GIB = 1024**3

# Non-torch memory vLLM's profiler reports (CUDA context, cuBLAS workspace; plus NCCL and custom
# all-reduce buffers with TP > 1). Logged "non_torch_memory takes 0.35GiB" for one RTX 3090 (vLLM issue
# #10517), 0.20 GiB per worker at TP 4 and 0.73 GiB at TP 2 (vLLM issue #14447, nlzy/vllm-gfx906 #10).
NON_TORCH_BYTES_SINGLE_GPU = int(0.35 * GIB)
NON_TORCH_BYTES_TENSOR_PARALLEL = int(0.75 * GIB)

# The profiling forward pass runs max_num_batched_tokens tokens; its peak holds one layer's temporaries:
# a few hidden-size residual/norm buffers, the gated MLP's gate/up/product (3 x intermediate / TP) and
# q/k/v. bf16 activations.
ACTIVATION_BYTES = 2
ACTIVATION_HIDDEN_BUFFERS = 4
# vLLM V1's dummy sampler run computes fp32 logits for max_num_seqs rows (gathered, full vocabulary) and a
# softmax of them: two fp32 copies (vllm/v1/worker/gpu_model_runner.py `_dummy_sampler_run`).
SAMPLER_LOGIT_COPIES = 2
# Gemma 3 4B/12B/27B are multimodal: vLLM also profiles the SigLIP encoder on dummy images. The 27B TP2
# log "PyTorch activation peak memory takes 2.87GiB" (max-model-len 4096, max-num-seqs 1; nlzy/vllm-gfx906
# issue #10) leaves ~2.4 GiB after the text forward computed here.
MULTIMODAL_PROFILE_BYTES = int(2.4 * GIB)
MULTIMODAL_MODELS = frozenset({"google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"})
# vLLM's CPU backend has no profiler; it keeps its own scratch of about this much next to the weights.
CPU_RUNTIME_BYTES = 4 * GIB


class KvLayout(BaseModel):
    """How one block (``block_size`` tokens) of one request maps onto pages of the shared pool."""

    model_config = ConfigDict(frozen=True)

    layers_per_group: int
    full_groups: int
    sliding_groups: int
    padding_layers: int
    page_bytes_per_gpu: int
    sliding_window: int | None
    sliding_cap_blocks: int | None

    def pages_for_blocks(self, blocks: int) -> int:
        """Pages one request holds with ``blocks`` blocks of tokens (sliding groups capped at the window)."""
        sliding = blocks if self.sliding_cap_blocks is None else min(blocks, self.sliding_cap_blocks)
        return self.full_groups * blocks + self.sliding_groups * sliding


class MemoryPlan(BaseModel):
    """The numbers vLLM logs at start-up, per GPU (bytes) unless named otherwise."""

    model_config = ConfigDict(frozen=True)

    total_bytes: int
    requested_bytes: int
    weight_bytes: int
    non_torch_bytes: int
    activation_peak_bytes: int
    kv_cache_bytes: int
    layout: KvLayout
    num_gpu_blocks: int
    block_size: int
    kv_cache_tokens: int
    max_model_len: int
    max_concurrency: float

    @property
    def pages_per_max_len_request(self) -> int:
        return self.layout.pages_for_blocks(math.ceil(self.max_model_len / self.block_size))

    def max_concurrency_at(self, context_tokens: int) -> float:
        """vLLM's "Maximum concurrency for N tokens per request: X.XXx"."""
        pages = self.layout.pages_for_blocks(math.ceil(context_tokens / self.block_size))
        return self.num_gpu_blocks / pages if pages else math.inf


def kv_layout(config: TwinConfig) -> KvLayout:
    model = config.model
    tp = config.tensor_parallel_size
    bytes_per_token_layer = model.kv_bytes_per_token_layer_per_gpu(tp, config.kv_dtype_bytes)
    n_full, n_sliding = model.num_global_layers, model.num_sliding_layers
    window = model.sliding_window if n_sliding else None
    if config.hybrid_kv_cache and n_full and n_sliding:
        group = min(n_full, n_sliding)
        full_groups, sliding_groups = math.ceil(n_full / group), math.ceil(n_sliding / group)
        padding = full_groups * group + sliding_groups * group - model.num_layers
        cap = None if window is None else math.ceil((window - 1) / config.block_size) + 1
        return KvLayout(
            layers_per_group=group,
            full_groups=full_groups,
            sliding_groups=sliding_groups,
            padding_layers=padding,
            page_bytes_per_gpu=group * config.block_size * bytes_per_token_layer,
            sliding_window=window,
            sliding_cap_blocks=cap,
        )
    return KvLayout(
        layers_per_group=model.num_layers,
        full_groups=1,
        sliding_groups=0,
        padding_layers=0,
        page_bytes_per_gpu=model.num_layers * config.block_size * bytes_per_token_layer,
        sliding_window=None,
        sliding_cap_blocks=None,
    )


def activation_peak_bytes(config: TwinConfig) -> int:
    model = config.model
    tp = config.tensor_parallel_size
    tokens = config.resolved_max_num_batched_tokens
    per_token = (
        ACTIVATION_HIDDEN_BUFFERS * model.hidden_size
        + 3 * model.peak_intermediate_size // tp
        + (model.num_attention_heads + 2 * model.num_kv_heads) * model.head_dim // tp
    ) * ACTIVATION_BYTES
    logits = config.resolved_max_num_seqs * model.vocab_size * 4 * SAMPLER_LOGIT_COPIES
    multimodal = (
        MULTIMODAL_PROFILE_BYTES if model.hf_id in MULTIMODAL_MODELS else model.multimodal_profile_bytes
    )
    return tokens * per_token + logits + multimodal


def plan_memory(config: TwinConfig) -> MemoryPlan:
    """Size the KV cache; a model that cannot hold one max-model-len request is a ConfigError with numbers."""
    acc = config.accelerator
    model = config.model
    tp = config.tensor_parallel_size
    total = acc.usable_memory_bytes
    requested = int(total * config.gpu_memory_utilization)
    weights = math.ceil(model.weight_bytes / tp)
    if acc.is_cpu:
        non_torch, activation = CPU_RUNTIME_BYTES, 0
    else:
        non_torch = NON_TORCH_BYTES_TENSOR_PARALLEL if tp > 1 else NON_TORCH_BYTES_SINGLE_GPU
        activation = activation_peak_bytes(config)
    kv_bytes = requested - weights - non_torch - activation
    if acc.is_cpu and config.cpu_kv_cache_gib is not None:
        # VLLM_CPU_KVCACHE_SPACE fixes the cache; it must still fit next to the weights.
        kv_bytes = min(int(config.cpu_kv_cache_gib * GIB), kv_bytes)
    layout = kv_layout(config)
    where = f"{tp}x{acc.display_name}"
    too_large = None if acc.is_cpu else too_large_for_one_node(model, config.gpu_memory_utilization)
    if too_large and kv_bytes < layout.page_bytes_per_gpu:
        raise ConfigError(too_large)
    if kv_bytes < layout.page_bytes_per_gpu:
        raise ConfigError(
            f"{model.name} does not fit {where}: per GPU {_gib(weights)} of weights + "
            f"{_gib(non_torch + activation)} runtime/activations leave {_gib(max(kv_bytes, 0))} for the KV "
            f"cache out of {_gib(requested)} ({config.gpu_memory_utilization:g} x {_gib(total)}); "
            "use more GPUs, a larger GPU or a smaller model"
        )
    num_blocks = kv_bytes // layout.page_bytes_per_gpu
    max_len = config.resolved_max_model_len
    groups = layout.full_groups + layout.sliding_groups
    plan = MemoryPlan(
        total_bytes=total,
        requested_bytes=requested,
        weight_bytes=weights,
        non_torch_bytes=non_torch,
        activation_peak_bytes=activation,
        kv_cache_bytes=kv_bytes,
        layout=layout,
        num_gpu_blocks=num_blocks,
        block_size=config.block_size,
        # vLLM reports pool pages / groups x block size as "GPU KV cache size: N tokens".
        kv_cache_tokens=num_blocks // groups * config.block_size,
        max_model_len=max_len,
        max_concurrency=0.0,
    )
    plan = plan.model_copy(update={"max_concurrency": plan.max_concurrency_at(max_len)})
    if plan.pages_per_max_len_request > num_blocks:
        fits = _longest_fitting_len(layout, num_blocks, config.block_size)
        needed = plan.pages_per_max_len_request * layout.page_bytes_per_gpu
        raise ConfigError(
            f"max-model-len {max_len:,} needs {_gib(needed)} of KV cache per GPU for one request, but "
            f"{where} leaves {_gib(kv_bytes)} after {_gib(weights)} of weights; "
            f"set --max-model-len {fits:,} or less, or use more GPUs"
        )
    return plan


def _longest_fitting_len(layout: KvLayout, num_blocks: int, block_size: int) -> int:
    low, high = 0, num_blocks
    while low < high:
        mid = (low + high + 1) // 2
        if layout.pages_for_blocks(mid) <= num_blocks:
            low = mid
        else:
            high = mid - 1
    return low * block_size


def weights_per_gpu(model: ModelProfile, tp: int) -> int:
    return math.ceil(model.weight_bytes / tp)


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
