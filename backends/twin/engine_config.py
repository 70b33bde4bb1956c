"""What a twin serves: model, hardware and vLLM's engine arguments, with vLLM's defaults resolved.

The same knobs as a Kubernetes deployment of vLLM (``--tensor-parallel-size``, ``--gpu-memory-utilization``,
``--max-model-len``, ``--max-num-seqs``, ``--max-num-batched-tokens``, chunked prefill, prefix caching), so
"deploy to twin" and "deploy to cluster" take one form.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends.errors import ConfigError
from manifests.gpus import ACCELERATORS, AcceleratorProfile, GpuType, vllm_scheduler_defaults
from manifests.model_catalog import all_profiles
from manifests.model_profiles import ModelProfile, model_profile
from manifests.spec import DeploymentSpec, KvCacheDtype, fp8_kv_error, kv_cache_dtype_bytes

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_BLOCK_SIZE = 16


class TwinConstants(BaseModel):
    """Scales on the roofline's end-to-end constants (1.0: the defaults in ``roofline.py``).

    The ones kernel timings cannot pin down: host overhead per step and per scheduled sequence, and the
    effective bandwidth and matmul efficiencies. ``twin calibrate`` fits them to measured sweeps.
    """

    model_config = ConfigDict(frozen=True)

    step_overhead_scale: float = Field(default=1.0, gt=0)
    per_sequence_scale: float = Field(default=1.0, gt=0)
    bandwidth_scale: float = Field(default=1.0, gt=0, description="weight, KV and activation streaming")
    matmul_scale: float = Field(default=1.0, gt=0, description="GEMM and prefill-attention compute")

    @property
    def is_default(self) -> bool:
        return self == TwinConstants()


class TwinConfig(BaseModel):
    """One simulated vLLM replica; ``None`` fields take vLLM's defaults (the ``resolved_*`` properties)."""

    model_config = ConfigDict(frozen=True)

    model: ModelProfile
    gpu: GpuType
    gpu_count: int = Field(default=1, description="tensor-parallel size (GPUs, or CPU sockets, of one node)")
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    max_model_len: int | None = Field(default=None, description="None: the model's max_position_embeddings")
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE
    kv_cache_dtype: KvCacheDtype = Field(default="auto", description="vLLM --kv-cache-dtype (fp8 halves KV)")
    cpu_kv_cache_gib: float | None = Field(
        default=None,
        description="CPU backend: VLLM_CPU_KVCACHE_SPACE (GiB); None: memory x utilization, as on a GPU",
    )
    constants: TwinConstants = Field(
        default_factory=TwinConstants, description="calibration scales on the roofline's constants"
    )
    hybrid_kv_cache: bool = Field(
        default=True,
        description=(
            "vLLM >= 0.10 hybrid KV allocator: sliding-window layers keep only their window. False: every "
            "layer is sized as full attention, as vLLM 0.8/0.9 (the seed article's v0.8.2) did"
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> TwinConfig:
        tp = self.gpu_count
        if tp < 1:
            raise ConfigError(f"GPU count (tensor-parallel size) must be at least 1, not {tp}")
        heads, kv_heads = self.model.num_attention_heads, self.model.num_kv_heads
        if heads % tp or (kv_heads % tp and tp % kv_heads):
            fits = [
                n for n in range(1, heads + 1) if heads % n == 0 and (kv_heads % n == 0 or n % kv_heads == 0)
            ]
            raise ConfigError(
                f"tensor-parallel size {tp} does not divide {self.model.name}'s {kv_heads} KV heads "
                f"({heads} attention heads); use a GPU count in {', '.join(map(str, fits))}"
            )
        fp8_error = fp8_kv_error(self.gpu, self.kv_cache_dtype)
        if fp8_error is not None:
            raise ConfigError(fp8_error)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"gpu-memory-utilization must be in (0, 1], not {self.gpu_memory_utilization:g} "
                "(vLLM's default is 0.9)"
            )
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ConfigError(
                f"block size must be one of 8, 16, 32, 64, 128 tokens (vLLM's default 16), "
                f"not {self.block_size}"
            )
        max_len = self.max_model_len
        if max_len is not None and not 16 <= max_len <= self.model.max_position_embeddings:
            raise ConfigError(
                f"max-model-len {max_len:,} is outside 16..{self.model.max_position_embeddings:,} "
                f"({self.model.name}'s max_position_embeddings)"
            )
        for name, value in (
            ("max-num-seqs", self.max_num_seqs),
            ("max-num-batched-tokens", self.max_num_batched_tokens),
        ):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        batched = self.max_num_batched_tokens
        if batched is not None and not self.enable_chunked_prefill and batched < self.resolved_max_model_len:
            raise ConfigError(
                f"max-num-batched-tokens ({batched}) is smaller than max-model-len "
                f"({self.resolved_max_model_len}) with chunked prefill off: long prompts could never be "
                "scheduled; raise it or enable chunked prefill"
            )
        return self

    @classmethod
    def build(
        cls,
        model: str | ModelProfile,
        gpu: str | GpuType,
        gpu_count: int = 1,
        **engine_args: Any,
    ) -> TwinConfig:
        """From user-facing names (``gemma-3-27b-it``, ``h100``); unknown names are one-line ConfigErrors."""
        profile = model if isinstance(model, ModelProfile) else _model_or_error(model)
        return cls(model=profile, gpu=_gpu_or_error(gpu), gpu_count=gpu_count, **engine_args)

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> TwinConfig:
        """From the Kubernetes renderer's spec: the same form deploys to a cluster or to the twin."""
        args: dict[str, Any] = {
            "gpu_memory_utilization": spec.gpu_memory_utilization,
            "max_model_len": spec.max_model_len,
            "max_num_seqs": spec.max_num_seqs,
            "max_num_batched_tokens": spec.max_num_batched_tokens,
            "enable_chunked_prefill": spec.enable_chunked_prefill,
        }
        if spec.enable_prefix_caching is not None:
            args["enable_prefix_caching"] = spec.enable_prefix_caching
        if ACCELERATORS[spec.gpu].is_cpu:
            args["cpu_kv_cache_gib"] = float(spec.cpu_kv_cache_gib)
        args["kv_cache_dtype"] = spec.kv_cache_dtype
        return cls.build(spec.profile or spec.model, spec.gpu, spec.gpu_count, **args)

    # -- vLLM's defaults ------------------------------------------------------------------------------

    @property
    def accelerator(self) -> AcceleratorProfile:
        return ACCELERATORS[self.gpu]

    @property
    def tensor_parallel_size(self) -> int:
        return self.gpu_count

    @property
    def kv_dtype_bytes(self) -> float:
        """Bytes of one cached K/V element (the twin serves bf16 models; fp8 KV is 1)."""
        return kv_cache_dtype_bytes(self.kv_cache_dtype, "bfloat16")

    @property
    def resolved_max_model_len(self) -> int:
        return self.max_model_len or self.model.max_position_embeddings

    @property
    def resolved_max_num_batched_tokens(self) -> int:
        """vLLM ``EngineArgs`` defaults for ``vllm serve`` (reference/vllm_k8s_facts.md §4)."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        if not self.enable_chunked_prefill:
            return self.resolved_max_model_len
        batched, _ = vllm_scheduler_defaults(self.gpu, self.gpu_count)
        return batched

    @property
    def resolved_max_num_seqs(self) -> int:
        if self.max_num_seqs is not None:
            return self.max_num_seqs
        _, seqs = vllm_scheduler_defaults(self.gpu, self.gpu_count)
        return min(seqs, self.resolved_max_num_batched_tokens)

    @property
    def label(self) -> str:
        """``2xH100 gemma-3-27b-it``-style name for tables and logs."""
        return f"{self.gpu_count}x{self.accelerator.display_name} {self.model.name}"


def _model_or_error(name: str) -> ModelProfile:
    try:
        return model_profile(name)
    except ValueError:
        raise ConfigError(
            f"unknown model {name!r}; known: {', '.join(all_profiles())} (servedeck models list), or "
            "give its config.json with --model-config PATH"
        ) from None


def _gpu_or_error(gpu: str | GpuType) -> GpuType:
    try:
        return GpuType(str(gpu).lower())
    except ValueError:
        known = ", ".join(g.value for g in GpuType)
        raise ConfigError(f"unknown GPU type {gpu!r}; known: {known}") from None
