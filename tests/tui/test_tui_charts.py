"""The sweep, cost, overlay and live charts as an audience reads them (Pilot at 160x45 and 100x30).

Each test reads the picture a chart draws (characters and their colours), not its data: bars are
columns of block glyphs, lines are braille dots, markers are dots; the frame is box-drawing glyphs.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.style import Style
from rich.text import Text
from textual.widgets import Input

from backends.bench.models import ProgressSnapshot
from backends.bench.results import RunStatus
from backends.target_types import ServerSnapshot
from tests.tui.test_tui_bench import (
    BenchHarness,
    bench,
    fixed_level,
    fixed_sweep,
    inject_finished_sweep,
    seed,
    wait_until,
)
from tui.context import AppContext
from tui.messages import SweepHostEvent
from tui.screens.bench import BenchScreen
from tui.services.sweep_host import HostLevelBegan, HostLevelDone, HostSample, HostStarted
from tui.widgets.bench.export import ExportDialog
from tui.widgets.bench.sweep_chart import CostChart, SweepChart
from tui.widgets.charts import LiveChart, level_segments, segment_points

pytestmark = pytest.mark.anyio

SIZES = [(160, 45), (100, 30)]
BAR_GLYPHS = set("▁▂▃▄▅▆▇█▒")
EIGHTHS = {"▁": 1, "▂": 2, "▃": 3, "▄": 4, "▅": 5, "▆": 6, "▇": 7, "█": 8, "▒": 8}
FRAME_GLYPHS = set("│┤├┼")
MARKERS = set("•●")

Cell = tuple[str, Style]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_DATA_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    yield


def is_braille(ch: str) -> bool:
    return "\u2801" <= ch <= "\u28ff"


def picture(chart: LiveChart) -> list[list[Cell]]:
    """The chart's picture at its size on screen: rows of (character, style)."""
    chart.redraw_now()
    rendered = chart.render()
    assert isinstance(rendered, Text)
    console = Console(width=1000, color_system="truecolor", legacy_windows=False)
    rows = []
    for line in rendered.split("\n", allow_blank=True):
        row: list[Cell] = []
        for segment in line.render(console):
            row.extend((ch, segment.style or Style()) for ch in segment.text)
        rows.append(row)
    return rows


def plain(rows: list[list[Cell]]) -> list[str]:
    return ["".join(ch for ch, _ in row) for row in rows]


def plot_rows(rows: list[list[Cell]]) -> list[int]:
    """Rows inside the frame: those with a y-axis glyph."""
    return [i for i, line in enumerate(plain(rows)) if any(ch in FRAME_GLYPHS for ch in line)]


def bars(rows: list[list[Cell]]) -> list[tuple[int, int, str, float]]:
    """Each bar, left to right: (first column, width, colour, height in rows). A bar is a column run
    of one colour whose cells stack without a gap (anything drawn over a bar breaks it)."""
    columns: dict[int, tuple[str, float, list[int]]] = {}
    for y in plot_rows(rows):
        for x, (ch, style) in enumerate(rows[y]):
            if ch in BAR_GLYPHS and style.color is not None:  # in the frame: not the legend's swatches
                colour, height, ys = columns.get(x, (style.color.name, 0.0, []))
                columns[x] = (colour, height + EIGHTHS[ch] / 8, [*ys, y])
    for x, (_, _, ys) in columns.items():
        assert ys == list(range(ys[0], ys[0] + len(ys))), f"column {x} of a bar is covered: rows {ys}"
    out: list[tuple[int, int, str, float]] = []
    for x in sorted(columns):
        colour, height, _ = columns[x]
        if out and out[-1][0] + out[-1][1] == x and out[-1][2] == colour:
            first, width, _, tallest = out[-1]
            out[-1] = (first, width + 1, colour, max(tallest, height))
        else:
            out.append((x, 1, colour, height))
    return out


