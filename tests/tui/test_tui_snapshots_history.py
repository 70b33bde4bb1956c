"""Pictures of the History runs table at the sizes a demo runs in (160x45, 100x30), with target names
and labels longer than a small terminal has room for: the columns fit, or a note names those hidden.

Deterministic as ``tests/tui/test_tui_snapshots_bench.py`` (fixed runs, times in UTC, workers done).
Regenerate with ``.venv/bin/pytest tests/tui/test_tui_snapshots_history.py --snapshot-update`` and
review the SVGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.tui.test_tui_bench import BenchHarness, fixed_sweep, seed
from tests.tui.test_tui_snapshots_bench import TARGETS, steps
from tui.context import AppContext

pytestmark = pytest.mark.usefixtures("utc_and_isolated")

SIZES = [(160, 45), (100, 30)]


def wide_history_app(tmp_path: Path) -> BenchHarness:
    seed(
        tmp_path / "data",
        (fixed_sweep("gemma-3-270m @ 127.0.0.1:41234", "aaaa1111bbbb", 3.0), "4xL4 vs 1xH100 baseline"),
        (fixed_sweep("twin-27b-2xh100-8k-s64", "cccc2222dddd", 1.0), None),
        (fixed_sweep("twin-27b-1xh100", "eeee3333ffff", 0.6), "1xH100"),
    )
    return BenchHarness(AppContext(data_dir=tmp_path / "data", targets=TARGETS), mode="history")


@pytest.mark.parametrize("size", SIZES, ids=["160x45", "100x30"])
def test_history_runs_with_long_names_at(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    assert snap_compare(wide_history_app(tmp_path), terminal_size=size, run_before=steps())


def test_history_runs_every_column_at_100x30(snap_compare: Any, tmp_path: Path) -> None:
    async def every_column(pilot: Pilot[Any]) -> None:
        await pilot.press("w")

    assert snap_compare(wide_history_app(tmp_path), terminal_size=(100, 30), run_before=steps(every_column))
