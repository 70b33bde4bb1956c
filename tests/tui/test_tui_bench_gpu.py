"""Bench view with GPU telemetry (Pilot, 120x40): a sweep of a live twin reads its /dcgm by itself and
shows GPU charts, table columns and the energy line; a target without telemetry says so once."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Select

from backends.bench.export import sweep_to_csv
from backends.target_types import Target
from backends.targets import discover_target
from backends.twin.dcgm import POWER_MODELS
from manifests.gpus import GpuType
from sessions.store import SessionStore
from tests.fakes.sse_server import FakeSSEServer
from tests.tui.test_tui_bench import SIZE, BenchHarness, bench, fill, small_random_sweep, wait_until
from tui.context import AppContext
from tui.services.bench_cost import PriceSource
from tui.widgets.bench.live import KV_GPU_TITLE, KV_NO_GPU_TITLE, NO_GPU_TELEMETRY, LiveCharts
from tui.widgets.bench.sweep_chart import CostChart
from tui.widgets.history.overlay import overlay_series

pytestmark = pytest.mark.anyio

KEYS = ("0:0", "0:1")


async def test_twin_sweep_shows_gpu_charts_columns_and_energy_per_token(
    twin_target: Target, tmp_path: Path
) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[twin_target], selected_target="twin-1xH100"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        # Outputs long enough that each level spans several /dcgm readings (four a second).
        small_random_sweep(screen, levels="1,16", prompts="16", output_len="200")
        screen.query_one("#bench-price", Select).value = PriceSource.CUSTOM
        fill(screen, usd_per_hour="11.06")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not screen.running)

        live = screen.query_one(LiveCharts)
        gpu, power = live.chart("live-gpu"), live.chart("live-power")
        assert len(gpu.buffers["GPU util %"]) >= 2 and len(gpu.buffers["DRAM active %"]) >= 2
        assert len(power.buffers["power W"]) >= 2 and live.with_gpu and gpu.display and power.display
        assert live.chart("live-kv").chart_title == KV_GPU_TITLE
        _, watts = power.buffers["power W"].raw()
        assert all(0 < w <= 700.0 for w in watts)
        _, mem = live.chart("live-kv").buffers["GPU mem %"].raw()
        assert mem and all(50.0 < m <= 100.0 for m in mem)  # vLLM holds 0.9 of the card from start-up

        table = screen.results.table
        utils = [table.get_cell(key, "gpu_util") for key in KEYS]
        assert all(u.endswith("%") for u in utils), utils
        level_power = [float(table.get_cell(key, "gpu_power").replace(",", "")) for key in KEYS]
        level_kj = [float(table.get_cell(key, "kj_per_m").replace(",", "")) for key in KEYS]
        idle = POWER_MODELS[GpuType.H100].idle_w
        assert all(idle < w < 700.0 for w in level_power), level_power
        assert level_kj[0] > level_kj[1] > 0  # one weight stream a step, shared by more tokens
        assert "simulated" in (table.tooltip_at(table.get_cell_coordinate("0:0", "gpu_util")) or "")

        cost = screen.query_one(CostChart)
        (series,) = cost.series
        # The table rounds kJ to whole numbers; the chart keeps the exact value.
        chart_kj = [p.kj_per_million for p in series.points]
        assert chart_kj == pytest.approx(level_kj, rel=0.01, abs=0.5)
        screen.show_tab("bench-sweep")
        await wait_until(pilot, lambda: cost.stats.redraws >= 1 and not cost.dirty, timeout_s=10)
        assert "kJ/1M out" in str(cost.render())

    # History keeps each level's GPU telemetry: the overlay and the exports read it back.
    with SessionStore.open(tmp_path) as store:
        (summary,) = store.runs.list_runs()
        sweeps = store.runs.load_sweeps([summary.id])
    (saved,) = overlay_series(sweeps, [summary], lambda name: None)
    assert [p.kj_per_million for p in saved.points] == pytest.approx(chart_kj, rel=1e-9)
    header, *rows = sweep_to_csv(sweeps[0]).splitlines()
    columns = header.split(",")
    assert "gpu_util_mean" in columns and len(rows) == 2
    assert all(row.split(",")[columns.index("gpu_power_w_mean")] for row in rows)


async def test_target_without_gpu_telemetry_shows_one_clear_state(tmp_path: Path) -> None:
    server = FakeSSEServer(mode="tick")
    server.start_in_thread()
    try:
        target = await discover_target(f"http://127.0.0.1:{server.port}", name="fake")
        app = BenchHarness(AppContext(data_dir=tmp_path, targets=[target], selected_target="fake"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = bench(app)
            small_random_sweep(screen, levels="1", prompts="4", output_len="16")
            await pilot.press("ctrl+r")
            await wait_until(pilot, lambda: not screen.running)
            live = screen.query_one(LiveCharts)
            assert not live.with_gpu and live.chart("live-kv").chart_title == KV_NO_GPU_TITLE
            assert not live.chart("live-gpu").display and not live.chart("live-power").display
            assert NO_GPU_TELEMETRY in KV_NO_GPU_TITLE
            table = screen.results.table
            assert [table.get_cell("0:0", key) for key in ("gpu_util", "gpu_power", "kj_per_m")] == ["-"] * 3
            (series,) = screen.query_one(CostChart).series
            assert all(p.kj_per_million is None for p in series.points)
    finally:
        server.stop()