# -- 1 and 6: p99 TTFT is drawn apart from the bars, in ms ------------------------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_p99_ttft_never_crosses_the_bars_and_reads_in_ms(tmp_path: Path, size: tuple[int, int]) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        screen = bench(app)
        inject_finished_sweep(
            screen,
            [(fixed_sweep("4xL4", "run4xl4", 3.0), 8.0), (fixed_sweep("1xH100", "runh100", 1.0), 11.0)],
        )
        await wait_until(pilot, lambda: not screen.running, timeout_s=10)
        rows = picture(screen.query_one(SweepChart))
        text = plain(rows)
        for line in (text[i] for i in plot_rows(rows)):
            has_bar = any(ch in BAR_GLYPHS for ch in line)
            has_line = any(is_braille(ch) or ch in MARKERS for ch in line)
            assert not (has_bar and has_line), f"latency drawn across the bars: {line!r}"
        assert any(is_braille(ch) or ch in MARKERS for line in text for ch in line)  # the latency is drawn
        joined = "\n".join(text)
        assert "ms" in joined and "TTFT s" not in joined
        # 4xL4's p99 TTFT at concurrency 4 is 600 ms: an axis in ms reaches at least 600, not 0.60
        assert not re.search(r"\b0\.\d+\b", joined)
        assert max(int(n) for n in re.findall(r"\b\d+\b", joined)) >= 600


# -- 2: legends sit outside the plot ----------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_legends_never_cover_the_plot(tmp_path: Path, size: tuple[int, int]) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        screen = bench(app)
        inject_finished_sweep(
            screen,
            [(fixed_sweep("4xL4", "run4xl4", 3.0), 8.0), (fixed_sweep("1xH100", "runh100", 1.0), 11.0)],
        )
        await wait_until(pilot, lambda: not screen.running, timeout_s=10)
        for chart in (screen.query_one(SweepChart), screen.query_one(CostChart)):
            rows = picture(chart)
            text = plain(rows)
            inside = plot_rows(rows)
            assert inside, "the chart has a frame"
            assert any("4xL4" in text[i] for i in range(inside[0])), "the legend names each run"
            for i in inside:
                assert "4xL4" not in text[i] and "1xH100" not in text[i], f"legend in the plot: {text[i]!r}"

        screen.show_tab("bench-live")
        live_two_levels(screen)
        await pilot.pause()
        live = screen.query_one("#live-requests", LiveChart)
        await wait_until(pilot, lambda: not live.dirty, timeout_s=10)
        rows = picture(live)
        text = plain(rows)
        inside = plot_rows(rows)
        assert any("waiting" in text[i] for i in range(inside[0]))
        for i in inside:
            assert not any(name in text[i] for name in ("in flight", "running", "waiting")), text[i]
        swatches = {style.color for row in rows[: inside[0]] for ch, style in row if ch == "━"}
        drawn = {style.color for i in inside for ch, style in rows[i] if is_braille(ch)}
        assert drawn and drawn <= swatches, "each line is drawn in its legend colour"


# -- 3 and 7: live lines stay in their frame; each level gets its share of the width -----------------


def live_snapshot(t: float, tokens_per_s: float) -> ProgressSnapshot:
    return ProgressSnapshot(
        level_index=0,
        level_label="concurrency 1",
        t=t,
        total=10,
        sent=8,
        completed=6,
        failed=0,
        in_flight=4,
        output_tokens_per_s=tokens_per_s,
        server=ServerSnapshot(t=t, source="twin", running=4, waiting=int(t) % 3, kv_cache_usage=0.3),
    )


def live_two_levels(screen: BenchScreen) -> None:
    """A 12 s first level at 100 tok/s, then a 288 s second level at 400 tok/s."""
    sweep = fixed_sweep("twin", "runlive", 1.0)
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
                    snapshot=live_snapshot(float(i), 100.0),
                    ttft_points=[(float(i), 40.0)],
                )
            )
        )
    screen.post_message(SweepHostEvent(HostLevelDone(run_index=0, result=sweep.levels[0])))
    screen.post_message(
        SweepHostEvent(
            HostLevelBegan(run_index=0, level_index=1, level=sweep.levels[1].level, total=10, x=12.0)
        )
    )
    for i in range(12, 300):
        screen.post_message(
            SweepHostEvent(
                HostSample(
                    run_index=0,
                    x=float(i),
                    snapshot=live_snapshot(float(i), 400.0),
                    ttft_points=[(float(i), 120.0)],
                )
            )
        )


