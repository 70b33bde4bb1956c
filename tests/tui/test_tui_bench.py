"""Bench view (Pilot, 120x40): real sweeps against the fake SSE server on 127.0.0.1, cancel, a dead
endpoint, form errors, export; plus the pure pieces (config building, cost, downsampling)."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
from textual.app import App
from textual.notifications import SeverityLevel
from textual.widgets import Input, Select, Static, TabbedContent

from backends.bench.export import read_level_results
from backends.bench.metrics import compute_metrics
from backends.bench.models import Axis, ClientStats, LoadLevel, ProgressSnapshot, RequestRecord
from backends.bench.results import DatasetSpec, LevelResult, RunStatus, SweepConfig, SweepResult
from backends.errors import ConfigError
from backends.target_types import Target, TargetKind
from backends.targets import discover_target
from manifests.cost import usd_per_million_tokens
from sessions.run_models import BundleLevel, RunBundle
from sessions.store import SessionStore
from tests import tui_helpers
from tests.fakes.sse_server import FakeSSEServer
from tui.context import AppContext
from tui.messages import SweepHostEvent
from tui.screens.bench import BenchScreen
from tui.screens.history import HistoryScreen
from tui.services.bench_config import BenchFormValues, build_runs, parse_levels, values_from_config
from tui.services.bench_cost import PriceSource
from tui.services.sweep_host import (
    HostAllDone,
    HostFinished,
    HostLevelBegan,
    HostLevelDone,
    HostSample,
    HostStarted,
    thin,
)
from tui.widgets.bench.export import ExportDialog
from tui.widgets.bench.live import LiveCharts
from tui.widgets.bench.sweep_chart import CostChart, SweepChart, series_from_levels
from tui.widgets.charts import SeriesBuffer, downsample_envelope, downsample_mean
from tui.widgets.history.runs import RunsTable

pytestmark = pytest.mark.anyio

SIZE = (120, 40)
SWEEP_DEADLINE_S = 120.0
RUN_START = datetime(2025, 4, 4, 14, 9, 2, tzinfo=UTC)


class BenchHarness(App[None]):
    """The two views as the shell mounts them (modes), with a fixed context; records notifications."""

    MODES: ClassVar[dict[str, Any]] = {"bench": BenchScreen, "history": HistoryScreen}

    def __init__(self, ctx: AppContext, mode: str = "bench") -> None:
        super().__init__()
        self.ctx = ctx
        self.first_mode = mode
        self.messages: list[tuple[str, str]] = []

    def on_mount(self) -> None:
        self.switch_mode(self.first_mode)

    def notify(self, message: str, *, severity: SeverityLevel = "information", **kwargs: Any) -> None:
        self.messages.append((severity, str(message)))
        super().notify(message, severity=severity, **kwargs)


wait_until = partial(tui_helpers.wait_until, timeout_s=SWEEP_DEADLINE_S, poll_s=0.1)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeSSEServer]:
    server = FakeSSEServer(mode="tick")
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def fake_target(fake_server: FakeSSEServer) -> Target:
    return asyncio.run(discover_target(f"http://127.0.0.1:{fake_server.port}", name="fake"))


def bench(app: BenchHarness) -> BenchScreen:
    screen = app.screen
    assert isinstance(screen, BenchScreen)
    return screen


def fill(screen: BenchScreen, **fields: str) -> None:
    for widget_id, value in fields.items():
        screen.query_one(f"#bench-{widget_id.replace('_', '-')}", Input).value = value


def small_random_sweep(screen: BenchScreen, levels: str, prompts: str, output_len: str) -> None:
    screen.query_one("#bench-dataset", Select).value = "random"
    fill(screen, random_in="64", random_out="16", levels=levels, prompts=prompts, output_len=output_len)


def static_text(screen: Any, selector: str) -> str:
    return str(screen.query_one(selector, Static).content)


# -- live sweeps --------------------------------------------------------------------------------------


async def test_two_level_sweep_fills_charts_table_and_history(fake_target: Target, tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[fake_target], selected_target="fake"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        small_random_sweep(screen, levels="1,2", prompts="6", output_len="16")
        screen.query_one("#bench-levels", Input).focus()  # the keys work from inside the form too
        await pilot.press("ctrl+r")
        assert screen.running
        assert screen.query_one(TabbedContent).active == "bench-live"
        await wait_until(pilot, lambda: not screen.running)

        assert screen.query_one(TabbedContent).active == "bench-sweep"
        table = screen.results.table
        assert table.row_count == 2
        assert [table.get_cell(key, "status") for key in ("0:0", "0:1")] == ["complete", "complete"]
        assert [table.get_cell(key, "done") for key in ("0:0", "0:1")] == ["6/0", "6/0"]
        series = screen.query_one(SweepChart).series
        assert len(series) == 1 and [p.value for p in series[0].points] == [1.0, 2.0]
        assert all(p.total_tokens_per_s > 0 and p.p99_ttft_ms for p in series[0].points)
        chart = screen.query_one(SweepChart)
        await wait_until(
            pilot, lambda: chart.stats.redraws >= 1 and not chart.dirty, timeout_s=10
        )  # drawn once shown
        live = screen.query_one(LiveCharts)
        assert len(live.chart("live-tokens").buffers["output tok/s"]) >= 2
        assert len(live.chart("live-ttft").buffers["TTFT ms"]) >= 1
        assert live.chart("live-kv").note is not None  # the fake server has no /metrics: said so
        assert "saved as" in static_text(screen, "#results-caption")
        assert any("sweep finished" in text for _, text in app.messages)

    with SessionStore.open(tmp_path) as store:
        runs = store.runs.list_runs()
    assert len(runs) == 1 and runs[0].status is RunStatus.COMPLETE and runs[0].levels_stored == 2


async def test_two_level_sweep_against_the_live_twin_shows_server_series(
    twin_target: Target, tmp_path: Path
) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[twin_target], selected_target="twin-1xH100"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        # Long enough outputs that each level spans several 1 s snapshots with /metrics scrapes.
        small_random_sweep(screen, levels="2,8", prompts="16", output_len="200")
        screen.query_one("#bench-price", Select).value = PriceSource.CUSTOM
        fill(screen, usd_per_hour="11.06")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not screen.running)

        table = screen.results.table
        assert [table.get_cell(key, "status") for key in ("0:0", "0:1")] == ["complete", "complete"]
        assert all(table.get_cell(key, "usd_per_m").startswith("$") for key in ("0:0", "0:1"))
        (series,) = screen.query_one(SweepChart).series
        assert series.points[1].total_tokens_per_s > series.points[0].total_tokens_per_s
        assert all(p.usd_per_million is not None for p in series.points)
        live = screen.query_one(LiveCharts)
        assert len(live.chart("live-kv").buffers["KV cache %"]) >= 1  # the twin's /metrics
        assert len(live.chart("live-requests").buffers["running"]) >= 1
        assert live.chart("live-kv").note is None


async def test_cancel_mid_level_keeps_partial_run_in_history(fake_target: Target, tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[fake_target], selected_target="fake"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        # 40 requests of 300 tokens at 10 ms per token, 2 in flight: the first level takes a minute.
        small_random_sweep(screen, levels="2,4", prompts="40", output_len="300")
        fill(screen, label="cancel-me")
        await pilot.press("ctrl+r")
        ttft = screen.query_one(LiveCharts).chart("live-ttft").buffers["TTFT ms"]
        await wait_until(pilot, lambda: len(ttft) >= 1)
        screen.show_tab("bench-setup")
        screen.query_one("#bench-label", Input).focus()
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: not screen.running)

        assert screen.results.table.get_cell("0:0", "status") == "partial"
        assert screen.results.table.row_count == 1  # the second level never started
        assert any(severity == "warning" and "cancelled" in text for severity, text in app.messages)

        await app.switch_mode("history")
        history = app.screen
        assert isinstance(history, HistoryScreen)
        runs_table = history.query_one(RunsTable)
        await wait_until(pilot, lambda: runs_table.row_count == 1, timeout_s=20)
        run = history.runs[0]
        assert run.status is RunStatus.PARTIAL and run.label == "cancel-me"
        assert runs_table.get_cell(run.id, "status").plain == "partial"
        await wait_until(pilot, lambda: bool(history.query_one(SweepChart).series), timeout_s=20)
        (series,) = history.query_one(SweepChart).series
        assert [p.status for p in series.points] == [RunStatus.PARTIAL]


async def test_a_sweep_process_that_dies_is_reported_and_the_view_recovers(
    fake_target: Target, tmp_path: Path
) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[fake_target], selected_target="fake"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        small_random_sweep(screen, levels="2", prompts="40", output_len="300")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: screen.results.table.row_count == 1)  # the level is running
        (host,) = [p for p in multiprocessing.active_children() if p.name == "servedeck-sweep-host"]
        host.kill()
        await wait_until(pilot, lambda: not screen.running, timeout_s=60)
        errors = [text for severity, text in app.messages if severity == "error"]
        assert any("the sweep process stopped unexpectedly" in text for text in errors)
        small_random_sweep(screen, levels="1", prompts="2", output_len="4")
        await pilot.press("ctrl+r")  # and the next sweep runs
        await wait_until(pilot, lambda: not screen.running)
        assert screen.results.table.get_cell("0:0", "status") == "complete"


async def test_dead_endpoint_shows_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = Target(name="dead", base_url=f"http://127.0.0.1:{port}", model="m", kind=TargetKind.VLLM)
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[dead], selected_target="dead"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        small_random_sweep(screen, levels="1", prompts="2", output_len="4")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: not screen.running, timeout_s=30)
        errors = [text for severity, text in app.messages if severity == "error"]
        assert len(errors) == 1
        assert "connection refused" in errors[0] and "is the server running" in errors[0]
        assert "dead" in static_text(screen, "#bench-form-message")
        assert screen.results.table.row_count == 0
    with SessionStore.open(tmp_path) as store:
        assert store.runs.list_runs() == []


# -- form errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"levels": "1,x"}, "levels: 'x' is not a number"),
        ({"levels": "1.5"}, "whole numbers of requests in flight"),
        ({"levels": ""}, "give at least one level"),
        ({"prompts": "0"}, "prompts per level must be at least 1"),
        ({"output_len": "lots"}, "output length: 'lots' is not a whole number"),
        ({"slos": "ttft=500"}, "bad --goodput item"),
    ],
)
async def test_bad_form_input_is_one_clear_message(
    fields: dict[str, str], expected: str, fake_target: Target, tmp_path: Path
) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[fake_target], selected_target="fake"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        fill(screen, **fields)
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert not screen.running
        assert expected in static_text(screen, "#bench-form-message")
        assert [severity for severity, _ in app.messages] == ["error"]


async def test_no_target_selected_says_how_to_pick_one(tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=[]))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert "pick at least one target" in static_text(bench(app), "#bench-form-message")


# -- fixed data: charts, visibility, export ---------------------------------------------------------


def fixed_level(
    index: int, value: float, ttft_s: float, itl_s: float, *, limited: bool = False
) -> LevelResult:
    records = []
    for i in range(10):
        sent = i * 0.2
        first = sent + ttft_s
        chunks = [first + k * itl_s for k in range(32)]
        records.append(
            RequestRecord(
                index=i,
                prompt_len=100,
                expected_output_len=32,
                queued_at=sent,
                sent_at=sent,
                first_token_at=first,
                chunk_times=chunks,
                chunk_tokens=[1] * 32,
                input_tokens=100,
                output_tokens=32,
                finish_reason="length",
                success=True,
            )
        )
    duration = max(r.chunk_times[-1] for r in records)
    metrics = compute_metrics(records, duration, goodput_slos_ms=None, percentiles=[99.0])
    return LevelResult(
        index=index,
        level=LoadLevel(axis=Axis.CONCURRENCY, value=value),
        started_at=RUN_START,
        status=RunStatus.COMPLETE,
        metrics=metrics,
        client=ClientStats(client_limited=limited),
        records=records,
    )


def fixed_sweep(name: str, run_id: str, scale: float) -> SweepResult:
    target = Target(
        name=name, base_url="http://127.0.0.1:8001", model="gemma-3-27b-it-twin", kind=TargetKind.TWIN
    )
    config = SweepConfig(
        target=target,
        dataset=DatasetSpec(kind="random", random_input_len=100, random_output_len=32),
        axis=Axis.CONCURRENCY,
        levels=[1, 4],
        num_prompts=10,
        output_len=32,
    )
    levels = [
        fixed_level(0, 1, 0.05 * scale, 0.01 * scale),
        fixed_level(1, 4, 0.2 * scale, 0.02 * scale, limited=True),
    ]
    return SweepResult(
        run_id=run_id,
        config=config,
        started_at=RUN_START,
        finished_at=RUN_START,
        status=RunStatus.COMPLETE,
        levels=levels,
    )


def bundle(sweep: SweepResult, label: str | None, minutes: int) -> RunBundle:
    created = RUN_START + timedelta(minutes=minutes)
    return RunBundle(
        run_id=sweep.run_id,
        label=label,
        gpu="twin",
        created_at=created,
        finished_at=created,
        status=sweep.status,
        message=sweep.message,
        config=sweep.config,
        levels=[
            BundleLevel(
                index=level.index,
                level=level.level,
                started_at=level.started_at,
                status=level.status,
                metrics=level.metrics,
                client=level.client,
                message=level.message,
                records=level.records,
            )
            for level in sweep.levels
        ],
    )


def seed(data_dir: Path, *sweeps: tuple[SweepResult, str | None]) -> None:
    with SessionStore.open(data_dir) as store:
        for minutes, (sweep, label) in enumerate(sweeps):
            store.import_bundle(bundle(sweep, label, minutes))


def snapshot_at(t: float) -> ProgressSnapshot:
    return ProgressSnapshot(
        level_index=0,
        level_label="concurrency 1",
        t=t,
        total=10,
        sent=5,
        completed=4,
        failed=0,
        in_flight=1,
        output_tokens_per_s=100.0 + t,
    )


def inject_finished_sweep(screen: BenchScreen, sweeps: list[tuple[SweepResult, float | None]]) -> None:
    """Post the runner's own messages with fixed results, as a finished sweep would."""
    from tui.screens.bench import _RunState
    from tui.services.bench_config import PlannedRun

    screen._runs = [
        _RunState(planned=PlannedRun(config=s.config.model_copy(update={"usd_per_hour": price})))
        for s, price in sweeps
    ]
    screen._sweeping = True
    for index, (sweep, _) in enumerate(sweeps):
        screen.post_message(
            SweepHostEvent(HostStarted(run_index=index, run_id=sweep.run_id, config=sweep.config, notes=[]))
        )
        for level in sweep.levels:
            screen.post_message(
                SweepHostEvent(
                    HostLevelBegan(
                        run_index=index,
                        level_index=level.index,
                        level=level.level,
                        total=10,
                        x=float(level.index),
                    )
                )
            )
            screen.post_message(SweepHostEvent(HostLevelDone(run_index=index, result=level)))
        screen.post_message(
            SweepHostEvent(
                HostFinished(run_index=index, result=sweep, saved_as=sweep.run_id, save_error=None)
            )
        )
    screen.post_message(SweepHostEvent(HostAllDone(cancelled=False)))


