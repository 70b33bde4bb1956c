"""`servedeck bench-worker`: the headless load generator inside each pod of `servedeck bench --in-cluster`.

Not for people: the driver renders a Job whose pods run this (as ``python -m tui.cli.bench_worker``,
which imports only what the worker needs, so a pod installs four dependencies, not the whole CLI's).
It reads the level's plan from ``$SERVEDECK_BENCH_PLAN`` (or ``--plan FILE``), its share index from
``$JOB_COMPLETION_INDEX`` (or ``--index``) and the prompts (multi-turn: the conversations) from the
bundle folder the ConfigMaps are mounted on (``$SERVEDECK_BENCH_BUNDLE`` or ``--bundle``), and prints
protocol lines on stdout (``backends.kube_bench.codec``): every finished request as one JSON line, then a
summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from backends.errors import ConfigError, ServeDeckError
from backends.kube_bench.bundle import CONVERSATIONS_BLOB, DATASET_BLOB, read_blob
from backends.kube_bench.codec import PodFatal, encode
from backends.kube_bench.plan import (
    BUNDLE_DIR_ENV,
    DEFAULT_BUNDLE_DIR,
    INDEX_ENV,
    PLAN_ENV,
    WorkerPlan,
    decode_conversations,
    decode_dataset,
    parse_plan,
)

_PLAN_MISSING = (
    f"no bench plan: set {PLAN_ENV} or pass --plan FILE (this command runs inside the pods that "
    "`servedeck bench --in-cluster` starts)"
)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", type=Path, help=f"plan JSON file (default: ${PLAN_ENV})")
    parser.add_argument("--index", type=int, help=f"this pod's share (default: ${INDEX_ENV})")
    parser.add_argument(
        "--bundle", type=Path, help=f"bundle folder (default: ${BUNDLE_DIR_ENV} or {DEFAULT_BUNDLE_DIR})"
    )
    parser.set_defaults(handler=run_bench_worker)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # No help= on purpose: the command stays out of `servedeck --help` (it is the pods' entry point).
    parser = subparsers.add_parser(
        "bench-worker",
        description="Load generator of one pod of `servedeck bench --in-cluster` (started by the driver).",
    )
    _configure(parser)


def _read_plan(args: argparse.Namespace) -> WorkerPlan:
    if args.plan is not None:
        try:
            return parse_plan(args.plan.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read the bench plan {args.plan}: {err.strerror or err}") from None
    text = os.environ.get(PLAN_ENV)
    if not text:
        raise ConfigError(_PLAN_MISSING)
    return parse_plan(text)


def _read_index(args: argparse.Namespace, plan: WorkerPlan) -> int:
    if args.index is not None:
        index: int = args.index
    else:
        raw = os.environ.get(INDEX_ENV, "")
        try:
            index = int(raw)
        except ValueError:
            raise ConfigError(
                f"no pod index: set {INDEX_ENV} (an Indexed Job does) or pass --index N"
            ) from None
    if not 0 <= index < plan.pods:
        raise ConfigError(f"pod index {index} is outside 0..{plan.pods - 1} of this plan")
    return index


def _write_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_bench_worker(args: argparse.Namespace) -> int:
    from backends.kube_bench.worker import run_pod

    raw_index = os.environ.get(INDEX_ENV, "")
    index_hint = args.index if args.index is not None else (int(raw_index) if raw_index.isdigit() else 0)
    try:
        plan = _read_plan(args)
        index = _read_index(args, plan)
        bundle = args.bundle or Path(os.environ.get(BUNDLE_DIR_ENV) or DEFAULT_BUNDLE_DIR)
        dataset = decode_dataset(read_blob(bundle, DATASET_BLOB))
        conversations = (
            decode_conversations(read_blob(bundle, CONVERSATIONS_BLOB)) if plan.multi_turn else None
        )
    except ServeDeckError as err:
        _write_line(encode(PodFatal(pod_index=index_hint, message=str(err))))
        raise
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency of the worker
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run_pod(plan, index, dataset, _write_line, conversations))
    finally:
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servedeck bench-worker", description=__doc__)
    _configure(parser)
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except ServeDeckError as err:
        print(f"servedeck: error: {err}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
