"""Details of one deployment: what it is, its pods and events (Kubernetes), and its streaming log."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static
from textual.worker import get_current_worker

from backends.target_registry import DeploymentRow, TargetSource
from tui.messages import TargetsChanged
from tui.shell import Shell, shell
from tui.widgets.deploy.log_view import DeployLogView, LineBatcher, LogLines
from tui.widgets.deploy.table import STATUS_STYLES, format_price
from tui.widgets.footer import KeysFooter

CLUSTER_REFRESH_S = 5.0


def info_table(row: DeploymentRow) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold", min_width=12)
    table.add_column()
    table.add_row("name", row.name)
    table.add_row("source", row.source.value)
    table.add_row("engine", row.engine)
    table.add_row("model", row.model)
    table.add_row("accelerator", row.accelerator)
    table.add_row("ready", row.replicas)
    table.add_row("status", Text(row.status.value, style=STATUS_STYLES.get(row.status, "")))
    table.add_row("$/h", format_price(row.price_per_hour))
    table.add_row("endpoint", row.endpoint or "-")
    if row.detail:
        table.add_row("note", row.detail)
    return table


class DeploymentDetailsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "back", id="details.back"),
        Binding("u", "use_target", "use", id="details.use"),
        Binding("f", "port_forward", "port-forward", id="details.port_forward"),
        Binding("s", "scale", "scale", show=False, id="details.scale"),
        Binding("r", "refresh", "refresh", id="details.refresh"),
    ]

    def __init__(self, key: str, *, show_logs: bool = False) -> None:
        super().__init__()
        self._key = key
        self._show_logs = show_logs

    @property
    def deck(self) -> Shell:
        return shell(self)

    @property
    def row(self) -> DeploymentRow | None:
        return self.deck.registry.row(self._key)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="details-top"):
            yield Static("", id="details-info")
            with Vertical(id="details-cluster"):
                yield DataTable(id="details-pods", cursor_type="row")
                yield Static("", id="details-events")
        yield DeployLogView(id="details-log")
        yield KeysFooter()

    def on_mount(self) -> None:
        row = self.row
        self.title = f"Deployment {row.name}" if row is not None else "Deployment"
        pods = self.query_one("#details-pods", DataTable)
        for label in ("Pod", "Phase", "Ready", "Restarts", "Node"):
            pods.add_column(label, key=label.lower())
        self._show_row()
        if row is not None and row.source is TargetSource.KUBERNETES:
            self._load_cluster_state()
            self.set_interval(CLUSTER_REFRESH_S, self._load_cluster_state)
        else:
            self.query_one("#details-cluster").display = False
        self._follow_logs()
        if self._show_logs:
            self.query_one("#log-lines").focus()

    @on(TargetsChanged)
    def _show_row(self) -> None:
        row = self.row
        info = self.query_one("#details-info", Static)
        if row is None:
            info.update("this deployment is gone (deleted or stopped); esc goes back")
            return
        info.update(info_table(row))

    # -- cluster state --------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="details-cluster", exit_on_error=False, name="cluster state")
    def _load_cluster_state(self) -> None:
        state = self.deck.registry.cluster_state(self._key)
        self.app.call_from_thread(self._show_cluster_state, state)

    def _show_cluster_state(self, state: object) -> None:
        from backends.target_registry import ClusterState

        if not isinstance(state, ClusterState):
            return
        pods = self.query_one("#details-pods", DataTable)
        pods.clear()
        for pod in state.pods:
            pods.add_row(pod.name, pod.phase, pod.ready, str(pod.restarts), pod.node or "-", key=pod.name)
        events = Text()
        for event in state.events[-12:]:
            style = "yellow" if event.warning else ""
            events.append(f"{event.reason:<18} {event.message}\n", style=style)
        self.query_one("#details-events", Static).update(events or Text("no events", style="dim"))

    # -- logs -----------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="details-logs", exit_on_error=False, name="log stream")
    def _follow_logs(self) -> None:
        worker = get_current_worker()
        view = self.query_one(DeployLogView)

        def send(lines: list[str]) -> None:
            view.post_message(LogLines(lines))

        batcher = LineBatcher(send)
        for batch in self.deck.registry.follow_logs(self._key, lambda: worker.is_cancelled):
            if batch:
                batcher.add(batch)
            else:
                batcher.flush()
        batcher.flush()

    def on_worker_state_changed(self, event: object) -> None:
        from textual.worker import Worker, WorkerState

        if not isinstance(event, Worker.StateChanged):
            return
        if event.state is not WorkerState.ERROR:
            return
        # Shown where the data would be (a refresh every few seconds must not pile up notifications).
        if event.worker.group == "details-logs":
            self.query_one(DeployLogView).show_message(str(event.worker.error))
            event.stop()
        elif event.worker.group == "details-cluster":
            self.query_one("#details-events", Static).update(Text(str(event.worker.error), style="red"))
            event.stop()

    # -- actions --------------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.dismiss(None)

    def action_use_target(self) -> None:
        row = self.row
        if row is None or row.target is None:
            self.notify("this deployment has no endpoint yet", severity="warning")
            return
        self.deck.select_target(row.name)
        self.notify(f"target for Chat and Bench: {row.name}", timeout=3)

    def action_port_forward(self) -> None:
        row = self.row
        if row is None or row.source is not TargetSource.KUBERNETES:
            self.notify("port-forward is for Kubernetes deployments", severity="warning")
            return
        self.deck.port_forward(self._key)

    def action_scale(self) -> None:
        from tui.widgets.deploy.dialogs import ScaleScreen

        row = self.row
        if row is None or row.source is not TargetSource.KUBERNETES:
            self.notify("scale is for Kubernetes deployments", severity="warning")
            return
        current = int(row.replicas.partition("/")[2] or 0)

        def scaled(replicas: int | None) -> None:
            if replicas is not None:
                self.deck.scale_deployment(self._key, replicas)

        self.app.push_screen(ScaleScreen(row.name, current), scaled)

    def action_refresh(self) -> None:
        row = self.row
        if row is not None and row.source is TargetSource.KUBERNETES:
            self._load_cluster_state()
        self.deck.refresh_targets()
