"""The sweep chart as a standalone SVG (pure Python, no UI): what an export or a slide shows.

Throughput bars per level (one colour per run) on the left axis (tok/s), p99 TTFT as a line with
markers over each run's bars on the right axis (ms, as in the level table), and, where a run has a
price, a panel of $ per 1M tokens beneath, and where a run read GPU telemetry, a panel of GPU energy
in kJ per 1M output tokens under that. Title, axis titles with units and a legend; nothing of the
terminal UI. ``sweep_chart_svg`` draws series; ``sweep_svg_for_results`` draws saved sweep results.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

from backends.bench.chart_data import (
    SeriesColors,
    SweepPoint,
    SweepSeries,
    axis_short,
    categories,
    category_labels,
    format_tick,
    marks_note,
    nice_ceiling,
    series_colors,
    series_from_results,
    x_title,
)
from backends.bench.results import SweepResult

WIDTH = 960
MAIN_HEIGHT = 300
COST_HEIGHT = 150
LEFT = 90
RIGHT = 90
TOP = 96
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
INK = "#222222"
MUTED = "#666666"
GRID = "#e3e3e3"
MAX_BAR_PX = 56.0
TICKS = 4
HEADROOM = 1.06  # the highest marker sits below the top edge, not on it


def _on_white(colors: SeriesColors, count: int) -> SeriesColors:
    """Several runs: each run's lines in its bar colour (the light shades vanish on white)."""
    return colors if count == 1 else SeriesColors(colors.bar, colors.bar, colors.bar)


def sweep_svg_for_results(
    results: Sequence[SweepResult], names: Sequence[str] | None = None, title: str | None = None
) -> str:
    """The chart of saved sweeps, one series per result, priced at what each run recorded."""
    return sweep_chart_svg(series_from_results(results, names), title=title)


def _text(
    x: float, y: float, text: str, *, size: int = 12, anchor: str = "middle", fill: str = INK, **attrs: str
) -> str:
    extra = "".join(f" {key.replace('_', '-')}={quoteattr(value)}" for key, value in attrs.items())
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}"{extra}>'
        f"{escape(text)}</text>"
    )


def _axis(
    out: list[str], *, x: float, y0: float, height: float, top: float, side: str, title: str, plot_w: float
) -> None:
    """Ticks, numbers and the rotated title of one y axis; grid lines for the left one."""
    for i in range(TICKS + 1):
        value = top * i / TICKS
        y = y0 + height - height * i / TICKS
        if side == "left":
            out.append(
                f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + plot_w:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            )
            out.append(_text(x - 8, y + 4, format_tick(value), size=11, anchor="end"))
        else:
            out.append(_text(x + 8, y + 4, format_tick(value), size=11, anchor="start"))
    tx = x - 58 if side == "left" else x + 58
    ty = y0 + height / 2
    out.append(_text(tx, ty, title, size=12, transform=f"rotate(-90 {tx:.1f} {ty:.1f})"))
    out.append(f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y0 + height:.1f}" stroke="{MUTED}"/>')