async def test_charts_redraw_only_when_visible_and_throttled(tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        live = screen.query_one(LiveCharts)
        samples = 40
        for i in range(samples):  # the Setup tab is showing: the live charts are hidden
            screen.post_message(
                SweepHostEvent(
                    HostSample(
                        run_index=0,
                        x=float(i),
                        snapshot=snapshot_at(float(i)),
                        ttft_points=[(float(i), 20.0)],
                    )
                )
            )
        await pilot.pause()
        assert len(live.chart("live-tokens").buffers["output tok/s"]) == samples
        assert all(chart.stats.redraws == 0 and chart.dirty for chart in live.charts)

        screen.show_tab("bench-live")
        await wait_until(pilot, lambda: all(chart.stats.redraws >= 1 for chart in live.charts), timeout_s=10)
        before = live.chart("live-tokens").stats.redraws
        for i in range(samples, 2 * samples):  # visible now: a burst is coalesced, not drawn 40 times
            screen.post_message(
                SweepHostEvent(
                    HostSample(run_index=0, x=float(i), snapshot=snapshot_at(float(i)), ttft_points=[])
                )
            )
        await pilot.pause()
        await wait_until(pilot, lambda: not live.chart("live-tokens").dirty, timeout_s=10)
        assert live.chart("live-tokens").stats.redraws - before < samples // 2


async def test_sweep_and_cost_charts_from_fixed_results(tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        inject_finished_sweep(
            screen,
            [(fixed_sweep("4xL4", "run4xl4", 3.0), 4.0), (fixed_sweep("1xH100", "runh100", 1.0), None)],
        )
        await wait_until(pilot, lambda: not screen.running, timeout_s=10)
        assert screen.query_one(TabbedContent).active == "bench-sweep"
        series = screen.query_one(SweepChart).series
        assert [s.name for s in series] == ["4xL4", "1xH100"]
        assert [p.client_limited for p in series[0].points] == [False, True]
        cost = screen.query_one(CostChart).series[0].points
        assert cost[0].usd_per_million == pytest.approx(
            usd_per_million_tokens(4.0, cost[0].total_tokens_per_s)
        )
        assert screen.query_one(CostChart).series[1].points[0].usd_per_million is None
        table = screen.results.table
        assert table.get_cell("0:1", "level") == "4*"  # client-limited level marked
        assert table.get_cell("1:0", "usd_per_m") == "-"
        assert table.get_cell("0:0", "usd_per_m").startswith("$")


async def test_export_writes_vllm_json_csv_and_svg(tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        sweep = fixed_sweep("4xL4", "run4xl4", 3.0)
        seed(tmp_path, (sweep, None))  # exports read the saved run back from History
        inject_finished_sweep(screen, [(sweep, 4.0)])
        await wait_until(pilot, lambda: not screen.running, timeout_s=10)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportDialog), timeout_s=10)
        folder = tmp_path / "out" / "nested"
        app.screen.query_one("#export-folder", Input).value = str(folder)
        await pilot.press("enter")
        stem = "servedeck-run4xl4-4xL4"
        await wait_until(pilot, lambda: (folder / f"{stem}.svg").exists(), timeout_s=20)
        saved = read_level_results(folder / f"{stem}.json")
        assert [level["max_concurrency"] for level in saved.levels] == [1, 4]
        assert "p99_ttft_ms" in saved.levels[0]
        header = (folder / f"{stem}.csv").read_text().splitlines()[0]
        assert header.startswith("axis,value,status")
        assert "<svg" in (folder / f"{stem}.svg").read_text()[:500]
        assert any("exported to" in text for _, text in app.messages)


async def test_export_to_an_unwritable_folder_is_one_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        sweep = fixed_sweep("4xL4", "run4xl4", 3.0)
        seed(tmp_path, (sweep, None))
        inject_finished_sweep(screen, [(sweep, None)])
        await wait_until(pilot, lambda: not screen.running, timeout_s=10)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportDialog), timeout_s=10)
        app.screen.query_one("#export-folder", Input).value = str(blocker / "sub")
        await pilot.press("enter")
        await wait_until(pilot, lambda: any(sev == "error" for sev, _ in app.messages), timeout_s=20)
        (error,) = [text for sev, text in app.messages if sev == "error"]
        assert "cannot create export folder" in error and "choose another folder" in error


