"""Bench view benchmark: keypress-to-paint while a many-stream sweep runs, and chart redraw cost.

    python -m tests.benchmarks.bench_tui_bench [--levels 500,1000] [--prompts 5000] [--output-len 256]
                                               [--idle-s 8] [--server twin|fake]
                                               [--json /tmp/bench_tui_bench.json]

Method. The target runs in its own process: by default a live vLLM twin (Gemma 3 1B on one H100,
``max_num_seqs`` 1024, so 1000 streams are all running and KV-cache, running and waiting come from
its /metrics), or with ``--server fake`` the fake SSE server (tests/fakes/sse_server.py). The Bench view runs
in a headless Textual app at 120x40 (``run_test``), exactly as in the app: the sweep runs in the
sweep-host process (with its own load-generator process) and saves to History; the UI process gets
coalesced events. Keys are posted to the app the way the terminal driver posts them, one every
250 ms (the next only after the previous one painted), in three phases:

1. no sweep, Live tab, synthetic progress samples posted at 4 Hz (all four live charts busy):
   ``f9`` flips a one-character probe label mounted on the Bench screen, the cheapest visible change;
2. no sweep: ``ctrl+t`` cycles Setup -> Live -> Sweep (a whole tab swapped in) and a character is
   typed into the label field on Setup;
3. the sweep: during level 1 (500 streams) the Live tab shows and probe keys are timed; during
   level 2 (1000 streams) the keys of phase 2.

Keypress-to-paint = from posting the key to the end of the first frame that shows its effect: the
compositor update rendered to ANSI bytes for a 120x40 terminal (headless Textual skips the write, so
the benchmark renders the frame itself; the terminal's own drawing is not included). Also measured:
every chart redraw (plot setup + plotext build, the charts' own counters), each live chart's redraws
per second while on screen, garbage-collector pauses and the UI event loop's lag (a 20 ms sleeper's
overshoot) in the UI process, its CPU during the sweep, and what the sweep itself reached.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from textual import events
from textual.screen import Screen
from textual.widgets import Input, Select, Static, TabbedContent

import tui.app
from backends.bench.models import ProgressSnapshot
from backends.target_types import ServerSnapshot, Target
from backends.targets import discover_target
from backends.twin.engine_config import TwinConfig
from backends.twin.process import start_twin_process
from tests.fakes.sse_server import start_in_process, stop_process
from tui.app import VIEWS, ServeDeckApp
from tui.context import AppContext
from tui.messages import SweepHostEvent
from tui.screens.bench import BenchScreen
from tui.services.sweep_host import HostSample
from tui.widgets.bench.live import LiveCharts
from tui.widgets.bench.results import SweepResultsPanel
from tui.widgets.charts import LiveChart

SIZE = (120, 40)
KEY_INTERVAL_S = 0.25
LOST_AFTER_S = 5.0
LAG_INTERVAL_S = 0.02
GOAL_KEY_TO_PAINT_MS = 100.0
GOAL_REDRAW_HZ = (2.0, 4.0)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


class TimedHarness(ServeDeckApp):
    """The app with its Bench and History views (nothing started in the background), rendering every
    frame to bytes (as a terminal driver would) and timestamping frames for probes."""

    # Textual reads a relative CSS_PATH next to the subclass's module: point at the app's own.
    CSS_PATH = str(Path(tui.app.__file__).with_name("app.tcss"))

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(
            ctx,
            start_local_engine=False,
            show_welcome=False,
            check_health=False,
            discover_cluster=False,
            views=[view for view in VIEWS if view.mode in ("bench", "history")],
        )
        self.frame_console = Console(
            width=SIZE[0], height=SIZE[1], file=io.StringIO(), force_terminal=True, color_system="truecolor"
        )
        self.waiting: tuple[float, Callable[[], bool], str] | None = None
        self.samples: dict[str, list[float]] = {}
        self.frame_ms: list[float] = []

    def _display(self, screen: Screen[Any], renderable: RenderableType | None) -> None:
        if renderable is not None:
            started = time.perf_counter()
            self.frame_console.file = io.StringIO()
            self.frame_console.print(renderable, end="")
            done = time.perf_counter()
            self.frame_ms.append((done - started) * 1000.0)
            if self.waiting is not None:
                posted, shows_effect, kind = self.waiting
                if shows_effect():
                    self.samples.setdefault(kind, []).append((done - posted) * 1000.0)
                    self.waiting = None
        super()._display(screen, renderable)

    def press_and_time(
        self, key: str, character: str | None, shows_effect: Callable[[], bool], kind: str
    ) -> None:
        self.waiting = (time.perf_counter(), shows_effect, kind)
        self.post_message(events.Key(key, character))


class GcPauses:
    """Collector pauses in this process (any thread's collection stops every thread)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.phase = "idle"
        self.pauses_ms: dict[str, list[float]] = {}

    def __call__(self, event: str, info: dict[str, int]) -> None:
        if event == "start":
            self.started = time.perf_counter()
        else:
            key = f"gen{info['generation']} {self.phase}"
            self.pauses_ms.setdefault(key, []).append((time.perf_counter() - self.started) * 1000.0)


async def lag_probe(stop: asyncio.Event, lags_ms: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(LAG_INTERVAL_S)
        lags_ms.append((time.perf_counter() - started - LAG_INTERVAL_S) * 1000.0)


class KeyDriver:
    """Posts one key every ``KEY_INTERVAL_S`` (after the previous one painted) and times it."""

    def __init__(self, app: TimedHarness, screen: BenchScreen, probe: Static) -> None:
        self.app = app
        self.screen = screen
        self.probe = probe
        self.probe_n = 0
        self.label = screen.query_one("#bench-label", Input)
        self.label.select_on_focus = False  # typed characters append (the predicate expects that)
        self.tabs = screen.query_one(TabbedContent)
        self.typed_here = False
        self.lost: list[str] = []

    def flip_probe(self) -> None:
        self.probe_n += 1
        self.probe.update(str(self.probe_n % 10))

    def _open(self) -> bool:
        waiting = self.app.waiting
        if waiting is None:
            return False
        if time.perf_counter() - waiting[0] < LOST_AFTER_S:
            return True  # the previous key has not painted yet: that sample is still open
        self.lost.append(waiting[2])
        self.app.waiting = None
        return False

    def probe_key(self, phase: str) -> None:
        if self._open() or self.tabs.active != "bench-live":
            return
        expected = str((self.probe_n + 1) % 10)
        self.app.press_and_time(
            "f9", None, lambda: str(self.probe.content) == expected, f"{phase}: probe key on Live"
        )

    def cycle_key(self, phase: str) -> None:
        """``ctrl+t`` to the next tab; on Setup, first one character typed into the label field."""
        if self._open():
            return
        if self.tabs.active == "bench-setup" and not self.typed_here:
            if self.app.focused is not self.label:
                self.label.focus()  # takes effect on the next turn; type then
                return
            self.typed_here = True
            before = self.label.value
            self.app.press_and_time(
                "x", "x", lambda: self.label.value == before + "x", f"{phase}: type in Setup"
            )
            return
        order = ["bench-setup", "bench-live", "bench-sweep"]
        target = order[(order.index(self.tabs.active) + 1) % 3]
        self.typed_here = False
        self.app.press_and_time(
            "ctrl+t", None, lambda: self.tabs.active == target, f"{phase}: ctrl+t to {target[6:]}"
        )


def synthetic_snapshot(t: float) -> ProgressSnapshot:
    return ProgressSnapshot(
        level_index=0,
        level_label="synthetic",
        t=t,
        total=1000,
        sent=500,
        completed=400,
        failed=0,
        in_flight=500,
        output_tokens_per_s=20_000.0 + 3_000.0 * ((t * 7) % 5),
        server=ServerSnapshot(t=t, source="twin", running=400, waiting=(t * 13) % 100, kv_cache_usage=0.5),
    )


def chart_rates(screen: BenchScreen, window: tuple[float, float]) -> dict[str, float]:
    span = window[1] - window[0]
    return {
        chart.id or "?": sum(1 for t in chart.stats.redraw_times if window[0] <= t <= window[1]) / span
        for chart in screen.query_one(LiveCharts).charts
    }


TWIN = ("gemma-3-1b-it", "h100", 1)


def start_server(kind: str) -> tuple[str, Callable[[], None]]:
    """The sweep's target in its own process: (base URL, stop)."""
    if kind == "fake":
        port, process = start_in_process(mode="tick")
        return f"http://127.0.0.1:{port}", lambda: stop_process(process)
    model, gpu, count = TWIN
    twin = start_twin_process(TwinConfig.build(model, gpu, count, max_num_seqs=1024), log_interval_s=3600.0)
    return twin.base_url, twin.stop


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base_url, stop_server = start_server(args.server)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-tui-"))
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_CACHE_DIR"):
        os.environ[name] = str(data_dir / name.lower())
    os.environ["KUBECONFIG"] = str(data_dir / "no-kubeconfig")
    try:
        target: Target = await discover_target(base_url, name=args.server)
        app = TimedHarness(AppContext(data_dir=data_dir, targets=[target], selected_target=args.server))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, BenchScreen)
            probe = Static("0", id="probe")
            probe.styles.dock = "bottom"
            probe.styles.height = 1
            await screen.mount(probe)
            keys = KeyDriver(app, screen, probe)
            screen.action_probe = keys.flip_probe  # type: ignore[attr-defined]
            app.bind("f9", "screen.probe", description="probe")
            gc_pauses = GcPauses()
            gc.callbacks.append(gc_pauses)
            lags_ms: list[float] = []
            stop = asyncio.Event()
            lag_task = asyncio.create_task(lag_probe(stop, lags_ms))

            # Phase 1, no sweep: synthetic samples at 4 Hz into the live charts, probe keys.
            screen.show_tab("bench-live")
            await pilot.pause(0.5)
            started = time.monotonic()
            t = 0.0
            next_key = time.perf_counter()
            while time.monotonic() - started < args.idle_s:
                t += 0.25
                points = [(t, 50.0 + (i * 37) % 200) for i in range(50)]
                screen.post_message(
                    SweepHostEvent(
                        HostSample(run_index=0, x=t, snapshot=synthetic_snapshot(t), ttft_points=points)
                    )
                )
                if time.perf_counter() >= next_key:
                    keys.probe_key("idle, 4 Hz samples")
                    next_key = time.perf_counter() + KEY_INTERVAL_S
                await asyncio.sleep(0.25)
            idle_rates = chart_rates(screen, (started, time.monotonic()))
            # Phase 2, no sweep: tab switches and typing.
            for _ in range(int(args.idle_s / KEY_INTERVAL_S)):
                keys.cycle_key("idle")
                await asyncio.sleep(KEY_INTERVAL_S)
            await asyncio.sleep(0.5)
            app.waiting = None

            # Phase 3: the sweep. Level 1 on the Live tab with probe keys; level 2 switching tabs.
            screen.show_tab("bench-setup")
            await pilot.pause()
            screen.query_one("#bench-dataset", Select).value = "random"
            for widget_id, value in {
                "bench-random-in": "64",
                "bench-random-out": "32",
                "bench-levels": args.levels,
                "bench-prompts": str(args.prompts),
                "bench-output-len": str(args.output_len),
            }.items():
                screen.query_one(f"#{widget_id}", Input).value = value
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            wall0 = time.perf_counter()
            screen.action_run()
            gc_pauses.phase = "sweep"
            live_window: list[float] = []
            while screen.running:
                await asyncio.sleep(KEY_INTERVAL_S)
                level = len(screen.query_one(SweepResultsPanel).table.rows)
                if level <= 1:
                    if level == 1 and not live_window:
                        live_window.append(time.monotonic())
                    keys.probe_key("sweep level 1")
                else:
                    if len(live_window) == 1:
                        live_window.append(time.monotonic())
                    keys.cycle_key("sweep level 2")
            wall = time.perf_counter() - wall0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            stop.set()
            await lag_task
            gc.callbacks.remove(gc_pauses)
            sweep_rates = (
                chart_rates(screen, (live_window[0], live_window[1])) if len(live_window) == 2 else {}
            )

            charts: dict[str, Any] = {}
            for chart in screen.query(LiveChart):
                name = chart.id or type(chart).__name__
                charts[name] = {
                    "redraws": chart.stats.redraws,
                    "cost_ms": summary(list(chart.stats.recent_ms)),
                    "hz_idle_4hz_samples": idle_rates.get(name),
                    "hz_sweep_level1": sweep_rates.get(name),
                }
            levels_out = []
            for run_state in screen._runs:
                for level_result in run_state.levels.values():
                    m = level_result.metrics
                    levels_out.append(
                        {
                            "level": level_result.level.label,
                            "status": level_result.status.value,
                            "completed": m.completed,
                            "failed": m.failed,
                            "duration_s": m.duration,
                            "output_tok_s": m.output_throughput,
                            "max_concurrent": m.max_concurrent_requests,
                            "client_limited": level_result.client.client_limited,
                        }
                    )
            cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            return {
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "loadavg_at_end": os.getloadavg(),
                },
                "config": {key: str(value) for key, value in vars(args).items()},
                "target": {"kind": target.kind.value, "model": target.model, "base_url": target.base_url},
                "wall_s": wall,
                "key_to_paint_ms": {kind: summary(values) for kind, values in app.samples.items()},
                "keys_without_a_frame_in_5s": keys.lost,
                "frame_render_ms": summary(app.frame_ms),
                "gc_pauses_ms": {key: summary(values) for key, values in sorted(gc_pauses.pauses_ms.items())},
                "ui_loop_lag_ms": summary(lags_ms),
                "ui_process_cpu_percent_during_sweep": 100.0 * cpu_s / wall,
                "charts": charts,
                "levels": levels_out,
            }
    finally:
        stop_server()