def sweep_chart_svg(series: Sequence[SweepSeries], *, title: str | None = None) -> str:
    """An SVG document of the sweep chart for ``series`` (runs with no finished level are left out)."""
    shown = [s for s in series if s.points]
    axis = shown[0].axis if shown else None
    heading = title or (
        f"Throughput and p99 TTFT by {axis_short(axis)}" if axis is not None else "Throughput and p99 TTFT"
    )
    priced = [s for s in shown if any(p.usd_per_million is not None for p in s.points)]
    metered = [s for s in shown if any(p.kj_per_million is not None for p in s.points)]
    panels = [
        panel
        for panel in (
            ("$ per 1M tokens", "$ / 1M tokens", _usd, priced),
            ("GPU energy per 1M output tokens", "kJ / 1M output tokens", _kj, metered),
        )
        if panel[3]
    ]
    height = TOP + MAIN_HEIGHT + 70
    if panels:
        height += 60 + len(panels) * COST_HEIGHT + (len(panels) - 1) * 80
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="{FONT}">',
        f"<title>{escape(heading)}</title>",
        '<defs><pattern id="partial" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#ffffff" fill-opacity="0.55"/>'
        "</pattern></defs>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        _text(WIDTH / 2, 32, heading, size=18, font_weight="bold"),
    ]
    if not shown:
        out.append(_text(WIDTH / 2, TOP + MAIN_HEIGHT / 2, "no finished levels to chart", size=14))
        out.append("</svg>")
        return "\n".join(out) + "\n"

    values = categories(shown)
    labels = category_labels(shown, values)
    colors = [_on_white(series_colors(i, len(shown)), len(shown)) for i in range(len(shown))]
    plot_w = WIDTH - LEFT - RIGHT
    slot = plot_w / len(values)
    bar_w = min(MAX_BAR_PX, slot * 0.7 / len(shown))

    def bar_x(group: int, member: int) -> float:
        return LEFT + (group + 0.5) * slot - bar_w * len(shown) / 2 + member * bar_w

    _legend(out, shown, colors, [s for s in shown if s in priced or s in metered], [p[0] for p in panels])

    tok_top = nice_ceiling(
        HEADROOM * max((p.total_tokens_per_s for s in shown for p in s.points), default=0.0)
    )
    ttft = [p.p99_ttft_ms for s in shown for p in s.points if p.p99_ttft_ms is not None]
    ttft_top = nice_ceiling(HEADROOM * max(ttft, default=0.0))
    y0 = float(TOP)
    _axis(
        out,
        x=LEFT,
        y0=y0,
        height=MAIN_HEIGHT,
        top=tok_top,
        side="left",
        title="total tokens/s",
        plot_w=plot_w,
    )
    _axis(
        out,
        x=LEFT + plot_w,
        y0=y0,
        height=MAIN_HEIGHT,
        top=ttft_top,
        side="right",
        title="p99 TTFT (ms)",
        plot_w=0,
    )
    for member, (s, color) in enumerate(zip(shown, colors, strict=True)):
        by_value = {p.value: p for p in s.points}
        for group, value in enumerate(values):
            point = by_value.get(value)
            if point is None:
                continue
            h = MAIN_HEIGHT * point.total_tokens_per_s / tok_top
            x = bar_x(group, member)
            attrs = f'x="{x:.1f}" y="{y0 + MAIN_HEIGHT - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}"'
            out.append(f'<rect {attrs} fill="{color.bar}"/>')
            if point.partial:
                out.append(
                    f'<rect {attrs} fill="url(#partial)" stroke="{color.bar}" stroke-dasharray="3 2"/>'
                )
    for member, (s, color) in enumerate(zip(shown, colors, strict=True)):
        by_value = {p.value: p for p in s.points}
        pts = [
            (bar_x(g, member) + bar_w / 2, y0 + MAIN_HEIGHT - MAIN_HEIGHT * p.p99_ttft_ms / ttft_top)
            for g, v in enumerate(values)
            if (p := by_value.get(v)) is not None and p.p99_ttft_ms is not None
        ]
        _polyline(out, pts, color.line)
    base = y0 + MAIN_HEIGHT
    out.append(
        f'<line x1="{LEFT}" y1="{base:.1f}" x2="{LEFT + plot_w:.1f}" y2="{base:.1f}" stroke="{MUTED}"/>'
    )
    for group, label in enumerate(labels):
        out.append(_text(LEFT + (group + 0.5) * slot, base + 18, label, size=12))
    note = marks_note(shown)
    out.append(_text(LEFT + plot_w / 2, base + 40, x_title(shown) + (f"   {note}" if note else ""), size=12))

    for index, (panel_title, axis_label, metric, drawn) in enumerate(panels):
        c0 = base + 80 + index * (COST_HEIGHT + 80)
        top = nice_ceiling(HEADROOM * max((metric(p) or 0.0 for s in drawn for p in s.points), default=0.0))
        out.append(_text(LEFT, c0 - 10, panel_title, size=13, anchor="start", font_weight="bold"))
        _axis(out, x=LEFT, y0=c0, height=COST_HEIGHT, top=top, side="left", title=axis_label, plot_w=plot_w)
        for member, (s, color) in enumerate(zip(shown, colors, strict=True)):
            if s not in drawn:
                continue
            by_value = {p.value: p for p in s.points}
            pts = [
                (bar_x(g, member) + bar_w / 2, c0 + COST_HEIGHT - COST_HEIGHT * y / top)
                for g, v in enumerate(values)
                if (p := by_value.get(v)) is not None and (y := metric(p)) is not None
            ]
            _polyline(out, pts, color.cost, dash=True)
        cb = c0 + COST_HEIGHT
        out.append(
            f'<line x1="{LEFT}" y1="{cb:.1f}" x2="{LEFT + plot_w:.1f}" y2="{cb:.1f}" stroke="{MUTED}"/>'
        )
        for group, label in enumerate(labels):
            out.append(_text(LEFT + (group + 0.5) * slot, cb + 18, label, size=12))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _usd(point: SweepPoint) -> float | None:
    return point.usd_per_million