async def test_export_before_any_sweep_says_so(tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.messages == [("warning", "nothing to export yet: run a sweep first (ctrl+r)")]


# -- pure pieces -------------------------------------------------------------------------------------


def test_cost_per_million_tokens_matches_the_article_example() -> None:
    # 4xL4: $3,076.62 a month = $0.001171/s; at 411.81 tok/s the article gets $2.84 per 1M tokens.
    usd_per_hour = 0.001171 * 3600
    assert usd_per_million_tokens(usd_per_hour, 411.81) == pytest.approx(2.84, abs=0.005)
    assert usd_per_million_tokens(None, 411.81) is None
    assert usd_per_million_tokens(4.0, 0.0) is None


def test_build_runs_one_config_per_target_with_prices() -> None:
    a = Target(name="a", base_url="http://127.0.0.1:1", model="m")
    b = Target(name="b", base_url="http://127.0.0.1:2", model="m")
    values = BenchFormValues(
        targets=["b", "a"], dataset="random", levels="1,4,16", num_prompts="50", slos="ttft:500"
    )
    runs = build_runs(values, [a, b], {"a": 2.5}.get)
    assert [run.config.target.name for run in runs] == ["b", "a"]
    assert [run.usd_per_hour for run in runs] == [None, 2.5]
    # the price goes into the saved config, so History shows the $ per 1M tokens the run had
    assert [run.config.usd_per_hour for run in runs] == [None, 2.5]
    assert [run.config.price_source for run in runs] == [None, "target's hardware (catalog)"]
    assert runs[0].config.levels == [1.0, 4.0, 16.0] and runs[0].config.goodput_slos_ms == {"ttft": 500.0}
    custom = build_runs(
        values.model_copy(update={"price_source": PriceSource.CUSTOM, "usd_per_hour": "$4"}), [a, b], {}.get
    )
    assert [run.usd_per_hour for run in custom] == [4.0, 4.0]
    assert [run.config.price_source for run in custom] == ["custom $/h", "custom $/h"]
    none = build_runs(values.model_copy(update={"price_source": PriceSource.NONE}), [a, b], {"a": 2.5}.get)
    assert [run.usd_per_hour for run in none] == [None, None]


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        ({"targets": []}, "pick at least one target"),
        ({"targets": ["gone"]}, "target 'gone' is not available any more"),
        ({"dataset": "file", "dataset_path": " "}, "dataset file: type the path"),
        ({"dataset": "random", "random_input_len": "-3"}, "random input length must be at least 1"),
        ({"price_source": PriceSource.CUSTOM, "usd_per_hour": "cheap"}, "custom $/h: 'cheap' is not a price"),
        ({"price_source": PriceSource.CUSTOM, "usd_per_hour": "0"}, "custom $/h must be more than 0"),
        ({"axis": Axis.REQUEST_RATE, "levels": "0"}, "levels must be > 0"),
        ({"levels": ",".join(["1"] * 40)}, "at most 32 levels"),
        ({"slos": "latency:5"}, "bad --goodput item"),
    ],
)
def test_build_runs_rejects_bad_fields(update: dict[str, Any], expected: str) -> None:
    target = Target(name="a", base_url="http://127.0.0.1:1", model="m")
    values = BenchFormValues(targets=["a"]).model_copy(update=update)
    with pytest.raises(ConfigError, match=expected.replace("$", r"\$").replace("(", r"\(")):
        build_runs(values, [target], {}.get)


