"""Following pod logs over a real chunked response, with vLLM's stats line parsed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.kube.client import KubeClient
from backends.kube.errors import KubeError, KubeForbiddenError, KubeNotFoundError, KubeRequestError
from backends.kube.logs import LogLine, LogStream, pick_pod
from tests.cli_runner import kube_client
from tests.fakes.kube_api import FakeKubeApi, wait_until
from tests.fakes.kube_objects import vllm_deployment
from tests.fakes.kube_rollout import ScriptedRollout

pytestmark = pytest.mark.timeout(60)

NS = "servedeck"
NAME = "gemma-27b"
STARTUP = [
    "INFO 05-12 10:21:02 [__init__.py:239] Automatically detected platform cuda.",
    "INFO 05-12 10:23:40 [api_server.py:1090] Starting vLLM API server 0 on http://0.0.0.0:8000",
]
STATS = (
    "INFO 05-12 10:23:45 [loggers.py:116] Engine 000: Avg prompt throughput: 1523.4 tokens/s, "
    "Avg generation throughput: 812.7 tokens/s, Running: 37 reqs, Waiting: 2 reqs, "
    "GPU KV cache usage: 43.1%, Prefix cache hit rate: 26.0%"
)


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        api.create_namespace(NS)
        api.put(vllm_deployment(NAME, NS))
        yield api


@pytest.fixture
def client(kube_api: FakeKubeApi, tmp_path: Path) -> Iterator[KubeClient]:
    with kube_client(kube_api, tmp_path, NS) as kube:
        yield kube


@pytest.fixture
def running_pod(kube_api: FakeKubeApi) -> str:
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "running", "ready"])
    while script.advance():
        pass
    return script.pod_name


def test_follow_streams_new_lines_and_parses_stats(
    kube_api: FakeKubeApi, client: KubeClient, running_pod: str
) -> None:
    kube_api.append_log(NS, running_pod, *STARTUP)
    assert pick_pod(client, NAME, NS) == running_pod
    received: list[LogLine] = []
    with LogStream(client, running_pod, follow=True, tail_lines=1) as stream:
        lines = iter(stream)
        received.append(next(lines))
        assert received[0].text == STARTUP[-1] and received[0].stats is None
        assert wait_until(lambda: kube_api.log_followers(NS, running_pod) == 1)

        kube_api.append_log(NS, running_pod, STATS)
        received.append(next(lines))
        kube_api.append_log(NS, running_pod, 'INFO:     10.8.0.1:53422 - "GET /health HTTP/1.1" 200 OK')
        received.append(next(lines))
        kube_api.close_log(NS, running_pod)
        received.extend(lines)

    assert [line.text for line in received] == [
        STARTUP[-1],
        STATS,
        'INFO:     10.8.0.1:53422 - "GET /health HTTP/1.1" 200 OK',
    ]
    stats_line = received[1]
    assert stats_line.stats is not None and stats_line.pod == running_pod
    snapshot = stats_line.snapshot()
    assert snapshot is not None
    assert (snapshot.source, snapshot.running, snapshot.waiting) == ("vllm-v1", 37.0, 2.0)
    assert snapshot.kv_cache_usage == pytest.approx(0.431)
    assert snapshot.t == stats_line.t >= received[0].t
    follow_requests = [r for r in kube_api.requests if r.path.endswith(f"/pods/{running_pod}/log")]
    assert follow_requests[0].query == {"follow": "true", "tailLines": "1"}


def test_without_follow_the_stream_ends(kube_api: FakeKubeApi, client: KubeClient, running_pod: str) -> None:
    kube_api.append_log(NS, running_pod, *STARTUP, STATS)
    with LogStream(client, running_pod, follow=False) as stream:
        texts = [line.text for line in stream]
    assert texts == [*STARTUP, STATS]


def test_close_from_another_thread_ends_a_follow(
    kube_api: FakeKubeApi, client: KubeClient, running_pod: str
) -> None:
    stream = LogStream(client, running_pod, follow=True)
    received: list[str] = []
    kube_api.append_log(NS, running_pod, STARTUP[0])

    def read() -> None:
        received.extend(line.text for line in stream)

    reader = threading.Thread(target=read)
    reader.start()
    assert wait_until(lambda: received == [STARTUP[0]])
    stream.close()
    reader.join(5)
    assert not reader.is_alive()
    assert wait_until(lambda: kube_api.log_followers(NS, running_pod) == 0)


def test_logs_of_a_starting_container_say_so(kube_api: FakeKubeApi, client: KubeClient) -> None:
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "scheduled"])
    script.advance()
    script.advance()
    with pytest.raises(KubeRequestError) as caught:
        list(LogStream(client, script.pod_name, follow=False, deployment=NAME))
    assert str(caught.value) == (
        f'logs of pod {script.pod_name} are not available: container "vllm" in pod "{script.pod_name}" is '
        "waiting to start: ContainerCreating; if it is still starting, watch it with "
        f"servedeck deploy status {NAME} -n {NS} --watch"
    )
    with pytest.raises(KubeRequestError, match=f"kubectl describe pod {script.pod_name} -n {NS}$"):
        list(LogStream(client, script.pod_name, follow=False))


def test_log_errors(kube_api: FakeKubeApi, client: KubeClient, running_pod: str) -> None:
    with pytest.raises(
        KubeNotFoundError, match=r'not found: get pods/log/ghost in servedeck: pods "ghost" not found'
    ):
        list(LogStream(client, "ghost", follow=False))
    with pytest.raises(KubeRequestError, match=f"container sidecar is not valid for pod {running_pod}"):
        list(LogStream(client, running_pod, container="sidecar", follow=False))
    kube_api.deny("get", "pods/log", NS)
    with pytest.raises(KubeForbiddenError, match=r'^forbidden: get pods/log in servedeck: pods "'):
        list(LogStream(client, running_pod, follow=False))


def test_pick_pod_without_pods_or_deployment(kube_api: FakeKubeApi, client: KubeClient) -> None:
    with pytest.raises(KubeError, match=f"deployment '{NAME}' in {NS} has no pods yet; watch it with"):
        pick_pod(client, NAME, NS)
    with pytest.raises(KubeNotFoundError, match="deployment 'ghost' not found"):
        pick_pod(client, "ghost", NS)
