"""`servedeck demo`: the app runs a short tour by itself (see ``tui.demo``) and says where the chart went."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from backends.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a scripted tour of the app: local chat, a race, a sweep, the History overlay, an export",
        description="Runs unattended: the local engine and a twin answer, a small sweep runs, and the sweep "
        "chart is exported. Chats and runs go to a store inside --out, not to your History.",
    )
    parser.add_argument(
        "--out", type=Path, help="folder for the demo's store and exports (default: ./servedeck-demo-<time>)"
    )
    parser.add_argument("--pace", type=float, default=1.0, help="seconds per pause (default 1; 0.2 is brisk)")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    if not args.pace >= 0:
        raise ConfigError(f"--pace must be >= 0 seconds, got {args.pace}")
    out: Path = args.out or Path(f"servedeck-demo-{datetime.now():%Y%m%d-%H%M%S}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror or exc}") from None
    from multiprocessing import resource_tracker

    from tui.demo import DemoApp

    app = DemoApp(out.resolve(), pace=args.pace)
    resource_tracker.ensure_running()  # before Textual replaces stderr (see tui/cli/app.py)
    started = time.monotonic()
    app.run()
    if app.error is not None:
        print(f"servedeck: error: demo stopped: {app.error}", file=sys.stderr)
        return 1
    print(f"demo finished in {time.monotonic() - started:.0f} s; exported chart: {app.exported}")
    return 0
