"""Does a model fit the hardware, and how much KV cache (tokens, concurrent requests) is left?

Per GPU under tensor parallelism (TP) and, across nodes, pipeline parallelism (PP), vLLM's budget is
``gpu_memory_utilization x`` the memory CUDA reports. From it come the weights (``weight_bytes / (TP x PP)``),
the peak activations of a ``max_num_batched_tokens`` forward pass, the sampler's fp32 logits for
``max_num_seqs`` rows, and a runtime allowance (CUDA graphs, NCCL buffers, allocator slack); the rest is
KV cache. The runtime allowance is an estimate: compare with vLLM's start-up line "Available KV cache
memory: X GiB" and its "GPU KV cache size: N tokens" (CAPACITY.md).

KV cache is paged in blocks of 16 tokens, counted two ways:
- ``naive``: every layer is full attention (vLLM V0 and V1 before the hybrid allocator);
- ``hybrid``: vLLM >= 0.10's hybrid allocator for sliding-window models (Gemma 3): layers are grouped in
  equal-size groups that share one block pool; a full-attention group needs ceil(ctx / 16) blocks per
  request, a sliding-window group at most ceil((window - 1) / 16) + 1.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from manifests.catalog import Catalog, default_catalog
from manifests.errors import DoesNotFitError, SpecError
from manifests.gpus import ACCELERATORS, GIB, GpuType, vllm_scheduler_defaults
from manifests.model_profiles import ModelProfile
from manifests.spec import (
    DTYPE_BYTES,
    DTYPE_SHORT,
    DeploymentSpec,
    build_spec,
    default_deployment_name,
    kv_cache_dtype_bytes,
    short_gpu_name,
)

BLOCK_SIZE = 16
RUNTIME_BYTES_PER_GPU = 2 * GIB  # CUDA graphs + NCCL + non-torch allocations (estimate, see CAPACITY.md)
RUNTIME_BYTES_PER_CPU_RANK = 4 * GIB  # Python, torch, oneDNN scratch per vLLM CPU worker
LOGIT_BYTES = 4  # the sampler's dummy run holds fp32 logits for max_num_seqs rows


class KvAllocator(StrEnum):
    HYBRID = "hybrid"
    NAIVE = "naive"


class FitVerdict(StrEnum):
    FITS = "fits"
    WEIGHTS_TOO_LARGE = "weights_too_large"
    NO_ROOM_FOR_KV = "no_room_for_kv"
    CONTEXT_TOO_LONG = "context_too_long"
    HOST_MEMORY_TOO_SMALL = "host_memory_too_small"


class MemoryPerDevice(BaseModel):
    """Bytes on one GPU (or, for CPU nodes, in the pod's memory across its TP ranks)."""

    model_config = ConfigDict(frozen=True)

    device_bytes: int
    budget_bytes: int
    weights_bytes: int
    activation_bytes: int
    sampler_bytes: int
    runtime_bytes: int
    kv_bytes: int  # may be negative when the rest does not fit

    @property
    def non_kv_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.sampler_bytes + self.runtime_bytes


class KvLayout(BaseModel):
    """How a request's tokens map to KV blocks on one GPU."""

    model_config = ConfigDict(frozen=True)

    allocator: KvAllocator
    group_size: int  # layers per group (layers sharing one block id)
    full_attention_groups: int
    sliding_window_groups: int
    sliding_window: int | None
    block_bytes: int  # one block of one group on one GPU

    @property
    def num_groups(self) -> int:
        return self.full_attention_groups + self.sliding_window_groups

    def blocks_per_request(self, context_tokens: int) -> int:
        full = math.ceil(context_tokens / BLOCK_SIZE)
        if self.sliding_window_groups and self.sliding_window:
            windowed = min(full, math.ceil((self.sliding_window - 1) / BLOCK_SIZE) + 1)
        else:
            windowed = full
        return self.full_attention_groups * full + self.sliding_window_groups * windowed

    def bytes_per_request(self, context_tokens: int) -> int:
        return self.blocks_per_request(context_tokens) * self.block_bytes


class KvCapacity(BaseModel):
    model_config = ConfigDict(frozen=True)

    layout: KvLayout
    num_blocks: int

    @property
    def allocator(self) -> KvAllocator:
        return self.layout.allocator

    @property
    def tokens(self) -> int:
        """vLLM's "GPU KV cache size: N tokens": blocks per group x block size."""
        return self.num_blocks // self.layout.num_groups * BLOCK_SIZE

    def max_concurrency(self, context_tokens: int) -> float:
        """Requests of ``context_tokens`` (prompt + output) that fit at once; vLLM's "Maximum concurrency"."""
        return self.num_blocks / self.layout.blocks_per_request(context_tokens)

    def longest_context(self) -> int:
        """The largest context one request can hold (what vLLM checks max_model_len against)."""
        low, high = 0, 1 << 24
        while low < high:
            mid = (low + high + 1) // 2
            if self.layout.blocks_per_request(mid) <= self.num_blocks:
                low = mid
            else:
                high = mid - 1
        return low


class FitResult(BaseModel):
    """The verdict with its numbers; ``message`` is one line either way."""

    model_config = ConfigDict(frozen=True)

    verdict: FitVerdict
    message: str
    model: str
    dtype: str
    gpu: GpuType
    gpu_count: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    memory: MemoryPerDevice
    allocator: KvAllocator = Field(description="the allocator the pinned vLLM uses for this model")
    hybrid: KvCapacity | None
    naive: KvCapacity | None

    @property
    def fits(self) -> bool:
        return self.verdict == FitVerdict.FITS

    @property
    def kv(self) -> KvCapacity | None:
        return self.hybrid if self.allocator == KvAllocator.HYBRID else self.naive

    def max_concurrency(self, context_tokens: int, allocator: KvAllocator | None = None) -> float:
        """Concurrent requests of ``context_tokens``; ``allocator`` None = the one the pinned vLLM uses."""
        capacity = {None: self.kv, KvAllocator.HYBRID: self.hybrid, KvAllocator.NAIVE: self.naive}[allocator]
        return capacity.max_concurrency(context_tokens) if capacity else 0.0

    def require(self) -> FitResult:
        if not self.fits:
            raise DoesNotFitError(self)
        return self


def model_display_name(profile: ModelProfile) -> str:
    """``gemma-3-27b-it`` -> ``Gemma 3 27B``; other models keep their name."""
    match = re.fullmatch(r"gemma-3-(\d+)b(-it)?", profile.name)
    return f"Gemma 3 {match.group(1)}B" if match else profile.name


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def _group_layout(profile: ModelProfile, pp: int) -> tuple[KvAllocator, int, int, int]:
    """(allocator, group size, full groups, sliding groups) for one pipeline stage, as vLLM groups layers."""
    full_layers = math.ceil(profile.num_global_layers / pp)
    sliding_layers = math.ceil(profile.num_sliding_layers / pp) if profile.sliding_window else 0
    if not sliding_layers or not full_layers:
        return KvAllocator.NAIVE, full_layers + sliding_layers, 1, 0
    smaller, larger = min(full_layers, sliding_layers), max(full_layers, sliding_layers)
    # vLLM groups by the smaller layer count, unless the counts are close (then one padded size fits both).
    group = larger if larger < smaller * 1.25 else smaller
    return KvAllocator.HYBRID, group, math.ceil(full_layers / group), math.ceil(sliding_layers / group)


def kv_layouts(
    profile: ModelProfile,
    tensor_parallel_size: int,
    pipeline_parallel_size: int = 1,
    dtype: str = "bfloat16",
    kv_cache_dtype: str = "auto",
) -> tuple[KvLayout | None, KvLayout]:
    """(hybrid layout or None for models without sliding windows, naive layout) on one GPU."""
    per_layer_token = profile.kv_bytes_per_token_layer_per_gpu(
        tensor_parallel_size, kv_cache_dtype_bytes(kv_cache_dtype, dtype)
    )
    layers_per_stage = math.ceil(profile.num_layers / pipeline_parallel_size)
    naive = KvLayout(
        allocator=KvAllocator.NAIVE,
        group_size=layers_per_stage,
        full_attention_groups=1,
        sliding_window_groups=0,
        sliding_window=None,
        block_bytes=layers_per_stage * BLOCK_SIZE * per_layer_token,
    )
    allocator, group, full_groups, sliding_groups = _group_layout(profile, pipeline_parallel_size)
    if allocator == KvAllocator.NAIVE:
        return None, naive
    hybrid = KvLayout(
        allocator=KvAllocator.HYBRID,
        group_size=group,
        full_attention_groups=full_groups,
        sliding_window_groups=sliding_groups,
        sliding_window=profile.sliding_window,
        block_bytes=group * BLOCK_SIZE * per_layer_token,
    )
    return hybrid, naive


def check_fit(
    profile: ModelProfile,
    gpu: GpuType,
    gpu_count: int,
    *,
    pipeline_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    dtype: str = "bfloat16",
    kv_cache_dtype: str = "auto",
    cpu_kv_cache_gib: int = 40,
    cpu_memory_gib: float | None = None,
) -> FitResult:
    """Fit ``profile`` on ``gpu_count`` x ``gpu`` (= TP x PP). "Does not fit" is a verdict, not an error."""
    accelerator = ACCELERATORS[gpu]
    pp = pipeline_parallel_size
    tp = gpu_count // pp
    default_batched, default_seqs = vllm_scheduler_defaults(gpu, tp)
    batched = max_num_batched_tokens or default_batched
    seqs = max_num_seqs or min(default_seqs, batched)
    context = max_model_len or profile.max_position_embeddings
    weights_total = profile.weight_bytes_as(DTYPE_BYTES[dtype])  # profiles hold bf16 (or quantized) sizes
    activation = int(
        batched * (2 * profile.peak_intermediate_size / tp + 4 * profile.hidden_size) * DTYPE_BYTES[dtype]
    )
    sampler = seqs * profile.vocab_size * LOGIT_BYTES

    if accelerator.is_cpu:
        host = int((cpu_memory_gib or accelerator.usable_memory_bytes / GIB) * GIB)
        runtime = RUNTIME_BYTES_PER_CPU_RANK * tp
        kv_space = cpu_kv_cache_gib * GIB * tp
        memory = MemoryPerDevice(
            device_bytes=host,
            budget_bytes=host,
            weights_bytes=weights_total,
            activation_bytes=activation,
            sampler_bytes=sampler,
            runtime_bytes=runtime,
            kv_bytes=kv_space,
        )
        kv_per_rank = cpu_kv_cache_gib * GIB
    else:
        device = accelerator.usable_memory_bytes
        budget = int(device * gpu_memory_utilization)
        weights = math.ceil(weights_total / (tp * pp))
        runtime = RUNTIME_BYTES_PER_GPU
        memory = MemoryPerDevice(
            device_bytes=device,
            budget_bytes=budget,
            weights_bytes=weights,
            activation_bytes=activation,
            sampler_bytes=sampler,
            runtime_bytes=runtime,
            kv_bytes=budget - weights - activation - sampler - runtime,
        )
        kv_per_rank = memory.kv_bytes

    hybrid_layout, naive_layout = kv_layouts(profile, tp, pp, dtype, kv_cache_dtype)
    blocks_room = max(kv_per_rank, 0)
    hybrid = (
        KvCapacity(layout=hybrid_layout, num_blocks=blocks_room // hybrid_layout.block_bytes)
        if hybrid_layout
        else None
    )
    naive = KvCapacity(layout=naive_layout, num_blocks=blocks_room // naive_layout.block_bytes)
    allocator = KvAllocator.HYBRID if hybrid else KvAllocator.NAIVE
    used = hybrid or naive

    weight_label = profile.weight_format if profile.is_quantized else DTYPE_SHORT[dtype]
    kv_label = " + fp8 KV" if kv_cache_dtype.startswith("fp8") else ""
    label = f"{model_display_name(profile)} {weight_label}{kv_label}"
    hardware = accelerator.display_name if accelerator.is_cpu else f"{gpu_count}x{short_gpu_name(gpu)}"
    smallest = _smallest_fitting_count(profile, gpu, gpu_count, gpu_memory_utilization, dtype)
    hint = f"; smallest that fits: {smallest}x{short_gpu_name(gpu)}" if smallest else ""
    if not smallest and not accelerator.is_cpu:
        too_large = too_large_for_one_node(profile, gpu_memory_utilization, dtype)
        hint = f"; {too_large}" if too_large else hint
    verdict, message = _verdict(
        accelerator.is_cpu, memory, used, context, label, hardware, hint, gpu_memory_utilization
    )
    return FitResult(
        verdict=verdict,
        message=message,
        model=profile.hf_id,
        dtype=dtype,
        gpu=gpu,
        gpu_count=gpu_count,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=context,
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
        memory=memory,
        allocator=allocator,
        hybrid=hybrid,
        naive=naive,
    )


def _verdict(
    is_cpu: bool,
    memory: MemoryPerDevice,
    kv: KvCapacity,
    context: int,
    label: str,
    hardware: str,
    hint: str,
    utilization: float,
) -> tuple[FitVerdict, str]:
    if is_cpu:
        needed = memory.non_kv_bytes + memory.kv_bytes
        if needed > memory.budget_bytes:
            return FitVerdict.HOST_MEMORY_TOO_SMALL, (
                f"{label} does not fit {hardware}: weights {_gib(memory.weights_bytes)} + KV cache "
                f"{_gib(memory.kv_bytes)} + runtime {_gib(memory.runtime_bytes + memory.activation_bytes)} "
                f"> {_gib(memory.budget_bytes)} pod memory; lower cpu_kv_cache_gib or use a larger node"
            )
    else:
        room = memory.budget_bytes
        if memory.weights_bytes > room:
            return FitVerdict.WEIGHTS_TOO_LARGE, (
                f"{label} does not fit {hardware}: weights {_gib(memory.weights_bytes)} > {_gib(room)} "
                f"usable per GPU ({utilization:.2f} x {_gib(memory.device_bytes)}){hint}"
            )
        if memory.kv_bytes <= 0 or kv.num_blocks < kv.layout.num_groups:
            return FitVerdict.NO_ROOM_FOR_KV, (
                f"{label} does not fit {hardware}: weights {_gib(memory.weights_bytes)} + activations, "
                f"sampler and runtime {_gib(memory.non_kv_bytes - memory.weights_bytes)} leave no KV "
                f"cache in {_gib(room)} per GPU{hint}"
            )
    longest = kv.longest_context()
    if longest < context:
        return FitVerdict.CONTEXT_TOO_LONG, (
            f"{label} on {hardware}: KV cache holds {kv.tokens:,} tokens and one request at most "
            f"{longest:,}, but max-model-len is {context:,}; set max-model-len <= {longest:,} or add GPUs"
        )
    per = "node" if is_cpu else "GPU"
    return FitVerdict.FITS, (
        f"{label} fits {hardware}: weights {_gib(memory.weights_bytes)}/{per}, KV cache "
        f"{_gib(memory.kv_bytes)}/{per} = {kv.tokens:,} tokens, {kv.max_concurrency(context):.2f}x "
        f"requests of {context:,} tokens"
    )


def _smallest_fitting_count(
    profile: ModelProfile, gpu: GpuType, current: int, utilization: float, dtype: str
) -> int | None:
    """The fewest GPUs of this type (one node) whose per-GPU budget holds the weights plus the runtime."""
    accelerator = ACCELERATORS[gpu]
    if accelerator.is_cpu:
        return None
    budget = accelerator.usable_memory_bytes * utilization
    weights = profile.weight_bytes_as(DTYPE_BYTES[dtype])
    for count in default_catalog().node_gpu_counts(gpu):
        if count <= current:
            continue
        if weights / count + RUNTIME_BYTES_PER_GPU + GIB < budget:
            return count
    return None


NODE_GPUS = 8  # the largest single-node GPU count of every accelerator here (multi-node needs LWS + PP)


def too_large_for_one_node(
    profile: ModelProfile, utilization: float = 0.9, dtype: str = "bfloat16"
) -> str | None:
    """One line when the weights alone exceed 8 GPUs of every type (so one node cannot serve the model)."""
    weights = profile.weight_bytes_as(DTYPE_BYTES[dtype])
    gpus = [a for a in ACCELERATORS.values() if not a.is_cpu]
    largest = max(gpus, key=lambda a: a.usable_memory_bytes)
    room = NODE_GPUS * (largest.usable_memory_bytes * utilization - RUNTIME_BYTES_PER_GPU - GIB)
    if weights <= room:
        return None
    return (
        f"{profile.name} has {_gib(weights)} of weights, more than {NODE_GPUS} GPUs of any type hold "
        f"({NODE_GPUS}x{short_gpu_name(largest.gpu)}: {_gib(room)} after runtime at {utilization:.2f}); "
        "use a quantized checkpoint or span nodes (gpu_count 16+, pipeline parallel)"
    )


def fit_spec(spec: DeploymentSpec, catalog: Catalog | None = None) -> FitResult:
    """Fit for a spec; ``SpecError`` when the model has no built-in profile (fit cannot be computed)."""
    profile = spec.profile
    if profile is None:
        raise SpecError(
            f"no size profile for {spec.model}; give its config.json with --model-config PATH (built-in "
            "models: servedeck models list), or render anyway with --skip-fit-check"
        )
    cpu_memory = spec.pod_resources(catalog).memory_gib if spec.is_cpu else None
    return check_fit(
        profile,
        spec.gpu,
        spec.gpu_count,
        pipeline_parallel_size=spec.pipeline_parallel_size,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        max_model_len=spec.effective_max_model_len,
        max_num_seqs=spec.effective_max_num_seqs,
        max_num_batched_tokens=spec.effective_max_num_batched_tokens,
        dtype=spec.dtype,
        kv_cache_dtype=spec.kv_cache_dtype,
        cpu_kv_cache_gib=spec.cpu_kv_cache_gib,
        cpu_memory_gib=cpu_memory,
    )


# Below the largest context the fit model finds: our runtime allowance is an estimate, and vLLM refuses to
# start when one max-model-len request does not fit its measured KV cache.
AUTO_MAX_LEN_MARGIN = 0.95


def _fitting_len(longest: int) -> int:
    target = int(longest * AUTO_MAX_LEN_MARGIN)
    return target // 1024 * 1024 if target >= 4096 else max(BLOCK_SIZE, target // BLOCK_SIZE * BLOCK_SIZE)


def size_spec(
    spec: DeploymentSpec, *, choose_count: bool = False, catalog: Catalog | None = None
) -> tuple[DeploymentSpec, FitResult, list[str]]:
    """The spec sized by the fit: with ``choose_count`` the fewest GPUs (TP, then nodes) the weights fit,
    and without a max_model_len the longest context one request's KV cache holds (below the model's own
    maximum). Returns the spec, its fit (which may still say "does not fit") and what was chosen."""
    notes: list[str] = []
    profile = spec.profile
    if profile is None:
        return spec, fit_spec(spec, catalog), notes
    default_name = default_deployment_name(spec.model, spec.gpu, spec.gpu_count)
    keep_name = spec.name != default_name
    fields = spec.model_dump(exclude=set() if keep_name else {"name"})
    fit = fit_spec(spec, catalog)
    if choose_count:
        sized = False
        for count in default_catalog().allowed_gpu_counts(spec.gpu):
            try:
                trial = build_spec({**fields, "gpu_count": count})
            except SpecError:
                continue  # TP must divide the heads; the next count may
            trial_fit = fit_spec(trial, catalog)
            usable = trial_fit.fits or (
                trial_fit.verdict == FitVerdict.CONTEXT_TOO_LONG and spec.max_model_len is None
            )
            if usable:
                spec, fit, sized = trial, trial_fit, True
                notes.append(f"gpu count {count}: the fewest {short_gpu_name(spec.gpu)} the weights fit")
                break
        if not sized:
            return spec, fit, notes
        fields = spec.model_dump(exclude=set() if keep_name else {"name"})
    kv = fit.kv
    if spec.max_model_len is None and fit.verdict == FitVerdict.CONTEXT_TOO_LONG and kv is not None:
        longest = kv.longest_context()
        if longest >= BLOCK_SIZE:
            length = _fitting_len(longest)
            spec = build_spec({**fields, "max_model_len": length})
            fit = fit_spec(spec, catalog)
            notes.append(
                f"max-model-len {length:,}: one request's KV cache holds {longest:,} tokens on "
                f"{spec.hardware_label} ({profile.max_position_embeddings:,} is the model's maximum)"
            )
    return spec, fit, notes
