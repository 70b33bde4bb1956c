"""``DeploymentSpec``: one typed description of a vLLM deployment, from which every manifest is rendered.

The spec names where the Hugging Face token comes from (an env var name or a file path), never the token.
Build specs from untrusted input with ``build_spec`` (one-line ``SpecError``); the model constructor raises
pydantic's ``ValidationError`` (inputs hidden from its text).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from manifests.catalog import Catalog, MachineType, default_catalog
from manifests.errors import SpecError
from manifests.gpus import ACCELERATORS, AcceleratorProfile, GpuType, vllm_scheduler_defaults
from manifests.model_catalog import find_profile
from manifests.model_profiles import MODELS, ModelProfile
from manifests.secrets import secret_in_arg

# vllm/vllm-openai v0.11.2 (and its CPU twin, same version) is pinned because: it is V1-only with the hybrid
# KV-cache allocator that sizes Gemma 3's sliding-window layers by their window (>= v0.10), it serves Gemma 3
# (>= v0.8), its documented defaults are the ones our fit model uses (gpu_memory_utilization 0.9, block 16,
# chunked prefill on), and both tags are published (Docker Hub; vLLM's public ECR CPU release repo).
VLLM_VERSION = "v0.11.2"
GPU_IMAGE = f"vllm/vllm-openai:{VLLM_VERSION}"
CPU_IMAGE = f"public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:{VLLM_VERSION}"

MAX_NAME_LENGTH = 40  # leaves room for pod/PVC suffixes (<name>-hf-cache, LWS <name>-<group>-<index>)
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_HF_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN_LIKE = re.compile(r"^hf_[A-Za-z0-9]{20,}$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")

# Flags the spec owns: giving them again in extra_args would contradict the rendered ones.
_SPEC_FLAGS: dict[str, str] = {
    "--model": "model",
    "--tensor-parallel-size": "gpu_count",
    "-tp": "gpu_count",
    "--pipeline-parallel-size": "gpu_count (multi-node)",
    "-pp": "gpu_count (multi-node)",
    "--host": "(fixed: 0.0.0.0)",
    "--port": "(fixed: 8000)",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--max-model-len": "max_model_len",
    "--max-num-seqs": "max_num_seqs",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--enable-chunked-prefill": "enable_chunked_prefill",
    "--no-enable-chunked-prefill": "enable_chunked_prefill",
    "--enable-prefix-caching": "enable_prefix_caching",
    "--no-enable-prefix-caching": "enable_prefix_caching",
    "--dtype": "dtype",
    "--quantization": "quantization",
    "-q": "quantization",
    "--kv-cache-dtype": "kv_cache_dtype",
    "--trust-remote-code": "trust_remote_code",
    "--hf-token": "hf_token_env / hf_token_file (tokens go in the Secret, never in args)",
}

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
DTYPE_BYTES: dict[str, float] = {"auto": 2, "bfloat16": 2, "float16": 2, "float32": 4}
DTYPE_SHORT: dict[str, str] = {"auto": "bf16", "bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
# vLLM's --quantization methods a spec may name: fp8 quantizes a 16-bit checkpoint while loading; the
# others are what a pre-quantized checkpoint's config declares (vLLM detects those without the flag).
Quantization = Literal[
    "fp8", "awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors", "bitsandbytes"
]
# An fp8 KV cache needs fp8 support in the attention kernels: Ada (L4) and Hopper (H100) have it,
# Ampere (A100) does not (NVIDIA: FP8 tensor cores from compute capability 8.9).
FP8_KV_GPUS = frozenset({GpuType.L4, GpuType.H100, GpuType.H100_MEGA})


def kv_cache_dtype_bytes(kv_cache_dtype: str, dtype: str) -> float:
    """Bytes of one cached K or V element: 1 for fp8, else the model dtype's."""
    return 1.0 if kv_cache_dtype.startswith("fp8") else DTYPE_BYTES[dtype]


