"""A ``ModelProfile`` from a Hugging Face ``config.json``, read offline.

Reads a ``config.json`` (a file, or a model directory holding one) and, when the directory has it,
``model.safetensors.index.json``, whose ``metadata.total_size`` is the checkpoint's exact weight bytes.
Without an index the weight bytes come from the parameter count and the bytes per parameter of the
checkpoint's format (``quantization_config``), as vLLM holds them in GPU memory.

Families read: dense decoders (Llama, Mistral, Qwen2/3, Gemma 2/3 with their sliding-window layers),
mixture-of-experts (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3 with multi-head latent attention) and quantized
checkpoints (fp8, compressed-tensors, AWQ, GPTQ, bitsandbytes). Another architecture is an error that
names it, unless the caller asks for the generic dense reading (then the profile carries a caveat).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from manifests.errors import ModelConfigError
from manifests.model_profiles import FULL_ATTENTION, SLIDING_ATTENTION, ModelProfile

CONFIG_FILE = "config.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
INDEX_FILE = "model.safetensors.index.json"

DENSE_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Gemma3ForConditionalGeneration",
    }
)
MOE_ARCHITECTURES = frozenset(
    {
        "MixtralForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3MoeForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM",
    }
)
KNOWN_ARCHITECTURES = DENSE_ARCHITECTURES | MOE_ARCHITECTURES

# Bytes per weight of a quantized linear layer, without the per-group scales (added from group_size).
# AWQ/GPTQ keep an fp16 scale and a packed zero point per group of ``group_size`` input weights; fp8
# checkpoints (block or per-channel scales) add well under 1%.
QUANTIZED_FORMATS: dict[int, str] = {8: "int8", 4: "int4"}
GROUP_SCALE_BYTES = 2.0  # the fp16 scale of one group; the zero point adds bits/8


def _merged_text_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Multimodal configs (Gemma 3 4B+) nest the language model's sizes under ``text_config``."""
    merged = dict(raw)
    text = raw.get("text_config")
    if isinstance(text, Mapping):
        merged.update({k: v for k, v in text.items() if v is not None})
    return merged


def _architecture(raw: Mapping[str, Any]) -> str:
    names = raw.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str):
        return names[0]
    return ""


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ModelConfigError(f"config.json field {key} must be a non-negative number, not {value!r}")
    return int(value)


def _required(config: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if config.get(key) is None]
    if missing:
        raise ModelConfigError(f"{where} lacks {', '.join(missing)}; servedeck needs them to size the model")


def _layer_types(config: Mapping[str, Any], architecture: str, layers: int) -> tuple[tuple[str, ...], str]:
    """Per-layer attention kinds and a caveat (empty when exact)."""
    window = config.get("sliding_window")
    declared = config.get("layer_types")
    if isinstance(declared, list) and len(declared) == layers:
        kinds = tuple(SLIDING_ATTENTION if kind == SLIDING_ATTENTION else FULL_ATTENTION for kind in declared)
        return (kinds if window else ()), ""
    if not window:
        return (), ""
    if architecture == "Gemma2ForCausalLM":
        # vLLM's Gemma 2: even layers use the sliding window, odd layers full attention.
        return tuple(SLIDING_ATTENTION if i % 2 == 0 else FULL_ATTENTION for i in range(layers)), ""
    if architecture.startswith("Gemma3"):
        pattern = _int(config, "sliding_window_pattern", 6) or 6
        return (
            tuple(FULL_ATTENTION if (i + 1) % pattern == 0 else SLIDING_ATTENTION for i in range(layers)),
            "",
        )
    if architecture.startswith(("Qwen2", "Qwen3")) and not config.get("use_sliding_window"):
        return (), ""
    return (), f"sliding_window {window} is ignored: every layer is sized as full attention (an upper bound)"


