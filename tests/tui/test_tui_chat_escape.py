"""Esc in the whole app (not the Chat view alone, which has no app-level "esc goes back"), while
an answer streams from the real local engine: it stops the answer and stays in Chat; only a
second esc leaves (issue 10 item 10)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from textual.widgets import Input

from backends.engines.local import LocalEngine
from tests import tui_helpers
from tui.app import VIEWS, ServeDeckApp
from tui.context import AppContext
from tui.screens.chat import ChatScreen
from tui.screens.deployments import DeploymentsScreen
from tui.widgets.chat.lane import ChatLane

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]
WAIT_S = 60.0
# No stop sequence and no end of text: the base model would go on for 2000 tokens (a minute or more).
ENDLESS = '{"stop": [], "ignore_eos": true}'


wait_until = partial(tui_helpers.wait_until, timeout_s=WAIT_S, poll_s=0.02)


@pytest.mark.parametrize("when", ["mid-answer", "before the first token"])
async def test_esc_while_the_local_engine_answers_stops_and_stays_in_chat(
    local_engine: LocalEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    ctx = AppContext(data_dir=tmp_path / "data", targets=[local_engine.target()], selected_target="local")
    app = ServeDeckApp(
        ctx,
        start_local_engine=False,
        show_welcome=False,
        check_health=False,
        discover_cluster=False,
        views=VIEWS,
    )
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.pause()
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        chat.query_one("#chat-max-tokens", Input).value = "2000"
        chat.query_one("#chat-extra", Input).value = ENDLESS
        await pilot.press("slash")
        await pilot.press(*"Tell me a story", "enter")
        lane = chat.query_one(ChatLane)
        if when == "mid-answer":
            await wait_until(pilot, lambda: bool(lane.answers) and len(lane.answers[-1].text) >= 8)
        else:
            await wait_until(pilot, lambda: lane.streaming)
        assert lane.streaming
        await pilot.press("escape")
        await wait_until(pilot, lambda: not lane.streaming)
        await pilot.pause(0.2)
        assert app.screen is chat, "esc stopped the answer and also left Chat"
        assert lane.answers[-1].state == "stopped"
        await pilot.press("escape")  # nothing streams now: esc goes back
        await wait_until(pilot, lambda: isinstance(app.screen, DeploymentsScreen))
        await app.workers.wait_for_complete()
