"""Every target ServeDeck can talk to, as rows of one table: the local engine, twin profiles,
Kubernetes vLLM deployments and manual OpenAI-compatible URLs.

``TargetRegistry`` is headless and thread-safe: the TUI calls its blocking methods from worker
threads and reads ``rows()`` / ``ready_targets()`` from the UI thread. Every state change calls the
``on_change`` callback (from whatever thread made it), which the app turns into one message.
Manual URLs persist in ``<config dir>/manual_targets.json``; an API key is stored only as the name of
the environment variable that holds it.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import os
import queue
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backends.bench.models import Target, TargetKind
from backends.config import CONFIG_DIR_ENV, engine_log_dir
from backends.engines.child_process import GuardedChild
from backends.errors import ConfigError, EngineError, ServeDeckError, TargetError
from manifests.catalog import default_catalog
from manifests.cost import cost_for_spec, estimate_cost
from manifests.errors import ManifestError
from manifests.gpus import ACCELERATORS, GpuType
from manifests.spec import DeploymentSpec, build_spec, model_short_name, short_gpu_name

# httpx, the engine and target discovery are imported where they are used: the app's first frame
# does not need them, and they cost a noticeable part of its start-up time.
if TYPE_CHECKING:
    from backends.engines.local import LocalEngine, LocalEngineConfig
    from backends.kube.client import KubeClient
    from backends.kube.inventory import VllmDeployment
    from backends.kube.portforward import PortForwarder

MANUAL_TARGETS_FILE = "manual_targets.json"
MANUAL_TARGETS_VERSION = 1
LOCAL_KEY = "local"
LOCAL_TARGET_NAME = "local"
LOCAL_START_DEADLINE_S = 180.0
PROBE_TIMEOUT_S = 3.0
TWIN_START_DEADLINE_S = 60.0
TWIN_STOP_TIMEOUT_S = 5.0
HOST = "127.0.0.1"
# The twin runs in its own process (so 1000 streams never compete with the UI for the GIL); its stdout,
# where it prints vLLM's stats line, goes to a log file the Deployments view follows.
_TWIN_CHILD_CODE = (
    "import sys\n"
    "from backends.twin.engine_config import TwinConfig\n"
    "from backends.twin.server import TwinServer\n"
    "TwinServer(TwinConfig.model_validate_json(sys.argv[1]), port=int(sys.argv[2])).serve_forever()\n"
)
LOG_TAIL_BYTES = 64 * 1024
LOG_POLL_INTERVAL_S = 0.25
LOG_BATCH_LINES = 200
LOG_TAIL_LINES = 500
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_MAX = 80


class TargetSource(StrEnum):
    LOCAL = "local"
    TWIN = "twin"
    KUBERNETES = "kubernetes"
    MANUAL = "manual"
    GIVEN = "given"


class TargetStatus(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    NOT_CHECKED = "not checked"
    AVAILABLE = "available"
    ROLLING_OUT = "rolling out"
    SCALED_TO_ZERO = "scaled to 0"
    NO_CLUSTER = "no cluster"


class DeploymentRow(BaseModel):
    """One line of the Deployments table. ``target`` is set when the row can be chatted with or benched."""

    model_config = ConfigDict(frozen=True)

    key: str
    name: str
    source: TargetSource
    engine: str
    model: str
    accelerator: str
    replicas: str = "-"
    status: TargetStatus
    price_per_hour: float | None = None
    endpoint: str | None = None
    detail: str = ""
    target: Target | None = None

    @property
    def usable(self) -> bool:
        return self.target is not None and self.status is TargetStatus.READY


# -- manual URLs ---------------------------------------------------------------------------------------


class ManualTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=_NAME_MAX)
    base_url: str
    model: str
    api_key_env: str | None = None
    kind: TargetKind = TargetKind.OPENAI

    def as_target(self) -> Target:
        return Target(
            name=self.name,
            base_url=self.base_url,
            model=self.model,
            kind=self.kind,
            api_key_env=self.api_key_env,
        )


class _ManualTargetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = MANUAL_TARGETS_VERSION
    targets: list[ManualTarget] = Field(default_factory=list)


def validate_api_key_env(name: str | None) -> str | None:
    """The environment variable's name, stripped; ConfigError when it is not a variable name.

    A pasted key (``sk-...``) is refused without being echoed, so it never lands in a file or a log.
    """
    if name is None or not name.strip():
        return None
    text = name.strip()
    if not _ENV_NAME.fullmatch(text):
        raise ConfigError(
            "the API key field takes the NAME of an environment variable that holds the key "
            "(like OPENAI_API_KEY), not the key itself; export the key and give the variable's name"
        )
    return text


class ManualTargetStore:
    """The manual URLs file; a corrupt file is reported and never overwritten."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / MANUAL_TARGETS_FILE

    def load(self) -> list[ManualTarget]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(
                f"cannot read {self.path}: {exc.strerror or exc}; fix its permissions or set {CONFIG_DIR_ENV}"
            ) from None
        try:
            data = _ManualTargetFile.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "the file"
            raise ConfigError(
                f"{self.path} is not a valid manual targets file ({where}: {first.get('msg', 'invalid')}); "
                "fix it or move it away (ServeDeck will not overwrite it)"
            ) from None
        if data.version != MANUAL_TARGETS_VERSION:
            raise ConfigError(
                f"{self.path} has version {data.version}, this ServeDeck reads version "
                f"{MANUAL_TARGETS_VERSION}; upgrade ServeDeck or move the file away"
            )
        return data.targets

    def save(self, targets: Sequence[ManualTarget]) -> None:
        payload = _ManualTargetFile(targets=list(targets)).model_dump_json(indent=2)
        temporary = self.path.with_suffix(".json.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(payload + "\n", encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            raise ConfigError(
                f"cannot write {self.path}: {exc.strerror or exc}; set {CONFIG_DIR_ENV} to a writable folder"
            ) from None


