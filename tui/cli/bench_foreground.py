"""What a local and an in-cluster `servedeck bench` run share: the first ctrl-c (or SIGTERM, as a service
manager or CI's `timeout` sends, or SIGHUP, a closed terminal) cancels the sweep (the second stops at once),
the live display and the history see every event, result files come after. Before the sweep starts
(starting the local engine, probing the target, tokenising the prompts) the same signals stop the command
with the same line and exit code, and no run is saved."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, NamedTuple

from tui.cli.bench_display import SweepDisplay

if TYPE_CHECKING:
    from backends.bench.results import SweepConfig, SweepResult
    from backends.bench.sweep import SweepEvent
    from sessions.run_recorder import HistoryRecorder

INTERRUPTED_EXIT_CODE = 130
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Starts the sweep, given the display, the function that hands an event to the display and the
# history, and the event that the first ctrl-c sets.
SweepStarter = Callable[
    [SweepDisplay, Callable[["SweepEvent"], None], asyncio.Event], Awaitable["SweepResult"]
]


class StoppedBySignal(KeyboardInterrupt):
    """A stop signal arrived before the sweep started (``signal``: which one)."""

    def __init__(self, sig: signal.Signals) -> None:
        super().__init__(sig.name)
        self.signal = sig


class SweepNotStarted(Exception):
    """Raised by a sweep starter that was cancelled before its first level."""


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Inside the block ctrl-c, SIGTERM and SIGHUP raise StoppedBySignal (a KeyboardInterrupt), so
    whatever runs before the sweep (the local engine, discovery) stops cleanly and says which signal;
    the sweep itself takes the signals over (``run_in_foreground``). The previous handlers are restored
    after it."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise StoppedBySignal(signal.Signals(signum))

    previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report_stopped(sig: signal.Signals) -> int:
    """The line ctrl-c gives outside the sweep, naming any other signal; the shell's 128 + its number."""
    message = "servedeck: interrupted" if sig is signal.SIGINT else f"servedeck: stopped by {sig.name}"
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        print(message, file=sys.stderr)
    return 128 + int(sig)


async def sweep_unless_cancelled(
    config: SweepConfig, emit: Callable[[SweepEvent], None], cancel: asyncio.Event
) -> SweepResult:
    """``run_sweep``, whose prompts are sampled first; SweepNotStarted when ``cancel`` comes first
    (tokenising then stops sending requests)."""
    from backends.bench.sweep import prepare_dataset_unless_cancelled, run_sweep

    dataset = await prepare_dataset_unless_cancelled(config, cancel)
    if dataset is None:
        raise SweepNotStarted
    return await run_sweep(config, emit, cancel, dataset=dataset)


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

    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
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
    except SweepNotStarted:
        raise StoppedBySignal(received[0] if received else signal.SIGINT) from None
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            if previous[sig] is not None:  # remove_signal_handler leaves the default: a silent exit
                signal.signal(sig, previous[sig])
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
