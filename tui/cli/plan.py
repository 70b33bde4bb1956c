"""`servedeck plan`: size hardware with the vLLM twin in fast-forward, before paying for it.

Prints whether the model fits, the KV cache it leaves (tokens, concurrency at a context length), what the
machines cost, and the predicted sweep with ``vllm bench serve``'s metric names. Every number is a twin
prediction (simulated); CALIBRATION.md says how far to trust it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from backends.bench.export import summarize_server, to_vllm_result
from backends.bench.models import Axis
from backends.bench.results import LevelResult, SweepConfig, SweepResult
from backends.errors import ConfigError
from backends.prometheus import prefix_cache_warning
from backends.target_types import Target, TargetKind
from backends.twin.capacity import GIB, MemoryPlan
from backends.twin.engine import TwinConfig, TwinEngine
from backends.twin.fastforward import OutputLengths, run_sweep, sample_dataset
from manifests.catalog import Catalog
from manifests.cost import estimate_cost
from manifests.errors import ManifestError
from manifests.gpus import GpuType
from tui.cli.advise import add_advise_arguments, require_plan_arguments, run_advise
from tui.cli.bench_display import prompts_line, turns_table
from tui.cli.deploy_render import (
    DEFAULT_MODEL,
    add_model_config_arguments,
    custom_profile_from_args,
    load_prices,
)
from tui.cli.json_output import write_document
from tui.cli.sweep_args import (
    add_sweep_arguments,
    check_workload_counts,
    percentiles,
    sweep_fields_from_args,
)
from tui.cli.twin_calibrate import (
    add_calibration_argument,
    apply_calibration,
    calibration_document,
    calibration_note,
    load_calibration,
)

DEFAULT_CONTEXT_LEN = 2048


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="predict fit, KV capacity, cost and a sweep on simulated hardware (vLLM twin, fast-forward)",
        description=(
            "Runs the vLLM twin on a virtual clock: the same prompts, arrivals and metrics as "
            "`servedeck bench`, no GPU needed. Open loop (--request-rate R: Poisson arrivals, R req/s) "
            "or closed loop (--concurrency N: N requests in flight)."
        ),
    )
    parser.add_argument(
        "--model", help=f"built-in model (default {DEFAULT_MODEL}; servedeck models list) or the repo id"
    )
    add_model_config_arguments(parser)
    parser.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"],
        default="auto",
        help="default auto",
    )
    parser.add_argument("--gpu", required=True, help=f"accelerator: {', '.join(g.value for g in GpuType)}")
    parser.add_argument("--count", type=int, default=1, help="GPUs per replica = tensor-parallel size")
    add_sweep_arguments(parser, num_prompts_default=1000)
    parser.add_argument("--ignore-eos", action="store_true", help="every answer runs to its output length")
    parser.add_argument(
        "--eos",
        choices=[o.value for o in OutputLengths],
        default=OutputLengths.MAX_TOKENS.value,
        help=(
            "with --output-len and without --ignore-eos: 'max' = answers run to the output length "
            "(default), 'dataset' = they stop at the ShareGPT answer's length"
        ),
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--percentiles", type=percentiles, default=[99.0], help="e.g. 50,90,99")
    parser.add_argument("--max-model-len", type=int, help="default: the model's maximum")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-num-seqs", type=int, help="default: vLLM's for the GPU")
    parser.add_argument("--max-num-batched-tokens", type=int, help="default: vLLM's for the GPU")
    parser.add_argument("--no-chunked-prefill", action="store_true")
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument(
        "--no-hybrid-kv-cache",
        action="store_true",
        help="size every layer as full attention, as vLLM before 0.10 did (the seed article ran 0.8.2)",
    )
    parser.add_argument(
        "--context-len",
        type=int,
        default=DEFAULT_CONTEXT_LEN,
        help=f"context length for the max-concurrency figure (default {DEFAULT_CONTEXT_LEN})",
    )
    parser.add_argument("--spot", action="store_true", help="price spot VMs")
    parser.add_argument("--price-file", type=Path, help="YAML/JSON prices that override the built-in catalog")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    add_calibration_argument(parser)
    add_advise_arguments(parser)
    parser.set_defaults(handler=run_plan)


def twin_config_from_args(args: argparse.Namespace) -> TwinConfig:
    if args.count < 1:
        raise ConfigError(f"--count must be at least 1 GPU, not {args.count}")
    if args.context_len < 1:
        raise ConfigError(f"--context-len must be at least 1 token, not {args.context_len}")
    profile = custom_profile_from_args(args, args.model)
    return TwinConfig.build(
        profile or args.model or DEFAULT_MODEL,
        args.gpu,
        args.count,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_chunked_prefill=not args.no_chunked_prefill,
        enable_prefix_caching=not args.no_prefix_caching,
        hybrid_kv_cache=not args.no_hybrid_kv_cache,
        kv_cache_dtype=args.kv_cache_dtype,
    )


def sweep_config_from_args(args: argparse.Namespace, config: TwinConfig) -> SweepConfig:
    check_workload_counts(args)
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ConfigError(f"--max-concurrency must be at least 1, not {args.max_concurrency}")
    target = Target(
        name=f"twin {config.gpu_count}x{config.gpu.value}",
        base_url=f"twin://{config.gpu_count}x{config.gpu.value}",
        model=config.model.hf_id,
        kind=TargetKind.TWIN,
    )
    return SweepConfig(target=target, **sweep_fields_from_args(args), label="twin fast-forward")


def cost_per_hour(catalog: Catalog, config: TwinConfig, spot: bool) -> tuple[float | None, str]:
    """$/h of one replica from the machine catalog, or None and why not."""
    try:
        cost = estimate_cost(catalog, config.gpu, config.gpu_count, spot=spot)
    except ManifestError as err:
        return None, str(err)
    sources = "; ".join(cost.price_sources)
    note = (
        f"{cost.machine} x{cost.nodes}, {'spot' if spot else 'on-demand'}, cluster fee and storage included"
    )
    if cost.estimate:
        note += " (some prices are estimates)"
    return cost.total_usd_per_hour, f"{note}. Sources: {sources}"


def _level_extras(level: LevelResult, usd_per_hour: float | None) -> dict[str, Any]:
    server = summarize_server(level.server_snapshots)
    throughput = level.metrics.total_token_throughput
    usd_per_million = None
    if usd_per_hour is not None and throughput > 0:
        usd_per_million = usd_per_hour / 3600.0 / throughput * 1e6
    return {
        "running_max": server.running_max,
        "waiting_max": server.waiting_max,
        "kv_cache_usage_max": server.kv_cache_usage_max,
        "preemptions": server.preemptions,
        "prefix_cache_hit_rate": server.prefix_cache_hit_rate,
        "usd_per_million_tokens": usd_per_million,
    }


def plan_document(
    config: TwinConfig,
    memory: MemoryPlan,
    context_len: int,
    cost: tuple[float | None, str],
    result: SweepResult,
    notes: list[str],
    calibrated: dict[str, object] | None = None,
) -> dict[str, Any]:
    usd_per_hour, cost_note = cost
    return {
        "simulated": True,
        "calibration": calibrated if calibrated is not None else calibration_document(None),
        "twin": config.model_dump(mode="json"),
        "resolved": {
            "max_model_len": config.resolved_max_model_len,
            "max_num_seqs": config.resolved_max_num_seqs,
            "max_num_batched_tokens": config.resolved_max_num_batched_tokens,
        },
        "fit": memory.model_dump(mode="json"),
        "capacity": {
            "kv_cache_tokens": memory.kv_cache_tokens,
            "num_gpu_blocks": memory.num_gpu_blocks,
            "max_concurrency_at_max_model_len": memory.max_concurrency,
            "context_len": context_len,
            "max_concurrency_at_context_len": memory.max_concurrency_at(context_len),
        },
        "cost": {"usd_per_hour": usd_per_hour, "note": cost_note},
        "notes": notes,
        "levels": [
            {**to_vllm_result(level, result.config), "twin": _level_extras(level, usd_per_hour)}
            for level in result.levels
        ],
    }


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def print_plan(
    config: TwinConfig,
    memory: MemoryPlan,
    context_len: int,
    cost: tuple[float | None, str],
    result: SweepResult,
    notes: list[str],
) -> None:
    out = sys.stdout.write
    acc = config.accelerator
    tp = config.gpu_count
    chunked = "on" if config.enable_chunked_prefill else "off"
    caching = "on" if config.enable_prefix_caching else "off"
    out(f"vLLM twin plan (simulated): {config.model.name} on {tp}x {acc.display_name} (TP {tp})\n")
    allocator = "hybrid" if config.hybrid_kv_cache else "full-attention"
    out(
        f"  engine: max-model-len {config.resolved_max_model_len:,}, "
        f"max-num-seqs {config.resolved_max_num_seqs}, "
        f"max-num-batched-tokens {config.resolved_max_num_batched_tokens}, chunked prefill {chunked}, "
        f"prefix caching {caching}, {allocator} KV allocator\n"
    )
    out(
        f"Fit, per GPU: {_gib(memory.total_bytes)} x {config.gpu_memory_utilization:g} = "
        f"{_gib(memory.requested_bytes)}; weights {_gib(memory.weight_bytes)}, activations "
        f"{_gib(memory.activation_peak_bytes)}, runtime {_gib(memory.non_torch_bytes)} -> KV cache "
        f"{_gib(memory.kv_cache_bytes)}\n"
    )
    out(
        f"KV capacity: {memory.kv_cache_tokens:,} tokens ({memory.num_gpu_blocks:,} blocks of "
        f"{memory.block_size}); max concurrency {memory.max_concurrency_at(context_len):,.2f}x at "
        f"{context_len:,} tokens, {memory.max_concurrency:,.2f}x at {memory.max_model_len:,}\n"
    )
    usd_per_hour, cost_note = cost
    if usd_per_hour is None:
        out(f"Cost: not shown ({cost_note})\n")
    else:
        out(f"Cost: ${usd_per_hour:,.2f}/h ({cost_note})\n")
    for note in notes:
        out(f"note: {note}\n")
    axis = "Concurrency" if result.config.axis is Axis.CONCURRENCY else "Request rate (req/s)"
    headers = [
        axis,
        "Request throughput (req/s)",
        "Output token throughput (tok/s)",
        "Total Token throughput (tok/s)",
        "Mean TTFT (ms)",
        "P99 TTFT (ms)",
        "Mean TPOT (ms)",
        "P99 ITL (ms)",
        "Max running",
        "Peak KV %",
        "Preemptions",
        "Prefix hit %",
        "$/1M tok",
    ]
    rows = []
    warnings = []
    for level in result.levels:
        m = level.metrics
        extras = _level_extras(level, usd_per_hour)
        kv = extras["kv_cache_usage_max"]
        hit_rate = extras["prefix_cache_hit_rate"]
        rows.append(
            [
                f"{level.level.value:g}",
                _fmt(m.request_throughput, 2),
                _fmt(m.output_throughput),
                _fmt(m.total_token_throughput),
                _fmt(m.ttft.mean),
                _fmt(m.ttft.percentiles.get("99")),
                _fmt(m.tpot.mean),
                _fmt(m.itl.percentiles.get("99")),
                _fmt(extras["running_max"], 0),
                _fmt(None if kv is None else kv * 100),
                _fmt(extras["preemptions"], 0),
                "n/a" if hit_rate is None else f"{hit_rate * 100:.0f}",
                _fmt(extras["usd_per_million_tokens"], 2),
            ]
        )
        warning = prefix_cache_warning(hit_rate, level.prompt_sampling)
        if warning:
            warnings.append(f"warning: {level.level.label}: {warning}\n")
    out(prompts_line(result) + "\n")
    for warning in warnings:
        out(warning)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)) + "\n")
    for row in rows:
        out("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + "\n")
    turns = turns_table(result)
    if turns is not None:
        Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160).print(turns)


def run_plan(args: argparse.Namespace) -> int:
    if args.advise:
        return run_advise(args)
    require_plan_arguments(args)
    calibrated = load_calibration(args)
    config = apply_calibration(twin_config_from_args(args), calibrated)
    catalog = load_prices(args.price_file)
    engine = TwinEngine(config)  # sizes the KV cache; a model that does not fit stops here
    sweep = sweep_config_from_args(args, config)
    dataset = sample_dataset(sweep)
    notes = [calibration_note(calibrated), *dataset.notes]
    if config.model.caveat:
        notes.append(f"model profile: {config.model.caveat}")
    output_lengths = OutputLengths(args.eos)
    if sweep.output_len is not None and not sweep.ignore_eos:
        if output_lengths is OutputLengths.MAX_TOKENS:
            notes.append(
                f"answers run to {sweep.output_len} tokens (--eos dataset: stop at ShareGPT's lengths)"
            )
        else:
            notes.append("answers stop at the dataset answer's token count, capped at --output-len")
    result = run_sweep(config, sweep, dataset=dataset, output_lengths=output_lengths, engine=engine)
    cost = cost_per_hour(catalog, config, args.spot)
    document = plan_document(
        config, engine.memory, args.context_len, cost, result, notes, calibration_document(calibrated)
    )
    write_document(document, args.out, to_stdout=args.json)
    if not args.json:
        print_plan(config, engine.memory, args.context_len, cost, result, notes)
    return 0
