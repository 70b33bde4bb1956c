"""What a local and an in-cluster `servedeck bench` run share: the first ctrl-c (or SIGTERM, as a service
manager or CI's `timeout` sends, or SIGHUP, a closed terminal) cancels the sweep (the second stops at once),
the live display and the history see every event, result files come after."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

from tui.cli.bench_display import SweepDisplay

if TYPE_CHECKING:
    from backends.bench.results import SweepResult
    from backends.bench.sweep import SweepEvent
    from sessions.run_recorder import HistoryRecorder

INTERRUPTED_EXIT_CODE = 130
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Starts the sweep, given the display, the function that hands an event to the display and the
# history, and the event that the first ctrl-c sets.
SweepStarter = Callable[
    [SweepDisplay, Callable[["SweepEvent"], None], asyncio.Event], Awaitable["SweepResult"]
]


class ForegroundOutcome(NamedTuple):
    result: SweepResult
    display: SweepDisplay
    interrupted: signal.Signals | None  # the first signal that stopped the sweep


async def run_in_foreground(args: argparse.Namespace, start: SweepStarter) -> ForegroundOutcome:
    """Run the sweep ``start`` begins under the display, record it (unless --no-save), write --out/--csv."""
    cancel = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) > 1:
            raise KeyboardInterrupt
        cancel.set()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
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
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if recorder is not None:
            recorder.close()
    _write_outputs(args, result)
    return ForegroundOutcome(result=result, display=display, interrupted=received[0] if received else None)


def report_interrupted(received: signal.Signals | None = None) -> int:
    """Say why the sweep stopped early; the exit code is the shell's 128 + signal number."""
    sig = received or signal.SIGINT
    if sig is signal.SIGINT:
        message = "servedeck: interrupted: finished levels and requests were kept"
    else:
        message = f"servedeck: stopped by {sig.name}: finished levels and requests were kept"
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        print(message, file=sys.stderr)
    return INTERRUPTED_EXIT_CODE if sig is signal.SIGINT else 128 + int(sig)


def _open_recorder(args: argparse.Namespace) -> HistoryRecorder | None:
    if args.no_save:
        return None
    from sessions.run_recorder import HistoryRecorder

    return HistoryRecorder(args.data_dir)


def _write_outputs(args: argparse.Namespace, result: SweepResult) -> None:
    from backends.bench.export import sweep_to_csv, write_level_results

    if args.out is not None:
        write_level_results(result, args.out)
        print(f"results written to {args.out}", file=sys.stderr)
    if args.csv is not None:
        args.csv.write_text(sweep_to_csv(result))
        print(f"sweep table written to {args.csv}", file=sys.stderr)
