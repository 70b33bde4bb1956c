"""The distributed bench driver against the fake API server: events, cancel, pods failing or late."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.bench.datasets import SampledDataset
from backends.bench.models import Axis, ClientStats, ProgressSnapshot, RequestRecord, SampledRequest
from backends.bench.results import RunStatus, SweepConfig, SweepResult
from backends.bench.sweep import (
    LevelFinished,
    LevelStarted,
    RecordsBatch,
    SweepEvent,
    SweepFinished,
    SweepStarted,
)
from backends.kube.client import KubeClient
from backends.kube_bench.clock import server_clock_offset
from backends.kube_bench.codec import PodReady, PodStart, PodSummary, encode
from backends.kube_bench.driver import InClusterOptions, InClusterSweep, LoadgenBundle
from backends.kube_bench.plan import PLAN_ENV, WorkerPlan, parse_plan
from backends.target_types import Target, TargetKind
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.kube_jobs import (
    Behaviour,
    FakeJobController,
    FakePod,
    SkewedClockKubeApi,
    VersionedKubeApi,
    fabricated_records,
    scripted_worker,
)

pytestmark = pytest.mark.timeout(60)

NS = "servedeck"


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        api.create_namespace(NS)
        yield api


@pytest.fixture
def kube(kube_api: FakeKubeApi, tmp_path: Path) -> Iterator[KubeClient]:
    config = kube_api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    with KubeClient.connect(str(config)) as client:
        yield client


class Run:
    def __init__(self) -> None:
        self.events: list[SweepEvent] = []
        self.notes: list[str] = []
        self.cancel = asyncio.Event()
        self.jobs: list[dict[str, Any]] = []

    @property
    def plans(self) -> list[WorkerPlan]:
        plans = []
        for job in self.jobs:
            env = job["spec"]["template"]["spec"]["containers"][0]["env"]
            plans.append(parse_plan(next(item["value"] for item in env if item["name"] == PLAN_ENV)))
        return plans


def _sweep(
    api: FakeKubeApi,
    kube: KubeClient,
    behaviour: Behaviour,
    *,
    levels: list[float] | None = None,
    pods: int = 2,
    prompts: int = 8,
    pod_start_timeout_s: float = 30.0,
    on_event: Callable[[Run, SweepEvent], None] | None = None,
    controller_out: list[FakeJobController] | None = None,
) -> tuple[SweepResult, Run]:
    config = SweepConfig(
        target=Target(
            name="t",
            base_url="http://gemma.servedeck.svc.cluster.local:8000",
            model="m",
            kind=TargetKind.VLLM,
        ),
        axis=Axis.CONCURRENCY,
        levels=levels or [4],
        num_prompts=prompts,
        percentiles=[50, 99],
    )
    dataset = SampledDataset(
        requests=[
            SampledRequest(prompt=f"p{i}", prompt_len=10, expected_output_len=8) for i in range(prompts)
        ],
        notes=["dataset note"],
    )
    bundle = LoadgenBundle(
        wheel_name="servedeck-0.1.0-py3-none-any.whl", wheel=b"PK\x03\x04", requirements=["pydantic"]
    )
    options = InClusterOptions(
        namespace=NS,
        pods=pods,
        start_delay_s=0.1,
        pod_start_timeout_s=pod_start_timeout_s,
        poll_interval_s=0.1,
    )
    run = Run()

    def emit(event: SweepEvent) -> None:
        run.events.append(event)
        if on_event is not None:
            on_event(run, event)

    async def main() -> SweepResult:
        sweep = InClusterSweep(kube, config, options, dataset, bundle, emit, run.notes.append, run.cancel)
        return await sweep.run()

    with FakeJobController(api, behaviour) as controller:
        result = asyncio.run(main())
    run.jobs = controller.jobs_seen
    if controller_out is not None:
        controller_out.append(controller)
    return result, run


def _leftovers(api: FakeKubeApi) -> list[str]:
    return [
        f"{kind}/{o['metadata']['name']}"
        for kind in ("Job", "ConfigMap", "Pod")
        for o in api.list_objects(kind, NS)
    ]


def test_events_are_those_of_a_local_sweep_and_streamed_records_equal_the_result(
    kube_api: FakeKubeApi, kube: KubeClient
) -> None:
    result, run = _sweep(kube_api, kube, scripted_worker(), levels=[2, 4])
    assert result.status is RunStatus.COMPLETE
    kinds = [type(event) for event in run.events]
    assert kinds[0] is SweepStarted and kinds[-1] is SweepFinished
    assert kinds.count(LevelStarted) == kinds.count(LevelFinished) == 2
    assert ProgressSnapshot in kinds
    started = run.events[0]
    assert isinstance(started, SweepStarted) and "dataset note" in started.notes
    for level in result.levels:
        streamed = sorted(
            (
                r
                for e in run.events
                if isinstance(e, RecordsBatch) and e.level_index == level.index
                for r in e.records
            ),
            key=lambda r: r.index,
        )
        assert streamed == level.records  # what history stores as it arrives is the merged result
        assert level.metrics.completed == 8
        assert level.client.workers == 2
    assert _leftovers(kube_api) == []


def test_cancel_deletes_the_job_and_keeps_what_finished(kube_api: FakeKubeApi, kube: KubeClient) -> None:
    def slow(pod: FakePod) -> None:
        plan = pod.plan
        pod.running()
        records = fabricated_records(plan, pod.index)
        pod.log(encode(PodReady(pod_index=pod.index, connections=2, epoch=plan.start_at_epoch)))
        pod.log(encode(PodStart(pod_index=pod.index, zero_epoch=plan.start_at_epoch, late_s=0.0)))
        pod.log(encode(records[0]))
        pod.terminating.wait()  # SIGTERM: the worker cancels what is in flight and reports
        summary = PodSummary(
            pod_index=pod.index, records=1, duration_s=1.0, client=ClientStats(), cancelled=True
        )
        pod.log(encode(summary))
        pod.succeed()

    seen: list[RequestRecord] = []

    def cancel_on_records(run: Run, event: SweepEvent) -> None:
        # Cancel once both pods' first records arrived, so what "finished" is the same on every run.
        if isinstance(event, RecordsBatch):
            seen.extend(event.records)
            if len(seen) >= 2:
                run.cancel.set()

    result, run = _sweep(kube_api, kube, slow, levels=[4, 8], on_event=cancel_on_records)
    assert result.status is RunStatus.PARTIAL
    assert result.message == "cancelled: finished levels and requests were kept"
    (level,) = result.levels
    assert level.status is RunStatus.PARTIAL
    assert level.message is not None and level.message.startswith("cancelled")
    assert len(level.records) == 2  # one per pod
    assert any("cancelling: deleting Job" in note for note in run.notes)
    assert _leftovers(kube_api) == []


def test_a_pod_killed_for_memory_mid_run_is_named_and_the_level_is_partial(
    kube_api: FakeKubeApi, kube: KubeClient
) -> None:
    script = scripted_worker()

    def oom_on_pod_0(pod: FakePod) -> None:
        if pod.index != 0:
            script(pod)
            return
        plan = pod.plan
        pod.running()
        pod.log(encode(PodReady(pod_index=0, connections=2, epoch=plan.start_at_epoch)))
        pod.log(encode(PodStart(pod_index=0, zero_epoch=plan.start_at_epoch, late_s=0.0)))
        pod.log(*(encode(r) for r in fabricated_records(plan, 0)[:2]))
        pod.fail(137, "OOMKilled")

    result, _ = _sweep(kube_api, kube, oom_on_pod_0)
    (level,) = result.levels
    assert level.status is RunStatus.PARTIAL
    assert len(level.records) == 2 + 4
    assert level.message is not None
    assert "pod 0 (servedeck-bench-" in level.message
    assert (
        "exited with code 137 (OOMKilled) while running: the pod ran out of memory (limit 2Gi)"
        in level.message
    )


def test_an_unschedulable_pod_is_given_up_after_the_start_timeout(
    kube_api: FakeKubeApi, kube: KubeClient
) -> None:
    script = scripted_worker()

    def pod_1_unschedulable(pod: FakePod) -> None:
        if pod.index == 1:
            pod.unschedulable()
            pod.terminating.wait()
            pod.ended.set()
            return
        script(pod)

    result, run = _sweep(kube_api, kube, pod_1_unschedulable, pod_start_timeout_s=0.5)
    (level,) = result.levels
    assert level.status is RunStatus.PARTIAL
    assert len(level.records) == 4
    assert level.message is not None
    assert (
        "not running 0.5s after the shared start (Unschedulable: 0/3 nodes are available: 3 Insufficient "
        "cpu.)" in level.message
    )
    assert any("is not scheduled yet: Unschedulable" in note for note in run.notes)


def test_a_late_pod_is_placed_on_the_shared_clock_and_reported(
    kube_api: FakeKubeApi, kube: KubeClient
) -> None:
    result, run = _sweep(kube_api, kube, scripted_worker(lambda index: 3.0 if index == 1 else 0.0))
    (level,) = result.levels
    assert level.status is RunStatus.PARTIAL
    assert (
        level.message is not None
        and "pods did not start together: pod 1 began 3.0s after the first" in level.message
    )
    late_records = [r for r in level.records if r.index % 4 in (2, 3)]  # pod 1's lanes of concurrency 4
    assert late_records and all(r.queued_at >= 3.0 for r in late_records)
    assert any("pod 1 started 3.0s after the shared start" in note for note in run.notes)


def test_pods_late_together_start_the_clock_without_a_warning(
    kube_api: FakeKubeApi, kube: KubeClient
) -> None:
    result, run = _sweep(kube_api, kube, scripted_worker(lambda index: 2.0), pods=2)
    # Both pods were late by the same amount: the clock starts at the earliest, nothing is shifted.
    streamed = sorted(
        (r for e in run.events if isinstance(e, RecordsBatch) for r in e.records), key=lambda r: r.index
    )
    (level,) = result.levels
    assert streamed == level.records
    assert min(r.queued_at for r in level.records) == 0.0
    assert level.status is RunStatus.COMPLETE


def test_records_are_typed_request_records(kube_api: FakeKubeApi, kube: KubeClient) -> None:
    result, _ = _sweep(kube_api, kube, scripted_worker(), pods=1, prompts=3, levels=[1])
    assert all(isinstance(r, RequestRecord) for r in result.levels[0].records)
    assert [r.index for r in result.levels[0].records] == [0, 1, 2]


@pytest.mark.parametrize("skew_s", [0.0, 300.0, -120.0])
def test_the_shared_start_is_set_on_the_api_servers_clock(tmp_path: Path, skew_s: float) -> None:
    with SkewedClockKubeApi(skew_s) as api:
        api.create_namespace(NS)
        config = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        with KubeClient.connect(str(config)) as client:
            offset = server_clock_offset(client)
            before = time.time()
            _, run = _sweep(api, client, scripted_worker(), pods=1, prompts=2, levels=[1])
    assert offset == pytest.approx(skew_s, abs=1.5)
    (plan,) = run.plans
    assert plan.start_at_epoch == pytest.approx(before + skew_s + 0.1, abs=2.0)


def _fail_first_attempt_of_pod_1() -> Behaviour:
    script = scripted_worker()
    attempts: list[int] = []

    def behave(pod: FakePod) -> None:
        if pod.index == 1 and not attempts:
            attempts.append(1)
            pod.running()
            pod.fail(1, termination_message="boom")
            return
        script(pod)

    return behave


def test_on_a_server_older_than_1_29_the_job_gets_a_backoff_limit_and_a_warning(tmp_path: Path) -> None:
    with VersionedKubeApi("v1.28.7") as api:
        api.create_namespace(NS)
        config = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        controllers: list[FakeJobController] = []
        with KubeClient.connect(str(config)) as kube:
            result, run = _sweep(api, kube, _fail_first_attempt_of_pod_1(), controller_out=controllers)
    (controller,) = controllers
    (job,) = run.jobs
    assert job["spec"]["backoffLimit"] == 0
    # pod 1 was not retried: a retry would send its share again, late
    assert sorted(pod.index for pod in controller.pods) == [0, 1]
    warnings = [note for note in run.notes if "backoffLimitPerIndex" in note]
    assert len(warnings) == 1
    assert "v1.28.7" in warnings[0] and "1.29" in warnings[0]
    started = run.events[0]
    assert isinstance(started, SweepStarted) and any("backoffLimitPerIndex" in n for n in started.notes)
    assert result.levels[0].status is not RunStatus.COMPLETE


def test_on_1_29_a_failed_pod_is_not_retried_and_the_others_finish(tmp_path: Path) -> None:
    with VersionedKubeApi("v1.29.0") as api:
        api.create_namespace(NS)
        config = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
        controllers: list[FakeJobController] = []
        with KubeClient.connect(str(config)) as kube:
            result, run = _sweep(api, kube, _fail_first_attempt_of_pod_1(), controller_out=controllers)
    (job,) = run.jobs
    assert job["spec"]["backoffLimitPerIndex"] == 0 and "backoffLimit" not in job["spec"]
    assert sorted(pod.index for pod in controllers[0].pods) == [0, 1]
    assert not any("backoffLimitPerIndex" in note for note in run.notes)
    (level,) = result.levels
    assert level.status is RunStatus.PARTIAL and len(level.records) == 4
