"""Deployments view GPU columns (Pilot): a live twin's own /dcgm fills GPU util and power, rising under
load; a target without GPU telemetry shows a dash (the columns appear once a row has telemetry)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial

import httpx
import pytest

from backends.target_types import Target
from backends.targets import discover_target
from backends.twin.dcgm import POWER_MODELS
from backends.twin.engine_config import TwinConfig
from backends.twin.server import TwinServer
from tests import tui_helpers
from tests.fakes.sse_server import FakeSSEServer
from tui.app import VIEWS, ServeDeckApp
from tui.context import AppContext
from tui.widgets.deploy.table import DeploymentTable

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120), pytest.mark.usefixtures("isolated")]
SIZE = (140, 30)


@pytest.fixture
def twin() -> Iterator[TwinServer]:
    server = TwinServer(TwinConfig.build("gemma-3-4b-it", "h100", 1), log_sink=lambda line: None)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def plain_server() -> Iterator[FakeSSEServer]:
    server = FakeSSEServer(mode="tick")
    server.start_in_thread()
    yield server
    server.stop()


wait_until = partial(tui_helpers.wait_until, timeout_s=30.0, poll_s=0.1)


def cell(app: ServeDeckApp, key: str, column: str) -> str:
    table = app.screen.query_one(DeploymentTable)
    return table.get_cell(key, column).plain if table.with_gpu_columns else ""


def watts(app: ServeDeckApp, key: str) -> float | None:
    text = cell(app, key, "gpu_power")
    return None if text in ("", "-") else float(text.replace(",", ""))


async def test_twin_rows_show_gpu_util_and_power_others_a_dash(
    twin: TwinServer, plain_server: FakeSSEServer
) -> None:
    targets: list[Target] = [
        await discover_target(twin.base_url, name="twin-h100"),
        await discover_target(f"http://127.0.0.1:{plain_server.port}", name="plain"),
    ]
    app = ServeDeckApp(
        AppContext(targets=targets),
        start_local_engine=False,
        show_welcome=False,
        check_health=False,
        discover_cluster=False,
        views=VIEWS[:1],
    )
    twin_key, plain_key = "given:twin-h100", "given:plain"
    idle_w = POWER_MODELS[twin.config.gpu].idle_w
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: watts(app, twin_key) is not None)
        assert cell(app, twin_key, "gpu_util").endswith("%")  # discovery's probe may have just run
        assert idle_w <= (watts(app, twin_key) or 0.0) < POWER_MODELS[twin.config.gpu].tdp_w
        assert cell(app, plain_key, "gpu_util") == cell(app, plain_key, "gpu_power") == "-"

        async def load() -> None:
            async with httpx.AsyncClient(base_url=twin.base_url, timeout=60) as client:
                body = {"model": targets[0].model, "prompt": "hi " * 64, "max_tokens": 400}
                body["ignore_eos"] = True
                await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(16)))

        task = asyncio.create_task(load())
        try:
            await wait_until(pilot, lambda: (watts(app, twin_key) or 0.0) > idle_w + 50)
            assert cell(app, twin_key, "gpu_util") != "0%"
        finally:
            await task
        assert cell(app, plain_key, "gpu_power") == "-"
