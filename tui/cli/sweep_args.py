"""The sweep flags `servedeck bench` and `servedeck plan` share: the axis and its levels, arrivals, the
dataset and the output length, and how they become an axis, levels and a ``DatasetSpec``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backends.bench.input_grammar import parse_goodput, parse_levels, parse_percentiles
from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, SweepConfig
from backends.bench.traces import TRACE_FORMATS
from backends.errors import ConfigError
from backends.target_types import Target

BUILTIN_DATASETS = ("sharegpt", "random", "prefix_repetition", "codebase_qa")
THINK_TIME_DISTS = ("fixed", "exponential")


def _numbers(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers (no inf or nan), got {text!r}")
    return values


def positive_number(text: str) -> float:
    """An argparse type: one finite number > 0 (a price, say)."""
    values = _numbers(text)
    if len(values) != 1 or not values[0] > 0:
        raise argparse.ArgumentTypeError(f"expected one number > 0, got {text!r}")
    return values[0]


def non_negative_number(text: str) -> float:
    """An argparse type: one finite number >= 0 (a temperature: nan or inf would make the JSON invalid)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def whole_number_at_least_1(text: str) -> int:
    """An argparse type: a whole number >= 1 (a count)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def levels_of(axis: Axis, *, allow_inf: bool) -> Callable[[str], list[float]]:
    """An argparse type: levels in the grammar the Bench form reads too (backends/bench/input_grammar)."""

    def parse(text: str) -> list[float]:
        try:
            return parse_levels(axis, text, allow_inf=allow_inf)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def percentiles(text: str) -> list[float]:
    """An argparse type: metric percentiles, e.g. 50,90,99."""
    try:
        return parse_percentiles(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_sweep_arguments(
    parser: argparse.ArgumentParser,
    *,
    num_prompts_default: int,
    vllm_rates: bool = False,
) -> None:
    """--concurrency | --request-rate (one required), arrivals, prompts per level, dataset, output length.

    Levels are read as the Bench form reads them (``input_grammar.parse_levels``). With ``vllm_rates`` a
    rate may be ``inf`` and neither flag is required (the caller defaults to vLLM's ``--request-rate inf``).
    """
    axis = parser.add_mutually_exclusive_group(required=not vllm_rates)
    axis.add_argument(
        "--concurrency",
        type=levels_of(Axis.CONCURRENCY, allow_inf=False),
        help="closed loop: comma list of in-flight counts",
    )
    axis.add_argument(
        "--request-rate",
        type=levels_of(Axis.REQUEST_RATE, allow_inf=vllm_rates),
        help="open loop: comma list of req/s"
        + (" (inf: every request at once, vllm bench serve's default)" if vllm_rates else ""),
    )
    parser.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape for arrivals (1 = Poisson)"
    )
    parser.add_argument(
        "--max-concurrency", type=whole_number_at_least_1, help="cap on in-flight requests for --request-rate"
    )
    parser.add_argument(
        "--num-prompts",
        type=int,
        default=num_prompts_default,
        help=f"requests per level (default {num_prompts_default})",
    )
    parser.add_argument(
        "--dataset",
        default="sharegpt",
        help="sharegpt | random | prefix_repetition | codebase_qa | multi_turn | PATH to a ShareGPT json",
    )
    parser.add_argument("--random-input-len", type=int, default=1024)
    parser.add_argument("--random-output-len", type=int, default=128)
    parser.add_argument("--random-range-ratio", type=float, default=0.0)
    parser.add_argument("--output-len", type=int, help="fixed output length (overrides the dataset's)")
    parser.add_argument(
        "--trace",
        metavar="PATH",
        help="replay a trace: its arrival times and input/output lengths (Mooncake .jsonl or BurstGPT .csv), "
        "prompts of ShareGPT text",
    )
    parser.add_argument(
        "--trace-format", choices=TRACE_FORMATS, help="--trace's format (default: from its suffix)"
    )
    parser.add_argument(
        "--trace-time-scale",
        type=positive_number,
        default=1.0,
        help="--trace: multiply its times by this (0.5 replays twice as fast; default 1)",
    )
    add_multi_turn_arguments(parser)
    parser.add_argument(
        "--same-prompts",
        action="store_true",
        help="send the same prompts at every level, as vllm bench serve does (from the second level on the "
        "prefix cache answers them); default: each level draws its own",
    )


def add_multi_turn_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-turn conversations (--dataset multi_turn, or --turns with a ShareGPT dataset): each session "
        "replays one conversation turn by turn; --concurrency N = N users, --request-rate = sessions/s, "
        "--num-prompts = sessions per level"
    )
    group.add_argument(
        "--turns",
        type=whole_number_at_least_1,
        help="user turns per conversation (default 4 with multi_turn)",
    )
    group.add_argument(
        "--think-time", type=non_negative_number, default=0.0, help="seconds between turns (default 0)"
    )
    group.add_argument(
        "--think-time-dist",
        choices=THINK_TIME_DISTS,
        default="fixed",
        help="fixed, or exponential with --think-time as its mean (default fixed)",
    )
    group.add_argument(
        "--use-dataset-answers",
        action="store_true",
        help="history carries the dataset's answers (default: the model's own, as agents resend)",
    )
    group.add_argument(
        "--max-context-len",
        type=whole_number_at_least_1,
        default=2048,
        help="a session ends before its history + next turn + answer exceeds this (tokens, default 2048)",
    )


def _multi_turn_requested(args: argparse.Namespace) -> bool:
    """Whether the multi-turn flags ask for it; a multi-turn flag without --turns/multi_turn is an error."""
    if args.dataset == "multi_turn" or args.turns is not None:
        return True
    given = [
        flag
        for flag, value, default in (
            ("--think-time", args.think_time, 0.0),
            ("--think-time-dist", args.think_time_dist, "fixed"),
            ("--use-dataset-answers", args.use_dataset_answers, False),
            ("--max-context-len", args.max_context_len, 2048),
        )
        if value != default
    ]
    if given:
        raise ConfigError(f"{given[0]} is a multi-turn flag: add --turns N or --dataset multi_turn")
    return False


def _multi_turn_dataset(args: argparse.Namespace) -> DatasetSpec:
    name: str = args.dataset
    if getattr(args, "trace", None) is not None:
        raise ConfigError("--trace replays single requests: it takes no --turns (multi-turn)")
    if name in ("multi_turn", "sharegpt"):
        path = None
    elif name in BUILTIN_DATASETS or name == "custom":
        raise ConfigError(f"--turns replays ShareGPT conversations, not --dataset {name}")
    elif Path(name).is_file():
        path = name
    else:
        raise ConfigError(f"--dataset: no such file {name!r} (a ShareGPT json of conversations)")
    return DatasetSpec(
        kind="multi_turn",
        path=path,
        turns=args.turns if args.turns is not None else 4,
        dataset_answers=args.use_dataset_answers,
        think_time_s=args.think_time,
        think_time_dist=args.think_time_dist,
        max_context_len=args.max_context_len,
    )


def axis_and_levels(args: argparse.Namespace) -> tuple[Axis, list[float]]:
    if args.concurrency is not None:
        return Axis.CONCURRENCY, args.concurrency
    return Axis.REQUEST_RATE, args.request_rate


def sweep_fields_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The SweepConfig fields every sweeping command takes alike: those of ``add_sweep_arguments`` plus the
    ``--ignore-eos``, ``--seed`` and ``--percentiles`` each command adds with its own help text."""
    axis, levels = axis_and_levels(args)
    return {
        "dataset": dataset_from_args(args),
        "axis": axis,
        "levels": levels,
        "num_prompts": args.num_prompts,
        "output_len": args.output_len,
        "ignore_eos": args.ignore_eos,
        "seed": args.seed,
        "same_prompts": args.same_prompts,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "percentiles": args.percentiles,
    }


def dataset_from_args(args: argparse.Namespace) -> DatasetSpec:
    """The ``--dataset`` and ``--random-*`` flags; ConfigError when a dataset file does not exist."""
    name: str = args.dataset
    if _multi_turn_requested(args):
        return _multi_turn_dataset(args)
    trace: str | None = getattr(args, "trace", None)
    if trace is not None:
        if name != "sharegpt":
            raise ConfigError("give the prompts once: --dataset or --trace")
        if not Path(trace).is_file():
            raise ConfigError(f"--trace: no such file {trace!r}")
        return DatasetSpec(
            kind="trace", path=trace, trace_format=args.trace_format, trace_time_scale=args.trace_time_scale
        )
    if name in BUILTIN_DATASETS:
        dataset = DatasetSpec(kind=name)
    elif name == "custom" and getattr(args, "dataset_name", None) == "custom":
        dataset = DatasetSpec(kind="custom")
    else:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"--dataset: no such file {name!r} (use sharegpt, random or a path)")
        dataset = DatasetSpec(kind="file", path=str(path))
    dataset.random_input_len = args.random_input_len
    dataset.random_output_len = args.random_output_len
    dataset.random_range_ratio = args.random_range_ratio
    # bench's vLLM dataset flags (tui/cli/bench_vllm.py), when the command has them
    for field, value in getattr(args, "dataset_extra", {}).items():
        setattr(dataset, field, value)
    return dataset


