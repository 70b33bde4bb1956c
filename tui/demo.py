"""`servedeck demo`: the app drives itself through a short tour, pressing keys as a user would.

Local chat, a race of the local engine against a twin, a sweep of both with the live charts, the History
overlay of the two runs, and an export of the sweep chart. A caption line at the bottom says what happens
next, and pauses (``pace`` seconds) let an audience follow. Every wait is bounded: a step that does not
finish in time, or an error toast, ends the demo with ``error`` set.
"""

from __future__ import annotations

import asyncio
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import events
from textual.keys import _character_to_key, _get_unicode_name_from_key
from textual.screen import ModalScreen
from textual.widgets import Input, SelectionList, Static

from backends.target_registry import LOCAL_TARGET_NAME
from tui.app import ServeDeckApp
from tui.context import AppContext

DEMO_TWIN_KEY = "twin:gemma-3-27b-it-1xh100"
CHAT_PROMPT = "What is the capital of France?"
RACE_PROMPT = "Name three planets of the solar system."
ENGINE_WAIT_S = 240.0
STEP_WAIT_S = 90.0
SWEEP_WAIT_S = 150.0


class DemoError(Exception):
    """A step of the demo did not happen."""


class DemoApp(ServeDeckApp):
    """ServeDeck with a script worker started on mount; ``exported`` is the SVG it wrote, ``error`` why
    it stopped early. ``exit_when_done`` ends the app after the last step."""

    CSS: ClassVar[str] = """
    #demo-caption { dock: bottom; height: 1; padding: 0 1; background: $accent; color: $text; }
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        pace: float = 1.0,
        exit_when_done: bool = True,
        **options: Any,
    ) -> None:
        options.setdefault("show_welcome", False)
        options.setdefault("discover_cluster", False)
        super().__init__(AppContext(data_dir=out_dir / "store"), **options)
        self.out_dir = out_dir
        self.pace = pace
        self.exit_when_done = exit_when_done
        self.exported: Path | None = None
        self.error: str | None = None
        self.errors_shown: list[str] = []
        self.done = asyncio.Event()
        self._caption = ""
        self.demo_twin = ""  # the twin's name once it runs

    def on_mount(self) -> None:
        super().on_mount()
        self.run_worker(self._script(), group="demo", exit_on_error=False, name="demo")

    def notify(self, message: str, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("severity") == "error":
            self.errors_shown.append(message)
        super().notify(message, *args, **kwargs)

    # -- what a user does -----------------------------------------------------------------------------

    async def pause(self, beats: float = 1.0) -> None:
        await asyncio.sleep(self.pace * beats)

    async def press(self, *keys: str) -> None:
        for key in keys:
            name = _character_to_key(key) if len(key) == 1 and not key.isalnum() else key
            try:
                char: str | None = unicodedata.lookup(_get_unicode_name_from_key(name))
            except KeyError:
                char = key if len(key) == 1 else None
            self.post_message(events.Key(name, char))
            await asyncio.sleep(max(0.02, self.pace * 0.15))

    async def type_into(self, field: Input, text: str) -> None:
        """Clear ``field`` and type ``text`` into it, one character at a time."""
        field.focus()
        field.value = ""
        for char in text:
            field.insert_text_at_cursor(char)
            await asyncio.sleep(max(0.005, self.pace * 0.04))

    async def wait_for(
        self, what: str, predicate: Callable[[], bool], timeout_s: float = STEP_WAIT_S
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.errors_shown:
                raise DemoError(f"{what}: the app showed an error: {self.errors_shown[0]}")
            if time.monotonic() > deadline:
                raise DemoError(f"{what} did not happen within {timeout_s:g} s")
            await asyncio.sleep(0.05)

    def caption(self, text: str) -> None:
        """The line at the bottom of the current view that says what happens next."""
        self._caption = text
        screen = self.screen
        if isinstance(screen, ModalScreen):
            return
        found = screen.query("#demo-caption")
        if found:
            found.first(Static).update(text)
        else:
            screen.mount(Static(text, id="demo-caption", markup=False))

    async def view(self, key: str, mode: str) -> None:
        self.set_focus(None)  # digits typed into a field are not view switches
        await self.press(key)
        await self.wait_for(f"the {mode} view", lambda: self.current_mode == mode)
        await asyncio.sleep(0.1)
        self.caption(self._caption)

    # -- the script -----------------------------------------------------------------------------------

    async def _script(self) -> None:
        try:
            await self._tour()
        except DemoError as err:
            self.error = str(err)
        except Exception as err:  # a demo that stops says why instead of hanging
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.done.set()
        if self.error is None and self.errors_shown:
            self.error = f"the app showed an error: {self.errors_shown[0]}"
        if self.exit_when_done:
            self.exit(return_code=0 if self.error is None else 1)

    async def _tour(self) -> None:
        self.caption("ServeDeck demo · starting the local engine (Gemma 3 270M on llama.cpp, CPU) ...")
        await self.wait_for(
            "the local engine", lambda: self.ctx.selected_target == LOCAL_TARGET_NAME, ENGINE_WAIT_S
        )
        await self.pause(2)
        await self._local_chat()
        await self._start_twin()
        await self._race()
        await self._sweep()
        await self._overlay()
        await self._export()
        self.caption(f"demo finished · chart exported to {self.exported}")
        await self.pause(2)

    async def _local_chat(self) -> None:
        from tui.screens.chat import ChatScreen

        self.caption("1/6 · Chat: ask the local engine; TTFT, TPOT and ITL appear under the answer")
        await self.view("2", "chat")
        screen = self.screen
        assert isinstance(screen, ChatScreen)
        await self.wait_for(
            "the local lane", lambda: [lane.target.name for lane in screen.lanes] == ["local"]
        )
        await self.type_into(screen.query_one("#chat-prompt", Input), CHAT_PROMPT)
        await self.pause()
        await self.press("enter")
        await self.wait_for("the local answer", lambda: _answered(screen.lanes))
        await self.pause(3)

    async def _start_twin(self) -> None:
        from tui.screens.deployments import DeploymentsScreen
        from tui.widgets.deploy.table import DeploymentTable

        self.caption("2/6 · Deployments: start a vLLM twin of Gemma 3 27B on one H100 (t)")
        await self.view("1", "deployments")
        screen = self.screen
        assert isinstance(screen, DeploymentsScreen)
        table = screen.query_one(DeploymentTable)
        table.focus()
        await self.wait_for("the twin's row", lambda: table.highlighted is not None)
        for _ in range(table.row_count):
            row = table.highlighted
            if row is not None and row.key == DEMO_TWIN_KEY:
                break
            await self.press("down")
        row = table.highlighted
        if row is None or row.key != DEMO_TWIN_KEY:
            raise DemoError(f"no row {DEMO_TWIN_KEY} in Deployments")
        await self.pause()
        await self.press("t")
        name = row.name
        await self.wait_for(f"{name} ready", lambda: self.ctx.target(name) is not None)
        self.demo_twin = name
        await self.pause(2)

    async def _race(self) -> None:
        from tui.screens.chat import ChatScreen

        self.caption("3/6 · Chat: race the local engine against the twin (ctrl+t), same prompt side by side")
        await self.view("2", "chat")
        screen = self.screen
        assert isinstance(screen, ChatScreen)
        await self.press("ctrl+t")
        await self.wait_for("race mode", lambda: len(screen.lanes) == 2)
        await self.pause()
        await self.press("slash")
        await self.type_into(screen.query_one("#chat-prompt", Input), RACE_PROMPT)
        await self.pause()
        await self.press("enter")
        summary = screen.query_one("#chat-race-summary")
        await self.wait_for("the race summary", lambda: summary.has_class("-shown"))
        await self.pause(3)

    async def _sweep(self) -> None:
        from tui.screens.bench import BenchScreen

        self.caption("4/6 · Bench: sweep the local engine and the twin at concurrency 1 and 4, live charts")
        await self.view("3", "bench")
        screen = self.screen
        assert isinstance(screen, BenchScreen)
        targets: SelectionList[str] = screen.query_one("#bench-targets", SelectionList)
        targets.focus()

        def listed() -> list[str]:
            return [str(targets.get_option_at_index(i).value) for i in range(targets.option_count)]

        wanted = (LOCAL_TARGET_NAME, self.demo_twin)
        await self.wait_for("the targets in Bench", lambda: all(name in listed() for name in wanted))
        names = listed()
        for name in wanted:
            if name in targets.selected:
                continue
            while targets.highlighted != names.index(name):
                await self.press("down" if (targets.highlighted or 0) < names.index(name) else "up")
            await self.press("space")
        await self.wait_for("both targets ticked", lambda: len(targets.selected) == 2)
        for widget_id, value in (("bench-levels", "1,4"), ("bench-prompts", "8"), ("bench-output-len", "32")):
            await self.type_into(screen.query_one(f"#{widget_id}", Input), value)
        self.set_focus(None)
        await self.pause()
        await self.press("ctrl+r")
        await self.wait_for("the sweep to start", lambda: screen.running)
        await self.wait_for("the sweep to finish", lambda: not screen.running, SWEEP_WAIT_S)
        if len(screen.saved_run_ids) != 2:
            raise DemoError(f"the sweep saved {len(screen.saved_run_ids)} run(s), not 2")
        await self.pause(3)

    async def _overlay(self) -> None:
        from tui.screens.history import HistoryScreen

        self.caption("5/6 · History: mark both runs (space) to overlay them in one chart")
        await self.view("4", "history")
        screen = self.screen
        assert isinstance(screen, HistoryScreen)
        await self.wait_for("the two runs", lambda: len(screen.runs) >= 2)
        table = screen.runs_table
        table.focus()
        await self.press("space", "down", "space")
        await self.wait_for("the overlay", lambda: len(table.marked) == 2 and len(screen.overlay.series) == 2)
        await self.pause(4)

    async def _export(self) -> None:
        from tui.screens.bench import BenchScreen
        from tui.widgets.bench.export import ExportDialog

        self.caption("6/6 · Bench: export the sweep (ctrl+s): JSON, CSV and the chart as SVG")
        await self.view("3", "bench")
        bench = self.screen
        assert isinstance(bench, BenchScreen)
        await self.press("ctrl+s")
        await self.wait_for("the export dialog", lambda: isinstance(self.screen, ExportDialog))
        dialog = self.screen
        folder = self.out_dir / "exports"
        await self.type_into(dialog.query_one("#export-folder", Input), str(folder))
        await self.pause()
        await self.press("enter")
        await self.wait_for("the exported chart", lambda: any(folder.glob("*.svg")))
        await asyncio.sleep(0.5)  # the files are written one after another
        self.exported = sorted(folder.glob("*.svg"))[0]
        await self.pause(2)


def _answered(lanes: list[Any]) -> bool:
    if not lanes:
        return False
    for lane in lanes:
        answer = lane.last_answer
        if lane.streaming or answer is None or answer.state == "streaming":
            return False
        if answer.state != "complete":
            raise DemoError(f"{lane.target.name} answered with state {answer.state}")
    return True
