"""TUI responsiveness: time to first frame, keypress-to-paint, and how free the UI thread stays.

Run: ``.venv/bin/python -m tests.benchmarks.bench_tui [--runs 5] [--presses 30] [--engine]``

1. First frame, in a real pseudo-terminal (120x40): a fresh ``python`` process opens the app as
   ``servedeck tui`` would; the clock runs from spawning the process until the terminal has received
   the Deployments table (its last default row). Reported cold (first run) and warm (median of the
   rest; the OS file cache is warm then).
2. Keypress-to-paint, in the same terminal: arrow keys move the table cursor and the detail line under
   the table changes; the clock runs from writing the key's bytes until the new detail text has
   arrived. Then ``?`` until the help screen is painted, ``n`` until the new-deployment form is painted,
   and typing into that form (each key recomputes fit, KV capacity and cost; the YAML preview follows
   when typing pauses): from writing the key until the panel shows the new max-model-len.
3. UI-thread stalls, in process (headless ``run_test``): a 10 ms heartbeat timer on the UI thread
   records how late it fires while the app does its background work (health probes of a dead and of a
   slow endpoint, the cluster lookup, adding a dead URL, typing in the form, and with ``--engine``
   starting the real local engine). The worst lateness is the longest the UI could not react.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import pty
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Any

COLUMNS, LINES = 120, 40
APP_CODE = (
    "import sys\n"
    "from tui.cli.app import run_app\n"
    "import argparse\n"
    "sys.exit(run_app(argparse.Namespace(no_local_engine={no_engine}, data_dir=None)))\n"
)
FIRST_FRAME_MARKER = b"twin-27b-cpu-c4"
DOWN, UP = b"\x1b[B", b"\x1b[A"
CTRL_Q = b"\x11"


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TERM": "xterm-256color",
            "COLUMNS": str(COLUMNS),
            "LINES": str(LINES),
            "SERVEDECK_CONFIG_DIR": str(root / "config"),
            "SERVEDECK_DATA_DIR": str(root / "data"),
            "SERVEDECK_CACHE_DIR": str(root / "cache"),
            "KUBECONFIG": str(root / "no-kubeconfig"),
        }
    )
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "welcomed").touch()  # measure the table, not the welcome dialog
    return env


class Terminal:
    """The app in a pseudo-terminal; ``wait_for`` reads output until a marker arrives."""

    def __init__(self, root: Path, *, start_engine: bool) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        self.master = master
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-c", APP_CODE.format(no_engine=not start_engine)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=_env(root),
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
        )
        os.close(slave)
        self.buffer = b""

    def wait_for(self, marker: bytes, timeout_s: float = 30.0) -> float:
        """Seconds until ``marker`` is in the output read since the last ``press``/``wait_for``."""
        deadline = time.perf_counter() + timeout_s
        while marker not in self.buffer:
            left = deadline - time.perf_counter()
            if left <= 0:
                tail = self.buffer[-400:].decode(errors="replace")
                raise TimeoutError(f"{marker!r} did not appear within {timeout_s} s; output tail: {tail!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise RuntimeError(f"the app exited (status {self.process.poll()})")
                self.buffer += chunk
        return time.perf_counter()

    def press(self, keys: bytes, marker: bytes, timeout_s: float = 10.0) -> float:
        """Milliseconds from writing ``keys`` until ``marker`` has been painted."""
        self.drain()
        self.buffer = b""
        sent = time.perf_counter()
        os.write(self.master, keys)
        return (self.wait_for(marker, timeout_s) - sent) * 1000

    def settle(self, quiet_s: float = 0.5) -> None:
        """Wait until the app has painted nothing for ``quiet_s`` (a screen finished mounting)."""
        while select.select([self.master], [], [], quiet_s)[0]:
            try:
                if not os.read(self.master, 65536):
                    return
            except OSError:
                return

    def drain(self) -> None:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                if not os.read(self.master, 65536):
                    return
            except OSError:
                return

    def close(self) -> None:
        try:
            os.write(self.master, CTRL_Q)
            self.process.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5)
        finally:
            os.close(self.master)


def first_frame_s(root: Path, *, start_engine: bool) -> float:
    terminal = Terminal(root, start_engine=start_engine)
    try:
        return terminal.wait_for(FIRST_FRAME_MARKER) - terminal.started
    finally:
        terminal.close()


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 1),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max": round(ordered[-1], 1),
    }


FORM_PAUSE_S = 1.5


def keypress_to_paint(root: Path, presses: int) -> dict[str, dict[str, float]]:
    terminal = Terminal(root, start_engine=False)
    try:
        terminal.wait_for(FIRST_FRAME_MARKER)
        terminal.press(DOWN * 2, b"twin-27b-4xl4: available")
        moves: list[float] = []
        for index in range(presses):
            if index % 2 == 0:
                moves.append(terminal.press(DOWN, b"twin-27b-2xa100-40gb: available"))
            else:
                moves.append(terminal.press(UP, b"twin-27b-4xl4: available"))
        screens: list[float] = []
        for _ in range(max(1, presses // 10)):
            screens.append(terminal.press(b"?", b"Everywhere"))
            terminal.settle()
            terminal.press(b"q", b"twin-27b-2xh100")
            terminal.settle()
        # A person reads the table before opening the form: the app builds the form ahead once keys have
        # been quiet for a second (tui/screens/deployments.py), so the first open is timed after a pause.
        time.sleep(FORM_PAUSE_S)
        opening: list[float] = []
        for _ in range(max(1, presses // 10)):
            opening.append(terminal.press(b"n", b"Fit \xc2\xb7 KV capacity"))
            terminal.settle()
            terminal.press(b"\x1b", b"twin-27b-2xh100")
            terminal.settle()
        terminal.press(b"n", b"Fit \xc2\xb7 KV capacity")
        terminal.settle()
        os.write(terminal.master, b"\t\t\t")
        terminal.settle()
        typing: list[float] = []
        for _ in range(max(1, presses // 10)):
            typing.append(terminal.press(b"8", b"at least 16, got 8"))
            typing.append(terminal.press(b"1", b"of 81 tokens"))
            typing.append(terminal.press(b"9", b"of 819 tokens"))
            typing.append(terminal.press(b"2", b"of 8,192 tokens"))
            terminal.press(b"\x7f\x7f\x7f\x7f", b"of 131,072 tokens")
        return {
            "table_cursor_ms": _summary(moves),
            "help_screen_open_ms": _summary(screens),
            "new_deployment_form_open_ms": _summary(opening),
            "form_typing_ms": _summary(typing),
        }
    finally:
        terminal.close()


# -- UI-thread stalls (in process) ----------------------------------------------------------------------


async def _stalls(with_engine: bool) -> dict[str, Any]:
    from backends.target_types import Target
    from tests.fakes.openai_like_server import FakeServer, FakeServerConfig, ModelsMode
    from tui.app import VIEWS, ServeDeckApp
    from tui.context import AppContext

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with FakeServer(FakeServerConfig(models_mode=ModelsMode.SLOW, slow_s=2.5)) as slow:
        ctx = AppContext(
            targets=[
                Target(name="dead", base_url=dead, model="m"),
                Target(name="slow", base_url=slow.url, model="m"),
            ]
        )
        app = ServeDeckApp(
            ctx, start_local_engine=False, show_welcome=False, check_health=True, views=VIEWS[:1]
        )
        lateness: list[float] = []
        phases: dict[str, float] = {}
        async with app.run_test(size=(COLUMNS, LINES)) as pilot:
            period = 0.01
            expected = [time.perf_counter() + period]

            def beat() -> None:
                now = time.perf_counter()
                lateness.append(max(0.0, now - expected[0]))
                expected[0] = now + period

            app.set_interval(period, beat)

            async def phase(name: str, seconds: float) -> None:
                start = len(lateness)
                await pilot.pause(seconds)
                window = lateness[start:]
                phases[name] = round(max(window, default=0.0) * 1000, 1)

            await phase("startup: health probes (dead + 2.5 s slow endpoint), cluster lookup", 3.0)
            app.check_health()
            await phase("health probe again", 3.0)
            await pilot.press("a")
            await pilot.press(*dead, "enter")
            await phase("adding a dead URL", 1.5)
            await pilot.press("escape", "n")
            await pilot.press("tab", "tab", "tab", *"8192")
            await phase("new-deployment form: open and type 4 keys", 1.0)
            if with_engine:
                await pilot.press("escape")
                from backends.target_registry import TargetStatus

                deadline = time.perf_counter() + 240
                start = len(lateness)
                app.start_local_engine()
                await pilot.pause(0.05)
                while app.registry.row("local").status is not TargetStatus.READY:  # type: ignore[union-attr]
                    if time.perf_counter() > deadline:
                        raise TimeoutError("the local engine did not start")
                    await pilot.pause(0.1)
                phases["local engine start (real llama-server)"] = round(
                    max(lateness[start:], default=0) * 1000, 1
                )
            await pilot.press("ctrl+q")
    ordered = sorted(lateness)
    return {
        "heartbeat_period_ms": 10,
        "beats": len(ordered),
        "lateness_p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "lateness_p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
        "worst_ms_per_phase": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="first-frame runs (the first is cold)")
    parser.add_argument("--presses", type=int, default=30, help="arrow-key presses to time")
    parser.add_argument(
        "--engine", action="store_true", help="also measure stalls while the real engine starts"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="bench-tui-") as tmp:
        root = Path(tmp)
        frames = [first_frame_s(root, start_engine=True) for _ in range(args.runs)]
        results["first_frame_s"] = {
            "cold": round(frames[0], 3),
            "warm_median": round(statistics.median(frames[1:] or frames), 3),
            "all": [round(value, 3) for value in frames],
            "note": "local engine starting in the background, as on a real first start",
        }
        results["keypress_to_paint"] = keypress_to_paint(root, args.presses)
        os.environ.update(_env(root))
        results["ui_thread"] = asyncio.run(_stalls(args.engine))
    results["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
