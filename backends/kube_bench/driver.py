"""The distributed bench driver: one Indexed Job of N load-generator pods per level, merged exactly.

For a sweep it applies the bundle ConfigMaps (ServeDeck's wheel and the sampled prompts; plus a Secret
when the target needs an API key) once, then for each level applies a Job whose pods start together at
a shared instant, follows every pod's log until it ends, decodes the protocol lines, merges the records
(``merge``) and computes the metrics with ``compute_metrics``, emitting the same ``SweepEvent``s and
producing the same ``LevelResult``/``SweepResult`` as a local ``run_sweep``. Everything it created is
deleted when the run ends, also on ctrl-c and on errors.

A pod that fails (a bad image, dependencies it cannot install, OOM) is reported in one line and the
other pods' results are kept (the level is ``partial``); when no pod of a level could run, the level
fails and the sweep stops there, since every later level would fail the same way.

Shared start: the first level's pods are told to start ``DEFAULT_FIRST_START_DELAY_S`` after their Job is
created (image pull and dependency install take that long on a fresh node); later levels wait for what
the slowest pod of the previous level needed, with a margin. ``--start-delay`` fixes it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from backends.bench.datasets import SampledDataset
from backends.bench.loadgen.selfmon import judge_client
from backends.bench.metrics import compute_metrics
from backends.bench.models import LoadLevel, ProgressSnapshot, RequestRecord
from backends.bench.multi_turn import per_turn_metrics
from backends.bench.results import LevelResult, PromptSampling, RunStatus, SweepConfig, SweepResult
from backends.bench.sweep import (
    LevelFinished,
    LevelStarted,
    RecordsBatch,
    SweepEvent,
    SweepFinished,
    SweepStarted,
    set_status_from_levels,
    validate_config,
)
from backends.bench.traces import trace_arrivals
from backends.kube.client import KubeClient, ObjectRef
from backends.kube.errors import KubeError, KubeForbiddenError
from backends.kube.logs import LogStream
from backends.kube_bench.bundle import CONVERSATIONS_BLOB, DATASET_BLOB, WHEEL_BLOB, pack_parts
from backends.kube_bench.clock import server_facts
from backends.kube_bench.codec import (
    PodFatal,
    PodProgress,
    PodReady,
    PodStart,
    PodSummary,
    ProtocolError,
    decode,
)
from backends.kube_bench.job import (
    CONTAINER_NAME,
    DEFAULT_LOADGEN_IMAGE,
    api_key_secret_name,
    job_name,
    level_labels,
    render_api_key_secret,
    render_bundle_configmaps,
    render_job,
    run_selector,
)
from backends.kube_bench.merge import PodOutcome, merge_pods, shifted
from backends.kube_bench.plan import (
    DEFAULT_FIRST_START_DELAY_S,
    POD_START_TIMEOUT_S,
    SessionSettings,
    WorkerPlan,
    encode_conversations,
    encode_dataset,
)
from backends.kube_bench.pod_bootstrap import EXIT_CODE as BOOTSTRAP_EXIT_CODE
from backends.kube_bench.pods import (
    completion_index,
    has_logs,
    pod_end,
    pod_name,
    unschedulable,
    waiting_failure,
)
from backends.kube_bench.shares import all_shares, pods_for_level
from backends.redaction import redact, remember_secret

MIN_START_DELAY_S = 10.0
MAX_ADAPTIVE_START_DELAY_S = 300.0
START_DELAY_MARGIN = 1.5
POLL_INTERVAL_S = 1.0
SNAPSHOT_INTERVAL_S = 1.0
CANCEL_GRACE_S = 20.0
CONTEXT_LINES = 4
RECENT_TTFTS = 64
RBAC_HINT = (
    "the in-cluster bench needs these verbs in namespace {namespace}: create/patch/get/delete on jobs.batch, "
    "configmaps and secrets, get/list on pods and get on pods/log (ask for a Role with them)"
)
PER_INDEX_BACKOFF_SINCE = (1, 29)
OLD_SERVER_WARNING = (
    "warning: the API server is {version}: Jobs ignore backoffLimitPerIndex before 1.29 (failed "
    "load-generator pods would be retried, sending their share again, late), so each level's Job gets "
    "backoffLimit: 0 instead: the first pod that fails stops the level's other pods"
)

Emit = Callable[[SweepEvent], None]
Notify = Callable[[str], None]


class KubeBenchError(KubeError):
    """The distributed bench could not run (no pod of a level could start, ...)."""


class InClusterOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    namespace: str
    pods: int = Field(ge=1)
    image: str = DEFAULT_LOADGEN_IMAGE
    start_delay_s: float | None = Field(default=None, description="None: adaptive (see the module doc)")
    pod_start_timeout_s: float = POD_START_TIMEOUT_S
    poll_interval_s: float = POLL_INTERVAL_S
    cancel_grace_s: float = CANCEL_GRACE_S


class LoadgenBundle(BaseModel):
    """ServeDeck's wheel for the pods and the pip requirements of the worker."""

    model_config = ConfigDict(frozen=True)

    wheel_name: str
    wheel: bytes = Field(repr=False)
    requirements: list[str]