def config_from_args(args: argparse.Namespace, target: Target) -> SweepConfig:
    return SweepConfig(
        target=target,
        **sweep_fields_from_args(args),
        goodput_slos_ms=parse_goodput(args.goodput) if args.goodput else {},
        endpoint=args.endpoint,
        temperature=args.temperature,
        label=args.label,
        usd_per_hour=args.usd_per_hour,
        price_source="--usd-per-hour" if args.usd_per_hour is not None else None,
        workers=args.workers,
        request_timeout_s=args.request_timeout,
        idle_timeout_s=args.idle_timeout,
        ramp_up_strategy=args.ramp_up_strategy,
        ramp_up_start_rps=args.ramp_up_start_rps,
        ramp_up_end_rps=args.ramp_up_end_rps,
    )


def check_workload_counts(args: argparse.Namespace) -> None:
    """The prompt count, output length and burstiness of a fast-forward workload (plan, --advise)."""
    if args.num_prompts < 1:
        raise ConfigError(f"--num-prompts must be at least 1, not {args.num_prompts}")
    if args.output_len is not None and args.output_len < 1:
        raise ConfigError(f"--output-len must be at least 1 token, not {args.output_len}")
    if not args.burstiness > 0:
        raise ConfigError(f"--burstiness must be > 0 (1 = Poisson), not {args.burstiness}")
