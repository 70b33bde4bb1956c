"""Run ServeDeck's CLI in-process as ``servedeck`` does: returns (exit code, stdout, stderr)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from backends.errors import ServeDeckError
from backends.kube.client import KubeClient
from tests.fakes.kube_api import FakeKubeApi
from tui.cli import main


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_subcommand(
    add_parser: Callable[[Any], object],
    command: str,
    argv: Sequence[str],
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str, str]:
    """One command module's parser alone; a ServeDeckError becomes one line on stderr and exit 1."""
    parser = argparse.ArgumentParser(prog="servedeck")
    add_parser(parser.add_subparsers())
    args = parser.parse_args([command, *argv])
    try:
        code = args.handler(args)
    except ServeDeckError as err:
        print(f"servedeck: error: {err}", file=sys.stderr)
        code = 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@contextmanager
def kube_client(api: FakeKubeApi, folder: Path, namespace: str) -> Iterator[KubeClient]:
    """A client of the fake API server through a kubeconfig written in ``folder``."""
    kubeconfig = api.write_kubeconfig(folder / "kubeconfig", namespace=namespace)
    with KubeClient.connect(str(kubeconfig)) as kube:
        yield kube