async def live_bench(app: BenchHarness, pilot: Any) -> BenchScreen:
    await pilot.pause()
    screen = bench(app)
    from tui.screens.bench import _RunState
    from tui.services.bench_config import PlannedRun

    screen._runs = [_RunState(planned=PlannedRun(config=fixed_sweep("twin", "runlive", 1.0).config))]
    screen.show_tab("bench-live")
    live_two_levels(screen)
    await pilot.pause()
    for chart in screen.query(LiveChart):
        if chart.on_screen_now:
            await wait_until(pilot, lambda c=chart: not c.dirty, timeout_s=10)  # type: ignore[misc]
    return screen


@pytest.mark.parametrize("size", SIZES)
async def test_live_lines_stay_inside_their_frame(tmp_path: Path, size: tuple[int, int]) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=size) as pilot:
        screen = await live_bench(app, pilot)
        for chart_id in ("live-tokens", "live-requests", "live-kv", "live-ttft"):
            text = plain(picture(screen.query_one(f"#{chart_id}", LiveChart)))
            (top,) = [line for line in text if "┌" in line]
            assert set(top.strip()) <= set("┌─┐"), f"{chart_id}: a line crosses the top frame: {top!r}"
            (bottom,) = [line for line in text if "└" in line]
            assert "┴" not in bottom and "┼" not in bottom, (
                f"{chart_id}: a line crosses the x axis: {bottom!r}"
            )
            for line in text:
                if "│" in line or "┤" in line:
                    left = min(i for i, ch in enumerate(line) if ch in "│┤")
                    right = max(i for i, ch in enumerate(line) if ch in "│├")
                    outside = line[:left] + line[right + 1 :]
                    assert not any(is_braille(ch) or ch in MARKERS for ch in outside), f"{chart_id}: {line!r}"
        # the x range is the data's: the line starts at the frame's left edge and ends at its right edge
        rows = plain(picture(screen.query_one("#live-tokens", LiveChart)))
        data = [line for line in rows if ("│" in line or "┤" in line) and any(is_braille(ch) for ch in line)]
        lefts = [min(i for i, ch in enumerate(line) if ch in "│┤") for line in data]
        firsts = [min(i for i, ch in enumerate(line) if is_braille(ch)) for line in data]
        lasts = [max(i for i, ch in enumerate(line) if is_braille(ch)) for line in data]
        rights = [max(i for i, ch in enumerate(line) if ch in "│├") for line in data]
        assert min(firsts) - min(lefts) <= 2 and max(rights) - max(lasts) <= 2


@pytest.mark.parametrize("size", SIZES)
async def test_live_levels_each_get_their_share_of_the_width(tmp_path: Path, size: tuple[int, int]) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=size) as pilot:
        screen = await live_bench(app, pilot)
        rows = plain(picture(screen.query_one("#live-tokens", LiveChart)))
        data = [line for line in rows if any(is_braille(ch) for ch in line)]
        low = data[-1]  # the 100 tok/s level is the lowest line
        high = data[0]
        frame = next(line for line in rows if "┌" in line)
        width = frame.index("┐") - frame.index("┌")
        low_columns = sum(1 for ch in low if is_braille(ch))
        high_columns = sum(1 for ch in high if is_braille(ch))
        # two levels: each about half the plot, however long each took in wall time (12 s vs 288 s)
        assert low_columns >= 0.35 * width, (low, high)
        assert high_columns >= 0.35 * width, (low, high)


# -- 4: every run's bars visible in the History overlay ----------------------------------------------


def history_app(tmp_path: Path) -> BenchHarness:
    seed(
        tmp_path / "data",
        (fixed_sweep("twin-4xL4", "aaaa1111bbbb", 3.0), "4xL4"),
        (fixed_sweep("twin-1xH100", "cccc2222dddd", 1.0), "1xH100"),
        (fixed_sweep("twin-2xH100", "eeee3333ffff", 0.6), "2xH100"),
    )
    return BenchHarness(AppContext(data_dir=tmp_path / "data"), mode="history")


