"""The new-deployment form offers every built-in model and any model from a config.json (issue 15 item 2)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, Select, Static

from manifests.model_catalog import CATALOG, CATALOG_MODELS, all_profiles
from tests import tui_helpers
from tui.app import VIEWS, ServeDeckApp
from tui.context import AppContext
from tui.screens.new_deployment import ConfigPickerScreen, NewDeploymentScreen

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120), pytest.mark.usefixtures("isolated")]
WAIT_S = 15.0


def make_app() -> ServeDeckApp:
    return ServeDeckApp(
        AppContext(),
        start_local_engine=False,
        show_welcome=False,
        check_health=False,
        discover_cluster=False,
        views=VIEWS[:1],
    )


wait_until = partial(tui_helpers.wait_until, timeout_s=WAIT_S, poll_s=0.05)


def fit_text(screen: Any) -> str:
    """The fit / cost panel as plain text, one long line a row."""
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(screen.query_one("#new-deployment-fit", Static).content)
    return console.export_text()


def from_config(form: NewDeploymentScreen) -> bool:
    return form.plan.spec is not None and form.plan.spec.custom_profile is not None


async def open_form(pilot: Pilot[Any]) -> NewDeploymentScreen:
    await pilot.press("n")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, NewDeploymentScreen))
    return pilot.app.screen  # type: ignore[return-value]


def qwen3_32b_config(folder: Path) -> Path:
    entry = next(m for m in CATALOG_MODELS if m.hf_id == "Qwen/Qwen3-32B")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps({**entry.config, "_name_or_path": "acme/qwen3-32b-finetune"}))
    return path


async def test_the_form_offers_every_built_in_model_and_follows_a_catalog_one() -> None:
    async with make_app().run_test(size=(160, 45)) as pilot:
        form = await open_form(pilot)
        select = form.query_one("#nd-model", Select)
        offered = {value for _label, value in select._options if value is not Select.BLANK}
        assert offered == {profile.hf_id for profile in all_profiles().values()}
        assert {p.hf_id for p in CATALOG.values()} <= offered and len(CATALOG) >= 6
        select.value = "Qwen/Qwen3-32B"
        form.query_one("#nd-count", Select).value = 2  # 64 GB of bf16 weights: one H100 holds no KV cache
        await wait_until(pilot, lambda: form.plan.spec is not None and form.plan.spec.model.endswith("32B"))
        assert form.plan.deployable, form.plan.error
        await wait_until(pilot, lambda: not form.yaml_pending)
        assert "Qwen/Qwen3-32B" in form.plan.yaml_text
        assert "✔ fits" in fit_text(form)


async def test_a_config_json_path_sizes_any_model_and_a_bad_one_is_one_line(tmp_path: Path) -> None:
    good = qwen3_32b_config(tmp_path / "finetune")
    bad = tmp_path / "bad" / "config.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}))
    async with make_app().run_test(size=(160, 45)) as pilot:
        form = await open_form(pilot)
        form.query_one("#nd-count", Select).value = 2
        path_box = form.query_one("#nd-config", Input)
        path_box.value = str(good.parent)  # a directory holding config.json
        await wait_until(pilot, lambda: from_config(form))
        spec = form.plan.spec
        assert spec is not None and spec.model == "acme/qwen3-32b-finetune"
        assert form.plan.deployable, form.plan.error
        assert form.query_one("#nd-model", Select).disabled
        await wait_until(pilot, lambda: not form.yaml_pending)
        assert "acme/qwen3-32b-finetune" in form.plan.yaml_text

        path_box.value = str(bad)
        await wait_until(pilot, lambda: form.plan.error is not None and "config" in form.plan.error)
        line = form.plan.error or ""
        assert "\n" not in line and str(bad) in line and "num_attention_heads" in line, line
        assert line in fit_text(form)
        assert form.query_one("#nd-twin", Button).disabled

        path_box.value = str(tmp_path / "missing.json")
        await wait_until(pilot, lambda: form.plan.error is not None and "does not exist" in form.plan.error)
        path_box.value = ""
        await wait_until(pilot, lambda: form.plan.deployable and form.plan.spec is not None)
        assert form.plan.spec is not None and form.plan.spec.custom_profile is None
        assert not form.query_one("#nd-model", Select).disabled


async def test_the_file_picker_fills_the_path(tmp_path: Path) -> None:
    good = qwen3_32b_config(tmp_path / "picked")
    async with make_app().run_test(size=(100, 30)) as pilot:
        form = await open_form(pilot)
        form.query_one("#nd-browse", Button).press()
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfigPickerScreen))
        picker = pilot.app.screen
        assert isinstance(picker, ConfigPickerScreen)
        picker.query_one("#picker-path", Input).value = str(good)
        picker.query_one("#picker-use", Button).press()
        await wait_until(pilot, lambda: pilot.app.screen is form)
        assert form.query_one("#nd-config", Input).value == str(good)
        await wait_until(pilot, lambda: from_config(form))
        assert form.plan.spec is not None and form.plan.spec.model == "acme/qwen3-32b-finetune"
