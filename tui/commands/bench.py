"""`servedeck bench`: a headless sweep with a live rich display, result files and history."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from backends.bench.models import Axis, Target
from backends.bench.results import DatasetSpec, RunStatus, SweepConfig, SweepResult
from backends.bench.sweep import SweepEvent
from backends.errors import ConfigError
from tui.commands.bench_display import SweepDisplay

if TYPE_CHECKING:
    from tui.commands.bench_history import HistoryRecorder

_SLO_KEYS = ("ttft", "tpot", "e2el")


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _int_list(text: str) -> list[float]:
    values = _float_list(text)
    if any(v != int(v) or v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"concurrency levels must be whole numbers >= 1, got {text!r}")
    return values


def parse_goodput(text: str) -> dict[str, float]:
    slos: dict[str, float] = {}
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        key, sep, value = part.partition(":")
        if not sep or key not in _SLO_KEYS:
            raise ConfigError(f"bad --goodput item {part!r}: use KEY:MS with KEY in {', '.join(_SLO_KEYS)}")
        try:
            slos[key] = float(value)
        except ValueError:
            raise ConfigError(f"bad --goodput value in {part!r}: milliseconds must be a number") from None
    return slos


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
    axis = parser.add_mutually_exclusive_group(required=True)
    axis.add_argument("--concurrency", type=_int_list, help="closed loop: comma list of in-flight counts")
    axis.add_argument("--request-rate", type=_float_list, help="open loop: comma list of req/s")
    parser.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape for arrivals (1 = Poisson)"
    )
    parser.add_argument("--max-concurrency", type=int, help="cap on in-flight requests for --request-rate")
    parser.add_argument("--num-prompts", type=int, default=100, help="requests per level (default 100)")
    parser.add_argument("--dataset", default="sharegpt", help="sharegpt | random | PATH to a ShareGPT json")
    parser.add_argument("--random-input-len", type=int, default=1024)
    parser.add_argument("--random-output-len", type=int, default=128)
    parser.add_argument("--random-range-ratio", type=float, default=0.0)
    parser.add_argument("--output-len", type=int, help="fixed output length (overrides the dataset's)")
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goodput", help="SLOs in ms, e.g. ttft:500,tpot:50")
    parser.add_argument("--percentiles", type=_float_list, default=[99.0], help="e.g. 50,90,99")
    parser.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=1, help="load-generator processes (default 1)")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="seconds without data = stalled")
    parser.add_argument("--label", help="label saved with the run")
    parser.add_argument("--parallel", type=int, default=8, help="slots of the local engine (--target local)")
    parser.add_argument("--out", type=Path, help="write results as JSON (vLLM --save-result keys per level)")
    parser.add_argument("--csv", type=Path, help="write the sweep table as CSV")
    parser.add_argument("--no-save", action="store_true", help="do not store the run in history")
    parser.add_argument("--data-dir", type=Path, help="history database folder (default: user data dir)")
    parser.add_argument("--plain", action="store_true", help="plain line output instead of a live display")
    from tui.commands.bench_incluster import add_incluster_arguments

    add_incluster_arguments(parser)
    parser.set_defaults(handler=run_bench)


def config_from_args(args: argparse.Namespace, target: Target) -> SweepConfig:
    if args.concurrency is not None:
        axis, levels = Axis.CONCURRENCY, args.concurrency
    else:
        axis, levels = Axis.REQUEST_RATE, args.request_rate
    dataset_arg: str = args.dataset
    if dataset_arg in ("sharegpt", "random"):
        dataset = DatasetSpec(kind=dataset_arg)
    else:
        path = Path(dataset_arg)
        if not path.is_file():
            raise ConfigError(f"--dataset: no such file {dataset_arg!r} (use sharegpt, random or a path)")
        dataset = DatasetSpec(kind="file", path=str(path))
    dataset.random_input_len = args.random_input_len
    dataset.random_output_len = args.random_output_len
    dataset.random_range_ratio = args.random_range_ratio
    return SweepConfig(
        target=target,
        dataset=dataset,
        axis=axis,
        levels=levels,
        num_prompts=args.num_prompts,
        output_len=args.output_len,
        ignore_eos=args.ignore_eos,
        seed=args.seed,
        burstiness=args.burstiness,
        max_concurrency=args.max_concurrency,
        goodput_slos_ms=parse_goodput(args.goodput) if args.goodput else {},
        percentiles=args.percentiles,
        endpoint=args.endpoint,
        temperature=args.temperature,
        label=args.label,
        workers=args.workers,
        request_timeout_s=args.request_timeout,
        idle_timeout_s=args.idle_timeout,
    )


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
    if args.dataset not in ("sharegpt", "random") and not Path(args.dataset).is_file():
        raise ConfigError(f"--dataset: no such file {args.dataset!r} (use sharegpt, random or a path)")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.burstiness <= 0:
        raise ConfigError(f"--burstiness must be > 0 (1 = Poisson), got {args.burstiness:g}")
    if args.num_prompts < 1:
        raise ConfigError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    from backends.bench.metrics import validate_percentiles

    validate_percentiles(args.percentiles)


def run_bench(args: argparse.Namespace) -> int:
    _validate_args(args)
    from tui.commands.bench_incluster import check_local_run, run_in_cluster

    if args.in_cluster:
        return run_in_cluster(args)
    check_local_run(args)
    if not args.target:
        raise ConfigError("--target is required (a base URL or 'local'), or use --in-cluster --service NAME")
    with _target_for(args) as base_url:
        return asyncio.run(_run(args, base_url))


async def _run(args: argparse.Namespace, base_url: str) -> int:
    from backends.bench.sweep import run_sweep
    from backends.targets import discover_target

    target = await discover_target(base_url, model=args.model, api_key_env=args.api_key_env)
    config = config_from_args(args, target)
    cancel = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise KeyboardInterrupt
        cancel.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    recorder = _open_recorder(args)
    display = SweepDisplay(plain=args.plain or not sys.stdout.isatty())
    try:
        with display:
            result = await run_sweep(config, _fan_out(display, recorder), cancel)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if recorder is not None:
            recorder.close()
    _write_outputs(args, result)
    display.print_summary(result)
    if interrupts:
        print("servedeck: interrupted: finished levels and requests were kept", file=sys.stderr)
        return 130
    return 0 if result.status is RunStatus.COMPLETE else 1


class EventSink(Protocol):
    def handle(self, event: SweepEvent) -> None: ...


def _fan_out(*sinks: EventSink | None) -> Callable[[SweepEvent], None]:
    live = [s for s in sinks if s is not None]

    def emit(event: SweepEvent) -> None:
        for sink in live:
            sink.handle(event)

    return emit


def _open_recorder(args: argparse.Namespace) -> HistoryRecorder | None:
    if args.no_save:
        return None
    from tui.commands.bench_history import HistoryRecorder

    return HistoryRecorder(args.data_dir)


def _write_outputs(args: argparse.Namespace, result: SweepResult) -> None:
    from backends.bench.export import sweep_to_csv, write_level_results

    if args.out is not None:
        write_level_results(result, args.out)
        print(f"results written to {args.out}", file=sys.stderr)
    if args.csv is not None:
        args.csv.write_text(sweep_to_csv(result))
        print(f"sweep table written to {args.csv}", file=sys.stderr)