def _moe_layers(config: Mapping[str, Any], architecture: str, layers: int) -> tuple[int, int, int, int, int]:
    """(routed experts, experts per token, MoE layers, expert intermediate, shared intermediate)."""
    if architecture == "MixtralForCausalLM":
        _required(config, ("num_local_experts", "num_experts_per_tok", "intermediate_size"), architecture)
        experts = _int(config, "num_local_experts") or 0
        return (
            experts,
            _int(config, "num_experts_per_tok") or 0,
            layers,
            _int(config, "intermediate_size") or 0,
            0,
        )
    if architecture in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        _required(config, ("num_experts", "num_experts_per_tok", "moe_intermediate_size"), architecture)
        step = _int(config, "decoder_sparse_step", 1) or 1
        dense_only = set(config.get("mlp_only_layers") or ())
        moe = sum(1 for i in range(layers) if i not in dense_only and (i + 1) % step == 0)
        shared = _int(config, "shared_expert_intermediate_size", 0) or 0
        return (
            _int(config, "num_experts") or 0,
            _int(config, "num_experts_per_tok") or 0,
            moe,
            _int(config, "moe_intermediate_size") or 0,
            shared,
        )
    if architecture in ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"):
        keys = ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size")
        _required(config, keys, architecture)
        first_dense = _int(config, "first_k_dense_replace", 0) or 0
        freq = _int(config, "moe_layer_freq", 1) or 1
        moe = sum(1 for i in range(layers) if i >= first_dense and i % freq == 0)
        inter = _int(config, "moe_intermediate_size") or 0
        shared = (_int(config, "n_shared_experts", 0) or 0) * inter
        return (
            _int(config, "n_routed_experts") or 0,
            _int(config, "num_experts_per_tok") or 0,
            moe,
            inter,
            shared,
        )
    return 0, 0, 0, 0, 0


def _quantization(raw: Mapping[str, Any]) -> tuple[str, float, str | None]:
    """(weight format, bytes per quantized linear weight incl. group scales, quant_method)."""
    quant = raw.get("quantization_config")
    if not isinstance(quant, Mapping):
        return "bf16", 2.0, None
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8":
        return "fp8", 1.0, method
    if method in ("awq", "gptq", "awq_marlin", "gptq_marlin"):
        bits = int(quant.get("bits", quant.get("w_bit", 4)))
        group = int(quant.get("group_size", quant.get("q_group_size", 128)) or 128)
        if group <= 0:  # GPTQ's -1: one scale per output channel
            group = 1 << 30
        fmt = QUANTIZED_FORMATS.get(bits)
        if fmt is None:
            raise ModelConfigError(f"quantization_config: {method} with {bits}-bit weights is not sized here")
        return fmt, bits / 8 + (GROUP_SCALE_BYTES + bits / 8) / group, method
    if method == "compressed-tensors":
        groups = quant.get("config_groups")
        bits, fp8 = 16, False
        if isinstance(groups, Mapping):
            for group_cfg in groups.values():
                weights = group_cfg.get("weights") if isinstance(group_cfg, Mapping) else None
                if isinstance(weights, Mapping):
                    bits = min(bits, int(weights.get("num_bits", 16)))
                    fp8 = fp8 or weights.get("type") == "float"
        if bits >= 16:
            return "bf16", 2.0, method
        if bits == 8:
            return ("fp8" if fp8 else "int8"), 1.0, method
        return "int4", bits / 8 + (GROUP_SCALE_BYTES + bits / 8) / 128, method
    if method == "bitsandbytes":
        if quant.get("load_in_4bit"):
            return "int4", 0.5 + 4 / 64, method  # nf4 with an fp32 absmax per 64 weights
        return "int8", 1.0, method
    raise ModelConfigError(
        f"quantization_config.quant_method {method!r} is not sized here; known: fp8, awq, gptq, "
        "compressed-tensors, bitsandbytes"
    )


