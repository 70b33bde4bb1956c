"""What a local and an in-cluster `servedeck bench` run share: the first ctrl-c cancels the sweep (the
second stops at once), the live display and the history see every event, result files come after."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

from tui.commands.bench_display import SweepDisplay

if TYPE_CHECKING:
    from backends.bench.results import SweepResult
    from backends.bench.sweep import SweepEvent
    from tui.commands.bench_history import HistoryRecorder

INTERRUPTED_EXIT_CODE = 130

# Starts the sweep, given the display, the function that hands an event to the display and the
# history, and the event that the first ctrl-c sets.
SweepStarter = Callable[
    [SweepDisplay, Callable[["SweepEvent"], None], asyncio.Event], Awaitable["SweepResult"]
]


class ForegroundOutcome(NamedTuple):
    result: SweepResult
    display: SweepDisplay
    interrupted: bool


async def run_in_foreground(args: argparse.Namespace, start: SweepStarter) -> ForegroundOutcome:
    """Run the sweep ``start`` begins under the display, record it (unless --no-save), write --out/--csv."""
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

    def emit(event: SweepEvent) -> None:
        display.handle(event)
        if recorder is not None:
            recorder.handle(event)

    try:
        with display:
            result = await start(display, emit, cancel)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if recorder is not None:
            recorder.close()
    _write_outputs(args, result)
    return ForegroundOutcome(result=result, display=display, interrupted=interrupts > 0)


def report_interrupted() -> int:
    print("servedeck: interrupted: finished levels and requests were kept", file=sys.stderr)
    return INTERRUPTED_EXIT_CODE


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
