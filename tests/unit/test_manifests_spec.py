"""DeploymentSpec validation: every bad input is one clear ``SpecError`` line."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from manifests.errors import SpecError
from manifests.gpus import GpuType
from manifests.spec import CPU_IMAGE, GPU_IMAGE, DeploymentSpec, build_spec, default_deployment_name

GEMMA_27B = "google/gemma-3-27b-it"


def _error(**fields: object) -> str:
    with pytest.raises(SpecError) as caught:
        build_spec(**fields)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("invalid deployment spec: ")
    return message


def test_defaults_follow_the_article() -> None:
    spec = build_spec(model=GEMMA_27B, gpu="h100")
    assert spec.name == "gemma-3-27b-it-1xh100"
    assert spec.namespace == "vllm"
    assert spec.gpu_memory_utilization == 0.9
    assert spec.enable_chunked_prefill is True
    assert spec.dtype == "bfloat16"
    assert spec.tensor_parallel_size == 1
    assert spec.effective_image == GPU_IMAGE
    assert spec.hf_token_env == "HF_TOKEN"
    assert spec.storage_gib == 100


def test_default_names_distinguish_hardware_shapes() -> None:
    assert default_deployment_name(GEMMA_27B, GpuType.L4, 4) == "gemma-3-27b-it-4xl4"
    assert default_deployment_name(GEMMA_27B, GpuType.A100_80, 2) == "gemma-3-27b-it-2xa100-80gb"
    assert default_deployment_name("google/gemma-3-1b-it", GpuType.CPU_EMERALD, 1) == "gemma-3-1b-it-cpu-c4"
    long_name = default_deployment_name("org/" + "x" * 80, GpuType.H100, 8)
    assert len(long_name) <= 40 and long_name.endswith("-8xh100")


def test_cpu_spec_uses_the_cpu_image() -> None:
    spec = build_spec(model="google/gemma-3-1b-it", gpu="cpu-c4")
    assert spec.is_cpu and spec.effective_image == CPU_IMAGE


def test_gpu_count_must_be_a_machine_shape() -> None:
    message = _error(model=GEMMA_27B, gpu="l4", gpu_count=3)
    assert "gpu_count 3" in message and "choose 1, 2, 4, 8" in message


def test_multi_node_counts_split_into_tp_per_node_and_pp_across_nodes() -> None:
    spec = build_spec(model="meta-llama/Llama-3.1-405B-Instruct", gpu="h100", gpu_count=16)
    assert (spec.tensor_parallel_size, spec.pipeline_parallel_size, spec.nodes_per_replica) == (8, 2, 2)
    assert spec.multi_node
    _error(model="meta-llama/Llama-3.1-405B-Instruct", gpu="h100", gpu_count=12)


def test_tensor_parallel_size_must_divide_attention_and_kv_heads() -> None:
    # Gemma 3 1B: 4 attention heads, 1 KV head -> TP 8 cannot split 4 heads.
    message = _error(model="google/gemma-3-1b-it", gpu="l4", gpu_count=8)
    assert "tensor parallel size 8" in message and "4 attention heads" in message
    assert build_spec(model="google/gemma-3-1b-it", gpu="l4", gpu_count=2).tensor_parallel_size == 2


def test_h100_mega_only_comes_with_eight_gpus() -> None:
    assert "choose 8" in _error(model=GEMMA_27B, gpu="h100-mega", gpu_count=1)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "Gemma_27B"}, "name: must be lowercase"),
        ({"name": "g" * 41}, "at most 40"),
        ({"namespace": "Bad Space"}, "namespace: must be a DNS label"),
        ({"model": "not a model id"}, "model: must be a Hugging Face model id"),
        ({"gpu": "t4"}, "gpu: Input should be"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"replicas": -1}, "replicas"),
        ({"zone": "central"}, "zone: must be a GCP zone"),
        ({"max_model_len": 200_000}, "exceeds gemma-3-27b-it's 131072 positions"),
        ({"max_num_batched_tokens": 64, "max_num_seqs": 128}, "must be >= max_num_seqs 128"),
        (
            {"enable_chunked_prefill": False, "max_num_batched_tokens": 4096, "max_model_len": 8192},
            "without chunked prefill",
        ),
        ({"extra_args": ("--max-model-len=4096",)}, "--max-model-len is set by the spec; use max_model_len"),
        ({"extra_args": ("--hf-token=abc",)}, "tokens go in the Secret"),
        ({"hf_token_env": "my token"}, "must be an environment variable name"),
        (
            {"hf_token_file": "/tmp/token", "hf_token_env": "HF_TOKEN"},
            "give hf_token_env or hf_token_file, not",
        ),
        ({"machine_type": "a3-highgpu-1g", "gpu": "l4"}, "does not carry 1xNVIDIA L4"),
        ({"unknown_field": 1}, "unknown_field: Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_give_one_clear_line(fields: dict[str, object], expected: str) -> None:
    base: dict[str, object] = {"model": GEMMA_27B, "gpu": "h100", "name": "gemma"}
    message = _error(**{**base, **fields})
    assert expected in message


def test_a_token_pasted_as_the_env_var_name_is_rejected_without_echoing_it() -> None:
    token = "hf_" + "Ab3" * 12
    message = _error(model=GEMMA_27B, gpu="h100", hf_token_env=token)
    assert "looks like a token value" in message
    assert token not in message
    with pytest.raises(ValidationError) as caught:
        DeploymentSpec(name="x", model=GEMMA_27B, gpu=GpuType.H100, hf_token_env=token)
    assert token not in str(caught.value)


def test_unknown_models_are_accepted_without_head_checks() -> None:
    spec = build_spec(model="mistralai/Mistral-7B-Instruct-v0.3", gpu="l4", gpu_count=2)
    assert spec.profile is None
    assert spec.effective_max_model_len is None


def test_scheduler_defaults_follow_vllm_per_gpu() -> None:
    h100 = build_spec(model=GEMMA_27B, gpu="h100")
    a100 = build_spec(model=GEMMA_27B, gpu="a100-80gb")
    assert (h100.effective_max_num_batched_tokens, h100.effective_max_num_seqs) == (8192, 1024)
    assert (a100.effective_max_num_batched_tokens, a100.effective_max_num_seqs) == (2048, 256)
    no_chunking = build_spec(model=GEMMA_27B, gpu="h100", enable_chunked_prefill=False, max_model_len=16384)
    assert no_chunking.effective_max_num_batched_tokens == 16384


def test_pod_resources_match_the_article_for_one_h100_and_fit_the_machine_elsewhere() -> None:
    h100 = build_spec(model=GEMMA_27B, gpu="h100").pod_resources()
    assert (h100.cpu, h100.memory_gib, h100.ephemeral_storage_gib, h100.gpus) == (8.0, 128, 120, 1)
    l4 = build_spec(model="google/gemma-3-4b-it", gpu="l4").pod_resources()  # g2-standard-8: 8 vCPU, 32 GiB
    assert l4.cpu <= 8 and l4.memory_gib <= 32
    cpu = build_spec(model="google/gemma-3-1b-it", gpu="cpu-c4").pod_resources()
    assert cpu.gpus == 0 and cpu.cpu > 100
