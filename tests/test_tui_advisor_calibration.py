"""The Advisor view states that its predictions are uncalibrated and where their expected error is written."""

from __future__ import annotations

import pytest
from textual.widgets import Static

from backends.twin.calibration import UNCALIBRATED_NOTE
from tests.test_tui_advisor import anyio_backend, isolated, make_app, run_small_advice

__all__ = ["anyio_backend", "isolated"]  # the fixtures, used by name
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


@pytest.mark.parametrize("size", [(160, 45), (100, 30)], ids=["160x45", "100x30"])
async def test_the_ranking_says_the_twin_is_uncalibrated(size: tuple[int, int]) -> None:
    async with make_app().run_test(size=size) as pilot:
        line = pilot.app.screen.query_one("#adv-calibration", Static)
        assert not line.display  # nothing predicted yet
        screen = await run_small_advice(pilot)
        assert line.display and str(line.content) == f"predictions: {UNCALIBRATED_NOTE}"
        assert "CALIBRATION.md section 9" in str(line.content)
        region = line.region
        assert region.height >= 1 and region.bottom <= size[1], region
        assert screen.query_one("#adv-table").region.height >= 3
