"""argparse types for single numbers, shared by every command: one wording for every flag's message.

Lists of levels, SLOs and percentiles are the input grammar's (backends/bench/input_grammar.py).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

Number = TypeVar("Number", int, float)


def int_in_range(low: int, high: int, what: str) -> Callable[[str], int]:
    """A whole number in ``low..high``; ``what`` names the flag in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be between {low} and {high}, got {value}")
        return value

    return parse


def positive(kind: Callable[[str], Number], what: str) -> Callable[[str], Number]:
    """A finite number > 0 of ``kind`` (int or float); ``what`` names the flag in the message."""

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{what} must be > 0, got {text}")
        return value

    return parse
