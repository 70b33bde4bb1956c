"""Twin profiles: the built-in shapes, the ones added from the form, and their simulated vLLM processes.

A twin runs in its own process, started from this checkout, answering on 127.0.0.1 at a free port.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

from backends.config import engine_log_dir
from backends.engines.child_process import GuardedChild
from backends.errors import ConfigError, EngineError, ServeDeckError
from backends.target_registry.core import RegistryCore
from backends.target_registry.rows import DeploymentRow, TargetSource, TargetStatus
from backends.target_types import Target, TargetKind
from manifests.cost import deployment_usd_per_hour
from manifests.errors import ManifestError
from manifests.gpus import GpuType
from manifests.spec import DeploymentSpec, build_spec, model_short_name, short_gpu_name

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
    """The deployment's $/h (``manifests.cost.deployment_usd_per_hour``, as the form shows it); None when
    the catalog has no price for it."""
    try:
        return deployment_usd_per_hour(spec)
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


def spec_summary(spec: DeploymentSpec) -> str:
    """The engine settings a twin runs with, e.g. ``max-model-len 8,192 · max-num-seqs 64 · gpu-mem 0.9``."""
    parts = [
        f"max-model-len {spec.max_model_len:,}" if spec.max_model_len else "max-model-len: model's",
        f"max-num-seqs {spec.max_num_seqs}" if spec.max_num_seqs else "max-num-seqs: vLLM default",
    ]
    if not spec.is_cpu:
        parts.append(f"gpu-mem {spec.gpu_memory_utilization:g}")
    if spec.spot:
        parts.append("spot")
    return " · ".join(parts)


def _settings_suffix(spec: DeploymentSpec) -> str:
    """What sets a form's spec apart from the built-in profile of its shape, for its row name."""
    parts = []
    if spec.max_model_len:
        length = spec.max_model_len
        parts.append(f"{length // 1024}k" if length % 1024 == 0 else f"len{length}")
    if spec.max_num_seqs:
        parts.append(f"s{spec.max_num_seqs}")
    if spec.gpu_memory_utilization != 0.9 and not spec.is_cpu:
        parts.append(f"u{round(spec.gpu_memory_utilization * 100)}")
    if spec.spot:
        parts.append("spot")
    return "-".join(parts) or "custom"


def _same_engine(one: DeploymentSpec, other: DeploymentSpec) -> bool:
    """Whether two specs simulate the same server (the namespace does not reach a twin)."""
    return one.model_copy(update={"namespace": other.namespace}) == other


class TwinSlot:
    """One twin profile: its spec, and its process and endpoint while it runs."""

    def __init__(self, spec: DeploymentSpec, *, builtin: bool, name: str | None = None) -> None:
        self.spec = spec
        self.builtin = builtin
        self.name = name or twin_name(spec, builtin=builtin)
        self.status = TargetStatus.AVAILABLE
        self.detail = f"simulated vLLM ({spec_summary(spec)}); press t to start it"
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
    return str(Path(__file__).resolve().parents[2])


def _spawn_twin(name: str, config_json: str, deadline_s: float) -> tuple[str, GuardedChild, Path]:
    logs = engine_log_dir()
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create the log folder {logs}: {exc.strerror or exc}") from None
    port = _free_port()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    log_path = logs / f"twin-{name}-{stamp}-port{port}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = _project_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
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
            raise EngineError(f"the twin did not answer within {deadline_s:g} s (stopped it); log {log_path}")
        child.wait(0.1)
    return f"http://{HOST}:{port}", child, log_path


class TwinTargets(RegistryCore):
    """The twin profiles of ``TargetRegistry``."""

    _twins: dict[str, TwinSlot]

    def _twin_row(self, key: str, slot: TwinSlot) -> DeploymentRow:
        spec = slot.spec
        running = slot.status is TargetStatus.READY and slot.base_url is not None
        name = slot.name
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
        """Add the twin for ``spec`` (or find the profile that already simulates it); returns its row key.

        A spec from the form that differs from the built-in profile of the same shape gets its own row,
        named after what differs (``twin-27b-2xh100-8k-s64``), so the built-in row is never relabelled.
        """
        with self._lock:
            key, name = twin_key(spec), None
            existing = self._twins.get(key)
            if existing is not None and existing.builtin and not _same_engine(spec, existing.spec):
                suffix = _settings_suffix(spec)
                for number in range(1, 100):
                    tail = suffix if number == 1 else f"{suffix}-{number}"
                    candidate = spec.model_copy(update={"name": f"{spec.name[: 39 - len(tail)]}-{tail}"})
                    other = self._twins.get(twin_key(candidate))
                    if other is None or _same_engine(candidate, other.spec):
                        break
                spec, key = candidate, twin_key(candidate)
                name = f"{twin_name(spec, builtin=True)}-{tail}"
                existing = self._twins.get(key)
            if existing is not None and existing.status in (TargetStatus.STARTING, TargetStatus.READY):
                same = _same_engine(spec, existing.spec)
                raise ConfigError(
                    f"twin {existing.name} is already {existing.status.value}"
                    + (
                        " with this spec; use it (u), or change a setting to start another one"
                        if same
                        else " with another spec; stop it (t) or give the new one another name"
                    )
                )
            if existing is not None and _same_engine(spec, existing.spec):
                return key
            self._twins[key] = TwinSlot(spec, builtin=False, name=name)
        self._changed()
        return key

    def _twin_slot(self, key: str) -> TwinSlot:
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
                raise EngineError(f"{slot.name} is already starting")
            slot.status = TargetStatus.STARTING
            slot.detail = "starting the simulated vLLM server"
        self._changed()
        try:
            config = TwinConfig.from_spec(slot.spec)
            plan_memory(config)
            model_id = twin_model_id(config)
            base_url, child, log_path = _spawn_twin(slot.spec.name, config.model_dump_json(), deadline_s)
        except ServeDeckError as err:
            self._start_failed(slot, err)
            raise
        with self._lock:
            slot.child, slot.log_path, slot.base_url, slot.model_id = child, log_path, base_url, model_id
            if self._closing:
                child.terminate(TWIN_STOP_TIMEOUT_S)
                raise EngineError("ServeDeck is closing; the twin was stopped")
            slot.status = TargetStatus.READY
            slot.detail = f"simulated ({spec_summary(slot.spec)}); pid {child.pid}, log {log_path}"
        self._changed()
        return Target(
            name=slot.name,
            base_url=base_url,
            model=model_id,
            kind=TargetKind.TWIN,
        )

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
            slot.detail = f"stopped ({spec_summary(slot.spec)}); press t to start it again"
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