def _forbidden_with_hint(err: KubeForbiddenError, namespace: str) -> KubeForbiddenError:
    return KubeForbiddenError(f"{err}; {RBAC_HINT.format(namespace=namespace)}")


class _LogFollower:
    """Follows one pod's log on a thread; lines (then None, or the error) go to ``deliver``."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        pod: str,
        deliver: Callable[[str, str | BaseException | None], None],
    ) -> None:
        self.pod = pod
        self.done = False
        self._stream = LogStream(kube, pod, namespace, container=CONTAINER_NAME, follow=True)
        self._deliver = deliver
        self._thread = threading.Thread(target=self._run, name=f"bench-log-{pod}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self._stream:
                self._deliver(self.pod, line.text)
        except KubeError as err:
            self._deliver(self.pod, err)
            return
        self._deliver(self.pod, None)

    def close(self) -> None:
        self._stream.close()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


class _PodState:
    """What the driver knows about one completion index while its level runs."""

    def __init__(self, index: int, expected: int) -> None:
        self.outcome = PodOutcome(pod_index=index, expected=expected)
        self.follower: _LogFollower | None = None
        self.lines_seen = 0
        self.lines_this_follow = 0
        self.context: deque[str] = deque(maxlen=CONTEXT_LINES)
        self.fatal: str | None = None
        self.log_ended = False
        self.resolved = False
        self.ready_after_s: float | None = None
        self.record_indices: set[int] = set()
        self.pending: list[RequestRecord] = []
        self.progress: PodProgress | None = None
        self.told: set[str] = set()


class _Level:
    """One level: its Job, its pods' states, and the events it emits."""

    def __init__(
        self,
        sweep: InClusterSweep,
        index: int,
        level: LoadLevel,
        plan: WorkerPlan,
        expected: list[int],
        created_perf: float,
        start_perf: float,
    ) -> None:
        self.sweep = sweep
        self.index = index
        self.level = level
        self.plan = plan
        self.states = [_PodState(k, count) for k, count in enumerate(expected)]
        self.pod_index_of: dict[str, int] = {}
        self.ignored_pods: set[str] = set()
        self.created_perf = created_perf
        self.start_perf = start_perf
        self.base_epoch: float | None = None
        self.queue: asyncio.Queue[tuple[str, str | BaseException | None]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.tokens_since_snapshot = 0
        self.last_snapshot_perf = time.perf_counter()
        self.recent_ttft_ms: deque[float] = deque(maxlen=RECENT_TTFTS)
        self.completed = 0
        self.failed = 0

    # --- lines ---------------------------------------------------------------------------------

    def deliver(self, pod: str, item: str | BaseException | None) -> None:
        # A follower closed at the end of the run may still finish its last read after the loop is gone.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (pod, item))

    def on_item(self, pod: str, item: str | BaseException | None) -> None:
        index = self.pod_index_of.get(pod)
        if index is None:
            return
        state = self.states[index]
        if item is None or isinstance(item, BaseException):
            state.log_ended = True
            if state.follower is not None:
                state.follower.done = True
            if isinstance(item, KubeForbiddenError):
                self.resolve(state, str(_forbidden_with_hint(item, self.sweep.options.namespace)))
            elif isinstance(item, BaseException):
                state.context.append(redact(str(item)))
            return
        state.lines_this_follow += 1
        if state.lines_this_follow <= state.lines_seen:
            return  # a re-followed log starts from its beginning: these lines were handled already
        state.lines_seen += 1
        try:
            message = decode(item)
        except ProtocolError as err:
            state.outcome.failure = state.outcome.failure or str(err)
            return
        if message is None:
            if item.strip():
                state.context.append(redact(" ".join(item.split())))
            return
        self._on_message(state, message)

    def _on_message(self, state: _PodState, message: object) -> None:
        outcome = state.outcome
        if isinstance(message, RequestRecord):
            if message.index in state.record_indices:
                return
            state.record_indices.add(message.index)
            if message.error is not None:
                # A pod image's older worker may not mask it: the key this process sent is masked here.
                message = message.model_copy(update={"error": redact(message.error)})
            outcome.records.append(message)
            if message.success:
                self.completed += 1
                ttft = message.ttft
                if ttft is not None:
                    self.recent_ttft_ms.append(ttft * 1000.0)
            else:
                self.failed += 1
            state.pending.append(message)
            self._flush_records()
        elif isinstance(message, PodProgress):
            self.tokens_since_snapshot += message.tokens
            state.progress = message
        elif isinstance(message, PodReady):
            outcome.ready = message
            state.ready_after_s = time.perf_counter() - self.created_perf
            self.sweep.notify(
                f"{self.level.label}: pod {outcome.pod_index} ready ({message.connections} connections open) "
                f"{state.ready_after_s:.0f}s after its Job was created"
            )
        elif isinstance(message, PodStart):
            outcome.start = message
            if message.late_s == 0.0 and self.base_epoch is None:
                self.base_epoch = message.zero_epoch
            elif message.late_s > 0:
                self.sweep.notify(
                    f"{self.level.label}: pod {outcome.pod_index} started {message.late_s:.1f}s after the "
                    "shared start (it was not ready in time)"
                )
            self._flush_records()
        elif isinstance(message, PodSummary):
            outcome.summary = message
        elif isinstance(message, PodFatal):
            state.fatal = redact(message.message)

    def _flush_records(self) -> None:
        """Emit records shifted onto the level's clock, once that clock's zero is known."""
        if self.base_epoch is None:
            if not all(s.resolved or s.outcome.start is not None for s in self.states):
                return
            zeros = [s.outcome.start.zero_epoch for s in self.states if s.outcome.start is not None]
            if not zeros:
                return
            self.base_epoch = min(zeros)
        batch: list[RequestRecord] = []
        for state in self.states:
            if not state.pending or state.outcome.start is None:
                continue
            shift = state.outcome.start.zero_epoch - self.base_epoch
            batch.extend(shifted(record, shift) for record in state.pending)
            state.pending = []
        if batch:
            self.sweep.emit(RecordsBatch(level_index=self.index, records=batch))

    # --- pods ----------------------------------------------------------------------------------

    def inspect(self, pods: Sequence[Mapping[str, Any]], now: float) -> None:
        image = self.sweep.options.image
        seen: set[int] = set()
        for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or "")):
            index = completion_index(pod)
            name = pod_name(pod)
            if index is None or not 0 <= index < len(self.states) or not name:
                continue
            owner = next((p for p, k in self.pod_index_of.items() if k == index), None)
            if owner is None:
                self.pod_index_of[name] = index
            elif owner != name:
                if name not in self.ignored_pods:
                    self.ignored_pods.add(name)
                    self.sweep.notify(
                        f"{self.level.label}: pod {name} replaced {owner} for share {index}; it is ignored "
                        "(it would send that share again, late)"
                    )
                continue
            seen.add(index)
            state = self.states[index]
            state.outcome.pod_name = name
            if state.resolved:
                continue
            failure = waiting_failure(pod, image)
            if failure:
                self.resolve(state, failure)
                continue
            if has_logs(pod) and (state.follower is None or (state.follower.done and pod_end(pod) is None)):
                state.log_ended = False
                state.lines_this_follow = 0
                state.follower = _LogFollower(
                    self.sweep.kube, self.sweep.options.namespace, name, self.deliver
                )
            end = pod_end(pod)
            if end is not None and (state.log_ended or not has_logs(pod)):
                self.resolve(state, self._end_failure(state, end.exit_code, end.reason, end.message))
                continue
            waiting_reason = unschedulable(pod)
            if waiting_reason and waiting_reason not in state.told:
                state.told.add(waiting_reason)
                self.sweep.notify(
                    f"{self.level.label}: pod {index} ({name}) is not scheduled yet: {waiting_reason}"
                )
            if not has_logs(pod) and now > self.start_perf + self.sweep.options.pod_start_timeout_s:
                why = waiting_reason or f"still {(pod.get('status') or {}).get('phase') or 'Pending'}"
                self.resolve(
                    state,
                    f"not running {self.sweep.options.pod_start_timeout_s:g}s after the shared start ({why})",
                )
        for state in self.states:
            if state.resolved or state.outcome.pod_index in seen:
                continue
            if state.outcome.pod_name is not None and (state.follower is None or state.log_ended):
                gone = (
                    None
                    if state.outcome.summary
                    else f"its pod {state.outcome.pod_name} was deleted before it finished"
                )
                self.resolve(state, gone)
            elif now > self.start_perf + self.sweep.options.pod_start_timeout_s:
                self.resolve(
                    state,
                    f"no pod was running for this share {self.sweep.options.pod_start_timeout_s:g}s after "
                    f"the shared start (see kubectl describe job {job_name(self.plan.run_id, self.index)})",
                )

    def _end_failure(
        self, state: _PodState, code: int | None, reason: str | None, message: str | None
    ) -> str | None:
        outcome = state.outcome
        if outcome.summary is not None:
            return None
        if state.fatal:
            return state.fatal
        if code == BOOTSTRAP_EXIT_CODE and message and message.strip():
            return " ".join(message.split())  # the bootstrap's own line: what the pod lacks and what to do
        context = " | ".join(state.context)
        why = f"exited with code {code}" if code is not None else "ended"
        if reason and reason not in ("Error", "Completed"):
            why += f" ({reason})"
        # FallbackToLogsOnError makes the log's tail the message: its last line says why (a traceback's).
        last = _last_plain_line(message or "")
        if last and last not in state.context:
            why += f": {last}"
        if outcome.ready is None:
            text = f"{why} before the load generator started"
            if context:
                text += f": {context}"
            return text
        if reason == "OOMKilled":
            return f"{why} while running: the pod ran out of memory (limit 2Gi)"
        return f"{why} while running" + (f": {context}" if context else "")

    def resolve(self, state: _PodState, failure: str | None) -> None:
        if state.resolved:
            return
        state.resolved = True
        if failure and not state.outcome.failure:
            state.outcome.failure = failure
        if failure:
            self.sweep.notify(f"{self.level.label}: pod {state.outcome.pod_index} failed: {failure}")
        if state.follower is not None and not state.follower.done:
            state.follower.close()
        self._flush_records()

    @property
    def all_resolved(self) -> bool:
        return all(state.resolved for state in self.states)

    def close_followers(self) -> None:
        for state in self.states:
            if state.follower is not None:
                state.follower.close()
        for state in self.states:
            if state.follower is not None:
                state.follower.join(2.0)

    # --- progress ------------------------------------------------------------------------------

    def snapshot(self) -> ProgressSnapshot:
        now = time.perf_counter()
        interval = max(now - self.last_snapshot_perf, 1e-6)
        rate = self.tokens_since_snapshot / interval
        self.tokens_since_snapshot = 0
        self.last_snapshot_perf = now
        progress = [s.progress for s in self.states if s.progress is not None]
        return ProgressSnapshot(
            level_index=self.index,
            level_label=self.level.label,
            t=max(0.0, now - self.start_perf),
            total=sum(state.outcome.expected for state in self.states),
            sent=sum(p.sent for p in progress),
            completed=self.completed,
            failed=self.failed,
            in_flight=sum(p.in_flight for p in progress),
            output_tokens_per_s=rate,
            recent_ttft_ms=list(self.recent_ttft_ms),
        )


