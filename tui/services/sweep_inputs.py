"""Sweep inputs both front ends read the same way (the Bench form and ``servedeck bench``)."""

from __future__ import annotations

from backends.errors import ConfigError

_SLO_KEYS = ("ttft", "tpot", "e2el")


def parse_goodput(text: str) -> dict[str, float]:
    slos: dict[str, float] = {}
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        key, sep, value = part.partition(":")
        if not sep or key not in _SLO_KEYS:
            raise ConfigError(f"bad --goodput item {part!r}: use KEY:MS with KEY in {', '.join(_SLO_KEYS)}")
        try:
            slos[key] = float(value)
        except ValueError:
            raise ConfigError(f"bad --goodput value in {part!r}: milliseconds must be a number") from None
    return slos
