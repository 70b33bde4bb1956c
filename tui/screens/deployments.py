"""Deployments view: every target in one table (Kubernetes vLLM, local engine, twins, manual URLs).

The screen is thin: it shows ``app.registry.rows()`` and turns keys into app-level workers (which
outlive the screen) or dialogs. It refreshes on ``TargetsChanged``. While it is showing it reads the
GPU telemetry of every twin target (its own /dcgm) and of every ready Kubernetes deployment (the
dcgm-exporters on its pods' nodes, found and port-forwarded in a worker thread, only its pods' GPUs)
every ``GPU_POLL_S`` for the GPU util and power columns; other rows show a dash, and a deployment
whose exporter cannot be read says why on its detail line.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Header, Input, Static

from backends.target_registry import LOCAL_KEY, DeploymentRow, TargetRegistry, TargetSource, TargetStatus
from backends.target_types import TargetKind
from tui.messages import TargetsChanged
from tui.shell import Shell, shell
from tui.widgets.deploy.dialogs import AddUrlScreen, ConfirmScreen, ScaleScreen
from tui.widgets.deploy.table import DeploymentTable
from tui.widgets.footer import KeysFooter

if TYPE_CHECKING:
    from backends.target_registry.cluster import ClusterGpuExporter
    from backends.telemetry.models import GpuSummary

NEW_DEPLOYMENT_SCREEN = "new-deployment"
# The form is built ahead, once keys have been quiet this long: building it when `n` is pressed (~65
# widgets composed, styled and laid out) took 150-250 ms between key and paint, and building it ahead
# holds the UI for a similar time in small pieces, which a key pressed meanwhile would feel.
FORM_PREBUILD_QUIET_S = 1.0
GPU_POLL_S = 2.0
GPU_READ_TIMEOUT_S = 1.0
_GPU_STATUSES = (TargetStatus.READY, TargetStatus.NOT_CHECKED)
_CLUSTER_GPU_STATUSES = (TargetStatus.READY, TargetStatus.ROLLING_OUT)


def gpu_telemetry_urls(rows: list[DeploymentRow]) -> dict[str, str]:
    """Row key -> where its GPU telemetry is read: a twin's own /dcgm (other targets: none yet)."""
    return {
        row.key: row.target.base_url.rstrip("/") + "/dcgm"
        for row in rows
        if row.target is not None and row.target.kind is TargetKind.TWIN and row.status in _GPU_STATUSES
    }


def cluster_gpu_keys(rows: list[DeploymentRow]) -> list[str]:
    """The Kubernetes deployments whose pods may be serving (their GPU telemetry is looked for)."""
    return [
        row.key
        for row in rows
        if row.source is TargetSource.KUBERNETES
        and row.key.startswith("kube:")
        and row.status in _CLUSTER_GPU_STATUSES
    ]


class ClusterGpus(NamedTuple):
    gpus: dict[str, GpuSummary]
    notes: dict[str, str]  # why a row has no GPU data, or what part of it is missing
    failed: set[str]  # an exporter was forwarded but could not be read: found again next time


def read_cluster_gpus(registry: TargetRegistry, keys: list[str], stale: set[str]) -> ClusterGpus:
    """Each deployment's GPU summary, or why there is none (blocking: discovery and port-forwards).
    ``stale``: keys whose forwarded exporter could not be read last time, found again first."""
    from backends.telemetry.scrape import DcgmScraper, DcgmState, app_hint

    registry.keep_gpu_exporters(keys)
    sources = {key: registry.cluster_gpu_exporter(key, 0.0 if key in stale else 30.0) for key in keys}

    async def read(source: ClusterGpuExporter) -> tuple[GpuSummary | None, str | None]:
        if source.url is None:
            return None, source.message or "GPU metrics: no dcgm-exporter found"
        scraper = DcgmScraper(
            source.url, timeout_s=GPU_READ_TIMEOUT_S, pods=source.pods, namespace=source.namespace
        )
        async with scraper:
            reading = await scraper.read(0.0)
        if reading.state is DcgmState.OK and reading.summary is not None:
            return reading.summary, source.message
        return None, reading.message or f"GPU metrics: {reading.state.value}"

    async def read_all() -> list[tuple[GpuSummary | None, str | None]]:
        return list(await asyncio.gather(*(read(source) for source in sources.values())))

    result = ClusterGpus({}, {}, set())
    for key, (gpu, note) in zip(sources, asyncio.run(read_all()), strict=True):
        if gpu is not None:
            result.gpus[key] = gpu
        elif sources[key].url is not None:
            result.failed.add(key)
        if note:
            result.notes[key] = app_hint(note)
    return result


