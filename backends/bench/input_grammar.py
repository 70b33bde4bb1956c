"""What a user types about a sweep, read the same way by the CLI flags and the Bench form.

- Levels: numbers separated by commas and/or spaces (``1,4,16``, ``1 4 16``, ``0.5, 2, 10``), at least one
  and at most ``MAX_LEVELS``; each > 0; a concurrency is a whole number of requests in flight; a request
  rate may be ``inf`` (vllm bench serve's default: every request at t = 0) where the runner can send one.
- Goodput SLOs: vLLM's ``--goodput`` items ``KEY:MS`` with KEY in ttft, tpot, e2el, separated by commas
  and/or spaces (or given as separate words, as argparse hands ``--goodput ttft:500 tpot:50`` over).
- Percentiles: a comma list of numbers in (0, 100].
- Counts (prompts, turns, prefixes, token lengths): whole numbers >= 1; seconds, rates and scales: finite
  numbers >= 0 (or > 0).

Every bad input is one ``ConfigError`` line that says what to type instead. ``SweepConfig``'s validator
calls the ``check_*`` functions here, so a config built from flags, from the form or directly in code
meets the same limits. (The search SLOs of ``--find-max`` and ``plan --advise`` have their own, richer
grammar in ``bench/slo.py``.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from backends.bench.metrics import SLO_KEYS, validate_goodput_slos, validate_percentiles
from backends.bench.models import Axis
from backends.errors import ConfigError

MAX_LEVELS = 32
_INF_WORDS = ("inf", "+inf", "infinity", "+infinity")


def level_example(axis: Axis) -> str:
    return "1,4,16" if axis is Axis.CONCURRENCY else "1,5,10"


def split_items(text: str | Sequence[str]) -> list[str]:
    """The non-empty items of a list typed with commas and/or spaces (or already split into words)."""
    words = [text] if isinstance(text, str) else list(text)
    return [item for word in words for item in word.replace(",", " ").split()]


def _show(value: float) -> str:
    return f"{value:g}"


def check_levels(axis: Axis, values: Sequence[float], *, allow_inf: bool = True) -> list[float]:
    """The limits every sweep's levels meet, however they were given; returns them as floats."""
    example = level_example(axis)
    if not values:
        raise ConfigError(f"levels: give at least one level, e.g. {example}")
    if len(values) > MAX_LEVELS:
        raise ConfigError(f"levels: at most {MAX_LEVELS} levels per sweep, got {len(values)}")
    checked: list[float] = []
    for raw in values:
        value = float(raw)
        if math.isnan(value) or (math.isinf(value) and (axis is Axis.CONCURRENCY or not allow_inf)):
            hint = ""
            if axis is Axis.CONCURRENCY:
                hint = "; a concurrency is a whole number of requests in flight"
            elif math.isinf(value):
                hint = "; a rate of inf (every request at once) needs a real server"
            raise ConfigError(f"levels: expected finite numbers (no inf or nan), got {_show(value)}{hint}")
        if value <= 0:
            raise ConfigError(
                f"levels must be > 0, got {_show(value)} (expected numbers > 0, e.g. {example})"
            )
        if axis is Axis.CONCURRENCY and value != int(value):
            raise ConfigError(
                f"concurrency levels are whole numbers of requests in flight (>= 1), got {_show(value)}"
            )
        checked.append(value)
    return checked


def parse_levels(axis: Axis, text: str | Sequence[str], *, allow_inf: bool = True) -> list[float]:
    """``1,4,16`` (or ``1 4 16``) for ``axis``; ``inf`` is a request rate, and only with ``allow_inf``."""
    example = level_example(axis)
    values: list[float] = []
    for item in split_items(text):
        if item.lower() in _INF_WORDS:
            values.append(math.inf)
            continue
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(
                f"levels: {item!r} is not a number; expected comma-separated numbers, e.g. {example}"
            ) from None
        if math.isinf(value):  # "1e999": not what anyone means by inf
            raise ConfigError(f"levels: {item!r} is too large; type inf for every request at once")
        values.append(value)
    return check_levels(axis, values, allow_inf=allow_inf)


def check_goodput(slos_ms: Mapping[str, float] | None) -> dict[str, float]:
    """Keys ttft/tpot/e2el, values non-negative milliseconds (vLLM's ``--goodput`` rules)."""
    return validate_goodput_slos(slos_ms)


def parse_goodput(text: str | Sequence[str]) -> dict[str, float]:
    """vLLM's ``--goodput ttft:500 tpot:50`` (also ``ttft:500,tpot:50``); no items: no SLOs."""
    slos: dict[str, float] = {}
    for item in split_items(text):
        key, sep, value = item.partition(":")
        if not sep or key not in SLO_KEYS:
            raise ConfigError(
                f"bad --goodput item {item!r}: use KEY:MS with KEY in {', '.join(SLO_KEYS)}, "
                "e.g. ttft:500,tpot:50"
            )
        try:
            slos[key] = float(value)
        except ValueError:
            raise ConfigError(f"bad --goodput value in {item!r}: milliseconds must be a number") from None
    return check_goodput(slos)


def check_percentiles(percentiles: Iterable[float]) -> list[float]:
    """Percentiles in (0, 100], order kept, duplicates dropped."""
    return validate_percentiles(percentiles)


def parse_percentiles(text: str | Sequence[str]) -> list[float]:
    """``50,90,99`` (vLLM's ``--metric-percentiles``); at least one, each in (0, 100]."""
    items = split_items(text)
    if not items:
        raise ConfigError("percentiles: give at least one, e.g. 50,90,99")
    values: list[float] = []
    for item in items:
        try:
            values.append(float(item))
        except ValueError:
            raise ConfigError(f"percentiles: {item!r} is not a number; type e.g. 50,90,99") from None
    return check_percentiles(values)


def parse_count(field: str, text: str, *, example: str = "100") -> int:
    """A whole number >= 1 (prompts, turns, prefixes, token counts)."""
    value = text.strip()
    if not value:
        raise ConfigError(f"{field}: give a whole number, e.g. {example}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{field}: {value!r} is not a whole number; type e.g. {example}") from None
    if number < 1:
        raise ConfigError(f"{field} must be at least 1, got {number}")
    return number


def parse_number(field: str, text: str, *, example: str, positive: bool = False) -> float:
    """A finite number >= 0 (> 0 with ``positive``): seconds, req/s, a time scale."""
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{field}: {value!r} is not a number; type e.g. {example}") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ConfigError(f"{field} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return number
