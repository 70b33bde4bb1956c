"""Pictures of the Bench and History views at 120x40, the charts also at 160x45 and 100x30.

Deterministic by construction: fixed targets and fixed results (built from fixed request records,
posted as the sweep runner's own messages, so no live timing), times shown in UTC, cursors that do
not blink, every worker finished and every chart drawn before the picture. Regenerate with
``.venv/bin/pytest tests/tui/test_tui_snapshots_bench.py --snapshot-update`` and review the SVGs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Select

from backends.bench.models import Axis, ProgressSnapshot
from backends.target_types import ServerSnapshot, Target, TargetKind
from backends.telemetry.models import GpuSummary
from tests.tui.test_tui_bench import BenchHarness, fixed_sweep, inject_finished_sweep, seed
from tui.context import AppContext
from tui.messages import SweepHostEvent
from tui.screens.bench import BenchScreen
from tui.services.sweep_host import HostLevelBegan, HostLevelDone, HostSample, HostStarted
from tui.widgets.charts import LiveChart

pytestmark = pytest.mark.usefixtures("utc_and_isolated")

SIZE = (120, 40)
TARGETS = [
    Target(name="local", base_url="http://127.0.0.1:8080", model="gemma-3-270m", kind=TargetKind.LLAMACPP),
    Target(
        name="twin-1xH100",
        base_url="http://127.0.0.1:8001",
        model="gemma-3-27b-it-twin",
        kind=TargetKind.TWIN,
    ),
    Target(
        name="twin-4xL4", base_url="http://127.0.0.1:8002", model="gemma-3-27b-it-twin", kind=TargetKind.TWIN
    ),
]


async def settle(pilot: Pilot[Any]) -> None:
    """Workers done, no chart waiting for its next redraw, no blinking cursor."""
    app = pilot.app
    deadline = time.monotonic() + 20
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        await app.workers.wait_for_complete()
        await pilot.pause(0.1)
        busy = any(not worker.is_finished for worker in app.workers)
        drawing = any(chart.dirty and chart.on_screen_now for chart in app.screen.query(LiveChart))
        quiet = 0 if busy or drawing else quiet + 1
    for box in app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


def steps(
    action: Callable[[Pilot[Any]], Awaitable[None]] | None = None,
) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        if action is not None:
            await action(pilot)
        await settle(pilot)

    return run_before


def bench_app(tmp_path: Path) -> BenchHarness:
    return BenchHarness(
        AppContext(data_dir=tmp_path / "data", targets=TARGETS, selected_target="twin-1xH100")
    )


def test_bench_form(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(bench_app(tmp_path), terminal_size=SIZE, run_before=steps())


def test_bench_form_error(snap_compare: Any, tmp_path: Path) -> None:
    async def bad_levels(pilot: Pilot[Any]) -> None:
        pilot.app.screen.query_one("#bench-levels", Input).value = "1,4,lots"
        await pilot.press("ctrl+r")

    assert snap_compare(bench_app(tmp_path), terminal_size=SIZE, run_before=steps(bad_levels))


def test_bench_form_multi_turn_with_ramp_up(snap_compare: Any, tmp_path: Path) -> None:
    """The workload fields of a multi-turn sweep, and a ramp-up in place of the levels (issue 13)."""

    async def multi_turn(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        screen.query_one("#bench-dataset", Select).value = "multi_turn"
        screen.query_one("#bench-axis", Select).value = Axis.REQUEST_RATE
        await pilot.pause()
        screen.query_one("#bench-ramp", Select).value = "linear"
        screen.query_one("#bench-think", Input).value = "2.5"
        screen.query_one("#bench-ramp-start", Input).value = "1"
        screen.query_one("#bench-ramp-end", Input).value = "20"

    assert snap_compare(bench_app(tmp_path), terminal_size=SIZE, run_before=steps(multi_turn))


def test_bench_finished_sweep(snap_compare: Any, tmp_path: Path) -> None:
    async def finished(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, BenchScreen)
        inject_finished_sweep(
            screen,
            [
                (fixed_sweep("twin-4xL4", "run4xl4", 3.0), 8.0),
                (fixed_sweep("twin-1xH100", "runh100", 1.0), 11.0),
            ],
        )
        await pilot.pause()

    assert snap_compare(bench_app(tmp_path), terminal_size=SIZE, run_before=steps(finished))


def live_gpu(t: float) -> GpuSummary:
    """A twin's simulated H100 as its /dcgm reads: busier as more sequences run."""
    util = 0.55 + 0.08 * (int(t) % 4)
    return GpuSummary(
        t=t,
        gpus=1,
        utilisation=util,
        dram_active=util * 0.85,
        tensor_active=util * 0.2,
        power_w=125.0 + 420.0 * util,
        fb_used_mib=72_000.0,
        fb_total_mib=81_000.0,
    )


def live_snapshot(t: float, gpu: bool = False) -> ProgressSnapshot:
    return ProgressSnapshot(
        level_index=1,
        level_label="concurrency 4",
        t=t,
        total=10,
        sent=8,
        completed=6,
        failed=1,
        in_flight=4,
        output_tokens_per_s=250.0 + 40.0 * (int(t) % 5),
        server=ServerSnapshot(
            t=t, source="twin", running=4, waiting=int(t) % 3, kv_cache_usage=0.2 + 0.1 * (int(t) % 4)
        ),
        gpu=live_gpu(t) if gpu else None,
    )


