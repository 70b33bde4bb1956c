"""The k9s-style filter every table shares: a case-insensitive substring; a leading ``!`` inverts it."""

from __future__ import annotations

from collections.abc import Iterable


def filter_matches(text: str, fields: Iterable[str]) -> bool:
    """Whether a row with ``fields`` passes the filter ``text`` (empty, or a bare ``!``, passes all)."""
    query = text.strip()
    if not query:
        return True
    inverted = query.startswith("!")
    needle = (query[1:] if inverted else query).strip().lower()
    if not needle:
        return True
    return (needle in " ".join(fields).lower()) != inverted
