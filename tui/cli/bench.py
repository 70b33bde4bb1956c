"""`servedeck bench`: a headless sweep with a live rich display, result files and history."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backends.bench.input_grammar import parse_goodput
from backends.bench.results import RunStatus, SweepConfig, SweepResult
from backends.errors import ConfigError
from backends.target_types import Target
from tui.cli.bench_foreground import (
    StoppedBySignal,
    report_interrupted,
    report_stopped,
    run_in_foreground,
    stop_signals_interrupt,
    sweep_unless_cancelled,
)
from tui.cli.bench_vllm import add_vllm_arguments, endpoint_value
from tui.cli.bench_vllm import dataset_fields as vllm_dataset_fields
from tui.cli.bench_vllm import normalize as normalize_vllm_args
from tui.cli.sweep_args import (
    add_sweep_arguments,
    config_from_args,
    dataset_from_args,
    non_negative_number,
    percentiles,
    positive_number,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="sweep concurrency levels or request rates against a target",
        description=(
            "Closed loop (--concurrency N: N requests in flight) or open loop (--request-rate R: Poisson or "
            "gamma arrivals, R req/s). Metrics use vllm bench serve's definitions; --out writes its JSON "
            "keys."
        ),
    )
    parser.add_argument("--target", help="base URL (http://host:port) or 'local'")
    parser.add_argument("--model", help="model id (default: the first one /v1/models lists)")
    parser.add_argument("--api-key-env", help="name of the environment variable holding the API key")
    add_sweep_arguments(parser, num_prompts_default=100, vllm_rates=True)
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--goodput", nargs="+", help="SLOs in ms: ttft:500 tpot:50 (vLLM's form) or ttft:500,tpot:50"
    )
    parser.add_argument(
        "--percentiles", "--metric-percentiles", type=percentiles, default=[99.0], help="e.g. 50,90,99"
    )
    parser.add_argument(
        "--endpoint",
        type=endpoint_value,
        help="chat (/v1/chat/completions, the default) or completions (/v1/completions); vLLM's paths too",
    )
    parser.add_argument("--temperature", type=non_negative_number, default=0.0)
    parser.add_argument("--workers", type=int, default=1, help="load-generator processes (default 1)")
    parser.add_argument("--request-timeout", type=positive_number, default=600.0, help="seconds per request")
    parser.add_argument(
        "--idle-timeout", type=positive_number, default=60.0, help="seconds without data = stalled"
    )
    parser.add_argument("--label", help="label saved with the run")
    parser.add_argument(
        "--usd-per-hour",
        type=positive_number,
        help="price of the target's hardware, saved with the run: the table shows $ per 1M tokens",
    )
    parser.add_argument("--parallel", type=int, default=8, help="slots of the local engine (--target local)")
    parser.add_argument("--out", type=Path, help="write results as JSON (vLLM --save-result keys per level)")
    parser.add_argument("--csv", type=Path, help="write the sweep table as CSV")
    parser.add_argument("--no-save", action="store_true", help="do not store the run in history")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,  # keeps a top-level `servedeck --data-dir X bench ...`
        help="history database folder (default: user data dir)",
    )
    parser.add_argument("--plain", action="store_true", help="plain line output instead of a live display")
    from tui.cli.bench_incluster import add_incluster_arguments

    add_incluster_arguments(parser)
    add_vllm_arguments(parser)
    from tui.cli.bench_search import add_search_arguments

    add_search_arguments(parser)
    from tui.cli.bench_gpu import add_gpu_arguments

    add_gpu_arguments(parser)
    parser.set_defaults(handler=run_bench)


@contextlib.contextmanager
def _target_for(args: argparse.Namespace) -> Iterator[str]:
    """Yields the base URL; ``local`` starts the real local engine for the run and stops it after."""
    if args.target != "local":
        yield args.target
        return
    from backends.engines.local import LocalEngine, LocalEngineConfig

    print(f"starting the local engine (Gemma 3 270M, llama.cpp, {args.parallel} slots)...", file=sys.stderr)
    with LocalEngine(LocalEngineConfig(parallel=args.parallel)) as engine:
        print(f"local engine ready at {engine.base_url}", file=sys.stderr)
        yield engine.base_url


def _check_output_paths(args: argparse.Namespace) -> None:
    if args.result_dir is not None and args.result_dir.exists() and not args.result_dir.is_dir():
        raise ConfigError(f"--result-dir {args.result_dir} is a file, not a folder")
    for path in (args.out, args.csv):
        if path is None:
            continue
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise ConfigError(f"cannot write {path}: folder {parent} does not exist")


def _validate_args(args: argparse.Namespace) -> None:
    """Everything that can be checked without the target, checked before connecting to it."""
    _check_output_paths(args)
    if args.goodput:
        parse_goodput(args.goodput)
    dataset = dataset_from_args(args)  # a missing dataset file is reported before connecting
    from backends.bench.sweep import check_output_len

    check_output_len(dataset, args.output_len)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.burstiness <= 0:
        raise ConfigError(f"--burstiness must be > 0 (1 = Poisson), got {args.burstiness:g}")
    if args.num_prompts < 1:
        raise ConfigError(f"--num-prompts must be >= 1, got {args.num_prompts}")


def run_bench(args: argparse.Namespace) -> int:
    with stop_signals_interrupt():
        try:
            return _run_bench(args)
        except StoppedBySignal as stop:
            return report_stopped(stop.signal)


def _run_bench(args: argparse.Namespace) -> int:
    normalize_vllm_args(args)
    args.dataset_extra = vllm_dataset_fields(args)
    _validate_args(args)
    from tui.cli.bench_incluster import check_local_run, run_in_cluster

    if args.in_cluster:
        if args.save_result:
            raise ConfigError("--in-cluster does not take --save-result yet; use --out")
        return run_in_cluster(args)
    check_local_run(args)
    if not args.target:
        raise ConfigError("--target is required (a base URL or 'local'), or use --in-cluster --service NAME")
    from tui.cli.bench_gpu import gpu_telemetry

    with _target_for(args) as base_url, gpu_telemetry(args) as gpu_fields:
        return asyncio.run(_run(args, base_url, gpu_fields))


async def _run(args: argparse.Namespace, base_url: str, gpu_fields: dict[str, Any] | None = None) -> int:
    target = await _discover(base_url, args)
    if args.find_max:
        from tui.cli.bench_search import run_search

        return await run_search(args, target)
    config = config_from_args(args, target)
    if gpu_fields:
        config = config.model_copy(update=gpu_fields)
    _check_fits(config)
    if args.tokenizer is not None:
        counted = "the server's /tokenize" if target.capabilities.tokenize else "tiktoken cl100k_base"
        print(
            f"note: --tokenizer {args.tokenizer}: token counts come from {counted} "
            "(ServeDeck downloads no tokenizer)",
            file=sys.stderr,
        )
    outcome = await run_in_foreground(
        args, lambda _, emit, cancel: sweep_unless_cancelled(config, emit, cancel)
    )
    if args.save_result:
        for path in save_vllm_results(args, outcome.result):
            print(f"vLLM result written to {path}", file=sys.stderr)
    outcome.display.print_summary(outcome.result)
    if outcome.interrupted:
        return report_interrupted(outcome.interrupted)
    return 0 if outcome.result.status is RunStatus.COMPLETE else 1


async def _discover(base_url: str, args: argparse.Namespace) -> Target:
    """The target. A vLLM command names the real model; where the server is a twin of it (serving
    ``google/gemma-3-27b-it`` as ``gemma-3-27b-it-twin``) or llama.cpp (one model, whatever a request
    names, as vLLM's client finds it), its own model is used with a note, so the command runs unchanged."""
    from backends.errors import TargetError
    from backends.target_types import TargetKind
    from backends.targets import discover_target
    from backends.twin.server import TWIN_SUFFIX

    try:
        return await discover_target(base_url, model=args.model, api_key_env=args.api_key_env)
    except TargetError as err:
        if args.model is None or "is not served" not in str(err):
            raise
        served = await discover_target(base_url, api_key_env=args.api_key_env)
        twins = (args.model.split("/")[-1] + TWIN_SUFFIX, args.model + TWIN_SUFFIX)
        if served.kind is TargetKind.LLAMACPP:
            why = "llama.cpp serves one model whatever a request names"
        elif served.model in twins:
            why = f"it is a twin of {args.model}"
        else:
            raise
        print(f"note: {base_url}: {why}; sending to its model {served.model}", file=sys.stderr)
        return served


def _check_fits(config: SweepConfig) -> None:
    """A shared prefix (with its suffix and output) longer than the target's context is one clear line."""
    limit = config.target.max_model_len
    dataset = config.dataset
    if limit is None:
        return
    if dataset.kind == "prefix_repetition":
        output = config.output_len if config.output_len is not None else dataset.prefix_output_len
        wanted, what = dataset.prefix_len + dataset.suffix_len + output, "prefix + suffix + output"
    elif dataset.kind == "codebase_qa":
        output = config.output_len if config.output_len is not None else 128
        wanted, what = dataset.document_len + output, "--document-len + output"
    elif dataset.kind == "random" and dataset.random_prefix_len:
        output = config.output_len if config.output_len is not None else dataset.random_output_len
        wanted = dataset.random_prefix_len + dataset.random_input_len + output
        what = "--random-prefix-len + --random-input-len + output"
    else:
        return
    if wanted > limit:
        raise ConfigError(
            f"{what} is {wanted} tokens, longer than {config.target.model}'s max-model-len {limit}; "
            "ask for fewer tokens"
        )


def save_vllm_results(args: argparse.Namespace, result: SweepResult) -> list[Path]:
    """vLLM's --save-result: one file per finished level, named as vLLM names it (or --result-filename),
    in --result-dir (made if missing, as vLLM does) or the current folder."""
    from backends.bench.export import to_vllm_result, vllm_result_filename, write_json_atomically

    folder = args.result_dir or Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    backend = args.backend or ("openai-chat" if result.config.endpoint == "chat" else "openai")
    written = []
    for level_result in result.levels:
        data = to_vllm_result(
            level_result,
            result.config,
            detailed=args.save_detailed,
            backend=backend,
            tokenizer_id=args.tokenizer if result.config.target.capabilities.tokenize else None,
            percentile_metrics=args.percentile_metrics or ("ttft", "tpot", "itl", "e2el"),
        )
        name = args.result_filename or vllm_result_filename(
            label=result.config.label,
            backend=backend,
            request_rate=level_result.level.request_rate,
            max_concurrency=level_result.level.concurrency_cap,
            model_id=args.model or result.config.target.model,
            date=data["date"],
            ramp_up=level_result.level.ramp_up,
        )
        written.append(write_json_atomically(data, folder / name))
    return written