# -- health --------------------------------------------------------------------------------------------


@functools.cache
def _shared_tls_context() -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _network_reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused; is the server running on that port?"
        if isinstance(cause, socket.gaierror):
            return "unknown host; check the URL"
        cause = cause.__cause__ or cause.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


async def probe_endpoint(target: Target, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``GET /v1/models`` answers 200, else one line saying what is wrong."""
    import httpx

    from backends.targets import read_api_key

    try:
        key = read_api_key(target.api_key_env)
    except TargetError as err:
        return str(err)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{target.base_url}/v1/models"
    # A verifying TLS context loads the whole CA bundle in one C call that holds the GIL (50-250 ms here),
    # which would freeze the UI thread: build it once, and only for https endpoints (plain http uses none).
    tls: ssl.SSLContext | bool = _shared_tls_context() if target.base_url.startswith("https://") else False
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), headers=headers, verify=tls) as client:
            response = await client.get(url)
    except httpx.TimeoutException:
        return f"{url} did not answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        return f"cannot connect to {target.base_url}: {_network_reason(exc)}"
    if response.status_code in (401, 403):
        return f"{target.base_url} refused the API key (HTTP {response.status_code})"
    if response.status_code != 200:
        return f"{url} answered HTTP {response.status_code}"
    return None


# -- twins -------------------------------------------------------------------------------------------

# The shapes the seed article benchmarked Gemma 3 27B on, plus the H100 scale-out it argues for.
DEFAULT_TWIN_SHAPES: tuple[tuple[str, GpuType, int], ...] = (
    ("google/gemma-3-27b-it", GpuType.L4, 4),
    ("google/gemma-3-27b-it", GpuType.A100_40, 2),
    ("google/gemma-3-27b-it", GpuType.A100_80, 1),
    ("google/gemma-3-27b-it", GpuType.H100, 1),
    ("google/gemma-3-27b-it", GpuType.H100, 2),
    ("google/gemma-3-27b-it", GpuType.H100, 4),
    ("google/gemma-3-27b-it", GpuType.CPU_EMERALD, 1),
)


def default_twin_specs() -> list[DeploymentSpec]:
    return [build_spec(model=model, gpu=gpu, gpu_count=count) for model, gpu, count in DEFAULT_TWIN_SHAPES]


def spec_price_per_hour(spec: DeploymentSpec) -> float | None:
    """Nodes plus the model-cache volume per hour (on-demand, or spot when the spec asks); None when unpriced.

    The cluster fee is left out: it is paid once per cluster, not per deployment.
    """
    try:
        return cost_for_spec(spec, include_cluster_fee=False).total_usd_per_hour
    except ManifestError:
        return None


def accelerator_label(spec: DeploymentSpec) -> str:
    """``H100 x2``, ``L4 x4``, ``CPU cpu-c4``."""
    if spec.is_cpu:
        return f"CPU {spec.gpu.value}" + (f" x{spec.gpu_count}" if spec.gpu_count > 1 else "")
    return f"{short_gpu_name(spec.gpu)} x{spec.gpu_count}"


def twin_key(spec: DeploymentSpec) -> str:
    return f"twin:{spec.name}"


def twin_name(spec: DeploymentSpec, *, builtin: bool = False) -> str:
    """``twin-27b-4xl4`` for a built-in profile (size, hardware); ``twin-<spec name>`` from the form."""
    if not builtin:
        return f"twin-{spec.name}"
    size = re.search(r"(\d+(?:\.\d+)?[bm])(?:-|$)", model_short_name(spec.model))
    hardware = spec.gpu.value if spec.is_cpu else f"{spec.gpu_count}x{spec.gpu.value}"
    return f"twin-{size.group(1) if size else model_short_name(spec.model)}-{hardware}"


class _TwinSlot:
    def __init__(self, spec: DeploymentSpec, *, builtin: bool) -> None:
        self.spec = spec
        self.builtin = builtin
        self.status = TargetStatus.AVAILABLE
        self.detail = "simulated vLLM; press t to start it"
        self.base_url: str | None = None
        self.child: GuardedChild | None = None
        self.log_path: Path | None = None
        self.model_id: str | None = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _health_ok(port: int) -> bool:
    connection = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _last_line(path: Path) -> str:
    try:
        text = path.read_bytes()[-4096:].decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(log is empty)"


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


# -- Kubernetes ----------------------------------------------------------------------------------------

CLUSTER_KEY = "kube"
KUBECONFIG_ENV = "KUBECONFIG"
DEFAULT_KUBECONFIG = Path("~/.kube/config")


class ClusterPod(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    phase: str
    ready: str
    restarts: int = 0
    node: str | None = None


class ClusterEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: str
    message: str
    warning: bool = False


class ClusterState(BaseModel):
    """Pods and recent events of one Kubernetes deployment, for the details view."""

    model_config = ConfigDict(frozen=True)

    pods: list[ClusterPod] = Field(default_factory=list)
    events: list[ClusterEvent] = Field(default_factory=list)


class _Cluster:
    def __init__(self) -> None:
        self.checked = False
        self.context: str | None = None
        self.error: str | None = None
        self.deployments: dict[str, VllmDeployment] = {}
        self.forwards: dict[str, PortForwarder] = {}
        self.forward_clients: dict[str, KubeClient] = {}


def cluster_key(namespace: str, name: str) -> str:
    return f"kube:{namespace}/{name}"


def _cluster_ref(key: str) -> tuple[str, str]:
    namespace, _, name = key.removeprefix("kube:").partition("/")
    if not key.startswith("kube:") or not namespace or not name:
        raise ConfigError(f"{key} is not a Kubernetes deployment")
    return namespace, name


def _missing_kubeconfig() -> str | None:
    """Why there is no cluster when no kubeconfig file exists (checked without importing the client)."""
    listed = [part for part in os.environ.get(KUBECONFIG_ENV, "").split(os.pathsep) if part.strip()]
    paths = [Path(part).expanduser() for part in listed] or [DEFAULT_KUBECONFIG.expanduser()]
    if any(path.is_file() for path in paths):
        return None
    where = os.pathsep.join(str(path) for path in paths)
    return (
        f"no kubeconfig found at {where}; set KUBECONFIG to use a cluster "
        "(for GKE: gcloud container clusters get-credentials CLUSTER --region REGION)"
    )


def _current_context() -> str:
    from backends.kube.kubeconfig import load_kubeconfig

    return load_kubeconfig().context(None).name


_CLUSTER_STATUS: dict[str, TargetStatus] = {
    "ready": TargetStatus.READY,
    "progressing": TargetStatus.ROLLING_OUT,
    "degraded": TargetStatus.ROLLING_OUT,
    "failed": TargetStatus.FAILED,
    "scaled to zero": TargetStatus.SCALED_TO_ZERO,
}


def _gpu_for_label(label: str | None) -> GpuType | None:
    return next((gpu for gpu, profile in ACCELERATORS.items() if profile.gke_accelerator == label), None)


def _cluster_row(deployment: VllmDeployment, forward_url: str | None) -> DeploymentRow:
    gpu = _gpu_for_label(deployment.accelerator)
    if gpu is not None:
        accelerator = f"{short_gpu_name(gpu)} x{deployment.gpus_per_replica}"
    else:
        accelerator = deployment.accelerator or "-"
    price: float | None = None
    if gpu is not None and deployment.gpus_per_replica:
        try:
            price = estimate_cost(
                default_catalog(),
                gpu,
                deployment.gpus_per_replica,
                replicas=deployment.replicas_desired,
                include_cluster_fee=False,
                storage_volumes=0,
            ).total_usd_per_hour
        except ManifestError:
            price = None
    status = _CLUSTER_STATUS.get(deployment.status.value, TargetStatus.NOT_CHECKED)
    owner = "ServeDeck's" if deployment.managed else "not ServeDeck's (read-only)"
    detail = f"{owner}; image {deployment.image or '?'}"
    if forward_url is None:
        where = deployment.in_cluster_url or "no Service"
        detail += f"; in-cluster {where}; press f to port-forward it here"
    return DeploymentRow(
        key=cluster_key(deployment.namespace, deployment.name),
        name=deployment.key,
        source=TargetSource.KUBERNETES,
        engine="vLLM",
        model=model_short_name(deployment.model) if deployment.model else "?",
        accelerator=accelerator,
        replicas=f"{deployment.replicas_ready}/{deployment.replicas_desired}",
        status=status,
        price_per_hour=price,
        endpoint=f"{forward_url}/v1" if forward_url else None,
        detail=detail,
        target=deployment.target(forward_url) if forward_url else None,
    )


def _pod_summary(pod: dict[str, object]) -> ClusterPod:
    metadata = pod.get("metadata")
    status = pod.get("status")
    spec = pod.get("spec")
    meta = metadata if isinstance(metadata, dict) else {}
    state = status if isinstance(status, dict) else {}
    pod_spec = spec if isinstance(spec, dict) else {}
    containers = [c for c in state.get("containerStatuses") or [] if isinstance(c, dict)]
    ready = sum(1 for c in containers if c.get("ready"))
    waiting = [
        str(((c.get("state") or {}).get("waiting") or {}).get("reason"))
        for c in containers
        if ((c.get("state") or {}).get("waiting") or {}).get("reason")
    ]
    return ClusterPod(
        name=str(meta.get("name", "?")),
        phase=waiting[0] if waiting else str(state.get("phase", "?")),
        ready=f"{ready}/{len(containers) or len(pod_spec.get('containers') or [])}",
        restarts=sum(int(c.get("restartCount") or 0) for c in containers),
        node=str(pod_spec["nodeName"]) if pod_spec.get("nodeName") else None,
    )


def _event_summary(event: dict[str, object]) -> tuple[str, ClusterEvent]:
    stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
    return str(stamp), ClusterEvent(
        reason=str(event.get("reason") or "?"),
        message=" ".join(str(event.get("message") or "").split()),
        warning=event.get("type") == "Warning",
    )


class _LineQueueReader:
    """Reads a blocking line iterator on its own thread so the caller can poll with a timeout."""

    def __init__(self, lines: Iterator[str], close: Callable[[], None]) -> None:
        self._queue: queue.Queue[str | BaseException | None] = queue.Queue(maxsize=10_000)
        self._close = close
        self._thread = threading.Thread(target=self._run, args=(lines,), name="log-reader", daemon=True)
        self._thread.start()

    def _run(self, lines: Iterator[str]) -> None:
        try:
            for line in lines:
                self._queue.put(line)
            self._queue.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it on its thread
            self._queue.put(exc)

    def batches(self, cancelled: Callable[[], bool]) -> Iterator[list[str]]:
        try:
            while not cancelled():
                try:
                    first = self._queue.get(timeout=LOG_POLL_INTERVAL_S)
                except queue.Empty:
                    yield []
                    continue
                batch: list[str] = []
                item: str | BaseException | None = first
                while True:
                    if item is None:
                        if batch:
                            yield batch
                        return
                    if isinstance(item, BaseException):
                        if batch:
                            yield batch
                        raise item
                    batch.append(item)
                    if len(batch) >= LOG_BATCH_LINES:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                yield batch
        finally:
            self._close()


# -- logs ----------------------------------------------------------------------------------------------


def follow_log_file(path: Path, cancelled: Callable[[], bool]) -> Iterator[list[str]]:
    """Batches of lines from ``path``: its last ``LOG_TAIL_BYTES`` first, then whatever is appended.

    Yields an empty batch whenever nothing new arrived for ``LOG_POLL_INTERVAL_S``, so a caller can flush
    and check for cancellation; returns once ``cancelled()`` is true.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise EngineError(f"cannot open the log {path}: {exc.strerror or exc}") from None
    with handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - LOG_TAIL_BYTES))
        if size > LOG_TAIL_BYTES:
            handle.readline()  # the first line is cut; skip it
        pending = b""
        while not cancelled():
            chunk = handle.read(256 * 1024)
            if not chunk:
                yield []
                time.sleep(LOG_POLL_INTERVAL_S)
                continue
            pending += chunk
            *complete, pending = pending.split(b"\n")
            lines = [raw.decode("utf-8", errors="replace").rstrip("\r") for raw in complete]
            for start in range(0, len(lines), LOG_BATCH_LINES):
                yield lines[start : start + LOG_BATCH_LINES]


