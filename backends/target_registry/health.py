"""Whether an endpoint ServeDeck does not run answers: one ``GET /v1/models``, one line when it fails."""

from __future__ import annotations

import functools
import socket
import ssl

from backends.errors import TargetError
from backends.target_types import Target

PROBE_TIMEOUT_S = 3.0


@functools.cache
def _shared_tls_context() -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _network_reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused; is the server running on that port?"
        if isinstance(cause, socket.gaierror):
            return "unknown host; check the URL"
        cause = cause.__cause__ or cause.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


async def probe_endpoint(target: Target, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``GET /v1/models`` answers 200, else one line saying what is wrong."""
    import httpx

    from backends.targets import read_api_key

    try:
        key = read_api_key(target.api_key_env)
    except TargetError as err:
        return str(err)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{target.base_url}/v1/models"
    # A verifying TLS context loads the whole CA bundle in one C call that holds the GIL (50-250 ms here),
    # which would freeze the UI thread: build it once, and only for https endpoints (plain http uses none).
    tls: ssl.SSLContext | bool = _shared_tls_context() if target.base_url.startswith("https://") else False
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), headers=headers, verify=tls) as client:
            response = await client.get(url)
    except httpx.TimeoutException:
        return f"{url} did not answer within {timeout_s:g} s"
    except httpx.HTTPError as exc:
        return f"cannot connect to {target.base_url}: {_network_reason(exc)}"
    if response.status_code in (401, 403):
        return f"{target.base_url} refused the API key (HTTP {response.status_code})"
    if response.status_code != 200:
        return f"{url} answered HTTP {response.status_code}"
    return None
