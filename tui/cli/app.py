"""`servedeck tui` (and `servedeck` with no command): open the terminal app.

Textual is imported only when the app actually opens, so the headless commands stay fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tui = subparsers.add_parser(
        "tui",
        help="open the terminal app (the default when no command is given)",
        description="Open ServeDeck's terminal app: Deployments, Chat, Bench and History. The local engine "
        "(Gemma 3 270M on llama.cpp) starts in the background unless --no-local-engine is given.",
    )
    add_app_arguments(tui)
    tui.set_defaults(handler=run_app)


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's options; also usable on the top-level parser for `servedeck` with no command."""
    parser.add_argument(
        "--no-local-engine",
        action="store_true",
        help="do not start the local engine at launch (start it later with t on its row)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder of the sessions store (default: the platform's data folder, or $SERVEDECK_DATA_DIR)",
    )


def run_app(args: argparse.Namespace) -> int:
    from tui.app import ServeDeckApp
    from tui.context import AppContext

    app = ServeDeckApp(
        AppContext(data_dir=getattr(args, "data_dir", None)),
        start_local_engine=not getattr(args, "no_local_engine", False),
    )
    # Start multiprocessing's resource tracker before Textual replaces stderr: started later, from inside
    # the app, its spawn fails ("bad value(s) in fds_to_keep").
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    app.run()
    return app.return_code or 0
