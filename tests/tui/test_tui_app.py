"""The app shell: opening on Deployments, `:` jump, `?` help, `esc` back, welcome, palette, errors."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static

from backends.target_registry import MANUAL_TARGETS_FILE
from backends.target_types import Target, TargetKind
from tests import tui_helpers
from tui.app import VIEWS, WELCOME_MARKER, JumpScreen, ServeDeckApp, View, resolve_view
from tui.context import AppContext
from tui.messages import TargetsChanged
from tui.screens.help import HelpScreen
from tui.screens.welcome import WelcomeScreen
from tui.widgets.deploy.table import DeploymentTable

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("isolated")]
SIZE = (120, 40)
WAIT_S = 10.0


wait_until = partial(tui_helpers.wait_until, timeout_s=WAIT_S, poll_s=0.02)


def screen_text(app: ServeDeckApp) -> str:
    """What the terminal shows now, as plain text."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(segment.text for segment in strip) for strip in strips)


def flat_text(app: ServeDeckApp) -> str:
    """The screen's text with line breaks and box borders removed, so wrapped sentences read whole."""
    lines = [line.strip(" █▀▄│") for line in screen_text(app).splitlines()]
    return " ".join(" ".join(lines).split())


class SecondScreen(Screen[None]):
    """A second view for navigation tests; records the TargetsChanged messages it gets."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("x", "noop", "second-view action")]

    def __init__(self) -> None:
        super().__init__()
        self.targets_seen: list[list[str]] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("second view", id="second")
        yield Footer()

    def on_targets_changed(self, message: TargetsChanged) -> None:
        self.targets_seen.append([target.name for target in message.targets])

    def action_noop(self) -> None:
        pass


TEST_VIEWS = (VIEWS[0], View("second", "tests.tui.test_tui_app", "SecondScreen", "Second", ("2nd",)))


def make_app(ctx: AppContext | None = None, **options: Any) -> ServeDeckApp:
    defaults: dict[str, Any] = {
        "start_local_engine": False,
        "show_welcome": False,
        "check_health": False,
        "discover_cluster": False,
        "views": TEST_VIEWS,
    }
    defaults.update(options)
    return ServeDeckApp(ctx, **defaults)


def fixed_ctx() -> AppContext:
    return AppContext(
        targets=[
            Target(
                name="lab-vllm",
                base_url="http://127.0.0.1:9",
                model="google/gemma-3-27b-it",
                kind=TargetKind.VLLM,
            )
        ]
    )


async def test_opens_on_deployments_with_every_kind_of_row() -> None:
    app = make_app(fixed_ctx())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.current_mode == "deployments"
        table = app.screen.query_one(DeploymentTable)
        names = [str(table.get_row_at(index)[0]).strip() for index in range(table.row_count)]
        assert names[0] == "kubernetes"
        assert "local" in names
        assert "twin-27b-1xh100" in names
        assert "lab-vllm" in names
        assert app.sub_title.startswith("context: local")


async def test_colon_jumps_to_a_view_by_name_and_esc_goes_back() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("colon")
        assert isinstance(app.screen, JumpScreen)
        await pilot.press(*"2nd", "enter")
        await wait_until(pilot, lambda: app.current_mode == "second")
        assert app.screen.query_one("#second", Static)
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.current_mode == "deployments")


async def test_jump_to_an_unknown_view_says_which_exist() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("colon", *"nope", "enter")
        await pilot.pause()
        assert app.current_mode == "deployments"
        messages = [notification.message for notification in app._notifications]
        assert any("no view called 'nope'" in m and "deployments, second" in m for m in messages)


async def test_jump_prompt_escape_cancels() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("colon")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, JumpScreen)
        assert app.current_mode == "deployments"


def test_resolve_view_accepts_names_aliases_and_prefixes() -> None:
    assert resolve_view("deployments") is VIEWS[0]
    assert resolve_view(":dp") is VIEWS[0]
    assert resolve_view("HIST") is not None and resolve_view("HIST").mode == "history"  # type: ignore[union-attr]
    assert resolve_view("be") is not None and resolve_view("be").mode == "bench"  # type: ignore[union-attr]
    assert resolve_view("") is None
    assert resolve_view("zzz") is None


async def test_question_mark_shows_the_keys_of_the_current_view() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        assert "Deployments view" in text
        assert "add an OpenAI-compatible URL" in text
        assert "jump to a view by name" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("colon", *"second", "enter")
        await wait_until(pilot, lambda: app.current_mode == "second")
        await pilot.press("question_mark")
        await pilot.pause()
        text = screen_text(app)
        assert "second-view action" in text
        assert "add an OpenAI-compatible URL" not in text


async def test_command_palette_offers_every_action_of_the_view() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        titles = {command.title: command for command in app.get_system_commands(app.screen)}
        for expected in (
            "Go to Deployments",
            "Go to Second",
            "New",
            "Add URL",
            "Filter",
            "Delete",
            "Jump",
            "Help",
        ):
            assert expected in titles, expected
        titles["Go to Second"].callback()
        await wait_until(pilot, lambda: app.current_mode == "second")
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert type(app.screen).__name__ == "CommandPalette"


async def test_welcome_shows_on_the_first_start_only(isolated: Path) -> None:
    app = make_app(show_welcome=None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, WelcomeScreen)
        assert "is off; highlight it and press t to start it" in flat_text(app)
        await pilot.press("enter")
        assert not isinstance(app.screen, WelcomeScreen)
        await app.workers.wait_for_complete()
    assert (isolated / "servedeck_config_dir" / WELCOME_MARKER).exists()
    again = make_app(show_welcome=None)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not isinstance(again.screen, WelcomeScreen)


async def test_a_corrupt_manual_targets_file_is_reported_and_kept(isolated: Path) -> None:
    config = isolated / "servedeck_config_dir"
    config.mkdir(parents=True)
    corrupt = config / MANUAL_TARGETS_FILE
    corrupt.write_text('{"version": 1, "targets": [{"name": 3}]}')
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: bool(app._notifications))
        message = next(iter(app._notifications)).message
        assert str(corrupt) in message
        assert "fix it or move it away" in message
    assert corrupt.read_text() == '{"version": 1, "targets": [{"name": 3}]}'


async def test_targets_changed_reaches_every_view_when_a_url_is_added() -> None:
    from tests.fakes.openai_like_server import FakeServer, FakeServerConfig, Flavor

    app = make_app()
    with FakeServer(FakeServerConfig(flavor=Flavor.VLLM, models=["google/gemma-3-27b-it"])) as server:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("colon", *"second", "enter")
            await wait_until(pilot, lambda: app.current_mode == "second")
            second = app.screen
            assert isinstance(second, SecondScreen)
            row = await app.registry.add_manual_url(server.url, name="lab")
            assert row.name == "lab"
            await wait_until(pilot, lambda: any("lab" in names for names in second.targets_seen))
            assert [t.name for t in app.ctx.targets] == ["lab"]


async def test_escape_in_the_filter_clears_it_before_going_back() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *"h100")
        assert isinstance(app.focused, Input)
        await pilot.press("escape")
        await pilot.pause()
        assert app.current_mode == "deployments"
        table = app.screen.query_one(DeploymentTable)
        assert table.row_count > 5


async def test_quit_stops_what_the_app_started() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+q")
        await asyncio.sleep(0)
    assert app.registry.local_engine is None
    assert app._closed


@pytest.mark.engine
@pytest.mark.timeout(300)
async def test_first_start_runs_the_real_local_engine_and_selects_it() -> None:
    from backends.engines.local import LocalEngineConfig
    from backends.target_registry import TargetStatus
    from tests.conftest import require_llama_server
    from tui.widgets.deploy.details import DeploymentDetailsScreen
    from tui.widgets.deploy.log_view import DeployLogView

    require_llama_server()
    app = make_app(
        start_local_engine=True,
        show_welcome=None,
        local_engine_config=LocalEngineConfig(parallel=2, ctx_per_slot=512),
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, WelcomeScreen)
        assert "is starting in the background" in flat_text(app)
        await pilot.press("enter")

        def local_status() -> TargetStatus | None:
            row = app.registry.row("local")
            return row.status if row is not None else None

        await wait_until(pilot, lambda: local_status() is not TargetStatus.STOPPED)
        await wait_until(pilot, lambda: local_status() is TargetStatus.READY, timeout_s=240)
        # the registry flips the status on its own thread; the app hears of it by message
        await wait_until(pilot, lambda: app.ctx.selected_target == "local")
        assert [target.name for target in app.ctx.targets] == ["local"]
        assert "target: local" in app.sub_title
        assert "ready" in screen_text(app)
        engine = app.registry.local_engine
        assert engine is not None and engine.running
        table = app.screen.query_one(DeploymentTable)
        table.focus()
        table.move_cursor(
            row=[str(table.get_row_at(i)[0]).strip(" ●") for i in range(table.row_count)].index("local")
        )
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, DeploymentDetailsScreen))
        log_view = app.screen.query_one(DeployLogView)
        await wait_until(pilot, lambda: log_view.line_count > 0)
        await pilot.press("escape")
        await pilot.press("ctrl+q")
    assert not engine.running


def test_servedeck_tui_command_parses_its_options() -> None:
    import argparse

    from tui.cli import app as app_command

    parser = argparse.ArgumentParser(prog="servedeck")
    app_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tui", "--no-local-engine", "--data-dir", "/tmp/sd"])
    assert args.handler is app_command.run_app
    assert args.no_local_engine is True
    assert str(args.data_dir) == "/tmp/sd"
    assert parser.parse_args(["tui"]).no_local_engine is False


# -- issue 10 item 13 ----------------------------------------------------------------------------------


async def test_the_cursor_starts_on_the_local_engine_not_the_kubernetes_row() -> None:
    app = make_app(fixed_ctx())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.screen.query_one(DeploymentTable)
        assert table.highlighted is not None and table.highlighted.name == "local"


async def test_palette_screenshot_is_saved_under_the_data_folder(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = isolated / "home-without-downloads"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DOWNLOAD_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    app = make_app()
    folder = isolated / "servedeck_data_dir" / "screenshots"
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"screenshot")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: folder.is_dir() and any(folder.glob("*.svg")))
        await wait_until(pilot, lambda: any(str(folder) in m.message for m in app._notifications))
    saved = next(folder.glob("*.svg"))
    assert saved.read_text().lstrip().startswith("<svg")
    assert not (home / "Downloads").exists()


@pytest.mark.engine
@pytest.mark.timeout(300)
async def test_welcome_says_the_engine_is_ready_once_it_is() -> None:
    from backends.engines.local import LocalEngineConfig
    from backends.target_registry import TargetStatus
    from tests.conftest import require_llama_server

    require_llama_server()
    app = make_app(
        start_local_engine=True,
        show_welcome=True,
        local_engine_config=LocalEngineConfig(parallel=1, ctx_per_slot=512),
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, WelcomeScreen)
        assert "is starting in the background" in flat_text(app)

        def ready() -> bool:
            row = app.registry.row("local")
            return row is not None and row.status is TargetStatus.READY

        await wait_until(pilot, ready, timeout_s=240)
        await wait_until(pilot, lambda: "is ready: it is the selected target" in flat_text(app))
        assert isinstance(app.screen, WelcomeScreen)
        assert "is starting" not in flat_text(app)
        await pilot.press("enter")
        await pilot.press("ctrl+q")


# -- issue 10 item 12: bench defaults per target and an estimate before the start -----------------------


async def test_bench_form_picks_defaults_per_target_and_shows_an_estimate() -> None:
    from textual.widgets import SelectionList

    from tui.screens.bench import BenchScreen
    from tui.widgets.bench.form import BenchForm

    ctx = AppContext(
        targets=[
            Target(name="cpu-engine", base_url="http://127.0.0.1:9", model="g", kind=TargetKind.LLAMACPP),
            Target(name="gpu-vllm", base_url="http://127.0.0.1:9", model="g", kind=TargetKind.VLLM),
        ]
    )
    app = make_app(ctx, views=VIEWS)
    async with app.run_test(size=(160, 45)) as pilot:
        await pilot.press("3")
        await wait_until(pilot, lambda: isinstance(app.screen, BenchScreen))
        form = app.screen.query_one(BenchForm)
        targets = form.query_one("#bench-targets", SelectionList)
        levels = form.query_one("#bench-levels", Input)
        estimate = form.query_one("#bench-estimate", Static)
        targets.select("cpu-engine")
        await pilot.pause()
        assert levels.value == "1,2,4"
        assert form.query_one("#bench-prompts", Input).value == "16"
        local_text = str(estimate.content)
        assert "estimated duration: about" in local_text
        targets.deselect("cpu-engine")
        targets.select("gpu-vllm")
        await pilot.pause()
        assert levels.value == "1,4,16"
        assert "estimated duration: about" in str(estimate.content)
        levels.value = "2,8"
        targets.select("cpu-engine")
        await pilot.pause()
        assert levels.value == "2,8"  # typed by the user: kept


async def test_live_numbers_do_not_keep_a_finished_levels_server_counts() -> None:
    from textual.app import App

    from backends.bench.models import Axis, ProgressSnapshot
    from backends.target_types import ServerSnapshot
    from tests.tui.test_tui_bench import fixed_sweep
    from tui.widgets.bench.progress import SweepProgressPanel

    class PanelApp(App[None]):
        def compose(self) -> ComposeResult:
            yield SweepProgressPanel(id="panel")

    sweep = fixed_sweep("twin-1xH100", "cccc2222dddd", 1.0)
    app = PanelApp()
    async with app.run_test(size=SIZE) as pilot:
        panel = app.query_one(SweepProgressPanel)
        panel.begin_run("twin-1xH100", Axis.CONCURRENCY, [1.0, 4.0])
        for result in sweep.levels:
            panel.begin_level(result.index, 10)
            panel.show_snapshot(
                ProgressSnapshot(
                    level_index=result.index, level_label="c", t=1.0, total=10, sent=10, completed=2,
                    failed=0, in_flight=8, output_tokens_per_s=50.0,
                    server=ServerSnapshot(t=1.0, running=8.0, waiting=0.0),
                )
            )  # fmt: skip
            await pilot.pause()
            assert "server 8 running" in str(panel.query_one("#progress-numbers", Static).content)
            panel.finish_level(result)
            await pilot.pause()
            numbers = str(panel.query_one("#progress-numbers", Static).content)
            assert "running" not in numbers and "in flight" not in numbers
            assert f"{result.metrics.completed} done" in numbers
