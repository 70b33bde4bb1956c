"""The load generator over TLS: a real HTTPS server on 127.0.0.1 with a certificate made for the test."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from backends.bench.loadgen.requests import RequestOptions, parse_endpoint, render_body, render_request
from backends.bench.loadgen.runner import LevelPlan, run_level
from backends.bench.models import Axis, LoadLevel, SampledRequest

TOKENS = 5


def _certificate(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def _stream(request: web.Request) -> web.StreamResponse:
    await request.read()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(TOKENS):
        reason = '"length"' if i == TOKENS - 1 else "null"
        chunk = f'{{"choices":[{{"index":0,"delta":{{"content":"t{i}"}},"finish_reason":{reason}}}]}}'
        await response.write(f"data: {chunk}\n\n".encode())
        await asyncio.sleep(0.002)
    usage = f'{{"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":{TOKENS},"total_tokens":8}}}}'
    await response.write(f"data: {usage}\n\ndata: [DONE]\n\n".encode())
    await response.write_eof()
    return response


@pytest.fixture()
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _stream)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port, cert
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def test_streams_over_tls_with_a_trusted_certificate(
    tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert = tls_server
    # OpenSSL's default verify paths honour SSL_CERT_FILE; the spawned worker inherits it.
    monkeypatch.setitem(os.environ, "SSL_CERT_FILE", str(cert))
    endpoint = parse_endpoint(f"https://127.0.0.1:{port}")
    assert endpoint.tls
    options = RequestOptions(model="m")
    sample = SampledRequest(prompt="hello", prompt_len=3, expected_output_len=TOKENS)
    requests = [render_request(endpoint, render_body(sample, options), options) for _ in range(6)]
    plan = LevelPlan(
        level=LoadLevel(axis=Axis.CONCURRENCY, value=2),
        requests=requests,
        prompt_lens=[3] * 6,
        output_lens=[TOKENS] * 6,
    )
    outcome = asyncio.run(asyncio.wait_for(run_level(plan, endpoint, lambda _: None, asyncio.Event()), 60))
    assert [r.success for r in outcome.records] == [True] * 6, {r.error for r in outcome.records}
    assert all(len(r.chunk_times) == TOKENS and r.output_tokens == TOKENS for r in outcome.records)


def test_an_untrusted_certificate_fails_with_a_clear_error(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    endpoint = parse_endpoint(f"https://127.0.0.1:{port}")
    options = RequestOptions(model="m")
    sample = SampledRequest(prompt="hello", prompt_len=3, expected_output_len=TOKENS)
    plan = LevelPlan(
        level=LoadLevel(axis=Axis.CONCURRENCY, value=1),
        requests=[render_request(endpoint, render_body(sample, options), options)],
        prompt_lens=[3],
        output_lens=[TOKENS],
    )
    from backends.errors import TargetError

    with pytest.raises(TargetError, match="certificate verify failed"):
        asyncio.run(asyncio.wait_for(run_level(plan, endpoint, lambda _: None, asyncio.Event()), 60))
