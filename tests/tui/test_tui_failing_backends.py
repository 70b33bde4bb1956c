"""Every key of every view, with every backend failing: the app stays up and says what failed.

The registry is ``tests.tui.test_tui_deployments.FailingRegistry`` (every engine, twin and cluster call
raises a ServeDeckError), the only target is a closed port on 127.0.0.1, and the sessions store is a
path that cannot be a folder. Issue 10 item 1: no ServeDeckError may end the app.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from textual.binding import Binding
from textual.pilot import Pilot
from textual.screen import ModalScreen
from textual.widgets import Input

from backends.target_registry import ManualTargetStore
from backends.target_types import Target
from tests.tui.test_tui_deployments import BACKEND_DOWN, FailingRegistry
from tui.app import VIEWS, ServeDeckApp
from tui.context import AppContext
from tui.widgets.deploy.dialogs import ConfirmScreen

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

# Keys that leave the app or only move focus/tabs are not actions on a backend.
SKIPPED_KEYS = {"ctrl+q", "ctrl+c", "escape", "tab", "shift+tab"}


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def screen_keys(app: ServeDeckApp) -> list[str]:
    keys = []
    for binding in app.screen.BINDINGS:
        if isinstance(binding, Binding):
            key = binding.key.split(",")[0].strip()
            if key not in SKIPPED_KEYS and not key.isdigit():
                keys.append(key)
    return keys


async def settle(pilot: Pilot[Any], app: ServeDeckApp) -> None:
    """Answer any dialog (yes to a confirmation, esc to the rest) and let workers finish."""
    for _ in range(6):
        await pilot.pause()
        await app.workers.wait_for_complete()
        screen = app.screen
        if isinstance(screen, ConfirmScreen):
            await pilot.press("y")
        elif isinstance(screen, ModalScreen):
            screen.dismiss(None)
        elif len(app.screen_stack) > 1:
            app.pop_screen()
        else:
            return


async def test_every_key_of_every_view_with_failing_backends_keeps_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the sessions store cannot live here")
    monkeypatch.setenv("SERVEDECK_DATA_DIR", str(blocker))
    dead = Target(name="dead-one", base_url=closed_port_url(), model="m")
    ctx = AppContext(data_dir=blocker, targets=[dead], selected_target="dead-one")
    app = ServeDeckApp(
        ctx,
        start_local_engine=False,
        show_welcome=False,
        check_health=False,
        discover_cluster=False,
        views=VIEWS,
    )
    app.registry = FailingRegistry(
        manual_store=ManualTargetStore(tmp_path / "servedeck_config_dir"),
        given=list(ctx.targets),
        on_change=app._registry_changed_from_any_thread,
    )
    pressed: list[str] = []
    seen: list[tuple[str, str]] = []
    notify = app.notify

    def recording_notify(message: str, *, severity: Any = "information", **kwargs: Any) -> None:
        seen.append((str(severity), str(message)))
        notify(message, severity=severity, **kwargs)

    app.notify = recording_notify  # type: ignore[method-assign]
    async with app.run_test(size=(160, 45)) as pilot:
        for view in VIEWS:
            app.action_view(view.mode)
            await pilot.pause()
            await settle(pilot, app)
            for key in screen_keys(app):
                app.action_view(view.mode)
                await settle(pilot, app)
                app.set_focus(None)  # keys go to the screen's bindings, not to a text field
                await pilot.press(key)
                pressed.append(f"{view.mode}:{key}")
                await settle(pilot, app)
                assert app.is_running, f"{key} in {view.mode} ended the app"
            if view.mode == "chat":  # a prompt sent to a dead target
                app.action_view("chat")
                await settle(pilot, app)
                prompt = app.screen.query(Input).first()
                prompt.focus()
                await pilot.press(*"hello", "enter")
                await settle(pilot, app)
            if view.mode == "bench":  # a sweep against a dead target
                await pilot.press("ctrl+r")
                await settle(pilot, app)
        assert app.is_running
        told = [text for severity, text in seen if severity == "error"]
        assert any(BACKEND_DOWN in text for text in told)  # the Deployments keys (every row: that test)
        assert any(text.startswith("cannot read History:") for text in told)
        assert any("cannot connect to" in text for text in told)  # the sweep against the dead target
    assert app.return_code in (0, None)
    assert len(pressed) >= 20
