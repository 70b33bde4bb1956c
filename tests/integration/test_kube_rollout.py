"""Rollout watch over real chunked watch streams from the fake API server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backends.kube.client import KubeClient
from backends.kube.errors import KubeForbiddenError, KubeNotFoundError
from backends.kube.rollout import RolloutEvent, RolloutEventKind, RolloutWatch
from tests.cli_runner import kube_client
from tests.fakes.kube_api import FakeKubeApi, wait_until
from tests.fakes.kube_objects import vllm_deployment
from tests.fakes.kube_rollout import ScriptedRollout

pytestmark = pytest.mark.timeout(60)

NS = "servedeck"
NAME = "gemma-27b"
WATCH_TIMEOUT_S = 20.0


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        api.create_namespace(NS)
        yield api


@pytest.fixture
def client(kube_api: FakeKubeApi, tmp_path: Path) -> Iterator[KubeClient]:
    with kube_client(kube_api, tmp_path, NS) as kube:
        kube.apply([vllm_deployment(NAME, NS)])
        yield kube


def _until(
    events: Iterator[RolloutEvent], seen: list[RolloutEvent], done: Callable[[RolloutEvent], bool]
) -> None:
    for event in events:
        seen.append(event)
        if done(event):
            return
    raise AssertionError(f"stream ended before the expected event; saw {[e.describe() for e in seen]}")


def test_pending_failed_scheduling_running_ready(kube_api: FakeKubeApi, client: KubeClient) -> None:
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "failed_scheduling", "running", "ready"])
    seen: list[RolloutEvent] = []
    with RolloutWatch(client, NAME, timeout_s=WATCH_TIMEOUT_S) as watch:
        events = iter(watch)
        _until(events, seen, lambda e: e.kind is RolloutEventKind.REPLICAS)
        assert wait_until(lambda: kube_api.watcher_count() == 3)

        script.advance()  # pending
        _until(events, seen, lambda e: e.kind is RolloutEventKind.POD_CREATED)
        assert seen[-1].phase == "Pending" and seen[-1].object == f"pod/{script.pod_name}"

        script.advance()  # failed_scheduling
        _until(
            events,
            seen,
            lambda e: e.kind is RolloutEventKind.CLUSTER_EVENT and e.reason == "FailedScheduling",
        )
        assert seen[-1].warning
        assert "Insufficient nvidia.com/gpu" in (seen[-1].message or "")

        script.advance()  # running
        _until(events, seen, lambda e: e.kind is RolloutEventKind.POD_PHASE)
        assert seen[-1].phase == "Running"

        script.advance()  # ready
        _until(events, seen, lambda e: e.is_final)

    kinds = [event.kind for event in seen]
    assert RolloutEventKind.POD_UNSCHEDULABLE in kinds
    assert kinds.index(RolloutEventKind.POD_CREATED) < kinds.index(RolloutEventKind.POD_UNSCHEDULABLE)
    assert kinds.index(RolloutEventKind.POD_PHASE) < kinds.index(RolloutEventKind.POD_READY)
    assert seen[-1].kind is RolloutEventKind.ROLLOUT_COMPLETE
    assert (seen[-1].ready_replicas, seen[-1].desired_replicas) == (1, 1)
    assert seen[-1].describe() == f"deployment/{NAME}: rollout complete: 1/1 ready"
    assert wait_until(lambda: kube_api.watcher_count() == 0)
    watch_requests = [r for r in kube_api.requests if r.query.get("watch") == "true"]
    assert {r.path for r in watch_requests} == {
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        f"/api/v1/namespaces/{NS}/pods",
        f"/api/v1/namespaces/{NS}/events",
    }


def test_image_pull_backoff_and_oom_killed_are_warnings(kube_api: FakeKubeApi, client: KubeClient) -> None:
    script = ScriptedRollout(
        kube_api, NS, NAME, ["pending", "scheduled", "image_pull_backoff", "running", "oom_killed"]
    )
    script.run_on_timer(0.05)
    seen: list[RolloutEvent] = []
    try:
        with RolloutWatch(client, NAME, timeout_s=WATCH_TIMEOUT_S) as watch:
            _until(iter(watch), seen, lambda e: e.kind is RolloutEventKind.CONTAINER_TERMINATED)
    finally:
        script.stop()

    pulls = [
        e for e in seen if e.kind is RolloutEventKind.CONTAINER_WAITING and e.reason == "ImagePullBackOff"
    ]
    assert pulls and pulls[0].warning and pulls[0].container == "vllm"
    assert 'Back-off pulling image "vllm/vllm-openai:v0.10.1"' in (pulls[0].message or "")
    oom = seen[-1]
    assert (oom.reason, oom.exit_code, oom.warning) == ("OOMKilled", 137, True)
    assert oom.describe() == f"WARNING pod/{script.pod_name} [vllm]: terminated: OOMKilled (exit code 137)"
    creating = [
        e for e in seen if e.kind is RolloutEventKind.CONTAINER_WAITING and e.reason == "ContainerCreating"
    ]
    assert creating and not creating[0].warning


def test_a_watch_resumed_after_compaction_relists_and_goes_on(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "running", "ready"])
    seen: list[RolloutEvent] = []
    with RolloutWatch(client, NAME, timeout_s=WATCH_TIMEOUT_S, watch_window_s=1) as watch:
        events = iter(watch)
        script.advance()
        _until(events, seen, lambda e: e.kind is RolloutEventKind.POD_CREATED)
        kube_api.compact_history()
        pod_watches = f"/api/v1/namespaces/{NS}/pods"

        def relisted() -> bool:
            watches = [
                r for r in kube_api.requests if r.path == pod_watches and r.query.get("watch") == "true"
            ]
            resumed = [i for i, r in enumerate(watches) if "resourceVersion" in r.query]
            return bool(resumed) and any("resourceVersion" not in r.query for r in watches[resumed[0] + 1 :])

        assert wait_until(relisted, timeout_s=10)
        script.advance()
        script.advance()
        _until(events, seen, lambda e: e.is_final)
    assert seen[-1].kind is RolloutEventKind.ROLLOUT_COMPLETE
    assert [e.kind for e in seen].count(RolloutEventKind.POD_CREATED) == 1
    assert all(e.object in (f"pod/{script.pod_name}", f"deployment/{NAME}") for e in seen)
    bookmarked = [r for r in kube_api.requests if r.query.get("allowWatchBookmarks") == "true"]
    assert len(bookmarked) == len([r for r in kube_api.requests if r.query.get("watch") == "true"])


def test_a_rollout_that_never_gets_ready_times_out(kube_api: FakeKubeApi, client: KubeClient) -> None:
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "failed_scheduling"])
    script.advance()
    script.advance()
    with RolloutWatch(client, NAME, timeout_s=1.0) as watch:
        seen = list(watch)
    assert seen[-1].kind is RolloutEventKind.TIMED_OUT
    assert any(e.reason == "FailedScheduling" for e in seen)


def test_events_of_other_workloads_are_left_out(kube_api: FakeKubeApi, client: KubeClient) -> None:
    other = vllm_deployment("other", NS)
    kube_api.put(other)
    kube_api.add_event(
        NS, {"kind": "Pod", "metadata": {"name": "other-5c4b-xyz"}}, "Killing", "Stopping container"
    )
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "running", "ready"])
    script.run_on_timer(0.05)
    try:
        with RolloutWatch(client, NAME, timeout_s=WATCH_TIMEOUT_S) as watch:
            seen = list(watch)
    finally:
        script.stop()
    assert seen[-1].kind is RolloutEventKind.ROLLOUT_COMPLETE
    assert all("other" not in event.object for event in seen)


def test_watching_a_missing_deployment_or_without_rights(kube_api: FakeKubeApi, client: KubeClient) -> None:
    with pytest.raises(KubeNotFoundError, match="deployment 'ghost' not found in namespace servedeck"):
        list(RolloutWatch(client, "ghost", timeout_s=5))

    kube_api.deny("watch", "events", NS)
    with pytest.raises(KubeForbiddenError) as caught, RolloutWatch(client, NAME, timeout_s=5) as watch:
        list(watch)
    assert str(caught.value).startswith('forbidden: watch events in servedeck: events is forbidden: User "')
