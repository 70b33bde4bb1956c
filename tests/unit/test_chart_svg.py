"""The exported sweep chart (backends/bench/chart_svg.py): a well-formed SVG with a title, axes with
units and a legend, drawn from saved results only (no terminal UI)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from backends.bench.chart_svg import sweep_chart_svg, sweep_svg_for_results
from backends.bench.results import RunStatus, SweepResult
from backends.telemetry.models import LevelGpuTelemetry
from tests.tui.test_tui_bench import fixed_level, fixed_sweep

SVG = "{http://www.w3.org/2000/svg}"


def texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return ["".join(node.itertext()).strip() for node in root.iter(f"{SVG}text")]


def test_two_priced_runs_with_a_partial_level() -> None:
    l4 = fixed_sweep("twin-4xL4", "a", 3.0)
    l4 = l4.model_copy(update={"config": l4.config.model_copy(update={"usd_per_hour": 4.0})})
    h100 = fixed_sweep("twin-1xH100", "b", 1.0)
    partial = fixed_level(2, 16, 0.5, 0.03).model_copy(update={"status": RunStatus.PARTIAL})
    h100 = h100.model_copy(update={"levels": [*h100.levels, partial]})
    svg = sweep_svg_for_results([l4, h100], names=["4xL4 <lab>", "1xH100"])
    found = texts(svg)
    assert found[0] == "Throughput and p99 TTFT by concurrency"
    assert {"total tokens/s", "p99 TTFT (ms)", "$ per 1M tokens", "$ / 1M tokens"} <= set(found)
    assert "4xL4 <lab>" in found and "1xH100" in found  # legend entries, text escaped
    assert "partial level" in found
    assert [t for t in found if t in {"1", "4*", "16†"}][:3] == ["1", "4*", "16†"]
    assert any(t.startswith("concurrency (requests in flight)") and "† partial level" in t for t in found)
    root = ET.fromstring(svg)
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("height") not in (None, "12") and r.get("x")]
    assert len([r for r in bars if r.get("fill", "").startswith("#")]) == 5  # 2 + 3 levels
    # the 600 ms p99 TTFT of 4xL4 at concurrency 4 reads on a ms axis: its top tick is above 600
    ticks = [float(t) for t in found if t.replace(".", "").isdigit()]
    assert max(ticks) >= 600


def test_unpriced_runs_have_no_cost_panel_and_no_runs_say_so() -> None:
    found = texts(sweep_svg_for_results([fixed_sweep("twin-4xL4", "a", 3.0)]))
    assert "$ per 1M tokens" not in found and "twin-4xL4" in found
    assert "no finished levels to chart" in texts(sweep_chart_svg([]))


def _with_energy(sweep: SweepResult, kj: list[float | None]) -> SweepResult:
    levels = [
        level
        if value is None
        else level.model_copy(update={"gpu": LevelGpuTelemetry(kj_per_1m_output_tokens=value)})
        for level, value in zip(sweep.levels, kj, strict=True)
    ]
    return sweep.model_copy(update={"levels": levels})


def _panel_points(svg: str, title: str, next_title: str | None) -> list[float]:
    """The y of each marker between a panel's title and the next panel's (or the end)."""
    root = ET.fromstring(svg)
    y_of = {"".join(t.itertext()): float(t.get("y", "0")) for t in root.iter(f"{SVG}text")}
    top, bottom = y_of[title], y_of[next_title] if next_title else float(root.get("height", "0"))
    return [
        float(c.get("cy", "0")) for c in root.iter(f"{SVG}circle") if top < float(c.get("cy", "0")) < bottom
    ]


def test_levels_with_energy_draw_the_kj_per_1m_output_tokens_panel() -> None:
    l4 = fixed_sweep("twin-4xL4", "a", 3.0)
    l4 = l4.model_copy(update={"config": l4.config.model_copy(update={"usd_per_hour": 4.0})})
    l4 = _with_energy(l4, [900.0, 300.0])
    plain = fixed_sweep("twin-1xH100", "b", 1.0)  # no GPU telemetry: no line in the energy panel
    svg = sweep_svg_for_results([l4, plain])
    found = texts(svg)
    assert {"$ per 1M tokens", "GPU energy per 1M output tokens", "kJ / 1M output tokens"} <= set(found)
    assert any("$ per 1M tokens and GPU energy per 1M output tokens (lower panels)" in t for t in found)
    energy = _panel_points(svg, "GPU energy per 1M output tokens", None)
    assert len(energy) == 2 and energy[0] < energy[1]  # 900 kJ drawn above 300 kJ
    assert len(_panel_points(svg, "$ per 1M tokens", "GPU energy per 1M output tokens")) == 2
    # the energy axis reaches the highest level's kJ: 0 .. 1k in four ticks
    assert {"250", "500", "750", "1k"} <= set(found)


def test_energy_without_a_price_is_the_only_lower_panel() -> None:
    sweep = _with_energy(fixed_sweep("twin-4xL4", "a", 3.0), [None, 120.0])
    found = texts(sweep_svg_for_results([sweep]))
    assert "GPU energy per 1M output tokens" in found and "$ per 1M tokens" not in found
    assert any("dashed: GPU energy per 1M output tokens (lower panel)" in t for t in found)
    assert "GPU energy per 1M output tokens" not in texts(sweep_svg_for_results([fixed_sweep("x", "b", 1.0)]))
