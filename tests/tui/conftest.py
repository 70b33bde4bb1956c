"""Fixtures shared by the Textual app tests (tests/conftest.py's apply here too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.target_types import Target
from backends.targets import discover_target
from backends.twin.engine_config import TwinConfig
from backends.twin.server import TwinServer


@pytest.fixture
def utc_and_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Data dirs in tmp_path and times in UTC, so snapshots render the same on every machine."""
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_DATA_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(scope="module")
def twin_target() -> Iterator[Target]:
    """A live twin of Gemma 3 1B on 1xH100 in this process (real HTTP on 127.0.0.1), one per module."""
    twin = TwinServer(TwinConfig.build("gemma-3-1b-it", "h100", 1), log_sink=lambda line: None)
    twin.start_in_thread()
    try:
        yield asyncio.run(discover_target(twin.base_url, name="twin-1xH100"))
    finally:
        twin.stop()
