"""Fit and KV capacity: the acceptance shapes for Gemma 3 27B bf16, the KV arithmetic of
vllm_k8s_facts.md §6a, typed "does not fit" results, and CAPACITY.md kept in sync with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests.capacity_table import capacity_markdown
from manifests.errors import DoesNotFitError, SpecError
from manifests.fit import FitVerdict, KvAllocator, check_fit, fit_spec, kv_layouts
from manifests.gpus import GIB, GpuType
from manifests.model_profiles import MODELS, dense_profile
from manifests.spec import build_spec

GEMMA_27B = MODELS["gemma-3-27b-it"]


@pytest.mark.parametrize(
    ("gpu", "count", "usable_gib"),
    [(GpuType.L4, 1, "19.8"), (GpuType.A100_40, 1, "35.5")],
)
def test_gemma_27b_bf16_does_not_fit_one_small_gpu(gpu: GpuType, count: int, usable_gib: str) -> None:
    result = check_fit(GEMMA_27B, gpu, count)
    assert not result.fits
    assert result.verdict == FitVerdict.WEIGHTS_TOO_LARGE
    assert result.message.startswith("Gemma 3 27B bf16 does not fit 1x")
    assert f"weights 51.2 GiB > {usable_gib} GiB usable per GPU" in result.message
    assert "\n" not in result.message
    with pytest.raises(DoesNotFitError) as caught:
        result.require()
    assert caught.value.result is result and str(caught.value) == result.message


def test_the_message_names_the_smallest_shape_that_fits() -> None:
    assert "smallest that fits: 4xL4" in check_fit(GEMMA_27B, GpuType.L4, 1).message
    assert "smallest that fits: 2xA100-40GB" in check_fit(GEMMA_27B, GpuType.A100_40, 1).message


@pytest.mark.parametrize(
    ("gpu", "count"),
    [(GpuType.H100, 1), (GpuType.A100_80, 1), (GpuType.A100_40, 2), (GpuType.L4, 4)],
)
def test_gemma_27b_bf16_fits(gpu: GpuType, count: int) -> None:
    result = check_fit(GEMMA_27B, gpu, count)
    assert result.fits, result.message
    assert result.allocator == KvAllocator.HYBRID
    assert result.memory.kv_bytes > 3 * GIB
    assert result.kv is not None and result.kv.tokens > 20_000
    # the full 128K context fits one request under the hybrid allocator
    assert result.max_model_len == 131_072 and result.kv.longest_context() >= 131_072
    assert result.max_concurrency(2048) > 20


def test_per_request_kv_matches_the_reference_arithmetic() -> None:
    hybrid, naive = kv_layouts(GEMMA_27B, tensor_parallel_size=1)
    assert hybrid is not None
    assert (hybrid.group_size, hybrid.full_attention_groups, hybrid.sliding_window_groups) == (10, 1, 6)
    assert hybrid.block_bytes == 10 * 16 * 8192  # 1.25 MiB
    assert naive.block_bytes == 62 * 16 * 8192  # 496 KiB per token
    assert hybrid.bytes_per_request(1024) / GIB == pytest.approx(0.547, abs=0.001)
    assert hybrid.bytes_per_request(32768) / GIB == pytest.approx(2.98, abs=0.01)
    assert naive.bytes_per_request(32768) / GIB == pytest.approx(15.5, abs=0.01)
    tp4_hybrid, _ = kv_layouts(GEMMA_27B, tensor_parallel_size=4)
    assert tp4_hybrid is not None and tp4_hybrid.block_bytes * 4 == hybrid.block_bytes


def test_one_h100_capacity_is_in_line_with_the_reference_estimate() -> None:
    result = check_fit(GEMMA_27B, GpuType.H100, 1)
    assert result.memory.kv_bytes / GIB == pytest.approx(16, abs=1)  # §6b: ~16 GiB
    assert result.naive is not None and result.naive.tokens == pytest.approx(34_000, rel=0.05)
    assert result.max_concurrency(2048, KvAllocator.HYBRID) == pytest.approx(25, abs=2)
    assert result.max_concurrency(32768, KvAllocator.HYBRID) == pytest.approx(5, abs=1)
    assert result.max_concurrency(32768, KvAllocator.NAIVE) < 1.5


def test_context_longer_than_the_kv_cache_is_reported_with_numbers() -> None:
    dense = dense_profile("example/dense-8b", 8e9, num_layers=32, num_kv_heads=8, head_dim=128)
    dense = dense.model_copy(update={"max_position_embeddings": 131_072})
    result = check_fit(dense, GpuType.L4, 1, max_model_len=131_072)
    assert result.verdict == FitVerdict.CONTEXT_TOO_LONG
    assert "but max-model-len is 131,072; set max-model-len <= " in result.message
    assert result.hybrid is None and result.allocator == KvAllocator.NAIVE


def test_no_room_for_kv_after_weights_and_runtime() -> None:
    result = check_fit(GEMMA_27B, GpuType.H100, 1, gpu_memory_utilization=0.68)
    assert result.verdict == FitVerdict.NO_ROOM_FOR_KV
    assert "leave no KV cache" in result.message


def test_cpu_node_fit_uses_the_kv_space_and_pod_memory() -> None:
    spec = build_spec(model="google/gemma-3-27b-it", gpu="cpu-c4")
    result = fit_spec(spec)
    assert result.fits and result.memory.kv_bytes == 40 * GIB
    tight = build_spec(model="google/gemma-3-27b-it", gpu="cpu-c4", memory_gib=64)
    too_small = fit_spec(tight)
    assert too_small.verdict == FitVerdict.HOST_MEMORY_TOO_SMALL
    assert "pod memory" in too_small.message


def test_fit_spec_follows_the_spec_settings() -> None:
    capped = fit_spec(
        build_spec(model="google/gemma-3-27b-it", gpu="h100", max_num_seqs=64, max_model_len=8192)
    )
    default = fit_spec(build_spec(model="google/gemma-3-27b-it", gpu="h100"))
    assert capped.max_model_len == 8192 and capped.max_num_seqs == 64
    assert capped.memory.kv_bytes > default.memory.kv_bytes  # fewer sampler rows leave more KV cache
    with pytest.raises(SpecError, match="no size profile"):
        fit_spec(build_spec(model="meta-llama/Llama-3.1-405B-Instruct", gpu="l4"))


def test_capacity_doc_matches_the_code() -> None:
    doc = (Path(__file__).resolve().parents[2] / "CAPACITY.md").read_text(encoding="utf-8")
    begin, end = "<!-- capacity-table:begin -->\n", "<!-- capacity-table:end -->"
    assert doc[doc.index(begin) + len(begin) : doc.index(end)] == capacity_markdown(), (
        "CAPACITY.md is stale: regenerate with `python -m manifests.capacity_table`"
    )
