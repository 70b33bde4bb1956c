"""The Advisor view states whether its predictions are calibrated: the uncalibrated note, or a saved profile
picked in the form (its name, runs and expected error), which times that profile's GPU type only."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from textual.widgets import Input, Select, Static

from backends.twin import calibration
from backends.twin.calibration import UNCALIBRATED_NOTE, CalibrationProfile, LevelFit, LevelPoint
from backends.twin.engine_config import TwinConstants
from manifests.gpus import GpuType
from tests.tui.test_tui_advisor import make_app, run_small_advice, status, wait_until
from tui.screens.advisor import AdvisorScreen

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180), pytest.mark.usefixtures("isolated")]


@pytest.mark.parametrize("size", [(160, 45), (100, 30)], ids=["160x45", "100x30"])
async def test_the_ranking_says_the_twin_is_uncalibrated(size: tuple[int, int]) -> None:
    async with make_app().run_test(size=size) as pilot:
        line = pilot.app.screen.query_one("#adv-calibration", Static)
        assert not line.display  # nothing predicted yet
        picker = pilot.app.screen.query_one("#adv-calibration-select", Select)
        assert picker.region.width > 0 and picker.region.right <= size[0], picker.region
        screen = await run_small_advice(pilot)
        assert line.display and str(line.content) == f"predictions: {UNCALIBRATED_NOTE}"
        assert "CALIBRATION.md section 9" in str(line.content)
        region = line.region
        assert region.height >= 1 and region.bottom <= size[1], region
        assert screen.query_one("#adv-table").region.height >= 3


def _save_profile() -> None:
    point = LevelPoint(output_throughput=100.0, ttft_p50=50.0, ttft_p99=90.0, tpot_p50=20.0)
    calibration.save_profile(
        CalibrationProfile(
            name="lab",
            gpu=GpuType.H100,
            gpu_count=1,
            model="gemma-3-27b-it",
            constants=TwinConstants(step_overhead_scale=3.0, bandwidth_scale=0.8),
            runs=["run-a", "run-b"],
            created_at=datetime.now(UTC),
            error_before={"output_throughput": 0.2, "tpot_p50": 0.25},
            error_after={"output_throughput": 0.02, "tpot_p50": 0.03},
            levels=[
                LevelFit(
                    run_id="run-a",
                    label="4 req/s",
                    measured=point,
                    before=point.model_copy(update={"tpot_p50": 25.0, "ttft_p99": 99.0}),
                    after=point.model_copy(update={"tpot_p50": 20.4}),
                )
            ],
        )
    )


async def test_a_saved_profile_is_picked_in_the_form_and_times_its_gpu_only() -> None:
    _save_profile()
    async with make_app().run_test(size=(160, 45)) as pilot:
        screen = pilot.app.screen
        assert isinstance(screen, AdvisorScreen)
        picker = screen.query_one("#adv-calibration-select", Select)
        picker.value = "lab"
        await pilot.pause()
        picked = str(screen.query_one("#adv-calibration", Static).content)
        assert "picked calibrated: profile 'lab'" in picked and "(defaults: throughput 20.0%" in picked
        # every metric the profile stores, as `twin calibrate` prints them
        assert (
            "4 req/s: throughput +0.0%->+0.0%, TTFT p50 +0.0%->+0.0%, TTFT p99 +10.0%->+0.0%, "
            "TPOT p50 +25.0%->+2.0%" in picked
        ), picked
        screen.query_one("#adv-gpus", Input).value = "l4"
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: screen.running is None and "cannot time l4" in status(screen))
        screen.query_one("#adv-gpus", Input).value = ""
        screen.query_one("#adv-prompts", Input).value = "60"
        screen.query_one("#adv-rate", Input).value = "2"
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: screen.advice is not None and screen.running is None)
        advice = screen.advice
        assert advice is not None and advice.shapes
        assert {shape.gpu for shape in advice.shapes} == {GpuType.H100}
        line = str(screen.query_one("#adv-calibration", Static).content)
        assert "calibrated: profile 'lab' (1xh100" in line and "expected error throughput 2.0%" in line, line
        assert "runs run-a, run-b" in line
