"""Pictures of the shell and the Deployments view at 120x40 (pytest-textual-snapshot).

Deterministic by construction: fixed targets, no engine started, no health probes, a kubeconfig path
that does not exist (the same text on every machine), no clock in the header, cursors that do not
blink, and every worker finished before the picture. Regenerate with
``.venv/bin/pytest tests/tui/test_tui_snapshots_shell.py --snapshot-update`` and review the SVGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Select

from backends.target_types import Target, TargetKind
from tui.app import VIEWS, ServeDeckApp
from tui.context import AppContext

SIZE = (120, 40)
MISSING_KUBECONFIG = "/nonexistent/servedeck-snapshots/kubeconfig"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SERVEDECK_CONFIG_DIR", "SERVEDECK_DATA_DIR", "SERVEDECK_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("KUBECONFIG", MISSING_KUBECONFIG)


def snapshot_app(*, show_welcome: bool = False) -> ServeDeckApp:
    ctx = AppContext(
        targets=[
            Target(
                name="lab-vllm",
                base_url="http://10.0.0.12:8000",
                model="google/gemma-3-27b-it",
                kind=TargetKind.VLLM,
            )
        ]
    )
    return ServeDeckApp(
        ctx,
        start_local_engine=False,
        show_welcome=show_welcome,
        check_health=False,
        discover_cluster=True,
        views=VIEWS[:1],
    )


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    # The form's YAML pane follows after a debounce: picture it once it has caught up, on any machine.
    for _ in range(100):
        if not getattr(pilot.app.screen, "yaml_pending", False):
            break
        await pilot.pause(0.05)
    await pilot.pause()
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


def steps(*keys: str, then: Any = None) -> Any:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        if keys:
            await pilot.press(*keys)
        if then is not None:
            await then(pilot)
        await settle(pilot)

    return run_before


def test_shell_with_deployments(snap_compare: Any) -> None:
    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=steps())


def test_welcome_on_first_start(snap_compare: Any) -> None:
    assert snap_compare(snapshot_app(show_welcome=True), terminal_size=SIZE, run_before=steps())


def test_help_screen(snap_compare: Any) -> None:
    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=steps("question_mark"))


def test_jump_prompt(snap_compare: Any) -> None:
    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=steps("colon", "d"))


def test_filtered_deployments(snap_compare: Any) -> None:
    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=steps("slash", *"h100"))


def test_new_deployment_form_one_h100(snap_compare: Any) -> None:
    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=steps("n"))


def test_new_deployment_form_does_not_fit_one_l4(snap_compare: Any) -> None:
    async def choose_l4(pilot: Pilot[Any]) -> None:
        pilot.app.screen.query_one("#nd-gpu", Select).value = "l4"
        await pilot.pause()
        pilot.app.screen.query_one("#nd-count", Select).value = 1

    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=steps("n", then=choose_l4))


def test_add_url_dialog(snap_compare: Any) -> None:
    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=steps("a"))


@pytest.mark.parametrize("size", [(160, 45), (100, 30)], ids=["160x45", "100x30"])
def test_new_deployment_form_two_h100_at(snap_compare: Any, size: tuple[int, int]) -> None:
    """Every button on screen, the price with its parts, Apply greyed (no cluster)."""

    async def two_h100(pilot: Pilot[Any]) -> None:
        pilot.app.screen.query_one("#nd-count", Select).value = 2

    assert snap_compare(snapshot_app(), terminal_size=size, run_before=steps("n", then=two_h100))


@pytest.mark.parametrize("size", [(160, 45), (100, 30)], ids=["160x45", "100x30"])
def test_new_deployment_form_cpu_node_at(snap_compare: Any, size: tuple[int, int]) -> None:
    """CPU words (TP ranks/node, memory/node, host RAM) and one KV figure."""

    async def cpu_node(pilot: Pilot[Any]) -> None:
        pilot.app.screen.query_one("#nd-gpu", Select).value = "cpu-c4d"
        await pilot.pause()
        pilot.app.screen.query_one("#nd-count", Select).value = 2

    assert snap_compare(snapshot_app(), terminal_size=size, run_before=steps("n", then=cpu_node))