def fp8_kv_error(gpu: GpuType, kv_cache_dtype: str) -> str | None:
    """Why ``kv_cache_dtype`` cannot run on ``gpu``, or None."""
    if not kv_cache_dtype.startswith("fp8") or gpu in FP8_KV_GPUS:
        return None
    if ACCELERATORS[gpu].is_cpu:
        # vLLM's CPU backend stores an FP8-E5M2 KV cache only (reference/vllm_k8s_facts.md §5d).
        if kv_cache_dtype == "fp8_e5m2":
            return None
        return f"--kv-cache-dtype {kv_cache_dtype}: vLLM's CPU backend supports fp8_e5m2 only"
    supported = ", ".join(sorted(g.value for g in FP8_KV_GPUS))
    return (
        f"--kv-cache-dtype {kv_cache_dtype} needs fp8 support, which {ACCELERATORS[gpu].display_name} lacks; "
        f"use --kv-cache-dtype auto or a GPU with fp8 ({supported})"
    )


def known_profile(model: str) -> ModelProfile | None:
    """The built-in profile for an HF id such as ``google/gemma-3-27b-it``, or None for other models."""
    profile = find_profile(model)
    if profile is not None and profile.hf_id.lower() == model.lower():
        return profile
    return None


def model_short_name(model: str) -> str:
    """``google/gemma-3-27b-it`` -> ``gemma-3-27b-it``, usable in names and label values."""
    tail = model.rsplit("/", 1)[-1].lower()
    return re.sub(r"[^a-z0-9-]+", "-", tail).strip("-") or "model"


def default_deployment_name(model: str, gpu: GpuType, gpu_count: int) -> str:
    """``gemma-3-27b-it-1xh100``, ``gemma-3-27b-it-4xl4``, ``gemma-3-1b-it-cpu-c4``: one per shape."""
    hardware = gpu.value if ACCELERATORS[gpu].is_cpu else f"{gpu_count}x{gpu.value}"
    if ACCELERATORS[gpu].is_cpu and gpu_count > 1:
        hardware = f"{gpu.value}-tp{gpu_count}"
    short = model_short_name(model)
    room = MAX_NAME_LENGTH - len(hardware) - 1
    name = f"{short[:room].rstrip('-')}-{hardware}"
    if not name[0].isalpha():
        name = f"m{name}"[:MAX_NAME_LENGTH].rstrip("-")
    return name


