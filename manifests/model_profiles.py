"""Model shapes for fit, KV sizing and the twin's roofline: Gemma 3 configs and a generic dense model.

Gemma 3 numbers are from the Hugging Face configs and MaxText configs quoted in
``/work/shared/reference/vllm_k8s_facts.md`` §6. Profiles of other models come from a Hugging Face
``config.json`` (``manifests.hf_config``) or the built-in catalog (``manifests.model_catalog``); the fields
below the Gemma ones describe mixture-of-experts layers, DeepSeek's multi-head latent attention (MLA) and
quantized weights, and default to "none of that".
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

BF16_BYTES = 2
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


class ModelProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    hf_id: str
    params: float
    weight_bytes: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    sliding_window: int | None = None
    sliding_window_pattern: int | None = None
    source: str = ""
    architecture: str = ""
    # One entry per layer (``full_attention`` / ``sliding_attention``), as newer configs' ``layer_types``;
    # empty: Gemma 3's every-``pattern``-th-layer-is-global rule, or all full attention.
    layer_types: tuple[str, ...] = ()
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    # Mixture of experts: ``num_moe_layers`` layers hold ``num_experts`` routed experts (each a gated MLP of
    # ``moe_intermediate_size``), ``experts_per_token`` of them run per token, plus always-on shared experts
    # of ``shared_expert_intermediate_size`` in total. The other layers are dense MLPs of intermediate_size.
    num_experts: int = 0
    experts_per_token: int = 0
    num_moe_layers: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    # Multi-head latent attention (DeepSeek-V2/V3): the cache holds one compressed latent of
    # ``kv_lora_rank`` plus the shared rotary key of ``qk_rope_head_dim`` per token and layer.
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Weights as stored in GPU memory: "bf16" / "fp16", or a quantization ("fp8", "int8", "int4").
    weight_format: str = "bf16"
    quantization: str | None = None  # the checkpoint's quant_method (vLLM detects it from config.json)
    gated: bool = False  # the Hugging Face repo asks users to accept terms: pods need a token
    multimodal_profile_bytes: int = 0  # vLLM's dummy encoder run at start-up (vision towers)
    caveat: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0 and self.num_moe_layers > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def is_quantized(self) -> bool:
        return self.weight_format not in ("bf16", "fp16", "fp32")

    @property
    def num_global_layers(self) -> int:
        """Full-attention layers: every ``pattern``-th layer with a 5:1 local:global interleave."""
        if self.layer_types:
            return sum(1 for kind in self.layer_types if kind != SLIDING_ATTENTION)
        if not self.sliding_window or not self.sliding_window_pattern:
            return self.num_layers
        return self.num_layers // self.sliding_window_pattern

    @property
    def num_sliding_layers(self) -> int:
        return self.num_layers - self.num_global_layers

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return self.kv_bytes_per_token_layer_per_gpu(1, BF16_BYTES)

    def kv_bytes_per_token_layer_per_gpu(self, tensor_parallel_size: int, kv_dtype_bytes: float) -> int:
        """Cache bytes of one token in one layer on one TP rank.

        GQA/MHA: K and V of the rank's KV heads (heads are replicated when TP exceeds them). MLA: the
        latent and rotary key, which every TP rank holds whole (vLLM's MLA backends do not shard it).
        """
        if self.kv_lora_rank is not None:
            return int((self.kv_lora_rank + self.qk_rope_head_dim) * kv_dtype_bytes)
        heads = math.ceil(self.num_kv_heads / tensor_parallel_size)
        return int(2 * heads * self.head_dim * kv_dtype_bytes)

    def kv_bytes_for_context(self, tokens: int) -> int:
        """KV bytes one sequence of ``tokens`` holds, with sliding-window layers capped at their window."""
        per_layer = self.kv_bytes_per_token_per_layer
        window = self.sliding_window or tokens
        return per_layer * (self.num_global_layers * tokens + self.num_sliding_layers * min(tokens, window))

    # -- parameter counts from the layer shapes (what the roofline multiplies through) ------------------

    @property
    def attention_params_per_layer(self) -> int:
        hidden, heads = self.hidden_size, self.num_attention_heads
        if self.kv_lora_rank is not None:
            qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q = hidden * self.q_lora_rank + self.q_lora_rank * heads * qk_head
            else:
                q = hidden * heads * qk_head
            kv_a = hidden * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_a + kv_b + heads * self.v_head_dim * hidden
        q_out = heads * self.head_dim
        kv_out = 2 * self.num_kv_heads * self.head_dim
        bias = (q_out + kv_out) if self.attention_bias else 0
        return hidden * (q_out + kv_out) + q_out * hidden + bias

    @property
    def expert_params(self) -> int:
        """One routed expert's gated MLP (gate, up, down projections)."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - (self.num_moe_layers if self.is_moe else 0)

    @property
    def always_on_params(self) -> float:
        """Decoder-layer parameters every token multiplies through whatever its routing: attention, dense
        MLPs, shared experts and routers (no embeddings, no LM head)."""
        dense_mlp = 3 * self.hidden_size * self.intermediate_size
        total = self.num_layers * self.attention_params_per_layer + self.num_dense_layers * dense_mlp
        if self.is_moe:
            shared = 3 * self.hidden_size * self.shared_expert_intermediate_size
            router = self.hidden_size * self.num_experts
            total += self.num_moe_layers * (shared + router)
        return float(total)

    @property
    def routed_params(self) -> float:
        """All routed experts' parameters (held in memory; a token uses ``experts_per_token`` per layer)."""
        return float(self.num_moe_layers * self.num_experts * self.expert_params) if self.is_moe else 0.0

    @property
    def embedding_params(self) -> float:
        tables = 1 if self.tie_word_embeddings else 2
        return float(tables * self.vocab_size * self.hidden_size)

    @property
    def active_params(self) -> float:
        """Parameters one token uses: for a MoE the routed experts count ``experts_per_token`` per layer."""
        if not self.is_moe:
            return self.params
        routed_active = self.num_moe_layers * self.experts_per_token * self.expert_params
        return self.always_on_params + routed_active + self.embedding_params

    @property
    def peak_intermediate_size(self) -> int:
        """The widest MLP activation a token makes in one layer (a MoE token runs its top-k experts)."""
        dense = self.intermediate_size if self.num_dense_layers else 0
        moe = (
            self.experts_per_token * self.moe_intermediate_size + self.shared_expert_intermediate_size
            if self.is_moe
            else 0
        )
        return max(dense, moe)

    def weight_bytes_as(self, dtype_bytes: float) -> int:
        """Weights loaded with ``--dtype`` of ``dtype_bytes``: a quantized checkpoint keeps its size."""
        if self.is_quantized:
            return self.weight_bytes
        return int(self.weight_bytes * dtype_bytes / BF16_BYTES)

    @property
    def flops_per_token(self) -> float:
        """Matmul FLOPs per token (2 per active parameter), excluding attention over the context."""
        return 2.0 * self.active_params


def _gemma3(
    size: str,
    params: float,
    weight_gib: float,
    layers: int,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    window: int,
    max_pos: int,
) -> ModelProfile:
    return ModelProfile(
        name=f"gemma-3-{size}-it",
        hf_id=f"google/gemma-3-{size}-it",
        params=params,
        weight_bytes=int(weight_gib * 1024**3),
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=262_144,
        max_position_embeddings=max_pos,
        sliding_window=window,
        sliding_window_pattern=6,
        source="HF config / MaxText gemma3 configs (vllm_k8s_facts.md §6); weights bf16",
        architecture="Gemma3ForConditionalGeneration" if size != "1b" else "Gemma3ForCausalLM",
        tie_word_embeddings=True,
        gated=True,
    )


MODELS: dict[str, ModelProfile] = {
    m.name: m
    for m in (
        _gemma3("1b", 1.0e9, 1.86, 26, 1152, 6912, 4, 1, 256, 512, 32_768),
        _gemma3("4b", 4.3e9, 8.0, 34, 2560, 10240, 8, 4, 256, 1024, 131_072),
        _gemma3("12b", 12.2e9, 22.7, 48, 3840, 15360, 16, 8, 256, 1024, 131_072),
        # 55.01 GB peak bf16 incl. the 0.4B SigLIP tower = 51.2 GiB (model card comparison, §6).
        _gemma3("27b", 27.4e9, 51.2, 62, 5376, 21504, 32, 16, 128, 1024, 131_072),
    )
}


def model_profile(name: str) -> ModelProfile:
    """Accepts ``gemma-3-27b-it``, ``google/gemma-3-27b-it`` or a catalog model (case-insensitive)."""
    key = name.lower().removeprefix("google/")
    if key in MODELS:
        return MODELS[key]
    if f"{key}-it" in MODELS:
        return MODELS[f"{key}-it"]
    # The catalog builds its profiles with this module's types, so it is imported only here.
    from manifests.model_catalog import resolve_profile

    return resolve_profile(name)


def dense_profile(
    name: str,
    params: float,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    hidden_size: int | None = None,
    max_position_embeddings: int = 32_768,
    bytes_per_param: float = BF16_BYTES,
) -> ModelProfile:
    """A generic dense decoder (all layers full attention) from its headline numbers."""
    hidden = hidden_size or num_kv_heads * head_dim * 4
    return ModelProfile(
        name=name,
        hf_id=name,
        params=params,
        weight_bytes=int(params * bytes_per_param),
        num_layers=num_layers,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_attention_heads=max(num_kv_heads, hidden // head_dim),
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        vocab_size=128_256,
        max_position_embeddings=max_position_embeddings,
        source="generic dense profile from (params, layers, kv heads, head_dim)",
    )
