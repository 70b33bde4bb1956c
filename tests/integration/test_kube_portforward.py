"""Port-forward over the API server's WebSocket protocol (v4.channel.k8s.io), against the fake."""

from __future__ import annotations

import http.server
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.kube.client import KubeClient
from backends.kube.errors import KubeError
from backends.kube.portforward import ForwardEvent, ForwardEventKind, PortForwarder
from tests.cli_runner import kube_client
from tests.fakes.kube_api import FakeKubeApi, wait_until
from tests.fakes.kube_objects import vllm_deployment
from tests.fakes.kube_rollout import ScriptedRollout

pytestmark = pytest.mark.timeout(60)

NS = "servedeck"
NAME = "gemma-27b"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def _http_handler(body: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class _Server:
    """A TCP server on 127.0.0.1 in a thread: what a pod's port answers with."""

    def __init__(self, server: socketserver.TCPServer) -> None:
        self.server = server
        self.thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _http_server(body: bytes) -> _Server:
    return _Server(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(body)))


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


def _ready_pod(kube_api: FakeKubeApi) -> str:
    script = ScriptedRollout(kube_api, NS, NAME, ["pending", "running", "ready"])
    while script.advance():
        pass
    return script.pod_name


def test_http_through_the_forward_bound_to_localhost(kube_api: FakeKubeApi, client: KubeClient) -> None:
    pod = _ready_pod(kube_api)
    backend = _http_server(b"served by pod A")
    kube_api.set_port_backend(NS, pod, 8000, backend.address)
    events: list[ForwardEvent] = []
    try:
        with PortForwarder(client, deployment=NAME, on_event=events.append) as forward:
            assert forward.local_address[0] == "127.0.0.1"
            for _ in range(3):
                response = httpx.get(f"{forward.url}/health", timeout=5)
                assert (response.status_code, response.text) == (200, "served by pod A")
            assert forward.pod == pod
    finally:
        backend.close()
    assert [e.kind for e in events][:2] == [ForwardEventKind.LISTENING, ForwardEventKind.CONNECTED]
    assert events[-1].kind is ForwardEventKind.CLOSED
    upgrades = [r for r in kube_api.requests if r.path.endswith(f"/pods/{pod}/portforward")]
    assert len(upgrades) == 3 and all(r.query == {"ports": "8000"} for r in upgrades)


def test_bytes_round_trip_through_the_channel_framing(kube_api: FakeKubeApi, client: KubeClient) -> None:
    pod = _ready_pod(kube_api)
    echo = _Server(socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo))
    kube_api.set_port_backend(NS, pod, 9000, echo.address)
    payload = os.urandom(300_000)
    try:
        with (
            PortForwarder(client, pod=pod, remote_port=9000) as forward,
            socket.create_connection(forward.local_address, timeout=10) as conn,
        ):
            conn.sendall(payload)
            received = bytearray()
            while len(received) < len(payload):
                chunk = conn.recv(65536)
                assert chunk, "the forward closed early"
                received.extend(chunk)
            assert bytes(received) == payload
    finally:
        echo.close()


def test_a_new_connection_finds_the_new_pod_after_the_old_one_is_gone(
    kube_api: FakeKubeApi, client: KubeClient
) -> None:
    first = _ready_pod(kube_api)
    server_a, server_b = _http_server(b"pod A"), _http_server(b"pod B")
    kube_api.set_port_backend(NS, first, 8000, server_a.address)
    events: list[ForwardEvent] = []
    try:
        with PortForwarder(
            client, deployment=NAME, on_event=events.append, reconnect_deadline_s=10
        ) as forward:
            assert httpx.get(forward.url, timeout=5).text == "pod A"
            with httpx.Client(timeout=5) as kept_alive:
                assert kept_alive.get(forward.url).text == "pod A"
                kube_api.delete_object("Pod", first, NS)
                assert wait_until(lambda: kube_api.forward_sessions(NS, first) == 0)

                def replace_pod_later() -> None:
                    second = _ready_pod(kube_api)
                    kube_api.set_port_backend(NS, second, 8000, server_b.address)

                timer = threading.Timer(0.3, replace_pod_later)
                timer.start()
                assert kept_alive.get(forward.url).text == "pod B"
                timer.join()
            assert forward.pod != first
    finally:
        server_a.close()
        server_b.close()
    kinds = [e.kind for e in events]
    assert ForwardEventKind.RECONNECTING in kinds
    reconnecting = next(e for e in events if e.kind is ForwardEventKind.RECONNECTING)
    assert reconnecting.pod == first
    connected = [e.pod for e in events if e.kind is ForwardEventKind.CONNECTED]
    assert connected[0] == first and connected[-1] == forward.pod


def test_no_ready_pod_and_busy_port_are_clear_errors(kube_api: FakeKubeApi, client: KubeClient) -> None:
    with pytest.raises(KubeError, match=f"deployment '{NAME}' in {NS} has no ready pods yet"):
        PortForwarder(client, deployment=NAME).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(
            KubeError, match=rf"cannot listen on 127.0.0.1:{port}: .*choose another --local-port"
        ):
            PortForwarder(client, pod="any", local_port=port).start()


def test_rbac_denial_of_portforward_is_reported(kube_api: FakeKubeApi, client: KubeClient) -> None:
    pod = _ready_pod(kube_api)
    kube_api.deny("create", "pods/portforward", NS)
    events: list[ForwardEvent] = []
    with PortForwarder(client, pod=pod, on_event=events.append) as forward:
        with socket.create_connection(forward.local_address, timeout=5) as conn:
            assert conn.recv(1) == b""
        assert wait_until(lambda: any(e.kind is ForwardEventKind.FAILED for e in events))
    failed = next(e for e in events if e.kind is ForwardEventKind.FAILED)
    assert failed.message is not None
    assert failed.message.startswith(
        f"port-forward to {NS}/{pod} failed: forbidden: create pods/portforward in {NS}: "
    )
    assert 'cannot create resource "pods/portforward"' in failed.message
