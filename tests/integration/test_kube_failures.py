"""What the real API server answers when things are wrong, and how servedeck names each cause.

Found against kube-apiserver v1.28: logs of an unscheduled pod (204), a kubelet that cannot be dialled
during port-forward (500), a rejected token (401) and a server certificate the kubeconfig's CA does not
sign. Each runs against the fake API server over real HTTP(S).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.kube.client import KubeClient
from backends.kube.errors import KubeError, KubeUnreachableError
from backends.kube.portforward import ForwardEvent, ForwardEventKind, PortForwarder
from tests.cli_runner import run_subcommand
from tests.fakes.kube_api import FakeKubeApi, make_certificate, wait_until
from tests.fakes.kube_objects import vllm_deployment
from tests.fakes.kube_rollout import ScriptedRollout
from tui.cli import deploy

pytestmark = pytest.mark.timeout(60)

NS = "servedeck"
NAME = "gemma-27b"


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as api:
        api.create_namespace(NS)
        api.put(vllm_deployment(NAME, NS))
        yield api


@pytest.fixture
def kubeconfig(kube_api: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = kube_api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.fixture
def client(kubeconfig: Path) -> Iterator[KubeClient]:
    with KubeClient.connect(str(kubeconfig)) as kube:
        yield kube


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_subcommand(deploy.add_parser, "deploy", argv, capsys)


# --- 204 logs of a pod not scheduled yet --------------------------------------------------------


def test_logs_of_a_pod_not_scheduled_yet_say_so_and_why(
    kube_api: FakeKubeApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "failed_scheduling"])
    while script.advance():
        pass

    code, out, err = run(["logs", NAME, "-n", NS], capsys)

    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(
        f"servedeck: error: pod {script.pod_name} is not scheduled yet: 0/3 nodes are available"
    )
    assert "3 Insufficient nvidia.com/gpu" in err
    assert f"servedeck deploy status {NAME} -n {NS} --watch" in err


def test_an_unknown_container_hint_names_the_deployment(
    kube_api: FakeKubeApi, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "running", "ready"])
    while script.advance():
        pass

    code, _, err = run(["logs", NAME, "-n", NS, "--container", "nope"], capsys)

    assert code == 1 and err.count("\n") == 1
    assert "container nope is not valid" in err
    assert "NAME" not in err and f"servedeck deploy status {NAME} -n {NS}" in err


# --- port-forward with a kubelet that cannot be dialled -----------------------------------------


def test_a_forward_to_an_unreachable_kubelet_fails_each_connection_at_once(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "running", "ready"])
    while script.advance():
        pass
    kube_api.kubelet_unreachable(NS, script.pod_name)
    events: list[ForwardEvent] = []

    with PortForwarder(client, deployment=NAME, on_event=events.append) as forward:
        for _ in range(2):
            with socket.create_connection(forward.local_address, timeout=20) as conn:
                assert conn.recv(1) == b""  # closed by the forwarder, not left hanging in retries
        assert wait_until(lambda: sum(e.kind is ForwardEventKind.FAILED for e in events) == 2)

    assert not [e for e in events if e.kind is ForwardEventKind.RECONNECTING]
    upgrades = [r for r in kube_api.requests if r.path.endswith(f"/pods/{script.pod_name}/portforward")]
    assert len(upgrades) == 2  # one try a connection, no retry loop
    failed = [e for e in events if e.kind is ForwardEventKind.FAILED]
    line = failed[0].describe()
    assert "\n" not in line
    assert "the kubelet of the pod's node cannot be reached" in line
    assert "error dialing backend" in line


# --- credentials and TLS ----------------------------------------------------------------------


def test_a_rejected_token_says_authentication_failed_not_no_right_to_list(
    kube_api: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = kube_api.write_kubeconfig(tmp_path / "bad-token", token="expired-token")
    monkeypatch.setenv("KUBECONFIG", str(path))

    code, _, err = run(["list"], capsys)

    assert code == 1 and err.count("\n") == 1
    assert "no right to list" not in err
    assert err.startswith("servedeck: error: authentication failed: the API server rejected the token")
    assert "expired-token" not in err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
def test_a_wrong_ca_in_the_kubeconfig_is_named_as_such(tmp_path: Path) -> None:
    server_cert = make_certificate(tmp_path, "apiserver")
    other_ca, _ = make_certificate(tmp_path, "someone-else")
    with FakeKubeApi(tls=server_cert) as api:
        api.create_namespace(NS)
        good = api.write_kubeconfig(tmp_path / "good", namespace=NS, ca_file=server_cert[0])
        with KubeClient.connect(str(good)) as kube:
            assert kube.list_objects("Deployment", NS) == []

        wrong = api.write_kubeconfig(tmp_path / "wrong", namespace=NS, ca_file=other_ca)
        with KubeClient.connect(str(wrong)) as kube, pytest.raises(KubeUnreachableError) as caught:
            kube.list_objects("Deployment", NS)

    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"TLS certificate verify failed for the API server at {api.url} (context fake)")
    assert "wrong CA in kubeconfig" in text
    assert "check that the cluster is up" not in text
    assert isinstance(caught.value, KubeError)
