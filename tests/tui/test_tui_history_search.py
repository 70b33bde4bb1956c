"""History shows an SLO search (a run of kind "search") in its own chart: the levels tried on the x axis,
the measured SLO statistic per level with its verdict, the SLO as a horizontal line, the knee marked.

The pilot test records a real search the way the CLI does (``servedeck bench --find-max`` against a live
twin) next to a plain sweep; the snapshot draws a fixed search run (no clocks, fixed size).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from backends.bench.models import Axis
from backends.bench.results import RunStatus, SweepResult
from backends.bench.search_record import SearchLevel, SearchRecord
from backends.twin.engine_config import TwinConfig
from backends.twin.process import start_twin_process
from tests.cli_runner import run_main
from tests.tui.test_tui_bench import RUN_START, BenchHarness, fixed_level, fixed_sweep, seed, wait_until
from tests.tui.test_tui_snapshots_bench import TARGETS, steps
from tui.context import AppContext
from tui.screens.history import HistoryScreen
from tui.widgets.bench.sweep_chart import SweepChart
from tui.widgets.history.overlay import OverlayPanel
from tui.widgets.history.runs import SHORT_ID, RunsTable
from tui.widgets.history.search_chart import SearchChartView

pytestmark = pytest.mark.anyio

SIZE = (120, 40)
# 8 sequences at most: past concurrency 8 a request waits a whole answer for a slot (as in test_slo_search).
TWIN = TwinConfig.build("gemma-3-27b-it", "h100", 1, max_num_seqs=8)
SLO = "p99_ttft:300,p99_tpot:200"


@pytest.fixture
def recorded(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    """A search and a plain sweep saved by the CLI's own code path (a sync fixture: the CLI runs its loop)."""
    data_dir = tmp_path / "data"
    with start_twin_process(TWIN, log_interval_s=3600.0) as twin:
        code, out, err = run_main(
            capsys,
            "bench",
            "--target",
            twin.base_url,
            "--find-max",
            "concurrency",
            "--slo",
            SLO,
            "--num-prompts",
            "16",
            "--output-len",
            "16",
            "--max-levels",
            "5",
            "--data-dir",
            str(data_dir),
        )
        assert code in (0, 1) and "search saved as run " in err, (out, err)
        code, out, err = run_main(
            capsys,
            "bench",
            "--target",
            twin.base_url,
            "--concurrency",
            "1,2",
            "--num-prompts",
            "2",
            "--output-len",
            "4",
            "--data-dir",
            str(data_dir),
        )
        assert code == 0, (out, err)
    return data_dir


def history(app: BenchHarness) -> HistoryScreen:
    screen = app.screen
    assert isinstance(screen, HistoryScreen)
    return screen


@pytest.mark.timeout(300)
async def test_a_search_run_shows_its_own_chart_and_a_sweep_the_overlay(recorded: Path) -> None:
    app = BenchHarness(AppContext(data_dir=recorded), mode="history")
    async with app.run_test(size=SIZE) as pilot:
        screen = history(app)
        table = screen.query_one(RunsTable)
        await wait_until(pilot, lambda: table.row_count == 2, timeout_s=20)
        kinds = {run.id: run.kind for run in screen.runs}
        search_id = next(run_id for run_id, kind in kinds.items() if kind == "search")
        sweep_id = next(run_id for run_id, kind in kinds.items() if kind == "sweep")
        view = screen.query_one(SearchChartView)
        overlay = screen.query_one(OverlayPanel)

        table.move_cursor(row=table.get_row_index(search_id))
        await wait_until(pilot, lambda: view.chart is not None and view.display, timeout_s=20)
        assert not overlay.display
        chart = view.chart
        assert chart is not None
        assert [panel.title for panel in chart.panels] == ["p99 TTFT ms", "p99 TPOT ms"]
        assert [panel.limit_ms for panel in chart.panels] == [300.0, 200.0]
        ttft = chart.panels[0]
        values = [point.value for point in ttft.points]
        assert values == sorted(values) and 2 <= len(values) <= 5
        assert {point.verdict for point in ttft.points} >= {"pass", "fail"}
        knees = [point.value for point in ttft.points if point.knee]
        assert knees == [chart.knee]
        drawn = view.render()
        text = getattr(drawn, "plain", "")
        assert chart.summary in text
        assert "━ SLO 300 ms" in text and "━ SLO 200 ms" in text
        assert "▲" in text  # the knee's mark under its level
        assert search_id[:SHORT_ID] in text

        # A plain sweep goes back to the sweep overlay.
        table.move_cursor(row=table.get_row_index(sweep_id))
        sweep_chart = screen.query_one(SweepChart)
        await wait_until(pilot, lambda: overlay.display and bool(sweep_chart.series), timeout_s=20)
        assert not view.display
        assert [point.value for point in sweep_chart.series[0].points] == [1.0, 2.0]


def fixed_search() -> SweepResult:
    """Levels tried 1, 8, 4, 2 (4 and 8 over a 150 ms p99 TTFT line, the knee at 2)."""
    base = fixed_sweep("twin-27b-1xh100", "5ea4c1aa0001", 1.0)
    tried = [(1.0, 0.05), (8.0, 0.4), (4.0, 0.2), (2.0, 0.1)]
    levels = [fixed_level(i, value, ttft, 0.01) for i, (value, ttft) in enumerate(tried)]
    record = SearchRecord(
        slo="p99_ttft:150",
        start=1.0,
        start_source="probe at concurrency 1",
        knee=2.0,
        levels=tuple(
            SearchLevel(
                value=value,
                verdict="pass" if ttft * 1000 <= 150 else "fail",
                reasons=() if ttft * 1000 <= 150 else ("p99 TTFT over 150 ms",),
                p99_ttft_ms=ttft * 1000,
                p99_tpot_ms=10.0,
            )
            for value, ttft in tried
        ),
    )
    config = base.config.model_copy(
        update={"axis": Axis.CONCURRENCY, "levels": [v for v, _ in tried], "search": record}
    )
    return SweepResult(
        run_id=base.run_id,
        config=config,
        started_at=RUN_START,
        finished_at=RUN_START,
        status=RunStatus.COMPLETE,
        levels=levels,
    )


@pytest.fixture
def utc_and_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_DATA_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("utc_and_isolated")
def test_history_search_chart_at_120x40(snap_compare: Any, tmp_path: Path) -> None:
    seed(tmp_path / "data", (fixed_search(), "slo search 1xH100"))
    app = BenchHarness(AppContext(data_dir=tmp_path / "data", targets=TARGETS), mode="history")

    async def shown(pilot: Pilot[Any]) -> None:
        view = pilot.app.screen.query_one(SearchChartView)
        await wait_until(pilot, lambda: view.chart is not None, timeout_s=20)

    assert snap_compare(app, terminal_size=SIZE, run_before=steps(shown))