def _kj(point: SweepPoint) -> float | None:
    return point.kj_per_million


def _polyline(out: list[str], pts: Sequence[tuple[float, float]], color: str, *, dash: bool = False) -> None:
    if len(pts) > 1:
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        style = ' stroke-dasharray="6 3"' if dash else ""
        # A white halo under the line: it stays readable where it crosses a bar of its own colour.
        out.append(f'<polyline points="{coords}" fill="none" stroke="#ffffff" stroke-width="6"/>')
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2.5"{style}/>')
    for x, y in pts:
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color}" stroke="#ffffff" stroke-width="2"/>'
        )


def _legend(
    out: list[str],
    shown: Sequence[SweepSeries],
    colors: Sequence[SeriesColors],
    priced: Sequence[SweepSeries],
    panel_titles: Sequence[str],
) -> None:
    """One entry per run (its bar swatch, its p99 TTFT line), then what the hatch and marks mean."""
    entries: list[tuple[str, list[str]]] = []
    for s, color in zip(shown, colors, strict=True):
        bar, line, cost = color
        glyphs = [
            f'<rect x="0" y="-10" width="14" height="12" fill="{bar}"/>',
            f'<line x1="18" y1="-4" x2="34" y2="-4" stroke="{line}" stroke-width="2.5"/>'
            f'<circle cx="26" cy="-4" r="3.5" fill="{line}"/>',
        ]
        if s in priced:
            glyphs.append(
                f'<line x1="38" y1="-4" x2="50" y2="-4" stroke="{cost}" stroke-width="2.5" '
                'stroke-dasharray="4 2"/>'
            )
        entries.append((s.name, glyphs))
    if any(p.partial for s in shown for p in s.points):
        entries.append(
            (
                "partial level",
                [
                    '<rect x="0" y="-10" width="14" height="12" fill="#999999"/>'
                    '<rect x="0" y="-10" width="14" height="12" fill="url(#partial)"/>'
                ],
            )
        )
    offsets = [20 + 18 * (len(g) - 1) for _, g in entries]
    widths = [offset + 7 * len(name) + 24 for offset, (name, _) in zip(offsets, entries, strict=True)]
    x = max(LEFT, (WIDTH - sum(widths)) / 2)
    y = 62.0
    for (name, glyphs), w, offset in zip(entries, widths, offsets, strict=True):
        out.append(f'<g transform="translate({x:.1f} {y:.1f})">{"".join(glyphs)}</g>')
        out.append(_text(x + offset, y, name, size=12, anchor="start"))
        x += w
    out.append(
        _text(
            WIDTH / 2,
            y + 20,
            "bars: total tokens/s (left axis) · line: p99 TTFT in ms (right axis)"
            + (f" · dashed: {' and '.join(panel_titles)} (lower panels)" if len(panel_titles) > 1 else "")
            + (f" · dashed: {panel_titles[0]} (lower panel)" if len(panel_titles) == 1 else ""),
            size=11,
            fill=MUTED,
        )
    )
