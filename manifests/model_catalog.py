"""Built-in models beyond Gemma 3: their ``config.json`` facts, copied from the Hugging Face repos.

Each entry keeps only the config.json keys that size a model (the rest of the file does not change
memory or step time), the repo it was copied from, and whether the repo is gated (asks users to accept
terms, so a pod needs an HF token). Weight bytes come from the parameter count (bf16, or the checkpoint's
quantization); ``servedeck models list`` shows them and CAPACITY.md the arithmetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from manifests.errors import ModelConfigError
from manifests.hf_config import load_model_config, profile_from_config
from manifests.model_profiles import MODELS, ModelProfile


class CatalogModel(BaseModel):
    model_config = ConfigDict(frozen=True)

    hf_id: str
    config: dict[str, Any]
    gated: bool
    source: str

    @property
    def name(self) -> str:
        return self.hf_id.rsplit("/", 1)[-1].lower()


_LLAMA_31_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

_QWEN3_32B = {
    "architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 5120,
    "intermediate_size": 25600,
    "num_hidden_layers": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "sliding_window": None,
    "use_sliding_window": False,
    "torch_dtype": "bfloat16",
}

_QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "torch_dtype": "bfloat16",
}

CATALOG_MODELS: tuple[CatalogModel, ...] = (
    CatalogModel(
        hf_id="meta-llama/Llama-3.1-8B-Instruct",
        gated=True,
        source="huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/config.json",
        config={
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "rope_scaling": _LLAMA_31_ROPE,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
    ),
    CatalogModel(
        hf_id="meta-llama/Llama-3.1-70B-Instruct",
        gated=True,
        source="huggingface.co/meta-llama/Llama-3.1-70B-Instruct/blob/main/config.json",
        config={
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 8192,
            "intermediate_size": 28672,
            "num_hidden_layers": 80,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "rope_scaling": _LLAMA_31_ROPE,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
    ),
    CatalogModel(
        hf_id="Qwen/Qwen3-32B",
        gated=False,
        source="huggingface.co/Qwen/Qwen3-32B/blob/main/config.json",
        config=_QWEN3_32B,
    ),
    CatalogModel(
        hf_id="Qwen/Qwen3-32B-AWQ",
        gated=False,
        source="huggingface.co/Qwen/Qwen3-32B-AWQ/blob/main/config.json (Qwen3-32B + AWQ 4-bit, group 128)",
        config={
            **_QWEN3_32B,
            "torch_dtype": "float16",
            "quantization_config": {
                "bits": 4,
                "group_size": 128,
                "quant_method": "awq",
                "version": "gemm",
                "zero_point": True,
            },
        },
    ),
    CatalogModel(
        hf_id="mistralai/Mixtral-8x7B-Instruct-v0.1",
        gated=True,
        source="huggingface.co/mistralai/Mixtral-8x7B-Instruct-v0.1/blob/main/config.json",
        config={
            "architectures": ["MixtralForCausalLM"],
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "vocab_size": 32000,
            "max_position_embeddings": 32768,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
    ),
    CatalogModel(
        hf_id="Qwen/Qwen3-30B-A3B",
        gated=False,
        source="huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json",
        config=_QWEN3_30B_A3B,
    ),
    CatalogModel(
        hf_id="Qwen/Qwen3-30B-A3B-FP8",
        gated=False,
        source="huggingface.co/Qwen/Qwen3-30B-A3B-FP8/blob/main/config.json (fp8 e4m3, 128x128 blocks)",
        config={
            **_QWEN3_30B_A3B,
            "quantization_config": {
                "activation_scheme": "dynamic",
                "fmt": "e4m3",
                "quant_method": "fp8",
                "weight_block_size": [128, 128],
            },
        },
    ),
    CatalogModel(
        hf_id="deepseek-ai/DeepSeek-V2-Lite-Chat",
        gated=False,
        source="huggingface.co/deepseek-ai/DeepSeek-V2-Lite-Chat/blob/main/config.json",
        config={
            "architectures": ["DeepseekV2ForCausalLM"],
            "hidden_size": 2048,
            "intermediate_size": 10944,
            "moe_intermediate_size": 1408,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "n_routed_experts": 64,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "first_k_dense_replace": 1,
            "moe_layer_freq": 1,
            "kv_lora_rank": 512,
            "q_lora_rank": None,
            "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
            "vocab_size": 102400,
            "max_position_embeddings": 163840,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        },
    ),
)


def _build() -> dict[str, ModelProfile]:
    profiles: dict[str, ModelProfile] = {}
    for entry in CATALOG_MODELS:
        profiles[entry.name] = profile_from_config(
            entry.config,
            name=entry.name,
            hf_id=entry.hf_id,
            gated=entry.gated,
            source=f"{entry.source} (weights from the parameter count)",
            where=entry.hf_id,
        )
    return profiles


CATALOG: dict[str, ModelProfile] = _build()


def all_profiles() -> dict[str, ModelProfile]:
    """Every built-in profile by short name: Gemma 3 first, then the catalog."""
    return {**MODELS, **CATALOG}


def find_profile(name: str) -> ModelProfile | None:
    """A built-in profile by short name (``qwen3-32b``, ``gemma-3-27b``) or repo id, case-insensitive."""
    key = name.lower()
    profiles = all_profiles()
    for candidate in (key, key.rsplit("/", 1)[-1], f"{key.rsplit('/', 1)[-1]}-it"):
        profile = profiles.get(candidate)
        if profile is not None and ("/" not in key or profile.hf_id.lower() == key):
            return profile
    return None


def resolve_profile(name: str) -> ModelProfile:
    profile = find_profile(name)
    if profile is None:
        raise ModelConfigError(
            f"unknown model {name!r}; built in: {', '.join(all_profiles())} "
            "(servedeck models list), or describe any model with --model-config PATH/config.json"
        )
    return profile


def load_custom_profile(path: Path, *, model: str | None = None, allow_generic: bool = False) -> ModelProfile:
    """``--model-config PATH``: the profile from a config.json. Whether the repo is gated is known only
    for catalog models; any other model is taken as gated, so its pods get the HF token."""
    profile = load_model_config(path, hf_id=model, gated=True, allow_generic=allow_generic)
    known = find_profile(profile.hf_id) if "/" in profile.hf_id else None
    if known is not None:
        profile = profile.model_copy(update={"gated": known.gated})
    return profile
