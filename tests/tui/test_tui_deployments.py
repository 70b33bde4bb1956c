"""The Deployments view and its flows, driven through Pilot against real servers on 127.0.0.1.

Kubernetes flows run against the fake API server of ``tests.fakes.kube_api`` (real HTTP, watch
streams, pod logs, WebSocket port-forward); manual URLs against ``tests.fakes.openai_like_server``;
twins are real twin processes.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, Select, Static

from backends.errors import ConfigError
from backends.target_registry import (
    MANUAL_TARGETS_FILE,
    ManualTargetStore,
    TargetRegistry,
    TargetStatus,
    follow_log_file,
    validate_api_key_env,
)
from tests import tui_helpers
from tests.conftest import require_llama_server
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_objects import servedeck_objects
from tests.fakes.kube_rollout import ScriptedRollout
from tests.fakes.openai_like_server import FakeServer, FakeServerConfig, Flavor
from tests.tui_helpers import notifications
from tui.app import VIEWS, ServeDeckApp
from tui.context import AppContext
from tui.screens import deployments as deployments_screen
from tui.screens.deployments import NEW_DEPLOYMENT_SCREEN
from tui.screens.new_deployment import NewDeploymentScreen
from tui.widgets.deploy.details import DeploymentDetailsScreen
from tui.widgets.deploy.dialogs import AddUrlScreen, ConfirmScreen, ScaleScreen
from tui.widgets.deploy.log_view import STATS_STYLE, DeployLogView, LogLines
from tui.widgets.deploy.table import DeploymentTable

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120), pytest.mark.usefixtures("isolated")]
SIZE = (120, 40)
WAIT_S = 15.0
STATS_LINE = (
    "INFO 05-14 10:22:33 [loggers.py:116] Engine 000: Avg prompt throughput: 1523.4 tokens/s, "
    "Avg generation throughput: 812.7 tokens/s, Running: 37 reqs, Waiting: 0 reqs, "
    "GPU KV cache usage: 43.1%, Prefix cache hit rate: 26.0%"
)


def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "servedeck_config_dir"


wait_until = partial(tui_helpers.wait_until, timeout_s=WAIT_S, poll_s=0.05)


def make_app(ctx: AppContext | None = None, **options: Any) -> ServeDeckApp:
    defaults: dict[str, Any] = {
        "start_local_engine": False,
        "show_welcome": False,
        "check_health": False,
        "discover_cluster": False,
        "views": VIEWS[:1],
    }
    defaults.update(options)
    return ServeDeckApp(ctx, **defaults)


def table_of(app: ServeDeckApp) -> DeploymentTable:
    return app.screen.query_one(DeploymentTable)


def row_names(app: ServeDeckApp) -> list[str]:
    table = table_of(app)
    return [str(table.get_row_at(index)[0]).strip(" ●") for index in range(table.row_count)]


def status_of(app: ServeDeckApp, key: str) -> TargetStatus | None:
    row = app.registry.row(key)
    return row.status if row is not None else None


async def highlight(pilot: Pilot[Any], app: ServeDeckApp, name: str) -> None:
    table = table_of(app)
    table.focus()
    table.move_cursor(row=row_names(app).index(name))
    await pilot.pause()
    assert table.highlighted is not None and table.highlighted.name == name


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- new deployment form ------------------------------------------------------------------------------


async def open_form(pilot: Pilot[Any], app: ServeDeckApp) -> NewDeploymentScreen:
    await pilot.press("n")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, NewDeploymentScreen)
    return screen


async def choose(pilot: Pilot[Any], screen: NewDeploymentScreen, widget_id: str, value: object) -> None:
    screen.query_one(f"#{widget_id}", Select).value = value
    await pilot.pause()


async def test_form_shows_that_gemma_27b_does_not_fit_one_l4() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, app)
        await choose(pilot, form, "nd-model", "google/gemma-3-27b-it")
        await choose(pilot, form, "nd-gpu", "l4")
        await choose(pilot, form, "nd-count", 1)
        assert form.plan.fit is not None and not form.plan.fit.fits
        assert "does not fit 1xL4" in form.plan.fit.message
        assert "51.2 GiB" in form.plan.fit.message
        assert form.plan.yaml_text == ""
        assert form.query_one("#nd-twin", Button).disabled
        assert form.query_one("#nd-apply", Button).disabled
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert any("cannot deploy this spec" in message for message in notifications(app))
        assert app.screen is form


async def test_the_form_is_built_ahead_once_keys_are_quiet_and_opens_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deployments_screen, "FORM_PREBUILD_QUIET_S", 0.5)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(4):  # keys keep coming: nothing is built behind the user's back
            await pilot.press("down")
            await pilot.pause(0.1)
        assert not app.is_screen_installed(NEW_DEPLOYMENT_SCREEN)

        def prebuilt() -> bool:
            return app.is_screen_installed(NEW_DEPLOYMENT_SCREEN) and bool(
                app.get_screen(NEW_DEPLOYMENT_SCREEN).query("#nd-model")
            )

        await wait_until(pilot, prebuilt)
        built = app.get_screen(NEW_DEPLOYMENT_SCREEN)
        assert app.screen is not built  # built, not shown
        form = await open_form(pilot, app)
        assert form is built
        await choose(pilot, form, "nd-gpu", "l4")
        await choose(pilot, form, "nd-count", 1)
        assert form.plan.fit is not None and not form.plan.fit.fits
        assert "does not fit 1xL4" in form.plan.fit.message


async def test_form_renders_valid_yaml_for_one_h100() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, app)
        await choose(pilot, form, "nd-gpu", "h100")
        await choose(pilot, form, "nd-count", 1)
        await pilot.click("#nd-max-len")
        await pilot.press(*"8192")
        await pilot.pause()
        assert form.plan.deployable
        documents = [doc for doc in yaml.safe_load_all(form.plan.yaml_text) if doc]
        kinds = [doc["kind"] for doc in documents]
        assert "Deployment" in kinds and "Service" in kinds
        deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-h100-80gb"
        container = pod["containers"][0]
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
        assert "--max-model-len=8192" in container["args"]
        assert "--tensor-parallel-size=1" in container["args"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["MODEL_ID"] == "google/gemma-3-27b-it"
        assert not form.query_one("#nd-twin", Button).disabled


async def test_form_explains_a_bad_number_and_keeps_the_input() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, app)
        await pilot.click("#nd-util")
        form.query_one("#nd-util", Input).value = ""
        await pilot.press(*"1.5")
        await pilot.pause()
        assert form.plan.error is not None
        assert "gpu-memory-utilization must be in (0, 1]" in form.plan.error
        assert form.query_one("#nd-util", Input).value == "1.5"
        assert form.query_one("#nd-twin", Button).disabled
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, NewDeploymentScreen)


async def test_form_offers_only_gpu_counts_a_machine_has() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, app)
        await choose(pilot, form, "nd-gpu", "l4")
        await choose(pilot, form, "nd-count", 4)
        assert form.plan.fit is not None and form.plan.fit.fits
        await choose(pilot, form, "nd-gpu", "cpu-c4")
        count = form.query_one("#nd-count", Select)
        assert count.value == 1
        assert form.plan.spec is not None and form.plan.spec.is_cpu


async def test_apply_without_a_cluster_says_to_start_a_twin_instead() -> None:
    app = make_app(discover_cluster=True)
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        form = await open_form(pilot, app)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: any("no Kubernetes cluster" in m for m in notifications(app)))
        message = next(m for m in notifications(app) if "no Kubernetes cluster" in m)
        assert "no kubeconfig found" in message and "start the spec as a twin" in message
        # The form stays, so the ctrl+t the message names works where the user is; Apply is greyed.
        assert app.screen is form
        assert form.query_one("#nd-apply", Button).disabled
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: not isinstance(app.screen, NewDeploymentScreen))
        await wait_until(
            pilot, lambda: status_of(app, "twin:gemma-3-27b-it-1xh100") is TargetStatus.READY, timeout_s=90
        )


# -- manual URLs --------------------------------------------------------------------------------------


async def open_add_url(pilot: Pilot[Any], app: ServeDeckApp) -> AddUrlScreen:
    await pilot.press("a")
    await pilot.pause()
    assert isinstance(app.screen, AddUrlScreen)
    return app.screen


async def test_adding_a_dead_url_says_so_and_keeps_what_was_typed(isolated: Path) -> None:
    url = dead_url()
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        dialog = await open_add_url(pilot, app)
        await pilot.press(*url, "enter")
        message = dialog.query_one("#add-url-message")
        await wait_until(pilot, lambda: "connection refused" in str(message.render()))
        text = str(message.render())
        assert f"cannot connect to {url}" in text and "is the server running on that port?" in text
        assert app.screen is dialog
        assert dialog.query_one("#add-url-url", Input).value == url
        assert not dialog.query_one("#add-url-add", Button).disabled
    assert not (config_dir(isolated) / MANUAL_TARGETS_FILE).exists()


async def test_adding_a_live_url_adds_a_row_and_saves_it(isolated: Path) -> None:
    with FakeServer(FakeServerConfig(flavor=Flavor.VLLM, models=["google/gemma-3-27b-it"])) as server:
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await open_add_url(pilot, app)
            await pilot.press(*server.url, "tab", *"lab-h100", "enter")
            await wait_until(pilot, lambda: not isinstance(app.screen, AddUrlScreen))
            await wait_until(pilot, lambda: "lab-h100" in row_names(app))
            row = app.registry.row("manual:lab-h100")
            assert row is not None and row.engine == "vLLM" and row.status is TargetStatus.READY
            assert [target.name for target in app.ctx.targets] == ["lab-h100"]
    saved = json.loads((config_dir(isolated) / MANUAL_TARGETS_FILE).read_text())
    assert saved["targets"][0]["name"] == "lab-h100"
    assert saved["targets"][0]["base_url"] == server.url
    reopened = make_app()
    async with reopened.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "lab-h100" in row_names(reopened))


async def test_a_pasted_api_key_is_refused_without_being_echoed() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        dialog = await open_add_url(pilot, app)
        await pilot.press(*"http://127.0.0.1:8000", "tab", "tab", *"sk-live-abc123", "enter")
        message = dialog.query_one("#add-url-message")
        await wait_until(pilot, lambda: "NAME of an environment variable" in str(message.render()))
        assert "sk-live-abc123" not in str(message.render())


async def test_deleting_a_manual_url_asks_first(isolated: Path) -> None:
    with FakeServer(FakeServerConfig(flavor=Flavor.PLAIN)) as server:
        app = make_app()
        async with app.run_test(size=SIZE) as pilot:
            await app.registry.add_manual_url(server.url, name="scratch")
            await wait_until(pilot, lambda: "scratch" in row_names(app))
            await highlight(pilot, app, "scratch")
            await pilot.press("ctrl+d")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            await pilot.pause()
            assert "scratch" in row_names(app)
            await pilot.press("ctrl+d", "y")
            await wait_until(pilot, lambda: "scratch" not in row_names(app))
    saved = json.loads((config_dir(isolated) / MANUAL_TARGETS_FILE).read_text())
    assert saved["targets"] == []


async def test_health_check_marks_a_dead_given_target_unreachable() -> None:
    from backends.target_types import Target

    ctx = AppContext(targets=[Target(name="gone", base_url=dead_url(), model="m")])
    app = make_app(ctx, check_health=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: status_of(app, "given:gone") is TargetStatus.UNREACHABLE)
        row = app.registry.row("given:gone")
        assert row is not None and "connection refused" in row.detail


# -- filter, use, start/stop ----------------------------------------------------------------------------


async def test_slash_filters_rows_and_bang_inverts() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *"h100")
        await pilot.pause()
        assert row_names(app) == [
            "twin-27b-1xh100",
            "twin-27b-2xh100",
            "twin-27b-4xh100",
        ]
        app.screen.query_one("#deployments-filter", Input).value = "!twin"
        await pilot.pause()
        assert row_names(app) == ["kubernetes", "local"]
        await pilot.press("enter")
        assert isinstance(app.focused, DataTable)
        await pilot.press("escape")
        await pilot.pause()
        assert len(row_names(app)) == 9


async def test_use_on_a_row_without_endpoint_explains_how_to_start_it() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await highlight(pilot, app, "local")
        await pilot.press("u")
        await pilot.pause()
        assert any("local has no endpoint yet; press t to start it" in m for m in notifications(app))
        assert app.ctx.selected_target is None


async def test_port_forward_and_scale_explain_they_are_for_kubernetes() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await highlight(pilot, app, "twin-27b-4xl4")
        await pilot.press("f", "s")
        await pilot.pause()
        messages = notifications(app)
        assert any("port-forward is for Kubernetes deployments" in m for m in messages)
        assert any("scale is for Kubernetes deployments" in m for m in messages)


async def test_start_a_twin_use_it_and_stop_it() -> None:
    app = make_app()
    key = "twin:gemma-3-27b-it-1xh100"
    async with app.run_test(size=SIZE) as pilot:
        await highlight(pilot, app, "twin-27b-1xh100")
        await pilot.press("t")
        await wait_until(pilot, lambda: status_of(app, key) is TargetStatus.READY, timeout_s=90)
        row = app.registry.row(key)
        assert row is not None and row.target is not None and row.endpoint is not None
        models = httpx.get(f"{row.target.base_url}/v1/models", timeout=5).json()
        assert models["data"][0]["id"] == row.target.model
        assert row.target.model.endswith("-twin")
        await pilot.press("u")
        await pilot.pause()
        assert app.ctx.selected_target == "twin-27b-1xh100"
        assert "target: twin-27b-1xh100" in app.sub_title
        for cancel in ("n", "escape"):  # t on a running twin asks first; n and esc keep it running
            await pilot.press("t")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "Stop twin-27b-1xh100?" in str(app.screen.query_one("#confirm-question", Static).content)
            await pilot.press(cancel)
            await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
            await app.workers.wait_for_complete()
            assert status_of(app, key) is TargetStatus.READY
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("enter")
        await wait_until(pilot, lambda: status_of(app, key) is TargetStatus.AVAILABLE)
        assert app.ctx.selected_target is None
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{row.target.base_url}/v1/models", timeout=2)


async def test_start_as_twin_from_the_form_adds_a_running_row() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, app)
        await choose(pilot, form, "nd-model", "google/gemma-3-1b-it")
        await choose(pilot, form, "nd-gpu", "l4")
        await choose(pilot, form, "nd-count", 1)
        await pilot.click("#nd-name")
        await pilot.press(*"tiny-l4")
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: status_of(app, "twin:tiny-l4") is TargetStatus.READY, timeout_s=90)
        assert not isinstance(app.screen, NewDeploymentScreen)
        assert "twin-tiny-l4" in row_names(app)
        await app.workers.wait_for_complete()
        await highlight(pilot, app, "twin-tiny-l4")
        await pilot.press("ctrl+d", "y")
        await wait_until(pilot, lambda: "twin-tiny-l4" not in row_names(app))


# -- Kubernetes -----------------------------------------------------------------------------------------

NS = "servedeck"
NAME = "gemma-27b"


@pytest.fixture
def kube_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        for obj in servedeck_objects(NAME, NS):
            api.put(obj)
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
        yield api


async def test_cluster_deployment_details_logs_forward_scale_and_delete(kube_api: FakeKubeApi) -> None:
    rollout = ScriptedRollout(
        kube_api, NS, NAME, ["pending", "failed_scheduling", "scheduled", "running", "ready"]
    )
    while rollout.advance():
        pass
    key = f"kube:{NS}/{NAME}"
    with FakeServer(FakeServerConfig(flavor=Flavor.VLLM, models=["google/gemma-3-27b-it"])) as pod_server:
        host, port = pod_server.url.removeprefix("http://").split(":")
        kube_api.set_port_backend(NS, rollout.pod_name, 8000, (host, int(port)))
        app = make_app(discover_cluster=True)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: f"{NS}/{NAME}" in row_names(app))
            assert app.ctx.kube_context == "fake"
            assert "context: fake" in app.sub_title
            row = app.registry.row(key)
            assert row is not None
            assert (row.status, row.replicas, row.accelerator) == (TargetStatus.READY, "1/1", "H100 x1")
            assert row.price_per_hour is not None and row.price_per_hour > 10

            await highlight(pilot, app, f"{NS}/{NAME}")
            await pilot.press("d")
            await wait_until(pilot, lambda: isinstance(app.screen, DeploymentDetailsScreen))
            details = app.screen
            pods = details.query_one("#details-pods", DataTable)
            await wait_until(pilot, lambda: pods.row_count == 1)
            assert str(pods.get_row_at(0)[0]) == rollout.pod_name
            events = details.query_one("#details-events")
            await wait_until(pilot, lambda: "FailedScheduling" in str(events.render()))
            log_view = details.query_one(DeployLogView)
            kube_api.append_log(NS, rollout.pod_name, "INFO starting vLLM", STATS_LINE)
            await wait_until(pilot, lambda: log_view.last_stats is not None)
            assert log_view.last_stats is not None and log_view.last_stats.running == 37
            assert "KV cache 43.1%" in str(details.query_one("#log-stats").render())

            await pilot.press("f")
            await wait_until(pilot, lambda: (app.registry.row(key) or row).target is not None)
            forwarded = app.registry.row(key)
            assert forwarded is not None and forwarded.target is not None
            assert forwarded.target.base_url.startswith("http://127.0.0.1:")
            answer = httpx.get(f"{forwarded.target.base_url}/v1/models", timeout=5)
            assert answer.json()["data"][0]["id"] == "google/gemma-3-27b-it"
            await pilot.press("escape")
            await wait_until(pilot, lambda: not isinstance(app.screen, DeploymentDetailsScreen))

            await highlight(pilot, app, f"{NS}/{NAME}")
            await pilot.press("s")
            assert isinstance(app.screen, ScaleScreen)
            replicas = app.screen.query_one("#scale-replicas", Input)
            replicas.value = ""
            await pilot.press("2", "enter")
            await wait_until(
                pilot, lambda: (kube_api.get("Deployment", NAME, NS) or {})["spec"]["replicas"] == 2
            )
            await wait_until(pilot, lambda: (app.registry.row(key) or row).replicas.endswith("/2"))

            await pilot.press("ctrl+d")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_until(pilot, lambda: kube_api.get("Deployment", NAME, NS) is None)
            await wait_until(pilot, lambda: f"{NS}/{NAME}" not in row_names(app))
            assert kube_api.get("Namespace", NS) is not None


async def test_cluster_errors_are_one_line_in_the_table(kube_api: FakeKubeApi) -> None:
    kube_api.deny("list", "deployments")
    app = make_app(discover_cluster=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: status_of(app, "kube") is TargetStatus.UNREACHABLE)
        row = app.registry.row("kube")
        assert row is not None and "forbidden" in row.detail.lower()
        assert "\n" not in row.detail


# -- logs ----------------------------------------------------------------------------------------------


class _LogApp(App[None]):
    def compose(self) -> ComposeResult:
        yield DeployLogView(id="log")


async def test_log_view_highlights_the_vllm_stats_line() -> None:
    app = _LogApp()
    async with app.run_test(size=SIZE) as pilot:
        view = app.query_one(DeployLogView)
        view.post_message(LogLines(["plain line", STATS_LINE, "ERROR something broke"]))
        await wait_until(pilot, lambda: view.line_count == 3)
        assert view.last_stats is not None
        assert view.last_stats.generation_tokens_per_s == pytest.approx(812.7)
        summary = view.query_one("#log-stats")
        assert "generation 812.7 tok/s" in str(summary.render())
        assert "prefix hits 26.0%" in str(summary.render())
        assert STATS_STYLE in str(summary.styles) or view.last_stats.waiting == 0


def test_follow_log_file_tails_then_follows(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("old 1\nold 2\n")
    stop = False
    batches = follow_log_file(log, lambda: stop)
    assert next(batches) == ["old 1", "old 2"]
    assert next(batches) == []
    with log.open("a") as handle:
        handle.write("new 3\npartial")
    assert next(batches) == ["new 3"]
    stop = True
    assert list(batches) == []


# -- registry rules ------------------------------------------------------------------------------------


def test_api_key_field_takes_an_environment_variable_name() -> None:
    assert validate_api_key_env(" OPENAI_API_KEY ") == "OPENAI_API_KEY"
    assert validate_api_key_env("") is None
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        validate_api_key_env("sk-abc")


def test_manual_store_reports_a_newer_version_and_does_not_overwrite_it(tmp_path: Path) -> None:
    store = ManualTargetStore(tmp_path)
    store.path.write_text('{"version": 9, "targets": []}')
    with pytest.raises(ConfigError, match="version 9"):
        store.load()
    registry = TargetRegistry(manual_store=store, twin_specs=[])
    registry.load_manual()
    assert registry.load_error is not None
    assert store.path.read_text() == '{"version": 9, "targets": []}'


async def test_registry_refuses_duplicate_urls_and_names(tmp_path: Path) -> None:
    with FakeServer(FakeServerConfig(flavor=Flavor.PLAIN)) as server:
        registry = TargetRegistry(manual_store=ManualTargetStore(tmp_path), twin_specs=[])
        await registry.add_manual_url(server.url, name="one")
        with pytest.raises(ConfigError, match="already in the list"):
            await registry.add_manual_url(f"{server.url}/v1/")
        with pytest.raises(ConfigError, match="already exists"):
            await registry.add_manual_url("http://127.0.0.1:1", name="one")
        with pytest.raises(ConfigError, match="no manual target named"):
            registry.remove_manual("two")


async def test_apply_from_the_form_creates_the_deployment_in_the_cluster(
    kube_api: FakeKubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    app = make_app(discover_cluster=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.ctx.kube_context == "fake")
        form = await open_form(pilot, app)
        await choose(pilot, form, "nd-model", "google/gemma-3-4b-it")
        await choose(pilot, form, "nd-gpu", "l4")
        await choose(pilot, form, "nd-count", 1)
        await pilot.click("#nd-namespace")
        form.query_one("#nd-namespace", Input).value = NS
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: any("HF_TOKEN is not set" in m for m in notifications(app)))
        assert kube_api.get("Deployment", "gemma-3-4b-it-1xl4", NS) is None

        monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
        form = await open_form(pilot, app)
        await choose(pilot, form, "nd-model", "google/gemma-3-4b-it")
        await choose(pilot, form, "nd-gpu", "l4")
        await choose(pilot, form, "nd-count", 1)
        form.query_one("#nd-namespace", Input).value = NS
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: kube_api.get("Deployment", "gemma-3-4b-it-1xl4", NS) is not None)
        await wait_until(pilot, lambda: f"{NS}/gemma-3-4b-it-1xl4" in row_names(app))
        row = app.registry.row(f"kube:{NS}/gemma-3-4b-it-1xl4")
        assert row is not None and row.accelerator == "L4 x1" and row.replicas == "0/1"
        assert any("applied gemma-3-4b-it-1xl4 to fake" in m for m in notifications(app))
        assert not any("hf_xxxx" in m for m in notifications(app))


async def test_details_show_a_cluster_error_in_place(kube_api: FakeKubeApi) -> None:
    rollout = ScriptedRollout(kube_api, NS, NAME, ["pending", "scheduled", "running", "ready"])
    while rollout.advance():
        pass
    kube_api.deny("list", "events", NS)
    app = make_app(discover_cluster=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: f"{NS}/{NAME}" in row_names(app))
        await highlight(pilot, app, f"{NS}/{NAME}")
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, DeploymentDetailsScreen))
        events = app.screen.query_one("#details-events")
        await wait_until(pilot, lambda: "forbidden" in str(events.render()).lower())
        assert not any("forbidden" in m.lower() for m in notifications(app))


# -- issue 10: errors are toasts, custom twins, one price, CPU words, the form's buttons -----------------

BACKEND_DOWN = "backend down (test)"


def panel_text(form: NewDeploymentScreen) -> str:
    """The fit / cost panel of the form as plain text (one long line a row, nothing wrapped)."""
    from rich.console import Console

    console = Console(width=300, record=True)
    console.print(form.query_one("#new-deployment-fit", Static).content)
    return console.export_text()


class FailingRegistry(TargetRegistry):
    """Lists rows as usual, but every call that would reach an engine, a twin or a cluster fails."""


def _fail(*_args: Any, **_kwargs: Any) -> Any:
    raise ConfigError(BACKEND_DOWN)


async def _fail_async(*_args: Any, **_kwargs: Any) -> Any:
    raise ConfigError(BACKEND_DOWN)


for _name in [
    "add_twin",
    "start_twin",
    "stop_twin",
    "apply_spec",
    "port_forward",
    "scale",
    "delete",
    "start_local_engine",
    "stop_local_engine",
    "refresh_cluster",
    "follow_logs",
    "cluster_state",
    "remove_manual",
]:
    setattr(FailingRegistry, _name, _fail)
FailingRegistry.probe = _fail_async  # type: ignore[method-assign]
FailingRegistry.add_manual_url = _fail_async  # type: ignore[method-assign]


async def _back_to_deployments(pilot: Pilot[Any], app: ServeDeckApp) -> None:
    while len(app.screen_stack) > 1:
        app.pop_screen()
        await pilot.pause()


async def test_every_action_with_a_failing_backend_is_a_toast(isolated: Path) -> None:
    from backends.target_types import Target

    ctx = AppContext(targets=[Target(name="given-one", base_url=dead_url(), model="m")])
    app = make_app(ctx)
    app.registry = FailingRegistry(
        manual_store=ManualTargetStore(config_dir(isolated)),
        given=list(ctx.targets),
        on_change=app._registry_changed_from_any_thread,
    )
    screen_keys = ["u", "t", "d", "l", "f", "s", "ctrl+d", "r"]
    async with app.run_test(size=SIZE) as pilot:
        for name in row_names(app):
            for key in screen_keys:
                await highlight(pilot, app, name)
                await pilot.press(key)
                await pilot.pause()
                if isinstance(app.screen, ConfirmScreen):
                    await pilot.press("y")
                elif isinstance(app.screen, ScaleScreen):
                    await pilot.press("3", "enter")
                await app.workers.wait_for_complete()
                await pilot.pause()
                await _back_to_deployments(pilot, app)
                assert app.is_running, f"{key} on {name} ended the app"
        await pilot.press("a")
        await pilot.press(*"http://127.0.0.1:9", "enter")
        await app.workers.wait_for_complete()
        await _back_to_deployments(pilot, app)
        form = await open_form(pilot, app)
        for key in ("ctrl+t", "ctrl+s", "ctrl+w"):
            await pilot.press(key)
            await app.workers.wait_for_complete()
            await pilot.pause()
            if app.screen is not form:
                await open_form(pilot, app)
        for button in ("#nd-twin", "#nd-save"):
            form.query_one(button, Button).press()
            await pilot.pause()
            if app.screen is not form:
                await open_form(pilot, app)
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert app.is_running
        failures = [m for m in notifications(app) if BACKEND_DOWN in m]
        assert len(failures) >= 10
    assert app.return_code in (0, None)


async def test_a_custom_spec_twin_gets_its_own_row_and_a_second_start_is_a_toast() -> None:
    app = make_app()
    async with app.run_test(size=(160, 45)) as pilot:

        async def fill_form() -> NewDeploymentScreen:
            form = await open_form(pilot, app)
            await choose(pilot, form, "nd-gpu", "h100")
            await choose(pilot, form, "nd-count", 2)
            form.query_one("#nd-max-len", Input).value = "8192"
            form.query_one("#nd-max-seqs", Input).value = "64"
            await pilot.pause()
            return form

        await fill_form()
        await pilot.press("ctrl+t")
        key = "twin:gemma-3-27b-it-2xh100-8k-s64"
        await wait_until(pilot, lambda: status_of(app, key) is TargetStatus.READY, timeout_s=90)
        assert status_of(app, "twin:gemma-3-27b-it-2xh100") is TargetStatus.AVAILABLE
        assert "twin-27b-2xh100-8k-s64" in row_names(app)
        assert "twin-27b-2xh100" in row_names(app)
        row = app.registry.row(key)
        assert row is not None and "max-num-seqs 64" in row.detail and "max-model-len 8,192" in row.detail
        spec = app.registry.twin_spec(key)
        assert spec is not None and spec.max_num_seqs == 64 and spec.max_model_len == 8192
        await app.workers.wait_for_complete()

        form = await fill_form()
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert app.is_running
        assert any("already ready with this spec" in m for m in notifications(app))
        assert app.screen is form or not isinstance(app.screen, NewDeploymentScreen)
        await app.workers.wait_for_complete()
        await _back_to_deployments(pilot, app)
        await highlight(pilot, app, "twin-27b-2xh100-8k-s64")
        await pilot.press("ctrl+d", "y")
        await wait_until(pilot, lambda: "twin-27b-2xh100-8k-s64" not in row_names(app))


@pytest.mark.parametrize(("gpu", "count"), [("h100", 1), ("h100", 2), ("l4", 4), ("cpu-c4", 1)])
async def test_the_table_and_the_form_show_one_price_with_its_parts(gpu: str, count: int) -> None:
    from tui.widgets.deploy.table import format_price

    app = make_app()
    async with app.run_test(size=(160, 45)) as pilot:
        form = await open_form(pilot, app)
        await choose(pilot, form, "nd-gpu", gpu)
        await choose(pilot, form, "nd-count", count)
        spec = form.plan.spec
        assert spec is not None
        row = app.registry.row(f"twin:{spec.name}")
        assert row is not None and row.price_per_hour is not None
        panel = panel_text(form)
        assert f"${format_price(row.price_per_hour)}/h" in panel
        for part in ("cluster fee $", "storage $", "x "):
            assert part in panel


async def test_a_cpu_node_form_uses_cpu_words_and_one_kv_figure() -> None:
    app = make_app()
    async with app.run_test(size=(160, 45)) as pilot:
        form = await open_form(pilot, app)
        await choose(pilot, form, "nd-gpu", "cpu-c4d")
        await choose(pilot, form, "nd-count", 2)
        panel = panel_text(form)
        assert "memory/GPU" not in panel and "TP 2" not in panel
        assert "memory/node" in panel and "2 TP ranks on one node" in panel
        kv_figures = {part.split(" GiB")[0] for part in panel.split("KV cache ")[1:] if " GiB" in part}
        assert kv_figures == {"80.0"}
        assert "2 ranks x 40 GiB" in panel
        assert str(form.query_one("#nd-count-label", Static).content) == "TP ranks/node"
        assert form.query_one("#nd-util", Input).disabled


async def test_reopening_the_form_starts_at_the_top_not_on_a_button() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, app)
        form.query_one("#nd-cancel", Button).focus()
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        form = await open_form(pilot, app)
        assert app.focused is form.query_one("#nd-model", Select)


async def test_save_yaml_writes_the_manifests_under_the_data_folder(isolated: Path) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, app)
        await choose(pilot, form, "nd-gpu", "h100")
        await pilot.press("ctrl+w")
        await pilot.pause()
        path = isolated / "servedeck_data_dir" / "manifests" / "gemma-3-27b-it-1xh100.yaml"
        assert path.read_text() == form.plan.yaml_text
        assert any(str(path) in m for m in notifications(app))


@pytest.mark.parametrize("size", [(100, 30), (160, 45)])
async def test_every_form_button_is_on_screen(size: tuple[int, int]) -> None:
    app = make_app()
    async with app.run_test(size=size) as pilot:
        form = await open_form(pilot, app)
        await pilot.pause()
        for button in form.query(Button):
            region = button.region
            assert region.width > 0 and region.right <= size[0] and region.bottom <= size[1], button.id


async def test_the_endpoint_column_widens_when_an_endpoint_appears() -> None:
    from backends.target_registry import DeploymentRow, TargetSource

    class TableApp(App[None]):
        def compose(self) -> ComposeResult:
            yield DeploymentTable()

    def rows(endpoint: str | None) -> list[DeploymentRow]:
        return [
            DeploymentRow(
                key="twin:x", name="twin-x", source=TargetSource.TWIN, engine="vLLM twin", model="m",
                accelerator="H100 x1", status=TargetStatus.READY, endpoint=endpoint,
            )
        ]  # fmt: skip

    app = TableApp()
    async with app.run_test(size=(160, 20)) as pilot:
        table = app.query_one(DeploymentTable)
        table.show(rows(None), "", None)
        await pilot.pause()
        url = "http://127.0.0.1:54321"
        table.show(rows(f"{url}/v1"), "", None)
        await pilot.pause()
        assert table.columns["endpoint"].content_width >= len(url)
        assert url in "".join(segment.text for segment in table.render_line(1))


async def test_an_endpoint_drawn_before_the_table_is_idle_is_not_cut_to_its_old_width() -> None:
    """The screen may paint between a cell update and the table's idle pass that widens the column;
    that paint must not stick (it showed ``http://1`` until something else changed)."""
    from backends.target_registry import DeploymentRow, TargetSource

    class TableApp(App[None]):
        def compose(self) -> ComposeResult:
            yield DeploymentTable()

    def rows(endpoint: str | None) -> list[DeploymentRow]:
        return [
            DeploymentRow(
                key="local", name="local", source=TargetSource.LOCAL, engine="llama.cpp", model="m",
                accelerator="CPU", status=TargetStatus.READY, endpoint=endpoint,
            )
        ]  # fmt: skip

    app = TableApp()
    async with app.run_test(size=(160, 20)) as pilot:
        table = app.query_one(DeploymentTable)
        table.show(rows(None), "", None)
        await pilot.pause()
        url = "http://127.0.0.1:41089"
        table.show(rows(f"{url}/v1"), "", None)
        table.render_line(1)  # a paint before the idle pass
        await pilot.pause()
        assert url in "".join(segment.text for segment in table.render_line(1))


async def test_the_local_engine_endpoint_shows_in_full_once_it_is_ready(isolated: Path) -> None:
    from backends.target_registry import LOCAL_KEY

    require_llama_server()
    app = make_app(start_local_engine=True)
    async with app.run_test(size=(160, 45)) as pilot:
        await wait_until(pilot, lambda: status_of(app, LOCAL_KEY) is TargetStatus.READY, timeout_s=90)
        await pilot.pause(0.3)
        row = app.registry.row(LOCAL_KEY)
        assert row is not None and row.endpoint is not None
        url = row.endpoint.removesuffix("/v1")
        table = table_of(app)
        line = row_names(app).index("local") + 1
        assert url in "".join(segment.text for segment in table.render_line(line))
        await app.workers.wait_for_complete()


@pytest.mark.parametrize("size", [(100, 30), (160, 45)])
async def test_the_stop_question_and_its_buttons_fit(size: tuple[int, int]) -> None:
    answers: list[bool | None] = []

    class DialogApp(App[None]):
        def on_mount(self) -> None:
            question = "Stop twin-27b-2xh100-8k-s64? Chats and runs against it are kept; t starts it again."
            self.push_screen(ConfirmScreen(question, confirm_label="Stop"), answers.append)

    app = DialogApp()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ConfirmScreen)
        for widget in (screen.query_one("#confirm-question", Static), *screen.query(Button)):
            region = widget.region
            assert region.width > 0 and region.right <= size[0] and region.bottom <= size[1], widget.id
        assert "starts it again" in str(screen.query_one("#confirm-question", Static).render())
        await pilot.press("enter")
        await pilot.pause()
    assert answers == [True]
