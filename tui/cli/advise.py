"""`servedeck plan --advise`: the cheapest catalog hardware for a request rate within an SLO (vLLM twin).

    servedeck plan --advise --rate 20 --slo p99_ttft:2000,p99_tpot:100 [--model M] [--gpus l4,h100]
                   [--max-gpus 8] [--max-replicas 16] [--spot] [--dataset sharegpt] [--output-len 256]

Prints a ranked table (highest SLO-meeting rate per replica, replicas for the rate, $/h, $ per 1M tokens,
headroom), the shapes that cannot meet the SLO with the reason, and a bar chart of the ranking.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

from backends.advisor.advise import (
    DEFAULT_MAX_GPUS,
    DEFAULT_MAX_REPLICAS,
    Advice,
    Progress,
    ShapeAdvice,
    Verdict,
    advise,
    unservable_line,
)
from backends.advisor.knee import DEFAULT_MAX_LEVELS, DEFAULT_TOLERANCE, Sessions
from backends.bench.models import Axis
from backends.bench.results import SweepConfig
from backends.bench.slo import describe, parse_slo
from backends.errors import ConfigError
from backends.target_types import Target, TargetKind
from backends.twin.calibration import calibrated_gpus
from backends.twin.fastforward import sample_dataset
from manifests.gpus import GpuType
from tui.cli.json_output import write_document
from tui.cli.sweep_args import check_workload_counts, dataset_from_args
from tui.cli.twin_calibrate import calibration_document, calibration_note, load_calibration

_BAR_WIDTH = 40


def add_advise_arguments(parser: argparse.ArgumentParser) -> None:
    """`plan`'s --advise flags; --gpu and the sweep axis stop being required (``require_plan_arguments``)."""
    group = parser.add_argument_group("capacity advisor (--advise)")
    group.add_argument(
        "--advise",
        action="store_true",
        help="rank every catalog shape that fits by $ per 1M tokens at --rate within --slo",
    )
    group.add_argument(
        "--rate",
        type=float,
        help="with --advise: the request rate to serve (req/s; multi-turn: new sessions/s, the SLO per turn)",
    )
    group.add_argument(
        "--slo",
        help="with --advise: targets in ms, vLLM --goodput key names with a statistic, e.g. "
        "p99_ttft:2000,p99_tpot:100 (also mean_/median_/pNN_ ttft, tpot, itl, e2el; bare ttft/tpot/e2el "
        "with goodput:0.95 = that share of requests within every bare target)",
    )
    group.add_argument(
        "--gpus", help=f"with --advise: comma list of accelerators (default all: {', '.join(GpuType)})"
    )
    group.add_argument(
        "--max-gpus",
        type=int,
        default=DEFAULT_MAX_GPUS,
        help=f"GPUs per replica (default {DEFAULT_MAX_GPUS})",
    )
    group.add_argument(
        "--max-replicas",
        type=int,
        default=DEFAULT_MAX_REPLICAS,
        help=f"replicas of one shape (default {DEFAULT_MAX_REPLICAS})",
    )
    group.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"relative width at which the rate search stops (default {DEFAULT_TOLERANCE:g})",
    )
    group.add_argument(
        "--max-levels",
        type=int,
        default=DEFAULT_MAX_LEVELS,
        help=f"fast-forward levels per shape at most (default {DEFAULT_MAX_LEVELS})",
    )
    for action in parser._actions:
        if action.dest == "gpu":
            action.required = False
    for mutex in parser._mutually_exclusive_groups:
        mutex.required = False


def require_plan_arguments(args: argparse.Namespace) -> None:
    """What a plain `plan` (no --advise) still needs."""
    if args.gpu is None:
        raise ConfigError("plan needs --gpu (or --advise to rank every catalog shape)")
    if args.concurrency is None and args.request_rate is None:
        raise ConfigError("plan needs --concurrency or --request-rate (or --advise --rate R)")


def _gpus(text: str | None) -> list[GpuType] | None:
    if not text:
        return None
    gpus: list[GpuType] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        try:
            gpus.append(GpuType(part))
        except ValueError:
            raise ConfigError(
                f"--gpus: unknown GPU type {part!r}; known: {', '.join(g.value for g in GpuType)}"
            ) from None
    return gpus


