"""Model profiles from Hugging Face config.json files (copied facts in tests/data/hf_configs), the built-in
catalog, and fit / KV capacity checked against figures vLLM logged or model cards publish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from backends.errors import ConfigError
from backends.twin.capacity import plan_memory
from backends.twin.engine_config import TwinConfig
from backends.twin.roofline import Roofline, StepCost, expected_unique_experts
from manifests.errors import ModelConfigError, SpecError
from manifests.fit import BLOCK_SIZE, FitVerdict, check_fit, kv_layouts, size_spec
from manifests.gpus import GIB, GpuType
from manifests.hf_config import load_model_config, profile_from_config
from manifests.model_catalog import CATALOG, find_profile, load_custom_profile
from manifests.model_profiles import MODELS, ModelProfile, model_profile
from manifests.render import vllm_args
from manifests.spec import build_spec, quantize_fp8

CONFIGS = Path(__file__).parent.parent / "data" / "hf_configs"


def config(name: str) -> ModelProfile:
    return load_model_config(CONFIGS / name)


def raw_config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CONFIGS / name / "config.json").read_text())
    return data


# ---- parameter counts and weights: the model cards' and vLLM's figures ------------------------------


@pytest.mark.parametrize(
    ("name", "params", "active", "source"),
    [
        # Exact counts: Llama 3 8B 8,030,261,248; Mixtral 46,702,792,704 (HF "Model size" of the repos).
        ("llama-3.1-8b-instruct", 8_030_261_248, None, "HF model size, exact"),
        ("mixtral-8x7b-instruct", 46_702_792_704, 12.9e9, "Mistral AI: 46.7B total, 12.9B per token"),
        ("llama-3.1-70b-instruct", 70.6e9, None, "HF model size 70.6B"),
        ("qwen3-32b", 32.8e9, None, "Qwen3-32B card: 32.8B"),
        ("qwen3-30b-a3b", 30.5e9, 3.3e9, "Qwen3-30B-A3B card: 30.5B total, 3.3B activated"),
        ("deepseek-v2-lite-chat", 15.7e9, None, "DeepSeek-V2-Lite card: 15.7B total"),
    ],
)
def test_parameter_counts_match_the_model_cards(
    name: str, params: float, active: float | None, source: str
) -> None:
    profile = config(name)
    exact = isinstance(params, int)
    assert profile.params == pytest.approx(params, rel=0 if exact else 0.005), source
    if active is not None:
        assert profile.active_params == pytest.approx(active, rel=0.02), source


def test_non_embedding_and_activated_counts_of_the_cards() -> None:
    # Qwen3 cards: "Number of Parameters (Non-Embedding)": 31.2B (32B), 29.9B (30B-A3B).
    for name, non_embedding in (("qwen3-32b", 31.2e9), ("qwen3-30b-a3b", 29.9e9)):
        profile = config(name)
        assert profile.params - profile.embedding_params == pytest.approx(non_embedding, rel=0.005)
    # DeepSeek-V2-Lite card: 2.4B activated (its count leaves the input embedding out).
    lite = config("deepseek-v2-lite-chat")
    assert lite.active_params - lite.vocab_size * lite.hidden_size == pytest.approx(2.4e9, rel=0.03)


def test_the_safetensors_index_gives_exact_weight_bytes() -> None:
    with_index = config("llama-3.1-8b-instruct")
    assert with_index.weight_bytes == 16_060_522_496  # model.safetensors.index.json metadata.total_size
    assert "total_size" in with_index.source
    # vLLM #10517 (Llama-3.1-8B-Instruct, RTX 3090): "Loading model weights took 14.9888 GB" (GiB).
    assert with_index.weight_bytes / GIB == pytest.approx(14.9888, rel=0.005)
    # Without an index the same count at 2 bytes a parameter gives the same bytes.
    assert CATALOG["llama-3.1-8b-instruct"].weight_bytes == with_index.weight_bytes


def test_the_catalog_holds_the_config_facts_of_the_test_files() -> None:
    pairs = {
        "llama-3.1-8b-instruct": "llama-3.1-8b-instruct",
        "llama-3.1-70b-instruct": "llama-3.1-70b-instruct",
        "qwen3-32b": "qwen3-32b",
        "qwen3-32b-awq": "qwen3-32b-awq",
        "mixtral-8x7b-instruct-v0.1": "mixtral-8x7b-instruct",
        "qwen3-30b-a3b": "qwen3-30b-a3b",
        "deepseek-v2-lite-chat": "deepseek-v2-lite-chat",
    }
    shape_fields = (
        "num_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_kv_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "num_experts",
        "experts_per_token",
        "num_moe_layers",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
        "kv_lora_rank",
        "qk_rope_head_dim",
        "weight_format",
    )
    for catalog_name, file_name in pairs.items():
        built_in, from_file = CATALOG[catalog_name], config(file_name)
        for field in shape_fields:
            assert getattr(built_in, field) == getattr(from_file, field), (catalog_name, field)
        assert built_in.params == from_file.params
        assert built_in.source.startswith("huggingface.co/")


def test_moe_layouts() -> None:
    mixtral, qwen_moe, lite = (
        config("mixtral-8x7b-instruct"),
        config("qwen3-30b-a3b"),
        config("deepseek-v2-lite-chat"),
    )
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.num_moe_layers) == (8, 2, 32)
    assert (qwen_moe.num_experts, qwen_moe.experts_per_token, qwen_moe.num_moe_layers) == (128, 8, 48)
    # DeepSeek-V2-Lite: layer 0 dense (first_k_dense_replace 1), 26 MoE layers with 2 shared experts.
    assert (lite.num_moe_layers, lite.num_dense_layers, lite.shared_expert_intermediate_size) == (
        26,
        1,
        2 * 1408,
    )
    assert lite.is_mla and lite.kv_lora_rank == 512


def test_sliding_window_patterns() -> None:
    gemma2 = config("gemma-2-9b-it")
    # Gemma 2 alternates sliding-window (4096) and global layers.
    assert (gemma2.num_sliding_layers, gemma2.num_global_layers, gemma2.sliding_window) == (21, 21, 4096)
    # torch_dtype float32 is served in 16 bits by vLLM's --dtype auto: 2 bytes a parameter.
    assert gemma2.weight_bytes == pytest.approx(2 * gemma2.params, rel=0.001)
    gemma3 = json.loads(json.dumps(raw_config("gemma-2-9b-it")))
    gemma3.update(architectures=["Gemma3ForCausalLM"], num_hidden_layers=62, sliding_window=1024)
    gemma3["sliding_window_pattern"] = 6
    profile = profile_from_config(gemma3, name="g3")
    assert (profile.num_global_layers, profile.num_sliding_layers) == (
        MODELS["gemma-3-27b-it"].num_global_layers,
        MODELS["gemma-3-27b-it"].num_sliding_layers,
    )
    hybrid, _ = kv_layouts(profile, 1)
    assert hybrid is not None and hybrid.sliding_window == 1024
    # Qwen3's sliding_window is off unless use_sliding_window is true.
    assert config("qwen3-32b").num_sliding_layers == 0


def test_quantized_weight_bytes() -> None:
    awq, dense = config("qwen3-32b-awq"), config("qwen3-32b")
    linear = dense.always_on_params
    # AWQ 4-bit, group 128: 0.5 byte a weight + an fp16 scale and a 4-bit zero per 128 weights; embeddings
    # and LM head stay 16-bit.
    expected = linear * (0.5 + 2.5 / 128) + (dense.embedding_params + 64 * 2 * 5120 + 5120) * 2
    assert awq.weight_format == "int4" and awq.quantization == "awq"
    assert awq.weight_bytes == pytest.approx(expected, rel=1e-6)
    assert awq.weight_bytes / dense.weight_bytes == pytest.approx(0.295, abs=0.01)
    fp8 = CATALOG["qwen3-30b-a3b-fp8"]
    assert fp8.weight_format == "fp8" and fp8.weight_bytes / CATALOG[
        "qwen3-30b-a3b"
    ].weight_bytes == pytest.approx(0.51, abs=0.01)
    online = quantize_fp8(dense)
    assert online.weight_bytes == pytest.approx(dense.weight_bytes - linear, rel=1e-9)


# ---- KV cache: vLLM's logged figures ---------------------------------------------------------------


def test_llama_8b_blocks_and_tokens_match_vllms_log() -> None:
    # vLLM #10517 (Llama-3.1-8B-Instruct, TP 1): "kv_cache_size=3.81GiB ... GPU blocks: 1952" and
    # "# GPU blocks: 1478 ... KV cache (23648)".
    _, naive = kv_layouts(config("llama-3.1-8b-instruct"), 1)
    assert naive.block_bytes == 32 * BLOCK_SIZE * 2 * 8 * 128 * 2  # 2 MiB
    assert 3.81 * GIB / naive.block_bytes == pytest.approx(1952, rel=0.002)
    assert 1478 * BLOCK_SIZE == 23648


def test_mla_kv_of_deepseek_v2_lite_matches_vllms_log() -> None:
    # vLLM #15871 (DeepSeek-V2-Lite-Chat): "To serve at least one request with the models's max seq len
    # (32768), (0.95 GiB KV cache is needed". MLA caches 512 + 64 values a token and layer, TP-replicated.
    lite = config("deepseek-v2-lite-chat")
    assert lite.kv_bytes_per_token_layer_per_gpu(1, 2) == (512 + 64) * 2
    assert lite.kv_bytes_per_token_layer_per_gpu(4, 2) == (512 + 64) * 2
    _, naive = kv_layouts(lite, 1)
    assert round(naive.bytes_per_request(32768) / GIB, 2) == 0.95


def test_fp8_kv_halves_the_cache_per_token() -> None:
    llama = CATALOG["llama-3.1-8b-instruct"]
    bf16 = check_fit(llama, GpuType.H100, 1, max_model_len=8192)
    fp8 = check_fit(llama, GpuType.H100, 1, max_model_len=8192, kv_cache_dtype="fp8")
    assert bf16.kv is not None and fp8.kv is not None
    assert fp8.kv.layout.block_bytes * 2 == bf16.kv.layout.block_bytes
    assert fp8.kv.tokens == pytest.approx(2 * bf16.kv.tokens, rel=0.001)
    assert "fp8 KV" in fp8.message


def test_capacity_arithmetic_of_capacity_md() -> None:
    # CAPACITY.md, "Any model": Qwen3-30B-A3B on 1xH100 and Llama 3.1 70B on 2xH100, step by step.
    qwen = check_fit(CATALOG["qwen3-30b-a3b"], GpuType.H100, 1)
    budget = int(int(79.2 * GIB) * 0.9)
    weights = CATALOG["qwen3-30b-a3b"].weight_bytes
    activation = 8192 * (2 * 8 * 768 + 4 * 2048) * 2
    sampler = 1024 * 151936 * 4
    kv = budget - weights - activation - sampler - 2 * GIB
    assert qwen.memory.kv_bytes == kv
    block = 48 * 16 * 2 * 4 * 128 * 2
    assert qwen.kv is not None and qwen.kv.tokens == kv // block * 16
    llama70 = check_fit(CATALOG["llama-3.1-70b-instruct"], GpuType.H100, 2)
    assert llama70.verdict == FitVerdict.CONTEXT_TOO_LONG and llama70.kv is not None
    assert llama70.kv.layout.block_bytes == 80 * 16 * 2 * 4 * 128 * 2


def test_twin_sizes_the_kv_cache_like_the_fit() -> None:
    for name, gpu, count in (("qwen3-30b-a3b", "h100", 1), ("deepseek-v2-lite-chat", "l4", 2)):
        plan = plan_memory(TwinConfig.build(name, gpu, count, max_model_len=8192))
        layers = CATALOG[name].num_layers
        per_token = CATALOG[name].kv_bytes_per_token_layer_per_gpu(count, 2) * layers
        assert plan.layout.page_bytes_per_gpu == per_token * 16
        fp8 = plan_memory(TwinConfig.build(name, gpu, count, max_model_len=8192, kv_cache_dtype="fp8"))
        assert fp8.layout.page_bytes_per_gpu * 2 == plan.layout.page_bytes_per_gpu


# ---- the roofline of MoE and quantized models --------------------------------------------------------


def test_expected_unique_experts() -> None:
    assert expected_unique_experts(128, 8, 1) == pytest.approx(8)
    assert expected_unique_experts(8, 2, 1000) == pytest.approx(8)
    # E (1 - (1 - k/E)^T) for E=128, k=8, T=16.
    assert expected_unique_experts(128, 8, 16) == pytest.approx(128 * (1 - (120 / 128) ** 16))
    assert expected_unique_experts(64, 6, 0) == 0.0


def test_moe_decode_reads_only_the_touched_experts() -> None:
    config_ = TwinConfig.build("qwen3-30b-a3b", "h100", 1, max_model_len=8192)
    roof = Roofline(config_)
    one = roof.moe_weight_read_s(1)
    many = roof.moe_weight_read_s(256)
    profile = CATALOG["qwen3-30b-a3b"]
    all_experts = profile.routed_params * profile.weight_bytes / profile.params / roof.weight_bw
    assert one == pytest.approx(all_experts * 8 / 128)
    assert one < many < all_experts
    # A batch-1 decode of the MoE streams ~ its active weights, far less than a dense model its size.
    dense = Roofline(TwinConfig.build("qwen3-32b", "h100", 1, max_model_len=8192))
    cost = StepCost(tokens=1, sampled=1, sequences=1, kv_full_tokens=1000)
    assert roof.step_seconds(cost) * 3 < dense.step_seconds(cost)


def test_quantized_weights_stream_faster_and_compute_at_their_own_efficiency() -> None:
    from backends.twin.roofline import GPU_MATMUL_EFFICIENCY, GPU_QUANTIZED_MATMUL_EFFICIENCY

    dense = Roofline(TwinConfig.build("qwen3-32b", "h100", 1, max_model_len=8192))
    awq = Roofline(TwinConfig.build("qwen3-32b-awq", "h100", 1, max_model_len=8192))
    assert awq.weight_read_s < 0.35 * dense.weight_read_s
    assert awq.matmul_flops / dense.matmul_flops == pytest.approx(
        GPU_QUANTIZED_MATMUL_EFFICIENCY / GPU_MATMUL_EFFICIENCY
    )
    small = StepCost(tokens=1, sampled=1, sequences=1, kv_full_tokens=1000)
    assert awq.step_seconds(small) < dense.step_seconds(small)


# ---- lookups, specs, manifests ------------------------------------------------------------------------


def test_lookups_by_name_and_repo_id() -> None:
    assert model_profile("Qwen/Qwen3-32B") is CATALOG["qwen3-32b"]
    assert model_profile("qwen3-32b") is CATALOG["qwen3-32b"]
    assert find_profile("google/gemma-3-27b-it") is MODELS["gemma-3-27b-it"]
    assert find_profile("other/qwen3-32b") is None  # a repo id must match, not only its tail


def test_manifest_for_a_public_quantized_model_has_no_token_and_the_flags() -> None:
    spec = build_spec(model="Qwen/Qwen3-30B-A3B", gpu="l4", gpu_count=4, kv_cache_dtype="fp8")
    assert spec.hf_token_env is None and not spec.has_token_source  # Qwen repos are not gated
    assert "--kv-cache-dtype=fp8" in vllm_args(spec)
    gated = build_spec(model="meta-llama/Llama-3.1-8B-Instruct", gpu="l4", quantization="fp8")
    assert gated.hf_token_env == "HF_TOKEN" and "--quantization=fp8" in vllm_args(gated)
    assert gated.profile is not None and gated.profile.weight_format == "fp8"
    with pytest.raises(SpecError, match="only fp8 quantizes"):
        build_spec(model="Qwen/Qwen3-32B", gpu="h100", quantization="awq")


def test_size_spec_picks_the_count_and_the_context_that_fit() -> None:
    spec, fit, notes = size_spec(
        build_spec(model="meta-llama/Llama-3.1-70B-Instruct", gpu="h100"), choose_count=True
    )
    assert spec.gpu_count == 2 and spec.name == "llama-3-1-70b-instruct-2xh100"
    assert fit.fits and spec.max_model_len is not None and fit.kv is not None
    assert spec.max_model_len <= fit.kv.longest_context() < 131072
    assert len(notes) == 2 and "max-model-len" in notes[1]
    untouched, _, notes = size_spec(build_spec(model="Qwen/Qwen3-32B", gpu="h100", gpu_count=2))
    assert untouched.max_model_len is None and notes == []


def test_custom_profile_travels_in_the_spec(tmp_path: Path) -> None:
    profile = load_custom_profile(CONFIGS / "qwen3-30b-a3b", model="acme/qwen-moe-finetune")
    assert profile.gated  # unknown repos are taken as gated: the pod gets the token
    spec = build_spec(model="acme/qwen-moe-finetune", gpu="h100", custom_profile=profile)
    assert spec.profile == profile and spec.hf_token_env == "HF_TOKEN"
    again = build_spec(json.loads(spec.model_dump_json()))
    assert again.profile == profile
    known = load_custom_profile(CONFIGS / "qwen3-30b-a3b", model="Qwen/Qwen3-30B-A3B")
    assert not known.gated


# ---- bad input: one line each --------------------------------------------------------------------------


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def test_missing_head_counts_name_the_fields(tmp_path: Path) -> None:
    data = raw_config("llama-3.1-8b-instruct")
    del data["num_attention_heads"]
    with pytest.raises(ModelConfigError) as caught:
        load_model_config(_write(tmp_path, data))
    message = str(caught.value)
    assert "lacks num_attention_heads" in message and "\n" not in message
    moe = raw_config("qwen3-30b-a3b")
    del moe["num_experts_per_tok"]
    with pytest.raises(ModelConfigError, match="Qwen3MoeForCausalLM lacks num_experts_per_tok"):
        load_model_config(_write(tmp_path, moe))


def test_unknown_architecture_needs_the_generic_reading(tmp_path: Path) -> None:
    data = {**raw_config("llama-3.1-8b-instruct"), "architectures": ["FancyNewForCausalLM"]}
    path = _write(tmp_path, data)
    with pytest.raises(ModelConfigError, match="architecture FancyNewForCausalLM is not one servedeck knows"):
        load_model_config(path)
    generic = load_model_config(path, allow_generic=True)
    assert "generic dense decoder" in generic.caveat
    assert generic.params == config("llama-3.1-8b-instruct").params


def test_unreadable_and_unsupported_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="does not exist"):
        load_model_config(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text("{")
    with pytest.raises(ModelConfigError, match="is not valid JSON"):
        load_model_config(bad)
    data = {**raw_config("qwen3-32b"), "quantization_config": {"quant_method": "hqq"}}
    with pytest.raises(ModelConfigError, match="quant_method 'hqq' is not sized here"):
        load_model_config(_write(tmp_path, data))


def test_fp8_kv_cache_needs_an_fp8_gpu() -> None:
    build_spec(model="Qwen/Qwen3-32B-AWQ", gpu="l4", kv_cache_dtype="fp8")  # Ada has fp8
    with pytest.raises(SpecError, match="needs fp8 support, which NVIDIA A100 80GB lacks"):
        build_spec(model="Qwen/Qwen3-32B-AWQ", gpu="a100-80gb", kv_cache_dtype="fp8")
    with pytest.raises(ConfigError, match="needs fp8 support, which NVIDIA A100 40GB lacks"):
        TwinConfig.build("qwen3-32b-awq", "a100-40gb", 1, kv_cache_dtype="fp8")


def test_a_model_too_large_for_eight_gpus_of_any_type() -> None:
    huge = CATALOG["llama-3.1-70b-instruct"].model_copy(update={"weight_bytes": 900 * GIB, "name": "huge"})
    fit = check_fit(huge, GpuType.H100, 8)
    assert fit.verdict == FitVerdict.WEIGHTS_TOO_LARGE
    assert "more than 8 GPUs of any type hold" in fit.message and "\n" not in fit.message
    with pytest.raises(ConfigError, match="more than 8 GPUs of any type hold"):
        plan_memory(TwinConfig.build(huge, "a100-80gb", 8, max_model_len=4096))