@pytest.mark.parametrize("size", SIZES)
async def test_overlay_of_three_runs_shows_every_bar_at_its_height(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    app = history_app(tmp_path)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.press("space", "down", "space", "down", "space")
        chart = app.screen.query_one("#overlay-sweep-chart", SweepChart)
        await wait_until(pilot, lambda: len(chart.series) == 3, timeout_s=20)
        await wait_until(pilot, lambda: not chart.dirty, timeout_s=10)
        found = bars(picture(chart))
        series = chart.series
        values = [p.total_tokens_per_s for level in range(2) for s in series for p in [s.points[level]]]
        assert len(found) == len(values), found  # one bar per run and level, none hidden
        colours = [colour for _, _, colour, _ in found]
        assert len(set(colours)) == 3 and colours[:3] == colours[3:]
        tallest = max(height for *_, height in found)
        top = max(values)
        for (_, _, _, height), value in zip(found, values, strict=True):
            assert abs(height / tallest - value / top) <= 0.2, (found, values)


# -- 5: a one-level partial run is one narrow bar, marked partial ------------------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_a_one_level_partial_run_is_a_narrow_marked_bar(tmp_path: Path, size: tuple[int, int]) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        screen = bench(app)
        sweep = fixed_sweep("twin-1xH100", "runpart", 1.0)
        level = fixed_level(0, 1, 0.05, 0.01).model_copy(update={"status": RunStatus.PARTIAL})
        sweep = sweep.model_copy(update={"levels": [level], "status": RunStatus.PARTIAL})
        inject_finished_sweep(screen, [(sweep, 11.0)])
        await wait_until(pilot, lambda: not screen.running, timeout_s=10)
        chart = screen.query_one(SweepChart)
        rows = picture(chart)
        (bar,) = bars(rows)
        assert bar[1] <= chart.size.width // 4, f"one bar spans {bar[1]} of {chart.size.width} columns"
        assert "partial" in "\n".join(plain(rows))


# -- 8: the exported SVG is a clean chart, not a screenshot -----------------------------------------


def svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return ["".join(node.itertext()).strip() for node in root.iter() if node.tag.endswith("}text")]


async def test_export_writes_a_clean_chart_not_a_screenshot(tmp_path: Path) -> None:
    app = BenchHarness(AppContext(data_dir=tmp_path))
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        screen = bench(app)
        l4 = fixed_sweep("4xL4", "run4xl4", 3.0)
        h100 = fixed_sweep("1xH100", "runh100", 1.0)
        seed(tmp_path, (l4, None), (h100, None))
        inject_finished_sweep(screen, [(l4, 4.0), (h100, None)])
        await wait_until(pilot, lambda: not screen.running, timeout_s=10)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportDialog), timeout_s=10)
        folder = tmp_path / "out"
        app.screen.query_one("#export-folder", Input).value = str(folder)
        await pilot.press("enter")
        svg = folder / "servedeck-run4xl4-4xL4.svg"
        await wait_until(pilot, lambda: svg.exists(), timeout_s=20)
        texts = svg_texts(svg)
        joined = "\n".join(texts)
        assert any(t.startswith("Throughput and p99 TTFT") for t in texts), texts
        assert "total tokens/s" in texts and "p99 TTFT (ms)" in texts
        assert any(t.startswith("concurrency") for t in texts)
        assert "4xL4" in texts and "1xH100" in texts  # legend entries, one per run
        for chrome in ("ctrl+", "export", "Setup", "Live", "History"):
            assert chrome not in joined, f"UI chrome {chrome!r} in the exported chart"


# -- the level-relative x axis, pure -----------------------------------------------------------------


def test_each_level_maps_onto_its_own_unit_of_x_in_and_out_of_time_order() -> None:
    segments = level_segments([0.0, 10.0], 110.0)  # a 10 s level, then a 100 s one still running
    assert segments == [(0.0, 10.0), (10.0, 110.0)]
    xs = [0.0, 5.0, 10.0, 60.0, 110.0]
    ys = [1.0, 2.0, 3.0, 4.0, 5.0]
    in_order = segment_points(xs, ys, segments, 64, "line")
    assert in_order == ([0.0, 0.5, 1.0, 1.5, 2.0], ys)
    shuffled = segment_points(xs[::-1], ys[::-1], segments, 64, "scatter")
    assert sorted(zip(*shuffled, strict=True)) == sorted(zip(*in_order, strict=True))
    # downsampled per level: the short level keeps its share of the points
    many = [float(i) / 10 for i in range(100)] + [10.0 + i for i in range(1000)]
    px, _ = segment_points(many, [1.0] * len(many), level_segments([0.0, 10.0], many[-1]), 40, "line")
    assert sum(1 for x in px if x < 1.0) == 20 and len(px) == 40
