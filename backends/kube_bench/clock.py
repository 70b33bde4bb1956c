"""The API server's clock, for the shared start instant of the load-generator pods.

Pods compare the start instant with their own (node) clocks, which are synchronised with the cluster,
not with this machine: a laptop whose clock is off by a minute would make every pod start a minute
early or late. The ``Date`` header of an API answer gives the server's clock to about a second, which is
plenty for a start delay of tens of seconds (pods are aligned with each other by their own clocks).
``KubeClient`` has no call that returns headers, so this reads ``/version`` through the official client
(any answer will do, an error too: every answer carries ``Date``). The same answer gives the server's
version, which decides how a Job keeps failed pods from being retried (``backoffLimitPerIndex`` is 1.29+).
"""

from __future__ import annotations

import json
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel

from backends.kube.client import KubeClient

DATE_RESOLUTION_S = 1.0


class ServerFacts(BaseModel):
    clock_offset_s: float = 0.0
    git_version: str | None = None

    @property
    def minor_version(self) -> tuple[int, int] | None:
        """``(1, 28)`` from ``v1.28.7-gke.100``; None when the server did not say."""
        match = re.match(r"v?(\d+)\.(\d+)", self.git_version or "")
        return (int(match.group(1)), int(match.group(2))) if match else None


def server_facts(kube: KubeClient) -> ServerFacts:
    """The API server's clock offset (0 within 2 s) and version, from one ``/version`` call."""
    before = time.time()
    version: str | None = None
    try:
        response: Any = k8s_client.VersionApi(kube.api_client).get_code(
            _preload_content=False, _request_timeout=kube.timeout
        )
        try:
            date = response.headers.get("Date")
            body = response.data
        finally:
            response.release_conn()
        try:
            found = json.loads(body).get("gitVersion")
            version = found if isinstance(found, str) else None
        except (ValueError, AttributeError):
            version = None
    except ApiException as err:  # an error answer carries the server's Date just as well
        date = err.headers.get("Date") if err.headers else None
    except urllib3.exceptions.HTTPError:
        return ServerFacts()
    after = time.time()
    return ServerFacts(clock_offset_s=_offset(date, before, after), git_version=version)


def _offset(date: str | None, before: float, after: float) -> float:
    if not date:
        return 0.0
    try:
        server = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return 0.0
    # The header is truncated to whole seconds: the server's clock was in [server, server + 1).
    offset = server + DATE_RESOLUTION_S / 2 - (before + after) / 2
    return offset if abs(offset) > 2 * DATE_RESOLUTION_S else 0.0


def server_clock_offset(kube: KubeClient) -> float:
    """Seconds to add to this machine's ``time.time()`` to get the API server's clock (0 within 2 s)."""
    return server_facts(kube).clock_offset_s
