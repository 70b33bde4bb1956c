"""The scripted demo (`servedeck demo`) runs start to finish against the real local engine and a twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import require_llama_server
from tui.demo import DemoApp

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.engine,
    pytest.mark.timeout(420),
    pytest.mark.usefixtures("isolated"),
]


async def test_the_demo_chats_races_sweeps_overlays_and_exports_a_chart(tmp_path: Path) -> None:
    from backends.engines.local import LocalEngineConfig
    from sessions.run_models import RunFilter
    from sessions.store import SessionStore

    require_llama_server()
    out = tmp_path / "demo"
    app = DemoApp(out, pace=0.05, exit_when_done=False, local_engine_config=LocalEngineConfig(parallel=4))
    async with app.run_test(size=(160, 45)) as pilot:
        while not app.done.is_set():
            await pilot.pause(0.1)
        assert app.error is None, app.error
        assert app.errors_shown == []
        assert app.exported is not None
        svg = app.exported.read_text()
        assert svg.startswith("<svg") or "<svg" in svg[:200]
        assert app.current_mode == "bench"
        await pilot.press("ctrl+q")
    # What the tour left behind: the exported files and the History of both chats and both runs.
    exports = sorted(path.suffix for path in (out / "exports").iterdir())
    assert ".csv" in exports and ".json" in exports and ".svg" in exports
    for json_file in (out / "exports").glob("*.json"):
        json.loads(json_file.read_text())
    with SessionStore.open(out / "store") as store:
        runs = store.runs.list_runs(RunFilter())
    assert len(runs) == 2
    assert {run.status.value for run in runs} == {"complete"}
    assert any("twin" in run.target_name for run in runs)