class DeploymentsScreen(Screen[None]):
    TITLE = "Deployments"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "u",
            "use_target",
            "use",
            tooltip="use the highlighted target in Chat and Bench",
            id="deployments.use",
        ),
        Binding(
            "t",
            "start_stop",
            "start/stop",
            tooltip="start or stop the local engine or a twin",
            id="deployments.start_stop",
        ),
        Binding(
            "n",
            "new_deployment",
            "new",
            tooltip="new deployment: fit, KV capacity, cost, YAML; apply or twin",
            id="deployments.new",
        ),
        Binding(
            "a",
            "add_url",
            "add URL",
            tooltip="add an OpenAI-compatible URL (kept in the config folder)",
            id="deployments.add_url",
        ),
        Binding(
            "d",
            "details",
            "details",
            tooltip="details: pods, events and the log (also enter)",
            id="deployments.details",
        ),
        Binding(
            "l",
            "logs",
            "logs",
            tooltip="stream the log, vLLM's stats line highlighted",
            id="deployments.logs",
        ),
        Binding(
            "f",
            "port_forward",
            "port-forward",
            show=False,
            tooltip="port-forward a Kubernetes deployment to 127.0.0.1",
            id="deployments.port_forward",
        ),
        Binding(
            "s", "scale", "scale", show=False, tooltip="scale a Kubernetes deployment", id="deployments.scale"
        ),
        Binding(
            "ctrl+d",
            "delete",
            "delete",
            tooltip="delete / stop / forget the highlighted row (asks first)",
            id="deployments.delete",
        ),
        Binding(
            "r",
            "refresh",
            "refresh",
            show=False,
            tooltip="check every endpoint and re-list the cluster",
            id="deployments.refresh",
        ),
        Binding(
            "slash",
            "filter",
            "filter",
            key_display="/",
            tooltip="filter rows (! inverts)",
            id="deployments.filter",
        ),
        Binding(
            "escape",
            "clear_filter",
            "clear filter",
            show=False,
            tooltip="clear the filter, else go back",
            id="deployments.clear_filter",
        ),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._filter = ""
        self._cursor_placed = False
        self._gpus: dict[str, GpuSummary] = {}
        self._cluster_gpus: dict[str, GpuSummary] = {}
        self._gpu_notes: dict[str, str] = {}
        self._gpu_failed: set[str] = set()
        self._cluster_reading = False

    @property
    def deck(self) -> Shell:
        return shell(self)

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="deployments-body"):
            yield Input(placeholder="filter (! inverts)", id="deployments-filter", classes="hidden")
            yield DeploymentTable(id="deployments-table")
            yield Static("", id="deployments-detail")
        yield KeysFooter()

    def on_mount(self) -> None:
        self._refresh_table()
        self.query_one(DeploymentTable).focus()
        self.set_timer(FORM_PREBUILD_QUIET_S, self._prebuild_form)
        self.set_interval(GPU_POLL_S, self._poll_gpus)
        self.call_later(self._poll_gpus)

    def _poll_gpus(self) -> None:
        if not self.is_current:
            return
        rows = self.deck.registry.rows()
        urls = gpu_telemetry_urls(rows)
        if urls or self._gpus:
            self.run_worker(self._read_gpus(urls), group="gpu-poll", exclusive=True, exit_on_error=False)
        keys = cluster_gpu_keys(rows)
        if (keys or self._cluster_gpus or self._gpu_notes) and not self._cluster_reading:
            self._cluster_reading = True
            self.run_worker(
                partial(self._read_cluster_gpus, self.deck.registry, keys),
                group="gpu-poll-cluster",
                thread=True,
                exit_on_error=False,
            )

    def _read_cluster_gpus(self, registry: TargetRegistry, keys: list[str]) -> None:
        try:
            result = read_cluster_gpus(registry, keys, self._gpu_failed)
        except Exception as err:  # a cluster that fails mid-read: one line per row, the view goes on
            note = f"GPU metrics: {type(err).__name__}: {err}"
            result = ClusterGpus({}, dict.fromkeys(keys, note), set())
        self.app.call_from_thread(self._cluster_gpus_read, result)

    def _cluster_gpus_read(self, result: ClusterGpus) -> None:
        self._cluster_reading = False
        self._cluster_gpus, self._gpu_notes, self._gpu_failed = result
        self._refresh_table()

    async def _read_gpus(self, urls: dict[str, str]) -> None:
        from backends.telemetry.scrape import DcgmScraper, DcgmState

        async def read(url: str) -> GpuSummary | None:
            async with DcgmScraper(url, timeout_s=GPU_READ_TIMEOUT_S) as scraper:
                reading = await scraper.read(0.0)
            return reading.summary if reading.state is DcgmState.OK else None

        summaries = await asyncio.gather(*(read(url) for url in urls.values()))
        self._gpus = {key: gpu for key, gpu in zip(urls, summaries, strict=True) if gpu is not None}
        self._refresh_table()

    def _install_form(self) -> None:
        # Built once and kept (installed): the form keeps what was typed, and opening it again is instant.
        if not self.app.is_screen_installed(NEW_DEPLOYMENT_SCREEN):
            from tui.screens.new_deployment import NewDeploymentScreen

            self.app.install_screen(NewDeploymentScreen(), NEW_DEPLOYMENT_SCREEN)

    def _prebuild_form(self) -> None:
        """Compose and mount the form off the screen stack, so ``n`` only has to show it."""
        quiet = self.deck.input_quiet_s()
        if quiet < FORM_PREBUILD_QUIET_S:
            self.set_timer(max(FORM_PREBUILD_QUIET_S - quiet, 0.05), self._prebuild_form)
            return
        self._install_form()
        form = self.app.get_screen(NEW_DEPLOYMENT_SCREEN)
        if not form.is_running:
            # Textual mounts a screen when it is first pushed; this is that step on its own (the
            # version is pinned, and a test checks that the prebuilt form opens and works).
            self.app._get_screen(form)

    @property
    def table(self) -> DeploymentTable:
        return self.query_one(DeploymentTable)

    def _refresh_table(self) -> None:
        rows = self.deck.registry.rows()
        gpus = self._gpus | self._cluster_gpus
        self.table.show(
            rows, self._filter, self.deck.ctx.selected_target, gpus, gpu_columns=bool(self._gpu_notes)
        )
        if not self._cursor_placed and self.table.row_count:
            # Start on the local engine, not on the "kubernetes" placeholder row above it.
            self._cursor_placed = True
            self.table.move_cursor_to_key(LOCAL_KEY)
        self._show_detail()

    @on(TargetsChanged)
    def _targets_changed(self) -> None:
        self._refresh_table()

    @on(DataTable.RowHighlighted)
    def _show_detail(self) -> None:
        row = self.table.highlighted
        detail = self.query_one("#deployments-detail", Static)
        if row is None:
            detail.update("no rows match the filter; esc clears it" if self._filter else "")
            return
        parts = [f"{row.name}: {row.status.value}"]
        if row.detail:
            parts.append(row.detail)
        if row.endpoint:
            parts.append(f"endpoint {row.endpoint}")
        if row.key in self._gpu_notes:
            parts.append(self._gpu_notes[row.key])
        detail.update("  ·  ".join(parts))

    def highlighted_row(self) -> DeploymentRow | None:
        row = self.table.highlighted
        if row is None:
            self.notify("no row is highlighted; move to one with the arrow keys", severity="warning")
        return row

    # -- filter ---------------------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#deployments-filter", Input)
        box.remove_class("hidden")
        box.focus()

    @on(Input.Changed, "#deployments-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self._filter = event.value
        self._refresh_table()

    @on(Input.Submitted, "#deployments-filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#deployments-filter", Input)
        if box.has_class("hidden") and not self._filter:
            self.deck.action_go_back()
            return
        box.value = ""
        self._filter = ""
        box.add_class("hidden")
        self.table.focus()
        self._refresh_table()

    # -- row actions ----------------------------------------------------------------------------------

    def action_use_target(self) -> None:
        row = self.highlighted_row()
        if row is None:
            return
        if row.target is None:
            hint = (
                "press t to start it"
                if row.source in (TargetSource.LOCAL, TargetSource.TWIN)
                else "wait for it"
            )
            self.notify(f"{row.name} has no endpoint yet; {hint}", severity="warning")
            return
        self.deck.select_target(row.name)
        self.notify(f"target for Chat and Bench: {row.name}", timeout=3)

    def action_start_stop(self) -> None:
        row = self.highlighted_row()
        if row is None:
            return
        running = row.status in (TargetStatus.READY, TargetStatus.STARTING)
        if row.source in (TargetSource.LOCAL, TargetSource.TWIN) and running:
            self._confirm_stop(row)
        elif row.source is TargetSource.LOCAL:
            self.deck.start_local_engine()
            self.notify("starting the local engine (Gemma 3 270M on llama.cpp) ...", timeout=3)
        elif row.source is TargetSource.TWIN:
            self.deck.start_twin(row.key)
        else:
            self.notify(
                f"{row.name} is not started by ServeDeck; use s to scale a Kubernetes deployment",
                severity="warning",
            )

    def _confirm_stop(self, row: DeploymentRow) -> None:
        """``t`` on a running engine or twin asks first: a stray key must not end a demo's target."""

        def confirmed(answer: bool | None) -> None:
            if not answer:
                return
            if row.source is TargetSource.LOCAL:
                self.deck.stop_local_engine()
                self.notify("stopping the local engine ...", timeout=3)
            else:
                self.deck.stop_twin(row.key)

        question = f"Stop {row.name}? Chats and runs against it are kept; t starts it again."
        self.app.push_screen(ConfirmScreen(question, confirm_label="Stop"), confirmed)

    def action_new_deployment(self) -> None:
        self._install_form()
        self.app.push_screen(NEW_DEPLOYMENT_SCREEN)

    def action_add_url(self) -> None:
        def added(row: DeploymentRow | None) -> None:
            if row is not None:
                self.notify(f"added {row.name} ({row.engine}, {row.model})", timeout=4)

        self.app.push_screen(AddUrlScreen(self.deck.registry), added)

    @on(DataTable.RowSelected)
    def action_details(self) -> None:
        row = self.highlighted_row()
        if row is None:
            return
        from tui.widgets.deploy.details import DeploymentDetailsScreen

        self.app.push_screen(DeploymentDetailsScreen(row.key))

    def action_logs(self) -> None:
        row = self.highlighted_row()
        if row is None:
            return
        from tui.widgets.deploy.details import DeploymentDetailsScreen

        self.app.push_screen(DeploymentDetailsScreen(row.key, show_logs=True))

    def action_port_forward(self) -> None:
        row = self.highlighted_row()
        if row is None:
            return
        if row.source is not TargetSource.KUBERNETES:
            where = f"already reachable at {row.endpoint}" if row.endpoint else "not running"
            self.notify(
                f"port-forward is for Kubernetes deployments; {row.name} is {where}", severity="warning"
            )
            return
        self.deck.port_forward(row.key)

    def action_scale(self) -> None:
        row = self.highlighted_row()
        if row is None:
            return
        if row.source is not TargetSource.KUBERNETES:
            self.notify(
                f"scale is for Kubernetes deployments; {row.name} is {row.source.value}", severity="warning"
            )
            return
        current = int(row.replicas.partition("/")[2] or 0) if "/" in row.replicas else 0

        def scaled(replicas: int | None) -> None:
            if replicas is not None:
                self.deck.scale_deployment(row.key, replicas)

        self.app.push_screen(ScaleScreen(row.name, current), scaled)

    def action_delete(self) -> None:
        row = self.highlighted_row()
        if row is None:
            return
        question = self._delete_question(row)
        if question is None:
            return

        def confirmed(answer: bool | None) -> None:
            if answer:
                self.deck.delete_row(row.key)

        self.app.push_screen(ConfirmScreen(question), confirmed)

    def _delete_question(self, row: DeploymentRow) -> str | None:
        if row.source is TargetSource.KUBERNETES:
            return (
                f"Delete Kubernetes deployment {row.name}? Only the objects ServeDeck labelled are removed; "
                "the model cache volume goes with them."
            )
        if row.source is TargetSource.MANUAL:
            return f"Remove {row.name} ({row.endpoint}) from the list? The server itself is not touched."
        if row.source in (TargetSource.LOCAL, TargetSource.TWIN) and row.status in (
            TargetStatus.READY,
            TargetStatus.STARTING,
        ):
            return f"Stop {row.name}? Chats and runs against it are kept."
        if row.source is TargetSource.GIVEN:
            self.notify(f"{row.name} was given on the command line; it leaves the list when ServeDeck exits")
            return None
        self.notify(f"{row.name} is not running; there is nothing to delete", severity="warning")
        return None

    def action_refresh(self) -> None:
        self.deck.refresh_targets()
        self.notify("checking every endpoint ...", timeout=2)