def print_report(report: dict[str, Any]) -> None:
    cpu = report["ui_process_cpu_percent_during_sweep"]
    load = report["machine"]["loadavg_at_end"][0]
    print(f"target: {report['target']['kind']} {report['target']['model']}")
    print(f"sweep: {report['wall_s']:.1f} s, UI process CPU {cpu:.0f}% of one core, load average {load:.1f}")
    for level in report["levels"]:
        print(
            f"  {level['level']}: {level['status']}, {level['completed']} ok / {level['failed']} failed in "
            f"{level['duration_s']:.1f} s, {level['output_tok_s']:,.0f} output tok/s, "
            f"peak {level['max_concurrent']} in flight, client-limited={level['client_limited']}"
        )
    print("keypress-to-paint (ms):")
    for kind, s in report["key_to_paint_ms"].items():
        print(
            f"  {kind:38s} n={s['n']:3d} p50={s['p50']:6.1f} p90={s['p90']:6.1f} "
            f"p99={s['p99']:6.1f} max={s['max']:6.1f}"
        )
    print(f"  keys with no frame showing their effect within 5 s: {report['keys_without_a_frame_in_5s']}")
    f = report["frame_render_ms"]
    print(f"frame render to ANSI (ms): n={f['n']} p50={f['p50']:.1f} p99={f['p99']:.1f} max={f['max']:.1f}")
    for key, g in report["gc_pauses_ms"].items():
        print(f"garbage collector {key:12s} pauses: n={g['n']:4d} p50={g['p50']:6.1f} max={g['max']:6.1f} ms")
    lag = report["ui_loop_lag_ms"]
    print(f"UI loop lag (ms): p50={lag['p50']:.1f} p99={lag['p99']:.1f} max={lag['max']:.1f}")
    print("charts: redraw cost (plot + plotext build) and redraws per second while on screen")
    for name, c in report["charts"].items():
        cost = c["cost_ms"]
        rates = ""
        if c["hz_idle_4hz_samples"] is not None:
            rates = f"  {c['hz_idle_4hz_samples']:.2f} Hz at 4 Hz samples"
        if c["hz_sweep_level1"] is not None:
            rates += f", {c['hz_sweep_level1']:.2f} Hz in the sweep"
        print(
            f"  {name:22s} redraws={c['redraws']:4d} cost p50={cost['p50']:5.1f} p99={cost['p99']:5.1f} "
            f"max={cost['max']:5.1f} ms{rates}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_tui_bench")
    parser.add_argument("--levels", default="500,1000", help="concurrency levels (two: see the docstring)")
    parser.add_argument("--prompts", type=int, default=5000, help="requests per level")
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--idle-s", type=float, default=8.0, help="seconds of each no-sweep phase")
    parser.add_argument(
        "--server", choices=("twin", "fake"), default="twin", help="the sweep's target (default: a live twin)"
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    for kind, s in report["key_to_paint_ms"].items():
        verdict = "met" if s["p99"] < GOAL_KEY_TO_PAINT_MS else "NOT met"
        print(f"goal p99 < {GOAL_KEY_TO_PAINT_MS:.0f} ms, {kind}: {verdict}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