def test_bench_live_level(snap_compare: Any, tmp_path: Path) -> None:
    async def running(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, BenchScreen)
        sweep = fixed_sweep("twin-1xH100", "runh100", 1.0)
        from tui.screens.bench import _RunState
        from tui.services.bench_config import PlannedRun

        priced = sweep.config.model_copy(update={"usd_per_hour": 11.0})
        screen._runs = [_RunState(planned=PlannedRun(config=priced))]
        screen.show_tab("bench-live")
        screen.post_message(
            SweepHostEvent(HostStarted(run_index=0, run_id=sweep.run_id, config=sweep.config, notes=[]))
        )
        screen.post_message(
            SweepHostEvent(
                HostLevelBegan(run_index=0, level_index=0, level=sweep.levels[0].level, total=10, x=0.0)
            )
        )
        for i in range(12):
            screen.post_message(
                SweepHostEvent(
                    HostSample(
                        run_index=0,
                        x=float(i),
                        snapshot=live_snapshot(float(i)),
                        ttft_points=[(float(i), 40.0 + 5 * (i % 4))],
                    )
                )
            )
        screen.post_message(SweepHostEvent(HostLevelDone(run_index=0, result=sweep.levels[0])))
        screen.post_message(
            SweepHostEvent(
                HostLevelBegan(run_index=0, level_index=1, level=sweep.levels[1].level, total=10, x=12.0)
            )
        )
        for i in range(12, 30):
            screen.post_message(
                SweepHostEvent(
                    HostSample(
                        run_index=0,
                        x=float(i),
                        snapshot=live_snapshot(float(i)),
                        ttft_points=[(float(i), 120.0 + 9 * (i % 5))],
                    )
                )
            )
        await pilot.pause()

    assert snap_compare(bench_app(tmp_path), terminal_size=SIZE, run_before=steps(running))


def history_app(tmp_path: Path) -> BenchHarness:
    seed(
        tmp_path / "data",
        (fixed_sweep("twin-4xL4", "aaaa1111bbbb", 3.0), "4xL4"),
        (fixed_sweep("twin-1xH100", "cccc2222dddd", 1.0), "1xH100"),
        (fixed_sweep("twin-2xH100", "eeee3333ffff", 0.6), "2xH100"),
    )
    return BenchHarness(AppContext(data_dir=tmp_path / "data", targets=TARGETS), mode="history")


def test_history_runs(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(history_app(tmp_path), terminal_size=SIZE, run_before=steps())


def test_history_overlay_of_three_runs(snap_compare: Any, tmp_path: Path) -> None:
    async def overlay(pilot: Pilot[Any]) -> None:
        await pilot.press("space", "down", "space", "down", "space")

    assert snap_compare(history_app(tmp_path), terminal_size=SIZE, run_before=steps(overlay))


# The chart views at the sizes a demo runs in: a wide terminal and a small one.
DEMO_SIZES = [pytest.param((160, 45), id="160x45"), pytest.param((100, 30), id="100x30")]


@pytest.mark.parametrize("size", DEMO_SIZES)
def test_bench_finished_sweep_at_demo_sizes(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    async def finished(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, BenchScreen)
        inject_finished_sweep(
            screen,
            [
                (fixed_sweep("twin-4xL4", "run4xl4", 3.0), 8.0),
                (fixed_sweep("twin-1xH100", "runh100", 1.0), 11.0),
            ],
        )
        await pilot.pause()

    assert snap_compare(bench_app(tmp_path), terminal_size=size, run_before=steps(finished))


@pytest.mark.parametrize("size", DEMO_SIZES)
def test_bench_live_level_at_demo_sizes(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    async def running(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        assert isinstance(screen, BenchScreen)
        sweep = fixed_sweep("twin-1xH100", "runh100", 1.0)
        from tui.screens.bench import _RunState
        from tui.services.bench_config import PlannedRun

        screen._runs = [_RunState(planned=PlannedRun(config=sweep.config))]
        screen.show_tab("bench-live")
        screen.post_message(
            SweepHostEvent(HostStarted(run_index=0, run_id=sweep.run_id, config=sweep.config, notes=[]))
        )
        screen.post_message(
            SweepHostEvent(
                HostLevelBegan(run_index=0, level_index=0, level=sweep.levels[0].level, total=10, x=0.0)
            )
        )
        for i in range(12):  # a short first level, then a long second one: each gets half the width
            screen.post_message(
                SweepHostEvent(
                    HostSample(
                        run_index=0,
                        x=float(i),
                        snapshot=live_snapshot(float(i), gpu=True),
                        ttft_points=[(float(i), 40.0 + 5 * (i % 4))],
                    )
                )
            )
        screen.post_message(SweepHostEvent(HostLevelDone(run_index=0, result=sweep.levels[0])))
        screen.post_message(
            SweepHostEvent(
                HostLevelBegan(run_index=0, level_index=1, level=sweep.levels[1].level, total=10, x=12.0)
            )
        )
        for i in range(12, 120):
            screen.post_message(
                SweepHostEvent(
                    HostSample(
                        run_index=0,
                        x=float(i),
                        snapshot=live_snapshot(float(i), gpu=True),
                        ttft_points=[(float(i), 120.0 + 9 * (i % 5))],
                    )
                )
            )
        await pilot.pause()

    assert snap_compare(bench_app(tmp_path), terminal_size=size, run_before=steps(running))


@pytest.mark.parametrize("size", DEMO_SIZES)
def test_history_overlay_at_demo_sizes(snap_compare: Any, tmp_path: Path, size: tuple[int, int]) -> None:
    async def overlay(pilot: Pilot[Any]) -> None:
        await pilot.press("space", "down", "space", "down", "space")

    assert snap_compare(history_app(tmp_path), terminal_size=size, run_before=steps(overlay))