def test_request_rate_levels_may_be_fractional() -> None:
    assert parse_levels(Axis.REQUEST_RATE, "0.5, 2,10") == [0.5, 2.0, 10.0]


def test_rerun_keeps_settings_the_form_does_not_show() -> None:
    target = Target(name="a", base_url="http://127.0.0.1:1", model="m")
    saved = SweepConfig(
        target=target,
        dataset=DatasetSpec(kind="random", random_input_len=300, random_output_len=50),
        axis=Axis.REQUEST_RATE,
        levels=[0.5, 2],
        num_prompts=40,
        output_len=None,
        seed=7,
        percentiles=[50, 99],
        temperature=0.3,
        goodput_slos_ms={"ttft": 250.0},
        label="x",
    )
    values = values_from_config(saved, [target])
    assert values.levels == "0.5,2" and values.output_len == "" and values.slos == "ttft:250"
    (run,) = build_runs(values, [target], {}.get, base=saved)
    assert run.config == saved


def test_downsampling_is_bounded_and_keeps_outliers() -> None:
    xs = [float(i) for i in range(10_000)]
    ys = [1.0] * 10_000
    ys[5_000] = 900.0
    mx, my = downsample_mean(xs, ys, 100)
    assert len(mx) == 100 and max(my) < 900.0  # averaged away in a line
    ex, ey = downsample_envelope(xs, ys, 100)
    assert len(ex) <= 200 and max(ey) == 900.0  # kept in a scatter
    buffer = SeriesBuffer(capacity=50)
    for i in range(120):
        buffer.append(float(i), float(i))
    buffer.append(math.nan, 1.0)
    assert len(buffer) == 50 and buffer.points(1000)[0][0] == 70.0
    assert thin(list(range(1000)), 10) == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]


