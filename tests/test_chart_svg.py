"""The exported sweep chart (backends/bench/chart_svg.py): a well-formed SVG with a title, axes with
units and a legend, drawn from saved results only (no terminal UI)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from backends.bench.chart_svg import sweep_chart_svg, sweep_svg_for_results
from backends.bench.results import RunStatus
from tests.test_tui_bench import fixed_level, fixed_sweep

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
