"""The KV-capacity tables of CAPACITY.md, generated from ``manifests.fit`` (a test keeps the doc in sync).

Regenerate with ``python -m manifests.capacity_table`` and paste between the markers in CAPACITY.md.
"""

from __future__ import annotations

from manifests.cost import compare_with_article
from manifests.fit import FitResult, KvAllocator, check_fit
from manifests.gpus import GIB, GpuType
from manifests.model_catalog import CATALOG
from manifests.model_profiles import MODELS
from manifests.spec import short_gpu_name

CONTEXTS = (2048, 4096, 8192, 32768)

GEMMA_27B_SHAPES: tuple[tuple[GpuType, int], ...] = (
    (GpuType.L4, 1),
    (GpuType.L4, 4),
    (GpuType.L4, 8),
    (GpuType.A100_40, 1),
    (GpuType.A100_40, 2),
    (GpuType.A100_40, 4),
    (GpuType.A100_80, 1),
    (GpuType.A100_80, 2),
    (GpuType.H100, 1),
    (GpuType.H100, 2),
    (GpuType.H100, 4),
)

SMALL_MODEL_SHAPES: tuple[tuple[str, GpuType, int], ...] = (
    ("gemma-3-1b-it", GpuType.L4, 1),
    ("gemma-3-4b-it", GpuType.L4, 1),
    ("gemma-3-12b-it", GpuType.L4, 2),
    ("gemma-3-12b-it", GpuType.A100_40, 1),
    ("gemma-3-12b-it", GpuType.H100, 1),
)


CATALOG_SHAPES: tuple[tuple[str, GpuType, int, str], ...] = (
    ("llama-3.1-8b-instruct", GpuType.L4, 1, "auto"),
    ("llama-3.1-8b-instruct", GpuType.H100, 1, "auto"),
    ("llama-3.1-8b-instruct", GpuType.H100, 1, "fp8"),
    ("llama-3.1-70b-instruct", GpuType.H100, 2, "auto"),
    ("llama-3.1-70b-instruct", GpuType.H100, 4, "auto"),
    ("qwen3-32b", GpuType.H100, 1, "auto"),
    ("qwen3-32b", GpuType.L4, 4, "auto"),
    ("qwen3-32b-awq", GpuType.L4, 1, "auto"),
    ("qwen3-32b-awq", GpuType.A100_40, 1, "auto"),
    ("mixtral-8x7b-instruct-v0.1", GpuType.H100, 2, "auto"),
    ("mixtral-8x7b-instruct-v0.1", GpuType.A100_80, 2, "auto"),
    ("qwen3-30b-a3b", GpuType.H100, 1, "auto"),
    ("qwen3-30b-a3b", GpuType.L4, 4, "auto"),
    ("qwen3-30b-a3b-fp8", GpuType.L4, 2, "fp8"),
    ("deepseek-v2-lite-chat", GpuType.L4, 2, "auto"),
    ("deepseek-v2-lite-chat", GpuType.A100_40, 1, "auto"),
)

CATALOG_HEADER = (
    "| model on shape | KV dtype | weights GiB/GPU | KV GiB/GPU | tokens | concurrency @2K / 8K / 32K |\n"
    "|---|---|---|---|---|---|"
)


def _catalog_row(name: str, gpu: GpuType, count: int, kv_dtype: str) -> str:
    fit = check_fit(CATALOG[name], gpu, count, kv_cache_dtype=kv_dtype)
    shape = f"{name} on {count}x{short_gpu_name(gpu)}"
    kv = fit.kv
    if kv is None or fit.verdict not in ("fits", "context_too_long"):
        return f"| {shape} | {kv_dtype} | {fit.memory.weights_bytes / GIB:.1f} | does not fit | | |"
    concurrency = " / ".join(f"{kv.max_concurrency(ctx):.1f}" for ctx in (2048, 8192, 32768))
    return (
        f"| {shape} | {kv_dtype} | {fit.memory.weights_bytes / GIB:.1f} | {fit.memory.kv_bytes / GIB:.1f} | "
        f"{kv.tokens:,} | {concurrency} |"
    )


def _concurrency(fit: FitResult, allocator: KvAllocator) -> str:
    return " / ".join(f"{fit.max_concurrency(ctx, allocator):.1f}" for ctx in CONTEXTS)


def _row(fit: FitResult, shape: str) -> str:
    if not fit.fits and fit.verdict != "context_too_long":
        return f"| {shape} | {fit.memory.weights_bytes / GIB:.1f} | does not fit | | | | |"
    hybrid, naive = fit.hybrid, fit.naive
    assert naive is not None
    hybrid_tokens = f"{hybrid.tokens:,}" if hybrid else "-"
    hybrid_conc = _concurrency(fit, KvAllocator.HYBRID) if hybrid else "-"
    return (
        f"| {shape} | {fit.memory.weights_bytes / GIB:.1f} | {fit.memory.kv_bytes / GIB:.1f} | "
        f"{hybrid_tokens} | {hybrid_conc} | {naive.tokens:,} | {_concurrency(fit, KvAllocator.NAIVE)} |"
    )


HEADER = (
    "| shape | weights GiB/GPU | KV GiB/GPU | hybrid tokens | hybrid concurrency @2K / 4K / 8K / 32K "
    "| naive tokens | naive concurrency @2K / 4K / 8K / 32K |\n"
    "|---|---|---|---|---|---|---|"
)


def capacity_markdown() -> str:
    lines = ["### Gemma 3 27B bf16 (gpu_memory_utilization 0.90, vLLM default batch sizes)", "", HEADER]
    profile = MODELS["gemma-3-27b-it"]
    for gpu, count in GEMMA_27B_SHAPES:
        lines.append(_row(check_fit(profile, gpu, count), f"{count}x{short_gpu_name(gpu)}"))
    lines += ["", "### Smaller Gemma 3 models (bf16, same settings)", "", HEADER]
    for name, gpu, count in SMALL_MODEL_SHAPES:
        fit = check_fit(MODELS[name], gpu, count)
        lines.append(_row(fit, f"{name} on {count}x{short_gpu_name(gpu)}"))
    lines += [
        "",
        "### Catalog models (gpu_memory_utilization 0.90, vLLM default batch sizes)",
        "",
        CATALOG_HEADER,
    ]
    lines += [_catalog_row(*shape) for shape in CATALOG_SHAPES]
    lines += [
        "",
        "### Cost per 1M tokens, the article's two examples recomputed",
        "",
        "| example | tok/s | machine $/h (+ fee + disk) | ours $/1M | article $/1M |",
        "|---|---|---|---|---|",
    ]
    for row in compare_with_article():
        lines.append(
            f"| {row.example.label} | {row.example.tokens_per_s:,.2f} | {row.cost.total_usd_per_hour:.4f} | "
            f"{row.usd_per_million:.2f} | {row.example.article_usd_per_million:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(capacity_markdown(), end="")