class InClusterSweep:
    """Runs a ``SweepConfig`` from N pods in the cluster; ``await run()`` gives the ``SweepResult``."""

    def __init__(
        self,
        kube: KubeClient,
        config: SweepConfig,
        options: InClusterOptions,
        dataset: SampledDataset,
        bundle: LoadgenBundle,
        emit: Emit,
        notify: Notify | None = None,
        cancel: asyncio.Event | None = None,
        api_key: SecretStr | None = None,
    ) -> None:
        self.kube = kube
        self.config = config
        self.options = options
        self.dataset = dataset
        self.bundle = bundle
        self.emit = emit
        self.notify: Notify = notify or (lambda _text: None)
        self.cancel = cancel or asyncio.Event()
        self.api_key = api_key
        if api_key is not None:
            remember_secret(api_key.get_secret_value())  # masked in whatever the pods send back
        self.run_id = uuid.uuid4().hex[:12]
        self.clock_offset = 0.0
        self.per_index_backoff = True
        self.created: list[ObjectRef] = []
        self.jobs: list[ObjectRef] = []
        self.last_ready_s: float | None = None

    # --- kube calls ------------------------------------------------------------------------------

    def _apply(self, objects: list[dict[str, Any]]) -> None:
        secrets = [self.api_key.get_secret_value()] if self.api_key is not None else []
        try:
            applied = self.kube.apply(objects, namespace=self.options.namespace, secrets=secrets)
        except KubeForbiddenError as err:
            raise _forbidden_with_hint(err, self.options.namespace) from None
        for item in applied:
            if item.ref.kind != "Job" and item.ref not in self.created:
                self.created.append(item.ref)

    def _delete(self, refs: list[ObjectRef]) -> None:
        try:
            self.kube.delete(refs)
        except KubeError as err:
            names = ", ".join(str(ref) for ref in refs)
            self.notify(
                f"warning: could not delete {names}: {err}; remove them with kubectl delete job,configmap,"
                f"secret -n {self.options.namespace} -l {run_selector(self.run_id)}"
            )

    def _list_pods(self, level_index: int) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in level_labels(self.run_id, level_index).items())
        try:
            return self.kube.list_objects("Pod", self.options.namespace, label_selector=selector)
        except KubeForbiddenError as err:
            raise _forbidden_with_hint(err, self.options.namespace) from None

    # --- the sweep -----------------------------------------------------------------------------

    def _bundle_objects(self) -> list[dict[str, Any]]:
        blobs = {WHEEL_BLOB: self.bundle.wheel, DATASET_BLOB: encode_dataset(self.dataset.requests)}
        if self.dataset.level_conversations:
            blobs[CONVERSATIONS_BLOB] = encode_conversations(self.dataset.level_conversations)
        parts = pack_parts(blobs)
        objects = render_bundle_configmaps(self.run_id, self.options.namespace, parts)
        if self.api_key is not None:
            objects.append(
                render_api_key_secret(self.run_id, self.options.namespace, self.api_key.get_secret_value())
            )
        return objects

    @property
    def _configmap_names(self) -> list[str]:
        return [ref.name for ref in self.created if ref.kind == "ConfigMap"]

    async def run(self) -> SweepResult:
        validate_config(self.config)
        facts = await asyncio.to_thread(server_facts, self.kube)
        self.clock_offset = facts.clock_offset_s
        version = facts.minor_version
        self.per_index_backoff = version is None or version >= PER_INDEX_BACKOFF_SINCE
        server_notes = (
            [] if self.per_index_backoff else [OLD_SERVER_WARNING.format(version=facts.git_version)]
        )
        for note in server_notes:
            self.notify(note)
        try:
            await asyncio.to_thread(self._apply, self._bundle_objects())
        except BaseException:
            await asyncio.to_thread(self._delete, list(self.created))
            raise
        result = SweepResult(run_id=self.run_id, config=self.config, started_at=datetime.now(UTC))
        notes = [
            *self.dataset.notes,
            f"in-cluster: {self.options.pods} load-generator pods per level (Indexed Job) in namespace "
            f"{self.options.namespace}, image {self.options.image}, target {self.config.target.base_url}",
            *server_notes,
        ]
        self.emit(SweepStarted(run_id=self.run_id, config=self.config, notes=notes))
        stop_message: str | None = None
        try:
            for index, level in enumerate(self.config.load_levels()):
                if self.cancel.is_set():
                    break
                level_result = await self._run_level(index, level)
                result.levels.append(level_result)
                if self.cancel.is_set():
                    break
                if level_result.status is RunStatus.FAILED and not level_result.records:
                    stop_message = level_result.message
                    break
        finally:
            await asyncio.to_thread(self._delete, [*reversed(self.jobs), *self.created])
            self._finish(result, stop_message)
            self.emit(SweepFinished(result=result))
        return result

    def _finish(self, result: SweepResult, stop_message: str | None) -> None:
        result.finished_at = datetime.now(UTC)
        if self.cancel.is_set():
            result.status = (
                RunStatus.PARTIAL if any(lvl.records for lvl in result.levels) else RunStatus.FAILED
            )
            result.message = "cancelled: finished levels and requests were kept"
        elif stop_message is not None:
            result.status = (
                RunStatus.PARTIAL if any(lvl.records for lvl in result.levels) else RunStatus.FAILED
            )
            result.message = stop_message
        elif len(result.levels) < len(self.config.levels):
            result.status = RunStatus.PARTIAL if result.levels else RunStatus.FAILED
            result.message = "the sweep stopped early: finished levels and requests were kept"
        else:
            set_status_from_levels(result)

    def _start_delay(self) -> float:
        if self.options.start_delay_s is not None:
            return self.options.start_delay_s
        if self.last_ready_s is None:
            return DEFAULT_FIRST_START_DELAY_S
        return min(MAX_ADAPTIVE_START_DELAY_S, max(MIN_START_DELAY_S, self.last_ready_s * START_DELAY_MARGIN))

    def _expected_per_pod(self, index: int, level: LoadLevel) -> tuple[int, list[int]]:
        """(the plan's num_requests, the requests each pod sends). Multi-turn: the level's sessions are
        dealt round-robin to the pods (``session_jobs``), each sending every turn of its own."""
        conversations = self.dataset.conversations_for_level(index)
        if conversations is not None:
            used = pods_for_level(level, len(conversations), self.options.pods)
            return len(conversations), [
                sum(len(c.turns) for c in conversations[k::used]) for k in range(used)
            ]
        total = len(self.dataset.requests)
        trace = trace_arrivals(self.dataset.requests)
        shares = all_shares(level, total, self.options.pods, self.config.seed, trace)
        return total, [len(share.indices) for share in shares]

    async def _run_level(self, index: int, level: LoadLevel) -> LevelResult:
        config = self.config
        num_requests, expected = self._expected_per_pod(index, level)
        spec = config.dataset
        multi_turn = (
            SessionSettings(
                dataset_answers=spec.dataset_answers,
                think_time_s=spec.think_time_s,
                think_time_dist=spec.think_time_dist,
            )
            if self.dataset.conversations_for_level(index) is not None
            else None
        )
        delay = self._start_delay()
        start_epoch = time.time() + self.clock_offset + delay
        plan = WorkerPlan(
            run_id=self.run_id,
            level_index=index,
            level=level,
            pods=len(expected),
            num_requests=num_requests,
            seed=config.seed,
            base_url=config.target.base_url,
            model=config.target.model,
            endpoint=config.endpoint,
            temperature=config.temperature,
            ignore_eos=config.ignore_eos,
            continuous_usage=config.target.capabilities.continuous_usage,
            api_key_env=config.target.api_key_env if self.api_key is not None else None,
            start_at_epoch=start_epoch,
            request_timeout_s=config.request_timeout_s,
            idle_timeout_s=config.idle_timeout_s,
            multi_turn=multi_turn,
        )
        job = render_job(
            plan,
            namespace=self.options.namespace,
            image=self.options.image,
            wheel_name=self.bundle.wheel_name,
            requirements=self.bundle.requirements,
            configmaps=self._configmap_names,
            api_key_secret=api_key_secret_name(self.run_id) if self.api_key is not None else None,
            backoff_limit_per_index=self.per_index_backoff,
        )
        job_ref = ObjectRef(kind="Job", name=job["metadata"]["name"], namespace=self.options.namespace)
        await asyncio.to_thread(self._apply, [job])
        self.jobs.append(job_ref)
        created_perf = time.perf_counter()
        started_at = datetime.fromtimestamp(start_epoch - self.clock_offset, UTC)
        self.emit(LevelStarted(index=index, level=level, total=sum(expected)))
        pods_note = f"{len(expected)} pods" + (
            f" (of {self.options.pods}: {level.label} has no work for more)"
            if len(expected) < self.options.pods
            else ""
        )
        self.notify(f"{level.label}: Job {job_ref.name}, {pods_note}; they start together in {delay:.0f}s")
        state = _Level(
            self,
            index,
            level,
            plan,
            expected,
            created_perf,
            created_perf + delay,
        )
        try:
            await self._follow_level(state, job_ref)
        finally:
            state.close_followers()
            await asyncio.to_thread(self._delete, [job_ref])
            self.jobs.remove(job_ref)
        return self._level_result(state, started_at)

    async def _follow_level(self, state: _Level, job_ref: ObjectRef) -> None:
        options = self.options
        loop = asyncio.get_running_loop()
        cancel_task = loop.create_task(self.cancel.wait())
        next_poll = 0.0
        next_snapshot = time.perf_counter() + SNAPSHOT_INTERVAL_S
        cancel_deadline: float | None = None
        try:
            while not state.all_resolved:
                now = time.perf_counter()
                if self.cancel.is_set() and cancel_deadline is None:
                    cancel_deadline = now + options.cancel_grace_s
                    self.notify(
                        f"{state.level.label}: cancelling: deleting {job_ref} (its pods report what finished)"
                    )
                    await asyncio.to_thread(self._delete, [job_ref])
                if cancel_deadline is not None and now >= cancel_deadline:
                    for pod_state in state.states:
                        state.resolve(
                            pod_state, None if pod_state.outcome.summary else "cancelled before it finished"
                        )
                    break
                if now >= next_poll:
                    pods = await asyncio.to_thread(self._list_pods, state.index)
                    state.inspect(pods, time.perf_counter())
                    next_poll = time.perf_counter() + options.poll_interval_s
                    continue
                if now >= next_snapshot:
                    self.emit(state.snapshot())
                    next_snapshot = now + SNAPSHOT_INTERVAL_S
                wait_s = max(0.0, min(next_poll, next_snapshot) - time.perf_counter())
                getter = loop.create_task(state.queue.get())
                waiting: set[asyncio.Future[Any]] = {getter}
                if cancel_deadline is None:
                    waiting.add(cancel_task)
                done, _ = await asyncio.wait(waiting, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                    continue
                pod, item = getter.result()
                state.on_item(pod, item)
                while not state.queue.empty():
                    state.on_item(*state.queue.get_nowait())
                if item is None or isinstance(item, BaseException):
                    next_poll = 0.0  # a log ended: look at the pod now
        finally:
            cancel_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cancel_task
        while not state.queue.empty():
            state.on_item(*state.queue.get_nowait())
        self.emit(state.snapshot())
        ready = [s.ready_after_s for s in state.states if s.ready_after_s is not None]
        if ready:
            self.last_ready_s = max(ready)

    def _level_result(self, state: _Level, started_at: datetime) -> LevelResult:
        config = self.config
        outcomes = [s.outcome for s in state.states]
        merged = merge_pods(outcomes)
        metrics = compute_metrics(
            merged.records,
            merged.duration_s,
            goodput_slos_ms=config.goodput_slos_ms or None,
            percentiles=config.percentiles,
        )
        failed_pods = [o for o in outcomes if o.failure]
        problems = list(merged.problems)
        if self.cancel.is_set():
            status = RunStatus.PARTIAL
            problems.insert(0, "cancelled: finished requests of this level were kept")
        elif failed_pods and len(failed_pods) == len(outcomes) and not merged.records:
            status = RunStatus.FAILED
            problems = [_all_failed_message(failed_pods)]
        elif metrics.completed == 0:
            status = RunStatus.FAILED
            first_error = next((r.error for r in merged.records if r.error), None)
            problems.insert(0, f"no request completed: {first_error or 'no pod sent a request'}")
        elif problems:
            status = RunStatus.PARTIAL
        else:
            status = RunStatus.COMPLETE
        if status is not RunStatus.FAILED and metrics.failed:
            errors = sorted({r.error for r in merged.records if r.error})
            problems.append(f"{metrics.failed} failed requests (e.g. {errors[0]})" if errors else "")
        message = "; ".join(p for p in problems if p) or None
        result = LevelResult(
            index=state.index,
            level=state.level,
            started_at=started_at,
            status=status,
            metrics=metrics,
            client=judge_client(merged.client, metrics),
            records=merged.records,
            message=message,
            prompt_sampling=PromptSampling.SAME,  # one dataset ConfigMap serves every level
            turns=per_turn_metrics(merged.records) if state.plan.multi_turn is not None else None,
        )
        self.emit(LevelFinished(result=result))
        return result


def _last_plain_line(text: str) -> str:
    """The last line of ``text`` that is not a protocol line, whitespace collapsed ("" if none)."""
    for line in reversed(text.splitlines()):
        if not line.strip():
            continue
        try:
            if decode(line) is not None:
                continue
        except ProtocolError:
            continue
        return " ".join(line.split())
    return ""


def _all_failed_message(failed: Sequence[PodOutcome]) -> str:
    """One line for a level none of whose pods ran: each distinct reason once, with its pods."""
    by_reason: dict[str, list[int]] = {}
    for outcome in failed:
        by_reason.setdefault(outcome.failure or "failed", []).append(outcome.pod_index)
    parts = [
        f"{reason} (pod{'s' if len(indices) > 1 else ''} {', '.join(str(i) for i in indices)})"
        for reason, indices in by_reason.items()
    ]
    return f"all {len(failed)} load-generator pods failed: " + "; ".join(parts)