class DeploymentSpec(BaseModel):
    """A vLLM deployment: model, hardware, engine arguments, storage and the HF-token source."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(description="Kubernetes name of the Deployment/Service (DNS label, <= 40 chars)")
    namespace: str = "vllm"
    model: str = Field(description="Hugging Face model id, e.g. google/gemma-3-27b-it")
    gpu: GpuType
    gpu_count: int = Field(default=1, ge=1, description="GPUs per replica (TP; multiples of 8 span nodes)")
    replicas: int = Field(default=1, ge=0)
    max_model_len: int | None = Field(default=None, ge=16, description="None: the model's own maximum")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_num_seqs: int | None = Field(default=None, ge=1, description="None: vLLM's default for the GPU")
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool | None = Field(default=None, description="None: vLLM's default (on in V1)")
    dtype: Dtype = "bfloat16"
    quantization: Quantization | None = Field(default=None, description="None: what the checkpoint declares")
    kv_cache_dtype: KvCacheDtype = "auto"
    custom_profile: ModelProfile | None = Field(
        default=None, description="the model's profile read from its config.json (--model-config)"
    )
    trust_remote_code: bool = False
    spot: bool = False
    zone: str | None = Field(default=None, description="pin pods to one zone, e.g. us-central1-a")
    machine_type: str | None = Field(default=None, description="None: the catalog's default for the shape")
    image: str | None = Field(default=None, description=f"None: {GPU_IMAGE} (GPU) or {CPU_IMAGE} (CPU)")
    hf_token_env: str | None = Field(default="HF_TOKEN", description="NAME of the env var holding the token")
    hf_token_file: Path | None = Field(default=None, description="file holding the token")
    storage_gib: int = Field(default=100, ge=1, description="HF cache volume size")
    storage_throughput_mib_s: int = Field(default=2000, ge=1, description="Hyperdisk ML provisioned MiB/s")
    storage_class: str = "hyperdisk-ml"
    cpu_request: float | None = Field(default=None, gt=0, description="None: derived from the machine")
    memory_gib: int | None = Field(default=None, ge=1, description="None: derived from the machine")
    ephemeral_storage_gib: int = Field(default=120, ge=1)
    shm_gib: int | None = Field(default=None, ge=1, description="/dev/shm size limit; None: unlimited")
    cpu_kv_cache_gib: int = Field(default=40, ge=1, description="VLLM_CPU_KVCACHE_SPACE (CPU nodes)")
    cpu_omp_threads_bind: str = Field(default="auto", description="VLLM_CPU_OMP_THREADS_BIND (CPU nodes)")
    extra_args: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _token_file_replaces_default_env(cls, data: Any) -> Any:
        # hf_token_env defaults to HF_TOKEN; naming a file (and no env var) means "use the file".
        if isinstance(data, dict) and data.get("hf_token_file") is not None and "hf_token_env" not in data:
            return {**data, "hf_token_env": None}
        # A model known to be public (not gated) needs no token unless the caller names a source.
        if isinstance(data, dict) and "hf_token_env" not in data and data.get("hf_token_file") is None:
            profile = data.get("custom_profile")
            if isinstance(profile, dict):
                profile = ModelProfile.model_validate(profile)
            if not isinstance(profile, ModelProfile) and isinstance(data.get("model"), str):
                profile = find_profile(data["model"])
            if isinstance(profile, ModelProfile) and not profile.gated:
                return {**data, "hf_token_env": None}
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if len(value) > MAX_NAME_LENGTH or not _DNS_LABEL.match(value):
            raise ValueError(
                f"must be lowercase letters, digits and '-', start with a letter, at most {MAX_NAME_LENGTH} "
                "characters (e.g. gemma-3-27b-it-1xh100)"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if len(value) > 63 or not _DNS_LABEL.match(value):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-', at most 63 characters")
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        if not _HF_MODEL_ID.match(value):
            raise ValueError("must be a Hugging Face model id like google/gemma-3-27b-it")
        if "/" not in value:
            # vLLM resolves a bare name as a local path or a legacy repo and cannot load it: a
            # built-in short name becomes its repo id, anything else must be org/name.
            profile = MODELS.get(value.lower()) or find_profile(value)
            if profile is None:
                raise ValueError(
                    "must be a Hugging Face repo id org/name like google/gemma-3-27b-it (a bare name is "
                    f"accepted only for the built-in models: {', '.join(MODELS)}; servedeck models list)"
                )
            return profile.hf_id
        return value

    @field_validator("zone")
    @classmethod
    def _check_zone(cls, value: str | None) -> str | None:
        if value is not None and not _ZONE.match(value):
            raise ValueError("must be a GCP zone like us-central1-a")
        return value

    @field_validator("hf_token_env")
    @classmethod
    def _check_token_env(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if _TOKEN_LIKE.match(value):
            raise ValueError(
                "looks like a token value; give the NAME of the env var that holds it (e.g. HF_TOKEN)"
            )
        if not _ENV_NAME.match(value):
            raise ValueError("must be an environment variable name such as HF_TOKEN")
        return value

    @field_validator("extra_args")
    @classmethod
    def _check_extra_args(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            flag = arg.split("=", 1)[0]
            if flag in _SPEC_FLAGS:
                raise ValueError(f"{flag} is set by the spec; use {_SPEC_FLAGS[flag]} instead")
            reason = secret_in_arg(arg)
            if reason is not None:
                raise ValueError(reason)
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> DeploymentSpec:
        if self.hf_token_env is not None and self.hf_token_file is not None:
            raise ValueError("give hf_token_env or hf_token_file, not both")
        catalog = default_catalog()
        allowed = catalog.allowed_gpu_counts(self.gpu)
        if self.gpu_count not in allowed:
            unit = "TP ranks on a CPU node" if self.accelerator.is_cpu else "GPUs"
            per_node = catalog.node_gpu_counts(self.gpu)
            choices = ", ".join(str(c) for c in per_node)
            if len(allowed) > len(per_node):
                choices += f" (or a multiple of {per_node[-1]} up to {allowed[-1]}, across nodes)"
            raise ValueError(
                f"gpu_count {self.gpu_count}: {self.gpu_count} {unit} is not a machine shape for "
                f"{self.accelerator.display_name}; choose {choices}"
            )
        if self.machine_type is not None:
            machine = catalog.machines.get(self.machine_type)
            if machine is None or machine not in catalog.machines_for(self.gpu, self.gpus_per_node):
                offered = ", ".join(m.name for m in catalog.machines_for(self.gpu, self.gpus_per_node))
                raise ValueError(
                    f"machine type {self.machine_type} does not carry {self.gpus_per_node}x"
                    f"{self.accelerator.display_name}; choose {offered}"
                )
        fp8_error = fp8_kv_error(self.gpu, self.kv_cache_dtype)
        if fp8_error is not None:
            raise ValueError(fp8_error)
        self._check_quantization()
        self._check_parallelism()
        self._check_batching()
        return self

    def _check_quantization(self) -> None:
        profile = self.profile
        if self.quantization is None or profile is None:
            return
        if profile.quantization is None and self.quantization != "fp8":
            raise ValueError(
                f"quantization {self.quantization}: {profile.name} is a 16-bit checkpoint; only fp8 "
                "quantizes one while loading (pre-quantized checkpoints declare their method)"
            )
        if profile.quantization is not None and not self.quantization.startswith(profile.quantization):
            raise ValueError(
                f"quantization {self.quantization}: {profile.name} is a {profile.quantization} checkpoint; "
                "leave quantization unset (vLLM reads it from config.json)"
            )

    def _check_parallelism(self) -> None:
        profile = self.profile
        if profile is None:
            return
        tp = self.tensor_parallel_size
        if profile.num_attention_heads % tp:
            raise ValueError(
                f"tensor parallel size {tp} must divide {profile.name}'s {profile.num_attention_heads} "
                "attention heads"
            )
        kv = profile.num_kv_heads
        if (kv % tp) if tp <= kv else (tp % kv):
            raise ValueError(
                f"tensor parallel size {tp} must divide {profile.name}'s {kv} KV heads "
                "(or be a multiple of it)"
            )
        if self.pipeline_parallel_size > profile.num_layers:
            raise ValueError(
                f"{self.pipeline_parallel_size} pipeline stages exceed {profile.num_layers} layers"
            )
        if self.max_model_len is not None and self.max_model_len > profile.max_position_embeddings:
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds {profile.name}'s "
                f"{profile.max_position_embeddings} positions"
            )

    def _check_batching(self) -> None:
        batched, seqs = self.effective_max_num_batched_tokens, self.effective_max_num_seqs
        if self.max_num_batched_tokens is not None and batched < seqs:
            raise ValueError(f"max_num_batched_tokens {batched} must be >= max_num_seqs {seqs}")
        if (
            not self.enable_chunked_prefill
            and self.max_num_batched_tokens is not None
            and self.max_model_len is not None
            and self.max_num_batched_tokens < self.max_model_len
        ):
            raise ValueError(
                f"without chunked prefill max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_model_len ({self.max_model_len})"
            )

    @property
    def accelerator(self) -> AcceleratorProfile:
        return ACCELERATORS[self.gpu]

    @property
    def is_cpu(self) -> bool:
        return self.accelerator.is_cpu

    @property
    def profile(self) -> ModelProfile | None:
        """The model's size profile (weights as served, with --quantization fp8 applied), or None."""
        profile = self.custom_profile or known_profile(self.model)
        if profile is not None and self.quantization == "fp8" and profile.quantization is None:
            return quantize_fp8(profile)
        return profile

    @property
    def gpus_per_node(self) -> int:
        if self.is_cpu:
            return self.gpu_count
        largest = default_catalog().node_gpu_counts(self.gpu)[-1]
        return self.gpu_count if self.gpu_count <= largest else largest

    @property
    def nodes_per_replica(self) -> int:
        return self.gpu_count // self.gpus_per_node

    @property
    def multi_node(self) -> bool:
        return self.nodes_per_replica > 1

    @property
    def tensor_parallel_size(self) -> int:
        return self.gpus_per_node

    @property
    def pipeline_parallel_size(self) -> int:
        return self.nodes_per_replica

    @property
    def effective_image(self) -> str:
        if self.image:
            return self.image
        return CPU_IMAGE if self.is_cpu else GPU_IMAGE

    @property
    def effective_max_num_batched_tokens(self) -> int:
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return self._vllm_defaults()[0]

    @property
    def effective_max_num_seqs(self) -> int:
        if self.max_num_seqs is not None:
            return self.max_num_seqs
        return self._vllm_defaults()[1]

    def _vllm_defaults(self) -> tuple[int, int]:
        batched, seqs = vllm_scheduler_defaults(self.gpu, self.tensor_parallel_size)
        if not self.enable_chunked_prefill and self.effective_max_model_len is not None:
            batched = max(batched, self.effective_max_model_len)
        return batched, min(seqs, batched)

    @property
    def effective_max_model_len(self) -> int | None:
        if self.max_model_len is not None:
            return self.max_model_len
        profile = self.profile
        return profile.max_position_embeddings if profile else None

    def machine(self, catalog: Catalog | None = None) -> MachineType:
        catalog = catalog or default_catalog()
        if self.machine_type is not None:
            return catalog.machine(self.machine_type)
        return catalog.default_machine(self.gpu, self.gpus_per_node)

    def pod_resources(self, catalog: Catalog | None = None) -> PodResources:
        """Requests (= limits) per pod: the spec's values, else a share of the node that leaves room for
        GKE's system pods (8 vCPU and 128 GiB per GPU as in the article, capped by the machine)."""
        machine = self.machine(catalog)
        vcpu_cap = max(1, math.floor(machine.vcpus * 0.9))
        memory_cap = max(1, math.floor(machine.memory_gib * 0.85))
        if self.is_cpu:
            cpu, memory = float(vcpu_cap), memory_cap
        else:
            cpu = float(min(8 * self.gpus_per_node, vcpu_cap))
            memory = min(128 * self.gpus_per_node, memory_cap)
        return PodResources(
            cpu=self.cpu_request if self.cpu_request is not None else cpu,
            memory_gib=self.memory_gib if self.memory_gib is not None else memory,
            ephemeral_storage_gib=self.ephemeral_storage_gib,
            gpus=0 if self.is_cpu else self.gpus_per_node,
        )

    @property
    def has_token_source(self) -> bool:
        return self.hf_token_env is not None or self.hf_token_file is not None

    @property
    def hardware_label(self) -> str:
        """``1xH100``, ``4xL4``, ``CPU node (c4, ...)``: for messages and tables."""
        if self.is_cpu:
            return self.accelerator.display_name
        return f"{self.gpu_count}x{_short_gpu(self.gpu)}"


