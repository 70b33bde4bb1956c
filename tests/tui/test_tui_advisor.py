"""The Advisor view (issue 12 item 2): the advisor in a child process with progress, the ranking,
"deploy this" into the new-deployment form, and one line for bad input."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static

from tests import tui_helpers
from tui.app import VIEWS, ServeDeckApp
from tui.context import AppContext
from tui.screens.advisor import AdvisorScreen, CostChart
from tui.screens.new_deployment import NewDeploymentScreen

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180), pytest.mark.usefixtures("isolated")]
WAIT_S = 90.0


def make_app() -> ServeDeckApp:
    views = [view for view in VIEWS if view.mode in ("advisor", "deployments")]
    views.sort(key=lambda view: view.mode != "advisor")  # the Advisor opens first
    return ServeDeckApp(
        AppContext(),
        start_local_engine=False,
        show_welcome=False,
        check_health=False,
        discover_cluster=False,
        views=views,
    )


wait_until = partial(tui_helpers.wait_until, timeout_s=WAIT_S, poll_s=0.05)


def status(screen: AdvisorScreen) -> str:
    return str(screen.query_one("#adv-status", Static).content)


async def run_small_advice(pilot: Pilot[Any]) -> AdvisorScreen:
    screen = pilot.app.screen
    assert isinstance(screen, AdvisorScreen)
    screen.query_one("#adv-gpus", Input).value = "h100,l4"
    screen.query_one("#adv-prompts", Input).value = "60"
    screen.query_one("#adv-rate", Input).value = "2"
    progress_seen: list[float] = []
    await pilot.press("ctrl+r")
    bar = screen.query_one("#adv-progress", ProgressBar)

    def finished() -> bool:
        if bar.total:
            progress_seen.append(bar.progress)
        return screen.advice is not None and screen.running is None

    await wait_until(pilot, finished)
    assert progress_seen, "the progress bar moved while the advisor ran"
    return screen


@pytest.mark.parametrize("size", [(160, 45), (100, 30)], ids=["160x45", "100x30"])
async def test_the_advisor_runs_in_a_worker_ranks_shapes_and_fits_the_screen(size: tuple[int, int]) -> None:
    async with make_app().run_test(size=size) as pilot:
        screen = await run_small_advice(pilot)
        advice = screen.advice
        assert advice is not None and advice.passing
        table = screen.query_one("#adv-table", DataTable)
        assert table.row_count == len(advice.shapes) + len(advice.skipped)
        first = [str(cell) for cell in table.get_row_at(0)]
        best = advice.passing[0]
        assert first[0] == "1" and first[1] == best.label
        assert "cheapest: " in status(screen) and best.label in status(screen)
        chart = screen.query_one(CostChart)
        assert chart.display is (size[1] >= 40)
        width, height = size
        for button in screen.query(Button):
            region = button.region
            assert region.right <= width and region.bottom <= height, (button.id, region)
            assert region.width > 0 and region.height > 0, button.id
        assert not screen.query_one("#adv-deploy", Button).disabled


async def test_deploy_this_opens_the_form_filled_with_the_shape() -> None:
    async with make_app().run_test(size=(160, 45)) as pilot:
        screen = await run_small_advice(pilot)
        advice = screen.advice
        assert advice is not None
        table = screen.query_one("#adv-table", DataTable)
        table.focus()
        await pilot.press("down")  # the second ranked shape, not simply the default one
        await pilot.pause()
        row = table.cursor_row
        shape = advice.shapes[row]
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, NewDeploymentScreen))
        form = pilot.app.screen
        assert isinstance(form, NewDeploymentScreen)
        await wait_until(pilot, lambda: form.plan.spec is not None and form.plan.spec.gpu is shape.gpu)
        assert form.query_one("#nd-gpu", Select).value == shape.gpu.value
        assert form.query_one("#nd-count", Select).value == shape.gpu_count
        spec = form.plan.spec
        assert (
            spec is not None and spec.gpu_count == shape.gpu_count and spec.model == "google/gemma-3-27b-it"
        )
        assert form.plan.deployable, form.plan.error


@pytest.mark.parametrize(
    ("field", "value", "line"),
    [
        ("#adv-slo", "p99_ttfx:5", "unknown --slo key 'p99_ttfx'"),
        ("#adv-rate", "fast", "rate (req/s) must be a number"),
        ("#adv-gpus", "h100,tpu9", "unknown type 'tpu9'"),
        ("#adv-config", "/nonexistent/config.json", "does not exist"),
    ],
)
async def test_bad_advisor_input_is_one_line_in_the_view(field: str, value: str, line: str) -> None:
    async with make_app().run_test(size=(100, 30)) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, AdvisorScreen)
        screen.query_one(field, Input).value = value
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: screen.running is None and line in status(screen))
        assert "\n" not in status(screen) and screen.advice is None
        assert not screen.query_one("#adv-run", Button).disabled


async def test_a_multi_turn_advice_ranks_in_sessions_per_second_with_the_prefix_hit_rate() -> None:
    async with make_app().run_test(size=(160, 45)) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, AdvisorScreen)
        screen.query_one("#adv-model", Select).value = "gemma-3-4b-it"
        for field, value in [
            ("#adv-gpus", "l4,h100"),
            ("#adv-max-gpus", "1"),
            ("#adv-prompts", "20"),
            ("#adv-rate", "2"),
            ("#adv-slo", "p99_ttft:500"),
            ("#adv-turns", "3"),
            ("#adv-think", "0.5"),
        ]:
            screen.query_one(field, Input).value = value
        await pilot.pause()
        assert str(screen.query_one("#adv-rate-label", Label).content) == "rate sessions/s"
        job = screen.read_job()
        assert (job.turns, job.think_time_s) == (3, 0.5)
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: screen.advice is not None and screen.running is None)
        advice = screen.advice
        assert advice is not None and advice.multi_turn and advice.num_prompts == 20
        assert [shape.label for shape in advice.shapes] == ["1xL4 24GB", "1xH100 80GB"]
        table = screen.query_one("#adv-table", DataTable)
        titles = [str(column.label) for column in table.columns.values()]
        assert "sessions/s/replica" in titles and "prefix hit" in titles, titles
        hit_column = titles.index("prefix hit")
        for row in range(2):
            hit = str(table.get_row_at(row)[hit_column])
            # each turn resends the session's history: the twin's prefix cache answers much of it
            assert hit.endswith("%") and int(hit[:-1]) > 30, hit
        assert "multi-turn sessions a level" in status(screen)
        assert "sessions/s (lower is better)" in str(screen.query_one(CostChart).render())