# -- the registry --------------------------------------------------------------------------------------


class _LocalSlot:
    def __init__(self, config: LocalEngineConfig | None) -> None:
        self.config = config
        self.engine: LocalEngine | None = None
        self.status = TargetStatus.STOPPED
        self.detail = "press t to start it"


class TargetRegistry:
    """Rows for the Deployments table and the targets the other views may use; see the module docstring."""

    def __init__(
        self,
        *,
        manual_store: ManualTargetStore,
        given: Sequence[Target] = (),
        local_config: LocalEngineConfig | None = None,
        twin_specs: Sequence[DeploymentSpec] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._manual_store = manual_store
        self._manual: list[ManualTarget] = []
        self._manual_health: dict[str, str | None] = {}
        self._given = list(given)
        self._given_health: dict[str, str | None] = {}
        self._local = _LocalSlot(local_config)
        specs = default_twin_specs() if twin_specs is None else list(twin_specs)
        self._twins: dict[str, _TwinSlot] = {twin_key(spec): _TwinSlot(spec, builtin=True) for spec in specs}
        self._on_change = on_change
        self._cluster = _Cluster()
        self._closing = False
        self.load_error: str | None = None

    # -- reading ---------------------------------------------------------------------------------------

    def rows(self) -> list[DeploymentRow]:
        with self._lock:
            rows = self._cluster_rows()
            rows.append(self._local_row())
            rows.extend(self._twin_row(key, slot) for key, slot in self._twins.items())
            rows.extend(self._manual_row(entry) for entry in self._manual)
            rows.extend(self._given_row(target) for target in self._given)
        return rows

    def row(self, key: str) -> DeploymentRow | None:
        return next((row for row in self.rows() if row.key == key), None)

    def ready_targets(self) -> list[Target]:
        return [row.target for row in self.rows() if row.target is not None and row.usable]

    def known_targets(self) -> list[Target]:
        """Targets with an endpoint, reachable or not (screens may still try them and say why they fail)."""
        return [row.target for row in self.rows() if row.target is not None]

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # -- Kubernetes ------------------------------------------------------------------------------------

    @property
    def cluster_context(self) -> str | None:
        return self._cluster.context

    def _no_cluster_row(self) -> DeploymentRow:
        cluster = self._cluster
        if not cluster.checked:
            status, detail = TargetStatus.NOT_CHECKED, "the kubeconfig has not been read yet"
        elif cluster.context is None:
            status, detail = TargetStatus.NO_CLUSTER, cluster.error or "no kubeconfig"
        elif cluster.error is not None:
            status, detail = TargetStatus.UNREACHABLE, cluster.error
        else:
            status = TargetStatus.NO_CLUSTER
            detail = f"no vLLM deployments in context {cluster.context}; press n to create one"
        return DeploymentRow(
            key=CLUSTER_KEY,
            name="kubernetes",
            source=TargetSource.KUBERNETES,
            engine="vLLM",
            model="-",
            accelerator="-",
            status=status,
            detail=detail,
        )

    def _cluster_rows(self) -> list[DeploymentRow]:
        cluster = self._cluster
        rows = []
        for key, deployment in cluster.deployments.items():
            forward = cluster.forwards.get(key)
            rows.append(_cluster_row(deployment, forward.url if forward is not None else None))
        return rows or [self._no_cluster_row()]

    def _client(self) -> KubeClient:
        from backends.kube.client import KubeClient

        return KubeClient.connect(context=self._require_cluster())

    def refresh_cluster(self) -> None:
        """Read the kubeconfig and list the context's vLLM deployments (blocking; from a worker thread)."""
        missing = _missing_kubeconfig()
        if missing is not None:
            self._no_cluster(missing)
            return
        from backends.kube.client import KubeClient
        from backends.kube.errors import KubeconfigError, KubeError
        from backends.kube.inventory import list_vllm_deployments

        try:
            context = _current_context()
        except KubeconfigError as err:
            self._no_cluster(str(err))
            return
        error: str | None = None
        found: dict[str, VllmDeployment] = {}
        try:
            with KubeClient.connect(context=context) as client:
                for deployment in list_vllm_deployments(client):
                    found[cluster_key(deployment.namespace, deployment.name)] = deployment
        except KubeError as err:
            error = str(err)
        with self._lock:
            self._cluster.checked = True
            self._cluster.context = context
            self._cluster.error = error
            if error is None:
                self._cluster.deployments = found
        self._changed()

    def _no_cluster(self, reason: str) -> None:
        with self._lock:
            self._cluster.checked = True
            self._cluster.context = None
            self._cluster.error = reason
            self._cluster.deployments = {}
        self._changed()

    def _require_cluster(self) -> str:
        with self._lock:
            context, error = self._cluster.context, self._cluster.error
        if context is None:
            raise ConfigError(
                f"no Kubernetes cluster: {error or 'the kubeconfig has not been read yet'}; "
                "start the spec as a twin instead (ctrl+t)"
            )
        return context

    def apply_spec(self, spec: DeploymentSpec) -> str:
        """Render ``spec`` with the HF token from its source and server-side apply it; a one-line summary."""
        from manifests.render import render_objects
        from manifests.secrets import read_hf_token

        context = self._require_cluster()
        try:
            token = read_hf_token(spec, os.environ) if spec.has_token_source else None
            objects = render_objects(spec, include_secret_value=token is not None, hf_token=token)
        except ManifestError as err:
            raise ConfigError(str(err)) from None
        secrets = [token.get_secret_value()] if token is not None else []
        with self._client() as client:
            applied = client.apply(objects, namespace=spec.namespace, secrets=secrets)
        changed = sum(1 for item in applied if item.action.value in ("created", "configured"))
        self.refresh_cluster()
        return f"applied {spec.name} to {context}: {changed} of {len(applied)} objects created or changed"

    def scale(self, key: str, replicas: int) -> str:
        namespace, name = _cluster_ref(key)
        with self._client() as client:
            result = client.scale(name, replicas, namespace)
        self.refresh_cluster()
        return f"scaled {name} from {result.previous_replicas} to {result.replicas} replicas"

    def port_forward(self, key: str) -> str:
        """Forward 127.0.0.1:<free port> to a ready pod of the deployment; its URL (kept until close)."""
        from backends.kube.inventory import DEFAULT_VLLM_PORT
        from backends.kube.portforward import PortForwarder

        namespace, name = _cluster_ref(key)
        with self._lock:
            existing = self._cluster.forwards.get(key)
        if existing is not None:
            return existing.url
        client = self._client()
        forwarder = PortForwarder(client, namespace, deployment=name, remote_port=DEFAULT_VLLM_PORT)
        try:
            forwarder.start()
        except BaseException:
            client.close()
            raise
        with self._lock:
            self._cluster.forwards[key] = forwarder
            self._cluster.forward_clients[key] = client
        self._changed()
        return forwarder.url

    def _stop_forward(self, key: str) -> None:
        with self._lock:
            forwarder = self._cluster.forwards.pop(key, None)
            client = self._cluster.forward_clients.pop(key, None)
        if forwarder is not None:
            forwarder.close()
        if client is not None:
            client.close()

    def cluster_state(self, key: str) -> ClusterState:
        """Pods and the latest events of a Kubernetes deployment (blocking)."""
        from backends.kube.logs import deployment_pods

        namespace, name = _cluster_ref(key)
        with self._client() as client:
            pods = deployment_pods(client, name, namespace)
            pod_names = {str(pod.get("metadata", {}).get("name")) for pod in pods}
            events = []
            for event in client.list_objects("Event", namespace):
                involved = str((event.get("involvedObject") or {}).get("name") or "")
                if involved == name or involved in pod_names or involved.startswith(f"{name}-"):
                    events.append(_event_summary(event))
        events.sort(key=lambda pair: pair[0])
        return ClusterState(pods=[_pod_summary(pod) for pod in pods], events=[event for _, event in events])

    def _follow_cluster_logs(self, key: str, cancelled: Callable[[], bool]) -> Iterator[list[str]]:
        from backends.kube.logs import LogStream, pick_pod

        namespace, name = _cluster_ref(key)
        client = self._client()
        try:
            pod = pick_pod(client, name, namespace)
            stream = LogStream(client, pod, namespace, follow=True, tail_lines=LOG_TAIL_LINES)
        except BaseException:
            client.close()
            raise

        def close() -> None:
            stream.close()
            client.close()

        reader = _LineQueueReader((line.text for line in stream), close)
        return reader.batches(cancelled)

    def _delete_cluster_deployment(self, key: str) -> str:
        namespace, name = _cluster_ref(key)
        self._stop_forward(key)
        with self._client() as client:
            refs = client.managed_objects(namespace, name)
            if not refs:
                raise ConfigError(
                    f"{name} in {namespace} has no objects labelled as ServeDeck's; "
                    "ServeDeck deletes only what it created (use kubectl for the rest)"
                )
            deleted = client.delete(refs)
        self.refresh_cluster()
        return f"deleted {name}: {len(deleted)} objects in namespace {namespace}"

    def delete(self, key: str) -> str:
        """Remove the row ``key``: delete a cluster deployment, stop an engine or twin, forget a URL."""
        if key.startswith("kube:"):
            return self._delete_cluster_deployment(key)
        if key == LOCAL_KEY:
            self.stop_local_engine()
            return "stopped the local engine"
        if key.startswith("twin:"):
            self.stop_twin(key)
            return f"stopped {key.removeprefix('twin:')}"
        if key.startswith("manual:"):
            name = key.removeprefix("manual:")
            self.remove_manual(name)
            return f"removed {name} from the list"
        raise ConfigError(f"{key} cannot be deleted from ServeDeck")

    # -- local engine ----------------------------------------------------------------------------------

    def _local_row(self) -> DeploymentRow:
        slot = self._local
        engine = slot.engine
        ready = slot.status is TargetStatus.READY and engine is not None
        return DeploymentRow(
            key=LOCAL_KEY,
            name=LOCAL_TARGET_NAME,
            source=TargetSource.LOCAL,
            engine="llama.cpp",
            model="gemma-3-270m",
            accelerator="CPU",
            replicas="1/1" if ready else "0/1",
            status=slot.status,
            endpoint=engine.openai_base_url if ready and engine is not None else None,
            detail=slot.detail,
            target=engine.target(LOCAL_TARGET_NAME) if ready and engine is not None else None,
        )

    @property
    def local_engine(self) -> LocalEngine | None:
        return self._local.engine

    def start_local_engine(self, deadline_s: float = LOCAL_START_DEADLINE_S) -> Target:
        """Start llama-server (blocking: call from a worker thread) and return its target."""
        with self._lock:
            slot = self._local
            if self._closing:
                raise EngineError("ServeDeck is closing; the local engine was not started")
            if slot.status is TargetStatus.READY and slot.engine is not None:
                return slot.engine.target(LOCAL_TARGET_NAME)
            if slot.status is TargetStatus.STARTING:
                raise EngineError("the local engine is already starting; wait for it to become ready")
            from backends.engines.local import LocalEngine

            engine = LocalEngine(slot.config)
            slot.engine = engine
            slot.status = TargetStatus.STARTING
            slot.detail = "starting llama-server with Gemma 3 270M"
        self._changed()
        try:
            engine.start(deadline_s=deadline_s)
        except ServeDeckError as err:
            with self._lock:
                slot.status = TargetStatus.FAILED
                slot.detail = str(err).splitlines()[0]
            self._changed()
            raise
        with self._lock:
            if self._closing:
                engine.stop()
                raise EngineError("ServeDeck is closing; the local engine was stopped")
            slot.status = TargetStatus.READY
            slot.detail = f"pid {engine.pid}, log {engine.log_path}"
        self._changed()
        return engine.target(LOCAL_TARGET_NAME)

    def stop_local_engine(self) -> None:
        """Stop llama-server (blocking up to ~10 s). Safe when it is not running."""
        with self._lock:
            engine = self._local.engine
        if engine is not None:
            engine.stop()
        with self._lock:
            if self._local.engine is engine:
                self._local.status = TargetStatus.STOPPED
                self._local.detail = "stopped; press t to start it again"
        self._changed()

    def _check_local_alive(self) -> bool:
        """Mark the local engine failed when llama-server died under us; True when that changed it."""
        with self._lock:
            slot = self._local
            if slot.status is not TargetStatus.READY or slot.engine is None or slot.engine.running:
                return False
            slot.status = TargetStatus.FAILED
            slot.detail = str(slot.engine.unexpected_exit_error()).splitlines()[0]
        return True

    # -- twins ---------------------------------------------------------------------------------------

    def _twin_row(self, key: str, slot: _TwinSlot) -> DeploymentRow:
        spec = slot.spec
        running = slot.status is TargetStatus.READY and slot.base_url is not None
        name = twin_name(spec, builtin=slot.builtin)
        return DeploymentRow(
            key=key,
            name=name,
            source=TargetSource.TWIN,
            engine="vLLM twin",
            model=model_short_name(spec.model),
            accelerator=accelerator_label(spec),
            replicas="1/1" if running else "0/1",
            status=slot.status,
            price_per_hour=spec_price_per_hour(spec),
            endpoint=f"{slot.base_url}/v1" if running else None,
            detail=slot.detail,
            target=(
                Target(name=name, base_url=slot.base_url, model=slot.model_id, kind=TargetKind.TWIN)
                if running and slot.base_url is not None and slot.model_id is not None
                else None
            ),
        )

    def twin_spec(self, key: str) -> DeploymentSpec | None:
        with self._lock:
            slot = self._twins.get(key)
            return slot.spec if slot is not None else None

    def add_twin(self, spec: DeploymentSpec) -> str:
        """Add (or replace, when not running) the twin for ``spec``; returns its row key."""
        key = twin_key(spec)
        with self._lock:
            existing = self._twins.get(key)
            if existing is not None and existing.status in (TargetStatus.STARTING, TargetStatus.READY):
                raise ConfigError(
                    f"twin {twin_name(spec, builtin=existing.builtin)} is already running; "
                    "stop it (t) or give the new one another name"
                )
            self._twins[key] = _TwinSlot(spec, builtin=existing.builtin if existing else False)
        self._changed()
        return key

    def _twin_slot(self, key: str) -> _TwinSlot:
        slot = self._twins.get(key)
        if slot is None:
            raise ConfigError(f"there is no twin {key.removeprefix('twin:')!r}; refresh the list")
        return slot

    def start_twin(self, key: str, deadline_s: float = TWIN_START_DEADLINE_S) -> Target:
        """Start the twin ``key`` in its own process (blocking: call from a worker thread); its target."""
        from backends.twin.capacity import plan_memory
        from backends.twin.engine_config import TwinConfig
        from backends.twin.server import twin_model_id

        with self._lock:
            if self._closing:
                raise EngineError("ServeDeck is closing; the twin was not started")
            slot = self._twin_slot(key)
            running = self._twin_row(key, slot).target
            if running is not None:
                return running
            if slot.status is TargetStatus.STARTING:
                raise EngineError(f"{twin_name(slot.spec, builtin=slot.builtin)} is already starting")
            slot.status = TargetStatus.STARTING
            slot.detail = "starting the simulated vLLM server"
        self._changed()
        try:
            config = TwinConfig.from_spec(slot.spec)
            plan_memory(config)
            model_id = twin_model_id(config)
            base_url, child, log_path = self._spawn_twin(slot.spec.name, config.model_dump_json(), deadline_s)
        except ServeDeckError as err:
            with self._lock:
                slot.status = TargetStatus.FAILED
                slot.detail = str(err).splitlines()[0]
            self._changed()
            raise
        with self._lock:
            slot.child, slot.log_path, slot.base_url, slot.model_id = child, log_path, base_url, model_id
            if self._closing:
                child.terminate(TWIN_STOP_TIMEOUT_S)
                raise EngineError("ServeDeck is closing; the twin was stopped")
            slot.status = TargetStatus.READY
            slot.detail = f"simulated; pid {child.pid}, log {log_path}"
        self._changed()
        return Target(
            name=twin_name(slot.spec, builtin=slot.builtin),
            base_url=base_url,
            model=model_id,
            kind=TargetKind.TWIN,
        )

    def _spawn_twin(self, name: str, config_json: str, deadline_s: float) -> tuple[str, GuardedChild, Path]:
        logs = engine_log_dir()
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineError(f"cannot create the log folder {logs}: {exc.strerror or exc}") from None
        port = _free_port()
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        log_path = logs / f"twin-{name}-{stamp}-port{port}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = _project_root() + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
        env["PYTHONUNBUFFERED"] = "1"
        child = GuardedChild([sys.executable, "-c", _TWIN_CHILD_CODE, config_json, str(port)], env, log_path)
        try:
            child.spawn()
        except OSError as exc:
            raise EngineError(f"cannot start the twin process: {exc.strerror or exc}") from None
        deadline = time.monotonic() + deadline_s
        while not _health_ok(port):
            if child.returncode is not None:
                raise EngineError(f"the twin exited while starting: {_last_line(log_path)} (log {log_path})")
            if time.monotonic() >= deadline:
                child.terminate(TWIN_STOP_TIMEOUT_S)
                raise EngineError(
                    f"the twin did not answer within {deadline_s:g} s (stopped it); log {log_path}"
                )
            child.wait(0.1)
        return f"http://{HOST}:{port}", child, log_path

    def stop_twin(self, key: str) -> None:
        """Stop the twin ``key`` (blocking up to a few seconds); a twin from the form leaves the list."""
        with self._lock:
            slot = self._twin_slot(key)
            child = slot.child
        if child is not None:
            child.terminate(TWIN_STOP_TIMEOUT_S)
        with self._lock:
            slot.child = None
            slot.base_url = None
            slot.status = TargetStatus.AVAILABLE
            slot.detail = "stopped; press t to start it again"
            if not slot.builtin:
                self._twins.pop(key, None)
        self._changed()

    def _check_twins_alive(self) -> bool:
        changed = False
        with self._lock:
            for slot in self._twins.values():
                if (
                    slot.status is TargetStatus.READY
                    and slot.child is not None
                    and slot.child.returncode is not None
                ):
                    slot.status = TargetStatus.FAILED
                    slot.base_url = None
                    log = slot.log_path
                    slot.detail = f"the twin exited: {_last_line(log)}" if log else "the twin exited"
                    changed = True
        return changed

    # -- manual URLs -----------------------------------------------------------------------------------

    def load_manual(self) -> None:
        """Read the manual URLs file (blocking). A bad file is kept aside as ``load_error``, not raised."""
        try:
            entries = self._manual_store.load()
        except ConfigError as err:
            with self._lock:
                self.load_error = str(err)
            self._changed()
            return
        with self._lock:
            self._manual = entries
            self.load_error = None
        self._changed()

    def _manual_row(self, entry: ManualTarget) -> DeploymentRow:
        health = self._manual_health.get(entry.name, "")
        return DeploymentRow(
            key=f"manual:{entry.name}",
            name=entry.name,
            source=TargetSource.MANUAL,
            engine=_engine_label(entry.kind),
            model=model_short_name(entry.model),
            accelerator="-",
            status=_health_status(health),
            endpoint=f"{entry.base_url}/v1",
            detail=health or "",
            target=entry.as_target(),
        )

    async def add_manual_url(
        self,
        base_url: str,
        *,
        name: str | None = None,
        api_key_env: str | None = None,
        model: str | None = None,
    ) -> DeploymentRow:
        """Ask ``base_url`` what it serves, then save it. Raises one clear ServeDeckError when it cannot."""
        from backends.targets import discover_target, normalize_base_url

        if not base_url.strip():
            raise ConfigError("give the server's URL, like http://127.0.0.1:8000")
        url = normalize_base_url(base_url)
        env_name = validate_api_key_env(api_key_env)
        wanted_name = name.strip() if name and name.strip() else None
        if wanted_name is not None and len(wanted_name) > _NAME_MAX:
            raise ConfigError(f"the name is longer than {_NAME_MAX} characters; choose a shorter one")
        with self._lock:
            if self.load_error is not None:
                raise ConfigError(self.load_error)
            if any(entry.base_url == url for entry in self._manual):
                raise ConfigError(f"{url} is already in the list; delete that row first to add it again")
            if wanted_name is not None and self._name_taken(wanted_name):
                raise ConfigError(f"a target named {wanted_name!r} already exists; choose another name")
        target = await discover_target(url, model=model or None, api_key_env=env_name, name=wanted_name)
        entry = ManualTarget(
            name=target.name,
            base_url=target.base_url,
            model=target.model,
            api_key_env=env_name,
            kind=target.kind,
        )
        with self._lock:
            if self._name_taken(entry.name):
                raise ConfigError(f"a target named {entry.name!r} already exists; give this one a name")
            updated = [*self._manual, entry]
            self._manual_store.save(updated)
            self._manual = updated
            self._manual_health[entry.name] = None
        self._changed()
        return self._manual_row(entry)

    def remove_manual(self, name: str) -> None:
        with self._lock:
            remaining = [entry for entry in self._manual if entry.name != name]
            if len(remaining) == len(self._manual):
                raise ConfigError(f"there is no manual target named {name!r}")
            self._manual_store.save(remaining)
            self._manual = remaining
            self._manual_health.pop(name, None)
        self._changed()

    def _name_taken(self, name: str) -> bool:
        return any(row.name == name for row in self.rows())

    # -- targets given by the caller -------------------------------------------------------------------

    def _given_row(self, target: Target) -> DeploymentRow:
        health = self._given_health.get(target.name, "")
        return DeploymentRow(
            key=f"given:{target.name}",
            name=target.name,
            source=TargetSource.GIVEN,
            engine=_engine_label(target.kind),
            model=model_short_name(target.model),
            accelerator="-",
            status=_health_status(health),
            endpoint=f"{target.base_url}/v1",
            detail=health or "",
            target=target,
        )

    # -- health of endpoints we do not run -------------------------------------------------------------

    async def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        """Check every manual and given endpoint at once and note whether it answers."""
        with self._lock:
            manual = list(self._manual)
            given = list(self._given)
        changed = self._check_local_alive() | self._check_twins_alive()
        targets = [entry.as_target() for entry in manual] + given
        results = await asyncio.gather(*(probe_endpoint(target, timeout_s) for target in targets))
        with self._lock:
            for entry, result in zip(manual, results[: len(manual)], strict=True):
                self._manual_health[entry.name] = result
            for target, result in zip(given, results[len(manual) :], strict=True):
                self._given_health[target.name] = result
        if changed or targets:
            self._changed()

    # -- logs --------------------------------------------------------------------------------------

    def follow_logs(self, key: str, cancelled: Callable[[], bool]) -> Iterator[list[str]]:
        """Batches of log lines of the row ``key`` (blocking; run it in a worker thread)."""
        if key.startswith("kube:"):
            return self._follow_cluster_logs(key, cancelled)
        if key == LOCAL_KEY:
            engine = self._local.engine
            if engine is None:
                raise EngineError("the local engine has not been started; press t to start it")
            return follow_log_file(engine.log_path, cancelled)
        with self._lock:
            twin = self._twins.get(key)
            twin_log = twin.log_path if twin is not None else None
        if twin is not None:
            if twin_log is None:
                name = twin_name(twin.spec, builtin=twin.builtin)
                raise EngineError(f"{name} has not been started; press t to start it")
            return follow_log_file(twin_log, cancelled)
        row = self.row(key)
        what = row.name if row is not None else key
        raise TargetError(
            f"ServeDeck has no logs for {what}: it does not run that server; read its logs where it runs"
        )

    # -- shutting down ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything ServeDeck started (blocking). Later starts are refused."""
        with self._lock:
            self._closing = True
            engine = self._local.engine
            children = [slot.child for slot in self._twins.values() if slot.child is not None]
            forwards = list(self._cluster.forwards)
        for key in forwards:
            self._stop_forward(key)
        for child in children:
            child.terminate(TWIN_STOP_TIMEOUT_S)
        if engine is not None:
            engine.stop()


def _health_status(health: str | None) -> TargetStatus:
    if health == "":
        return TargetStatus.NOT_CHECKED
    return TargetStatus.READY if health is None else TargetStatus.UNREACHABLE


def _engine_label(kind: TargetKind) -> str:
    return {
        TargetKind.VLLM: "vLLM",
        TargetKind.LLAMACPP: "llama.cpp",
        TargetKind.TWIN: "vLLM twin",
        TargetKind.OPENAI: "OpenAI API",
    }[kind]