def quantize_fp8(profile: ModelProfile) -> ModelProfile:
    """``--quantization fp8`` on a 16-bit checkpoint: decoder linear weights become 1 byte each; embeddings,
    LM head and norms stay 16-bit (vLLM's Fp8LinearMethod quantizes linear layers only)."""
    linear = profile.always_on_params + profile.routed_params
    weight_bytes = int(profile.weight_bytes - linear * 2 + linear * 1)
    return profile.model_copy(
        update={"weight_bytes": weight_bytes, "weight_format": "fp8", "quantization": "fp8"}
    )


class PodResources(BaseModel):
    model_config = ConfigDict(frozen=True)

    cpu: float
    memory_gib: int
    ephemeral_storage_gib: int
    gpus: int


def _short_gpu(gpu: GpuType) -> str:
    return {
        GpuType.L4: "L4",
        GpuType.A100_40: "A100-40GB",
        GpuType.A100_80: "A100-80GB",
        GpuType.H100: "H100",
        GpuType.H100_MEGA: "H100-Mega",
    }.get(gpu, gpu.value)


def short_gpu_name(gpu: GpuType) -> str:
    return _short_gpu(gpu)


def _error_line(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        msg = item["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"{where}: {msg}" if where else msg)
    return "invalid deployment spec: " + "; ".join(parts)


def build_spec(data: Mapping[str, Any] | None = None, /, **fields: Any) -> DeploymentSpec:
    """Validate a spec; any problem becomes one ``SpecError`` line (input values are never echoed)."""
    merged = {**(data or {}), **fields}
    if "name" not in merged and {"model", "gpu"} <= merged.keys():
        with contextlib.suppress(ValueError, TypeError):  # validation below reports a bad gpu / count
            merged["name"] = default_deployment_name(
                str(merged["model"]), GpuType(merged["gpu"]), int(merged.get("gpu_count", 1))
            )
    try:
        return DeploymentSpec.model_validate(merged)
    except ValidationError as err:
        raise SpecError(_error_line(err)) from None