def _engine_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "enable_chunked_prefill": not args.no_chunked_prefill,
        "enable_prefix_caching": not args.no_prefix_caching,
        "hybrid_kv_cache": not args.no_hybrid_kv_cache,
        "kv_cache_dtype": args.kv_cache_dtype,
    }


def _progress_bar() -> tuple[Progress | None, Callable[[], None]]:
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn("advisor"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("", total=None)
    bar.start()

    def update(done: int, total: int, label: str) -> None:
        bar.update(task, completed=done, total=total, description=label)

    return update, bar.stop


def run_advise(args: argparse.Namespace) -> int:
    from tui.cli.deploy_render import DEFAULT_MODEL, custom_profile_from_args, load_prices

    if args.rate is None:
        raise ConfigError("--advise needs --rate R (requests/s to serve)")
    if args.slo is None:
        raise ConfigError("--advise needs --slo, e.g. p99_ttft:2000,p99_tpot:100")
    slo = parse_slo(args.slo)
    if not args.tolerance > 0:
        raise ConfigError(f"--tolerance must be > 0, not {args.tolerance:g}")
    if args.max_levels < 2:
        raise ConfigError(f"--max-levels must be at least 2, not {args.max_levels}")
    check_workload_counts(args)
    gpus = _gpus(args.gpus)
    calibrated = load_calibration(args)
    engine_args = _engine_args(args)
    if calibrated is not None:
        # A profile times one GPU type: the search covers that type's shapes only.
        gpus = calibrated_gpus(calibrated, gpus)
        engine_args["constants"] = calibrated.constants
    catalog = load_prices(args.price_file)
    model = custom_profile_from_args(args, args.model) or args.model or DEFAULT_MODEL
    sweep = SweepConfig(
        target=Target(name="twin advisor", base_url="twin://advisor", model="advisor", kind=TargetKind.TWIN),
        dataset=dataset_from_args(args),
        axis=Axis.REQUEST_RATE,
        levels=[1.0],
        num_prompts=args.num_prompts,
        output_len=args.output_len,
        seed=args.seed,
        same_prompts=True,
    )
    dataset = sample_dataset(sweep)
    conversations = dataset.conversations_for_level(0)
    sessions = (
        Sessions(conversations=tuple(conversations), spec=sweep.dataset)
        if conversations is not None
        else None
    )
    update, stop = _progress_bar()
    try:
        advice = advise(
            model,
            dataset.requests,
            rate=args.rate,
            slo=slo,
            catalog=catalog,
            gpus=gpus,
            max_gpus=args.max_gpus,
            max_replicas=args.max_replicas,
            spot=args.spot,
            tolerance=args.tolerance,
            max_levels=args.max_levels,
            seed=args.seed,
            burstiness=args.burstiness,
            engine_args=engine_args,
            progress=update,
            sessions=sessions,
        )
    finally:
        stop()
    notes = [calibration_note(calibrated), *dataset.notes]
    document = {
        "simulated": True,
        "calibration": calibration_document(calibrated),
        "notes": notes,
        **advice.model_dump(mode="json"),
    }
    write_document(document, args.out, to_stdout=args.json)
    if not args.json:
        print_advice(advice, describe(slo), notes)
    line = unservable_line(advice)
    if line is not None:
        raise ConfigError(line)
    return 0


def _money(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.2f}"


def _knee_trial_ms(shape: ShapeAdvice) -> tuple[str, str, str]:
    """p99 TTFT, p99 TPOT and prefix-cache hit rate of the level at the knee."""
    knee = shape.knee
    for trial in knee.trials:
        if knee.rate is not None and trial.passed and math.isclose(trial.rate, knee.rate):
            hit = trial.prefix_cache_hit_rate
            return (
                f"{trial.p99_ttft_ms:,.0f}",
                f"{trial.p99_tpot_ms:,.1f}",
                "n/a" if hit is None else f"{hit:.0%}",
            )
    return "-", "-", "-"


def print_advice(advice: Advice, slo_text: str, notes: list[str]) -> None:
    out = sys.stdout.write
    unit = "sessions/s" if advice.multi_turn else "req/s"
    slo_scope = " on every turn" if advice.multi_turn else ""
    out(
        f"Capacity advisor (vLLM twin, simulated): {advice.model} at {advice.rate:g} {unit}, "
        f"SLO {slo_text}{slo_scope}\n"
    )
    what = "multi-turn sessions" if advice.multi_turn else "prompts"
    per = "session" if advice.multi_turn else "request"
    out(
        f"  {advice.num_prompts:,} {what} per fast-forward level "
        f"({advice.tokens_per_request:,.0f} tokens per {per} on average), "
        f"{'spot' if advice.spot else 'on-demand'} prices, "
        f"at most {advice.max_gpus} GPUs per replica x {advice.max_replicas} replicas\n"
    )
    for note in notes:
        out(f"note: {note}\n")
    headers = [
        "#",
        "shape",
        f"{unit} per replica",
        f"saturation {unit}",
        "replicas",
        "headroom",
        "$/h",
        "$/1M tok",
        "p99 TTFT ms",
        "p99 TPOT ms",
        "prefix hit",
        "levels",
    ]
    rows: list[list[str]] = []
    ranked = [s for s in advice.shapes if s.verdict is not Verdict.SLO]
    for rank, shape in enumerate(ranked, 1):
        ttft, tpot, hit = _knee_trial_ms(shape)
        levels = "shared" if shape.simulated_as else str(len(shape.knee.trials))
        knee_rate = shape.knee.rate
        rows.append(
            [
                str(rank) if shape.verdict is Verdict.OK else "-",
                shape.label,
                "-" if knee_rate is None else f"{knee_rate:,.2f}",
                f"{shape.knee.saturation:,.2f}",
                "-" if shape.replicas is None else str(shape.replicas),
                "-" if shape.headroom is None else f"{shape.headroom:.0%}",
                _money(shape.usd_per_hour) + ("*" if shape.price_estimate else ""),
                _money(shape.usd_per_million),
                ttft,
                tpot,
                hit,
                levels,
            ]
        )
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        left = {1}
        out(
            "  ".join(
                h.ljust(w) if i in left else h.rjust(w)
                for i, (h, w) in enumerate(zip(headers, widths, strict=True))
            )
            + "\n"
        )
        for row in rows:
            out(
                "  ".join(
                    c.ljust(w) if i in left else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
                + "\n"
            )
        out(
            "  p99 TTFT/TPOT and the prefix-cache hit rate at the per-replica rate; * some prices are "
            "estimates; headroom = replicas x rate per replica / asked rate - 1\n"
        )
    for shape in advice.shapes:
        if shape.verdict is Verdict.REPLICAS or shape.verdict is Verdict.PRICE:
            out(f"  {shape.label}: {shape.why}\n")
    cannot = [s for s in advice.shapes if s.verdict is Verdict.SLO]
    if cannot:
        out("Cannot meet the SLO at any rate:\n")
        for shape in cannot:
            out(f"  {shape.label}: {shape.why}\n")
    if advice.skipped:
        out("Does not fit:\n")
        for skipped in advice.skipped:
            out(f"  {skipped.label}: {skipped.why}\n")
    passing = advice.passing
    if passing:
        out(f"$ per 1M tokens at {advice.rate:g} {unit} (lower is better):\n")
        top = max(s.usd_per_million or 0.0 for s in passing) or 1.0
        width = max(len(s.label) for s in passing)
        for shape in passing:
            value = shape.usd_per_million or 0.0
            bar = "█" * max(1, round(value / top * _BAR_WIDTH))
            out(f"  {shape.label.ljust(width)}  {bar} ${value:,.2f}  ({shape.replicas} replica(s))\n")
        best = passing[0]
        out(
            f"Cheapest: {best.replicas} x {best.label} ({best.machine}) at "
            f"${_money(best.usd_per_million)} per 1M tokens, ${_money(best.usd_per_hour)}/h, "
            f"{best.headroom or 0.0:.0%} headroom\n"
        )