def profile_from_config(
    raw: Mapping[str, Any],
    *,
    name: str,
    hf_id: str | None = None,
    total_weight_bytes: int | None = None,
    gated: bool = False,
    source: str = "",
    allow_generic: bool = False,
    where: str = "config.json",
) -> ModelProfile:
    """The profile of the model ``raw`` (a parsed config.json) describes; one-line ``ModelConfigError``."""
    architecture = _architecture(raw)
    caveats: list[str] = []
    if architecture not in KNOWN_ARCHITECTURES:
        shown = architecture or "(no architectures field)"
        if not allow_generic:
            raise ModelConfigError(
                f"{where}: architecture {shown} is not one servedeck knows "
                f"({', '.join(sorted(KNOWN_ARCHITECTURES))}); ask for the generic dense profile "
                "(--generic-profile) to size it as a plain decoder"
            )
        caveats.append(f"{shown} sized as a generic dense decoder (attention + gated MLP per layer)")
    config = _merged_text_config(raw)
    _required(
        config,
        ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "max_position_embeddings"),
        where,
    )
    hidden = _int(config, "hidden_size") or 0
    layers = _int(config, "num_hidden_layers") or 0
    heads = _int(config, "num_attention_heads") or 0
    if not (hidden and layers and heads):
        raise ModelConfigError(f"{where}: hidden_size, num_hidden_layers and num_attention_heads must be > 0")
    kv_heads = _int(config, "num_key_value_heads")
    if kv_heads is None:
        kv_heads = heads  # transformers' default: no GQA
    head_dim = _int(config, "head_dim") or hidden // heads
    experts, top_k, moe_layers, moe_inter, shared_inter = _moe_layers(config, architecture, layers)
    intermediate = _int(config, "intermediate_size")
    if intermediate is None:
        if moe_layers < layers:
            raise ModelConfigError(f"{where} lacks intermediate_size; servedeck needs it to size the model")
        intermediate = 0
    mla: dict[str, Any] = {}
    if architecture in ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM") and config.get("kv_lora_rank"):
        _required(config, ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"), where)
        mla = {
            "kv_lora_rank": _int(config, "kv_lora_rank"),
            "q_lora_rank": _int(config, "q_lora_rank"),
            "qk_nope_head_dim": _int(config, "qk_nope_head_dim"),
            "qk_rope_head_dim": _int(config, "qk_rope_head_dim"),
            "v_head_dim": _int(config, "v_head_dim"),
        }
        head_dim = (mla["qk_nope_head_dim"] or 0) + (mla["qk_rope_head_dim"] or 0)
    layer_types, window_caveat = _layer_types(config, architecture, layers)
    if window_caveat:
        caveats.append(window_caveat)
    window = _int(config, "sliding_window") if layer_types else None
    weight_format, quant_bytes, method = _quantization(raw)
    tie = bool(config.get("tie_word_embeddings", architecture.startswith("Gemma")))
    vocab = _int(config, "vocab_size") or 0
    max_pos = _int(config, "max_position_embeddings") or 0

    shape = ModelProfile(
        name=name,
        hf_id=hf_id or name,
        params=1.0,
        weight_bytes=1,
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        sliding_window=window,
        architecture=architecture,
        layer_types=layer_types,
        attention_bias=bool(config.get("attention_bias", architecture == "Qwen2ForCausalLM")),
        tie_word_embeddings=tie,
        num_experts=experts,
        experts_per_token=top_k,
        num_moe_layers=moe_layers,
        moe_intermediate_size=moe_inter,
        shared_expert_intermediate_size=shared_inter,
        weight_format=weight_format,
        quantization=method,
        gated=gated,
        **mla,
    )
    linear = shape.always_on_params + shape.routed_params
    norms = float(layers * 2 * hidden + hidden)
    params = linear + shape.embedding_params + norms
    if total_weight_bytes is not None:
        weight_bytes = total_weight_bytes
        if weight_format == "bf16" and str(config.get("torch_dtype", "")).lower() == "float32":
            weight_bytes //= 2  # vLLM's --dtype auto serves a float32 checkpoint in 16 bits
        bytes_note = f"weights {INDEX_FILE} total_size"
    else:
        weight_bytes = math.ceil(linear * quant_bytes + (shape.embedding_params + norms) * 2)
        bytes_note = f"weights {weight_format} from the parameter count"
    source_text = source or f"{where} ({bytes_note})"
    return shape.model_copy(
        update={
            "params": params,
            "weight_bytes": int(weight_bytes),
            "source": source_text,
            "caveat": "; ".join(caveats),
        }
    )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelConfigError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ModelConfigError(f"{what} {path} is not valid JSON: line {err.lineno}: {err.msg}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelConfigError(f"cannot read {what} {path}: {err}") from None


def _index_total(index_path: Path) -> int | None:
    if not index_path.is_file():
        return None
    index = _read_json(index_path, "weight index")
    metadata = index.get("metadata") if isinstance(index, dict) else None
    total = metadata.get("total_size") if isinstance(metadata, dict) else None
    if not isinstance(total, int | float) or total <= 0:
        raise ModelConfigError(f"weight index {index_path} has no metadata.total_size")
    return int(total)


def load_model_config(
    path: Path,
    *,
    hf_id: str | None = None,
    gated: bool = False,
    allow_generic: bool = False,
) -> ModelProfile:
    """Profile of the model whose ``config.json`` is ``path`` (or lies in the directory ``path``)."""
    config_path = path / CONFIG_FILE if path.is_dir() else path
    raw = _read_json(config_path, "model config")
    if not isinstance(raw, dict):
        raise ModelConfigError(
            f"model config {config_path} must be a JSON object (a Hugging Face config.json)"
        )
    index_total = _index_total(config_path.parent / INDEX_FILE)
    declared = raw.get("_name_or_path")
    if hf_id is None and isinstance(declared, str) and _REPO_ID.match(declared):
        hf_id = declared
    repo = hf_id or config_path.resolve().parent.name or "custom-model"
    return profile_from_config(
        raw,
        name=repo.rsplit("/", 1)[-1].lower(),
        hf_id=repo,
        total_weight_bytes=index_total,
        gated=gated,
        allow_generic=allow_generic,
        where=str(config_path),
    )
