"""`servedeck` console script: the headless CLI.

Each sub-command lives in ``tui/cli/<name>.py`` and exposes ``add_parser(subparsers)``, which
registers its arguments and sets ``handler`` (``Callable[[argparse.Namespace], int]``) as a default.
Handlers raise ``ServeDeckError`` for anything the user can fix; ``main`` prints it as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from backends.errors import ServeDeckError

Handler = Callable[[argparse.Namespace], int]


class _CommandModule(Protocol):
    def add_parser(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command_modules() -> list[_CommandModule]:
    from tui.cli import app, bench, bench_worker, cost, demo, deploy, local, models, plan, runs, twin

    return [app, bench, bench_worker, cost, demo, deploy, local, models, plan, runs, twin]


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="servedeck",
        description=(
            "Deploy, chat with and benchmark vLLM (Kubernetes, local llama.cpp engine, vLLM twin). "
            "With no command, opens the terminal app."
        ),
    )
    subparsers = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineErrorParser),
    )
    for module in _command_modules():
        module.add_parser(subparsers)
    from tui.cli.app import add_app_arguments

    add_app_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Imported here, not above: every ``tui.cli.*`` import runs this package's top level, the
    # in-cluster bench worker's included, and its pods carry only what that worker imports.
    from manifests.errors import ManifestError

    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        from tui.cli.app import run_app

        handler = run_app
    try:
        return handler(args)
    except (ServeDeckError, ManifestError) as err:
        from backends.redaction import redact

        print(f"servedeck: error: {redact(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("servedeck: interrupted", file=sys.stderr)
        return 130
