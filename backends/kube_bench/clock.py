"""The API server's clock, for the shared start instant of the load-generator pods.

Pods compare the start instant with their own (node) clocks, which are synchronised with the cluster,
not with this machine: a laptop whose clock is off by a minute would make every pod start a minute
early or late. The ``Date`` header of an API answer gives the server's clock to about a second, which is
plenty for a start delay of tens of seconds (pods are aligned with each other by their own clocks).
``KubeClient`` has no call that returns headers, so this reads ``/version`` through the official client
(any answer will do, an error too: every answer carries ``Date``).
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from backends.kube.client import KubeClient

DATE_RESOLUTION_S = 1.0


def server_clock_offset(kube: KubeClient) -> float:
    """Seconds to add to this machine's ``time.time()`` to get the API server's clock (0 within 2 s)."""
    before = time.time()
    try:
        response: Any = k8s_client.VersionApi(kube.api_client).get_code(
            _preload_content=False, _request_timeout=kube.timeout
        )
        try:
            date = response.headers.get("Date")
        finally:
            response.release_conn()
    except ApiException as err:  # an error answer carries the server's Date just as well
        date = err.headers.get("Date") if err.headers else None
    except urllib3.exceptions.HTTPError:
        return 0.0
    after = time.time()
    if not date:
        return 0.0
    try:
        server = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return 0.0
    # The header is truncated to whole seconds: the server's clock was in [server, server + 1).
    offset = server + DATE_RESOLUTION_S / 2 - (before + after) / 2
    return offset if abs(offset) > 2 * DATE_RESOLUTION_S else 0.0
