"""Port-forward from 127.0.0.1 to a pod, through the API server's WebSocket port-forward.

Each local TCP connection gets its own port-forward WebSocket (``v4.channel.k8s.io``) opened with
``kubernetes.stream.portforward``. The pod is chosen per connection: the last one that worked, or
else a ready pod of the Deployment. When the pod is gone (rollout, eviction, crash) the next
connection finds a new one, retrying until ``reconnect_deadline_s``; so a long ``forward`` session
survives pod restarts the way ``kubectl port-forward`` does not. Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.stream import portforward
from pydantic import BaseModel, ConfigDict

from backends.kube.client import KubeClient
from backends.kube.errors import KubeError, KubeRequestError
from backends.kube.logs import pick_pod

LOCALHOST = "127.0.0.1"
CHUNK = 64 * 1024
ACCEPT_POLL_S = 0.2
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 2.0


class ForwardEventKind(StrEnum):
    LISTENING = "listening"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


class ForwardEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ForwardEventKind
    pod: str | None = None
    message: str | None = None

    def describe(self) -> str:
        text = self.kind.value
        if self.pod:
            text += f" pod/{self.pod}"
        if self.message:
            text += f": {self.message}"
        return text


def _kubelet_unreachable(err: KubeError) -> bool:
    return isinstance(err, KubeRequestError) and "error dialing backend" in str(err)


def _pump(local: socket.socket, remote: Any, stop: threading.Event) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [local, remote]
    try:
        while not stop.is_set():
            readable, _, _ = select.select(sockets, [], [], ACCEPT_POLL_S)
            for sock in readable:
                data = sock.recv(CHUNK)
                if not data:
                    return
                (remote if sock is local else local).sendall(data)
    except OSError:
        return
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()


class PortForwarder:
    """Listens on 127.0.0.1:``local_port`` (0 = a free port) and forwards to ``remote_port`` of a pod."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str | None = None,
        *,
        deployment: str | None = None,
        pod: str | None = None,
        remote_port: int = 8000,
        local_port: int = 0,
        reconnect_deadline_s: float = 30.0,
        on_event: Callable[[ForwardEvent], None] | None = None,
    ) -> None:
        if (deployment is None) == (pod is None):
            raise KubeError("port-forward needs exactly one of a deployment or a pod")
        if not 0 < remote_port < 65536 or not 0 <= local_port < 65536:
            raise KubeError(
                f"ports must be 1-65535 (local 0 = any free port); got {local_port}:{remote_port}"
            )
        self.client = client
        self.namespace = namespace or client.default_namespace
        self.deployment = deployment
        self.remote_port = remote_port
        self.requested_local_port = local_port
        self.reconnect_deadline_s = reconnect_deadline_s
        self.on_event = on_event or (lambda event: None)
        self._pod = pod
        self._fixed_pod = pod is not None
        self._connected_pod: str | None = None
        # The WebSocket helper swaps ApiClient.call_api while it connects: a private ApiClient (and a
        # lock) keeps that away from other threads' requests.
        self._core = k8s_client.CoreV1Api(k8s_client.ApiClient(client.api_client.configuration))
        self._open_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def local_address(self) -> tuple[str, int]:
        if self._listener is None:
            raise KubeError("the port-forward is not started")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.local_address
        return f"http://{host}:{port}"

    @property
    def pod(self) -> str | None:
        return self._pod

    def __enter__(self) -> PortForwarder:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((LOCALHOST, self.requested_local_port))
        except OSError as err:
            listener.close()
            raise KubeError(
                f"cannot listen on {LOCALHOST}:{self.requested_local_port}: {err.strerror or err}; "
                "choose another --local-port (0 picks a free one)"
            ) from None
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL_S)
        self._listener = listener
        if self.deployment is not None:
            self._pod = pick_pod(self.client, self.deployment, self.namespace, require_ready=True)
        thread = threading.Thread(target=self._accept_loop, name="port-forward-accept", daemon=True)
        self._threads.append(thread)
        thread.start()
        self.on_event(ForwardEvent(kind=ForwardEventKind.LISTENING, pod=self._pod, message=self.url))

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for thread in list(self._threads):
            thread.join(2.0)
        self._core.api_client.close()
        self.on_event(ForwardEvent(kind=ForwardEventKind.CLOSED))

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(None)
            thread = threading.Thread(
                target=self._serve, args=(connection,), name="port-forward-conn", daemon=True
            )
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            remote = self.open_remote()
        except KubeError as err:
            self.on_event(ForwardEvent(kind=ForwardEventKind.FAILED, pod=self._pod, message=str(err)))
            connection.close()
            return
        _pump(connection, remote, self._stop)

    def _open_to(self, pod: str) -> Any:
        with self._open_lock, self.client.errors("create", "pods/portforward", self.namespace, pod):
            forward = portforward(
                self._core.connect_get_namespaced_pod_portforward,
                pod,
                self.namespace,
                ports=str(self.remote_port),
            )
        remote = forward.socket(self.remote_port)
        remote.setblocking(True)
        return remote

    def open_remote(self) -> Any:
        """A socket connected to the pod's port (finding a new pod when the last one is gone)."""
        deadline = time.monotonic() + self.reconnect_deadline_s
        delay = BACKOFF_START_S
        last_error = "no pod"
        while not self._stop.is_set():
            pod = self._pod
            try:
                if pod is None and self.deployment is not None:
                    pod = pick_pod(self.client, self.deployment, self.namespace, require_ready=True)
                if pod is None:
                    raise KubeError(f"no pod to forward to in {self.namespace}")
                if not self._fixed_pod:
                    self._check_pod(pod)
                remote = self._open_to(pod)
            except KubeError as err:
                last_error = str(err)
                if _kubelet_unreachable(err):
                    # The pod is fine as far as the API knows but its node's kubelet cannot be dialled:
                    # retrying the same pod only keeps the local connection hanging.
                    detail = last_error.rpartition(": error dialing backend")[2]
                    last_error = (
                        f"the kubelet of the pod's node cannot be reached (error dialing backend{detail}); "
                        "the node may be down (kubectl get nodes)"
                    )
                    break
                if self._fixed_pod or time.monotonic() + delay > deadline:
                    break
                self._pod = None
                self.on_event(ForwardEvent(kind=ForwardEventKind.RECONNECTING, pod=pod, message=last_error))
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if pod != self._connected_pod:
                self._connected_pod = pod
                self.on_event(ForwardEvent(kind=ForwardEventKind.CONNECTED, pod=pod))
            self._pod = pod
            return remote
        raise KubeError(
            f"port-forward to {self.namespace}/{self.deployment or self._pod} failed: {last_error}"
        )

    def _check_pod(self, pod: str) -> None:
        """KubeError when ``pod`` is gone, terminating or not ready (so another one is picked)."""
        current = self.client.get("Pod", pod, self.namespace)
        if current is None:
            raise KubeError(f"pod {pod} is gone")
        if current.get("metadata", {}).get("deletionTimestamp"):
            raise KubeError(f"pod {pod} is terminating")
        conditions = current.get("status", {}).get("conditions") or []
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            raise KubeError(f"pod {pod} is not ready")
