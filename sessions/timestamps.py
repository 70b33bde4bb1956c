"""Timestamps as stored text: ISO 8601, UTC, always with microseconds, so text order is time order."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def stored(moment: datetime) -> str:
    return to_utc(moment).isoformat(timespec="microseconds")


def parse_stored(text: str) -> datetime:
    return datetime.fromisoformat(text)
