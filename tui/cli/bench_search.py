"""`servedeck bench --find-max request-rate|concurrency --slo ...`: the SLO search on a real target.

Starts from the twin's prediction when the target's hardware is known (a twin says it; ``--hardware
2xh100`` for any other server), else from a probe level; brackets and bisects with real levels
(``backends.bench.slo_search``), prints every level tried with pass/fail and why, and saves the levels as
one run in History (labelled ``search: ...``) unless --no-save.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import sys

from backends.bench.models import Axis
from backends.bench.search_record import SearchLevel
from backends.bench.slo import Slo, parse_slo
from backends.bench.slo_search import DEFAULT_MAX_LEVELS, DEFAULT_TOLERANCE, SearchResult
from backends.errors import ConfigError, ServeDeckError
from backends.target_types import Target
from tui.cli.sweep_args import config_from_args

_HARDWARE = re.compile(r"^\s*(?P<count>\d+)\s*x\s*(?P<gpu>[a-z0-9-]+)")


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SLO search (--find-max)")
    group.add_argument(
        "--find-max",
        choices=["request-rate", "concurrency"],
        help="search the highest request rate or concurrency whose level meets --slo",
    )
    group.add_argument(
        "--slo",
        help="with --find-max: targets in ms, e.g. p99_ttft:2000,p99_tpot:100 (vLLM --goodput key names "
        "with a statistic; goodput:0.95 with bare ttft/tpot/e2el)",
    )
    group.add_argument(
        "--max-levels",
        type=int,
        default=DEFAULT_MAX_LEVELS,
        help=f"levels the search may run (default {DEFAULT_MAX_LEVELS})",
    )
    group.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"relative bracket width at which it stops (default {DEFAULT_TOLERANCE:g})",
    )
    group.add_argument(
        "--hardware", help="with --find-max: what serves the target, e.g. 2xh100, to start from the twin"
    )


def validate_search_args(args: argparse.Namespace) -> Slo:
    if args.slo is None:
        raise ConfigError("--find-max needs --slo, e.g. p99_ttft:2000,p99_tpot:100")
    slo = parse_slo(args.slo)
    # vLLM's default --request-rate inf is filled in when neither axis flag is given
    if args.concurrency is not None or args.request_rate not in (None, [math.inf]):
        raise ConfigError("--find-max chooses the levels itself: leave out --concurrency and --request-rate")
    if args.max_levels < 2:
        raise ConfigError(f"--max-levels must be at least 2, not {args.max_levels}")
    if not args.tolerance > 0:
        raise ConfigError(f"--tolerance must be > 0, not {args.tolerance:g}")
    if args.hardware is not None and _HARDWARE.match(args.hardware.lower()) is None:
        raise ConfigError(f"--hardware {args.hardware!r}: use COUNTxGPU, e.g. 2xh100")
    return slo


def predicted_start(target: Target, hardware: str | None, axis: Axis, slo: Slo) -> tuple[float | None, str]:
    """The twin's knee for the target's hardware (request rate only), or None and why not."""
    label = hardware or target.hardware
    if label is None:
        return None, "probe (hardware unknown: --hardware 2xh100 starts from the twin)"
    if axis is not Axis.REQUEST_RATE:
        return None, "probe (the twin predicts request rates only)"
    match = _HARDWARE.match(label.lower())
    if match is None:
        return None, f"probe (hardware {label!r} unknown to the twin)"
    from backends.advisor.knee import find_knee
    from backends.bench.results import SweepConfig
    from backends.target_types import TargetKind
    from backends.twin.engine import TwinConfig
    from backends.twin.fastforward import sample_dataset
    from backends.twin.server import TWIN_SUFFIX

    model = target.model.removesuffix(TWIN_SUFFIX).split("/")[-1]
    try:
        config = TwinConfig.build(model, match.group("gpu"), int(match.group("count")))
        sweep = SweepConfig(
            target=target.model_copy(update={"kind": TargetKind.TWIN}),
            axis=Axis.REQUEST_RATE,
            levels=[1.0],
            num_prompts=200,
        )
        knee = find_knee(config, sample_dataset(sweep).requests, slo, max_levels=6)
    except ServeDeckError as err:
        return None, f"probe (no twin prediction: {err})"
    if knee.rate is None:
        return None, f"probe (the twin predicts no rate meets it: {knee.reason})"
    return knee.rate, f"twin prediction for {config.gpu_count}x{config.gpu.value}: {knee.rate:.3g} req/s"


def _level_line(level: SearchLevel, axis: Axis) -> str:
    what = f"concurrency {level.value:g}" if axis is Axis.CONCURRENCY else f"{level.value:.3g} req/s"
    why = "; ".join(level.reasons)
    stopped = " (stopped early)" if level.stopped_by else ""
    return (
        f"  {what:>16}  {level.verdict:<14} p99 TTFT {level.p99_ttft_ms:,.0f} ms, p99 TPOT "
        f"{level.p99_tpot_ms:,.1f} ms, {level.request_throughput:.2f} req/s{stopped}"
        + (f"  {why}" if why and level.verdict != "pass" else "")
    )


async def run_search(args: argparse.Namespace, target: Target) -> int:
    from backends.bench.slo_search import find_max

    slo = validate_search_args(args)
    axis = Axis.CONCURRENCY if args.find_max == "concurrency" else Axis.REQUEST_RATE
    plain = copy.copy(args)
    plain.concurrency, plain.request_rate = None, [1.0]
    base = config_from_args(plain, target)
    start, source = predicted_start(target, args.hardware, axis, slo)
    out = sys.stdout.write
    out(f"SLO search on {target.base_url} ({target.model}): max {axis.value} within {slo.text}\n")
    out(f"  start: {source}; at most {args.max_levels} levels, tolerance {args.tolerance:g}\n")
    result = await find_max(
        base,
        slo,
        axis=axis,
        start=start,
        start_source=source,
        max_levels=args.max_levels,
        tolerance=args.tolerance,
        on_level=lambda level: print(_level_line(level, axis), flush=True),
    )
    _report(result, axis)
    if not args.no_save:
        _save(args, result)
    return 0 if result.knee is not None else 1


def _report(result: SearchResult, axis: Axis) -> None:
    out = sys.stdout.write
    if result.note:
        out(f"note: {result.note}\n")
    if result.knee is None:
        out(f"Knee: none: no level tried met {result.slo}\n")
    else:
        unit = "" if axis is Axis.CONCURRENCY else " req/s"
        out(f"Knee: {result.knee:.4g}{unit} (highest passing level; {len(result.levels)} levels)\n")


def _save(args: argparse.Namespace, result: SearchResult) -> None:
    from sessions.run_recorder import save_finished_run

    problem = save_finished_run(result.run, getattr(args, "data_dir", None))
    print(problem or f"search saved as run {result.run.run_id}", file=sys.stderr)
