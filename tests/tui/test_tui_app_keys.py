"""App-wide keys (issue 10): digits typed into a form field stay there; Esc stops an answer before
it leaves Chat; ctrl+q asks first while a sweep runs. The whole app runs against the fake SSE server."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Select, Static

from backends.targets import discover_target
from tests.fakes.sse_server import FakeSSEServer
from tests.tui.test_tui_bench import small_random_sweep
from tests.tui.test_tui_chat import answers, chat_screen, fake_target, set_field, wait_answered, wait_until
from tui.app import ServeDeckApp
from tui.context import AppContext
from tui.screens.bench import BenchScreen
from tui.screens.chat import ChatScreen
from tui.screens.deployments import DeploymentsScreen
from tui.widgets.deploy.dialogs import ConfirmScreen

pytestmark = pytest.mark.anyio


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_server: FakeSSEServer) -> ServeDeckApp:
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_DATA_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    ctx = AppContext(data_dir=tmp_path / "data", targets=[fake_target(fake_server)], selected_target="fake")
    return ServeDeckApp(
        ctx, start_local_engine=False, show_welcome=False, check_health=False, discover_cluster=False
    )


@pytest.mark.parametrize("size", [(160, 45), (100, 30)])
async def test_digits_typed_while_a_select_has_focus_do_not_switch_views(
    app: ServeDeckApp, size: tuple[int, int]
) -> None:
    async with app.run_test(size=size) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DeploymentsScreen))
        await pilot.press("n")
        await wait_until(pilot, lambda: bool(app.screen.query(Select)))
        form = app.screen
        form.query(Select).first().focus()
        await pilot.pause()
        await pilot.press("8", "1", "9", "2")
        await pilot.pause()
        assert app.current_mode == "deployments" and app.screen is form


async def test_digits_typed_into_a_chat_field_stay_there_and_switch_views_elsewhere(
    app: ServeDeckApp,
) -> None:
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
        box = app.screen.query_one("#chat-max-tokens", Input)
        box.focus()
        box.value = ""
        await pilot.press("8", "1", "9", "2")
        assert app.current_mode == "chat" and box.value == "8192"
        chat_screen(app).settings.target_list.focus()
        await pilot.press("3")
        await wait_until(pilot, lambda: app.current_mode == "bench")


async def test_esc_stops_the_answer_first_and_a_second_esc_leaves_chat(app: ServeDeckApp) -> None:
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
        await set_field(pilot, "#chat-max-tokens", "2000")
        await set_field(pilot, "#chat-extra", '{"fake_itl_ms": 40}')
        box = app.screen.query_one("#chat-prompt", Input)
        box.focus()
        box.value = "Count to a thousand."
        await pilot.press("enter")
        await wait_until(pilot, lambda: bool(answers(app)) and len(answers(app)[0].text.split()) >= 3)
        await pilot.press("escape")
        await wait_answered(pilot)
        assert isinstance(app.screen, ChatScreen) and app.current_mode == "chat"
        assert answers(app)[0].state == "stopped"
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.current_mode == "deployments")


async def test_ctrl_q_during_a_sweep_asks_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_server: FakeSSEServer
) -> None:
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_DATA_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    target = await discover_target(f"http://127.0.0.1:{fake_server.port}", name="fake")
    ctx = AppContext(data_dir=tmp_path / "data", targets=[target], selected_target="fake")
    app = ServeDeckApp(
        ctx, start_local_engine=False, show_welcome=False, check_health=False, discover_cluster=False
    )
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.press("3")
        await wait_until(pilot, lambda: isinstance(app.screen, BenchScreen))
        screen = app.screen
        assert isinstance(screen, BenchScreen)
        small_random_sweep(screen, levels="1", prompts="200", output_len="300")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: screen.running)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "sweep is running" in str(app.screen.query_one("#confirm-question", Static).render())
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen is screen)
        assert app.is_running and screen.running
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: not screen.running)
        await pilot.press("ctrl+q")  # nothing runs: quits at once
        await wait_until(pilot, lambda: not app.is_running)