def test_failed_level_draws_no_ttft_and_no_cost() -> None:
    level = fixed_level(0, 1, 0.05, 0.01)
    failed = level.model_copy(
        update={
            "status": RunStatus.FAILED,
            "metrics": compute_metrics([], 0.0, goodput_slos_ms=None, percentiles=[99]),
        }
    )
    (point,) = series_from_levels("x", Axis.CONCURRENCY, [failed], 4.0).points
    assert point.total_tokens_per_s == 0 and point.p99_ttft_ms is None and point.usd_per_million is None


async def test_a_late_event_loop_does_not_break_chart_redraws(tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        screen.show_tab("bench-live")
        chart = screen.query_one(LiveCharts).chart("live-tokens")
        await wait_until(pilot, lambda: not chart.dirty, timeout_s=10)
        for i in range(3):
            await asyncio.sleep(1.0 / chart.REDRAW_HZ + 0.05)  # the throttle allows a redraw at once
            chart.append("output tok/s", float(i), 10.0)
            time.sleep(0.05)  # and this turn of the loop overruns the redraw timer it just set
            await wait_until(pilot, lambda: not chart.dirty, timeout_s=10)
        assert len(chart.buffers["output tok/s"]) == 3


# -- issue 10 item 9: the target list keeps its cursor across refreshes and toggles ------------------


def _targets(*names: str) -> list[Target]:
    return [
        Target(name=name, base_url=f"http://127.0.0.1:{9 + i}", model="m", kind=TargetKind.VLLM)
        for i, name in enumerate(names)
    ]


@pytest.mark.parametrize("size", [(160, 45), (100, 30)], ids=["160x45", "100x30"])
async def test_the_target_list_keeps_its_cursor_across_refreshes(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    from textual.widgets import SelectionList

    from tui.messages import TargetsChanged

    targets = _targets("alpha", "beta", "gamma")
    app = BenchHarness(AppContext(data_dir=tmp_path, targets=targets))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        screen = bench(app)
        picker = screen.query_one("#bench-targets", SelectionList)
        picker.focus()
        await pilot.press("down", "down")
        await pilot.pause()
        assert picker.highlighted is not None
        assert picker.get_option_at_index(picker.highlighted).value == "beta"
        screen.post_message(TargetsChanged(targets, None))  # a health check refreshed the list
        await pilot.pause()
        await pilot.press("space")
        await pilot.pause()
        assert picker.selected == ["beta"]
        await pilot.press("down")  # gamma; a refresh after a toggle keeps the cursor there too
        screen.post_message(TargetsChanged(targets, None))
        await pilot.pause()
        await pilot.press("space")
        await pilot.pause()
        assert picker.selected == ["beta", "gamma"]
        # A new target listed first: the cursor stays on the target it was on, ticks are kept.
        screen.post_message(TargetsChanged(_targets("new", "alpha", "beta", "gamma"), None))
        await pilot.pause()
        await pilot.press("up", "space")
        await pilot.pause()
        assert sorted(picker.selected) == ["gamma"]


# -- issue 10 item 5: a run deleted in History leaves the Bench view --------------------------------


async def test_a_run_deleted_in_history_leaves_the_bench_view_and_its_export(tmp_path: Path) -> None:
    from tui.widgets.deploy.dialogs import ConfirmScreen

    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        kept, doomed = fixed_sweep("4xL4", "run4xl4", 3.0), fixed_sweep("1xH100", "runh100", 1.0)
        seed(tmp_path, (kept, None), (doomed, None))
        inject_finished_sweep(screen, [(kept, 4.0), (doomed, None)])
        await wait_until(pilot, lambda: not screen.running, timeout_s=10)
        assert [s.name for s in screen.query_one(SweepChart).series] == ["4xL4", "1xH100"]

        async def delete_in_history(run_id: str) -> None:
            app.switch_mode("history")
            await wait_until(pilot, lambda: bool(app.screen.query(RunsTable)), timeout_s=10)
            runs = app.screen.query_one(RunsTable)
            await wait_until(pilot, lambda: run_id in runs.summaries, timeout_s=10)
            runs.focus()
            runs.move_cursor(row=runs.get_row_index(run_id))
            await pilot.press("ctrl+d")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout_s=10)
            await pilot.press("y")
            await wait_until(pilot, lambda: run_id not in runs.summaries, timeout_s=10)
            app.switch_mode("bench")
            await wait_until(pilot, lambda: app.screen is screen, timeout_s=10)

        await delete_in_history("runh100")
        chart = screen.query_one(SweepChart)
        await wait_until(pilot, lambda: [s.name for s in chart.series] == ["4xL4"], timeout_s=10)
        assert screen.saved_run_ids == ["run4xl4"]
        assert "deleted in History: 1xH100" in static_text(screen, "#results-caption")
        assert screen.results.table.row_count == len(kept.levels)

        await delete_in_history("run4xl4")
        await wait_until(pilot, lambda: chart.series == [], timeout_s=10)
        assert screen.results.table.row_count == 0
        app.messages.clear()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not isinstance(app.screen, ExportDialog)
        (warning,) = [text for sev, text in app.messages if sev == "warning"]
        assert "deleted in History" in warning and "servedeck runs" not in warning


async def test_export_of_a_run_deleted_meanwhile_says_so_without_a_cli_hint(tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = bench(app)
        sweep = fixed_sweep("4xL4", "run4xl4", 3.0)
        seed(tmp_path, (sweep, None))
        inject_finished_sweep(screen, [(sweep, 4.0)])
        await wait_until(pilot, lambda: not screen.running, timeout_s=10)
        with SessionStore.open(tmp_path) as store:  # deleted while the Bench view stayed open
            store.runs.delete_run("run4xl4")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportDialog), timeout_s=10)
        app.screen.query_one("#export-folder", Input).value = str(tmp_path / "out")
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: any("deleted in History" in text for _, text in app.messages), timeout_s=20
        )
        assert not any("servedeck runs" in text for _, text in app.messages)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
        await wait_until(pilot, lambda: screen.query_one(SweepChart).series == [], timeout_s=10)


async def test_ticked_targets_look_ticked(tmp_path: Path) -> None:
    from textual.widgets import SelectionList

    app = BenchHarness(AppContext(data_dir=tmp_path, targets=_targets("alpha", "beta")))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        picker = bench(app).query_one("#bench-targets", SelectionList)
        picker.select("beta")
        picker.focus()
        await pilot.pause()

        def button_background(row: int) -> object:
            (tick,) = [segment for segment in picker.render_line(row) if segment.text == "X"]
            assert tick.style is not None
            return tick.style.bgcolor

        assert button_background(1) != button_background(0)  # the ticked box is filled
