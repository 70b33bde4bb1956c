"""Model shapes for fit, KV sizing and the twin's roofline: Gemma 3 configs and a generic dense model.

Gemma 3 numbers are from the Hugging Face configs and MaxText configs quoted in
``/work/shared/reference/vllm_k8s_facts.md`` §6.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

BF16_BYTES = 2


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

    @property
    def num_global_layers(self) -> int:
        """Full-attention layers: every ``pattern``-th layer with a 5:1 local:global interleave."""
        if not self.sliding_window or not self.sliding_window_pattern:
            return self.num_layers
        return self.num_layers // self.sliding_window_pattern

    @property
    def num_sliding_layers(self) -> int:
        return self.num_layers - self.num_global_layers

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return 2 * self.num_kv_heads * self.head_dim * BF16_BYTES

    def kv_bytes_for_context(self, tokens: int) -> int:
        """KV bytes one sequence of ``tokens`` holds, with sliding-window layers capped at their window."""
        per_layer = self.kv_bytes_per_token_per_layer
        window = self.sliding_window or tokens
        return per_layer * (self.num_global_layers * tokens + self.num_sliding_layers * min(tokens, window))

    @property
    def flops_per_token(self) -> float:
        """Dense matmul FLOPs per token (2 per parameter), excluding attention over the context."""
        return 2.0 * self.params


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
    """Accepts ``gemma-3-27b-it`` or ``google/gemma-3-27b-it`` (case-insensitive)."""
    key = name.lower().removeprefix("google/")
    if key in MODELS:
        return MODELS[key]
    if f"{key}-it" in MODELS:
        return MODELS[f"{key}-it"]
    known = ", ".join(MODELS)
    raise ValueError(
        f"unknown model {name!r}; known: {known} (or describe a dense model with dense_profile())"
    )


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
