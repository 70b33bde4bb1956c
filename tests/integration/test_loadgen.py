"""The load generator against the fake SSE server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from backends.bench.loadgen.requests import (
    Endpoint,
    RequestOptions,
    parse_endpoint,
    render_body,
    render_request,
)
from backends.bench.loadgen.runner import LevelOutcome, LevelPlan, LevelProgress, run_level
from backends.bench.models import Axis, LoadLevel, SampledRequest
from backends.errors import ConfigError, TargetError
from tests.fakes.sse_server import FakeSSEServer

OPTIONS = RequestOptions(model="fake-model")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSSEServer]:
    srv = FakeSSEServer(mode="sleep")
    srv.start_in_thread()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def closing_server() -> Iterator[FakeSSEServer]:
    srv = FakeSSEServer(mode="tick", close_idle_after_each=True)
    srv.start_in_thread()
    yield srv
    srv.stop()


def _endpoint(srv: FakeSSEServer) -> Endpoint:
    return parse_endpoint(f"http://127.0.0.1:{srv.port}")


def _requests(endpoint: Endpoint, count: int, output_len: int = 8, **extra: Any) -> list[bytes]:
    sample = SampledRequest(
        prompt="tell me about paged attention", prompt_len=6, expected_output_len=output_len
    )
    body = render_body(sample, OPTIONS)
    rendered = []
    for i in range(count):
        fields = {k: (v(i) if callable(v) else v) for k, v in extra.items()}
        rendered.append(
            render_request(endpoint, {**body, **{k: v for k, v in fields.items() if v is not None}}, OPTIONS)
        )
    return rendered


def _run(
    endpoint: Endpoint,
    requests: list[bytes],
    level: LoadLevel,
    *,
    cancel_after_records: int | None = None,
    idle_timeout_s: float = 30.0,
    workers: int = 1,
) -> tuple[LevelOutcome, list[LevelProgress]]:
    plan = LevelPlan(
        level=level,
        requests=requests,
        prompt_lens=[6] * len(requests),
        output_lens=[8] * len(requests),
        idle_timeout_s=idle_timeout_s,
        workers=workers,
    )
    progress: list[LevelProgress] = []

    async def main() -> LevelOutcome:
        cancel = asyncio.Event()

        def on_progress(p: LevelProgress) -> None:
            progress.append(p)
            seen = sum(len(x.new_records) for x in progress)
            if cancel_after_records is not None and seen >= cancel_after_records:
                cancel.set()

        return await asyncio.wait_for(run_level(plan, endpoint, on_progress, cancel), timeout=60)

    return asyncio.run(main()), progress


def test_closed_loop_measures_every_chunk_and_reuses_connections(server: FakeSSEServer) -> None:
    endpoint = _endpoint(server)
    before = server.stats().connections_accepted
    outcome, progress = _run(
        endpoint,
        _requests(endpoint, 24, fake_ttft_ms=5, fake_itl_ms=2),
        LoadLevel(axis=Axis.CONCURRENCY, value=4),
    )
    assert len(outcome.records) == 24
    assert all(r.success for r in outcome.records), {r.error for r in outcome.records}
    for record in outcome.records:
        # vLLM counts every chunk with non-empty choices: the role chunk plus 8 token chunks.
        assert len(record.chunk_times) == 9
        assert record.output_tokens == 8
        assert record.finish_reason == "length"
        assert record.ttft is not None and record.ttft > 0
        assert record.chunk_times == sorted(record.chunk_times)
        assert record.sent_at is not None and record.sent_at >= record.queued_at
    # Four lanes, four kept-alive connections for all 24 requests.
    assert server.stats().connections_accepted - before == 4
    assert progress and progress[-1].completed == 24
    assert outcome.client.cpu_seconds > 0
    assert outcome.duration_s > 0


def test_concurrency_cap_holds(server: FakeSSEServer) -> None:
    endpoint = _endpoint(server)
    outcome, _ = _run(
        endpoint,
        _requests(endpoint, 16, fake_ttft_ms=20, fake_itl_ms=5),
        LoadLevel(axis=Axis.CONCURRENCY, value=3),
    )
    intervals = sorted((r.sent_at or 0.0, r.chunk_times[-1]) for r in outcome.records)
    peak = max(sum(1 for s, e in intervals if s <= t < e) for t, _ in intervals)
    assert peak == 3


def test_open_loop_rate_is_achieved_within_two_percent(server: FakeSSEServer) -> None:
    endpoint = _endpoint(server)
    count = 400
    outcome, _ = _run(
        endpoint,
        _requests(endpoint, count, output_len=2, fake_ttft_ms=1, fake_itl_ms=1),
        LoadLevel(axis=Axis.REQUEST_RATE, value=200.0),
    )
    sends = sorted(r.sent_at for r in outcome.records if r.sent_at is not None)
    assert len(sends) == count
    achieved = (count - 1) / (sends[-1] - sends[0])
    assert achieved == pytest.approx(200.0, rel=0.02)


def test_survives_server_closing_kept_alive_connections(closing_server: FakeSSEServer) -> None:
    endpoint = _endpoint(closing_server)
    outcome, _ = _run(
        endpoint,
        _requests(endpoint, 12, fake_ttft_ms=2, fake_itl_ms=1),
        LoadLevel(axis=Axis.CONCURRENCY, value=2),
    )
    assert [r.success for r in outcome.records] == [True] * 12, {r.error for r in outcome.records}


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("http400", "HTTP 400: This model's maximum context length is 2048 tokens"),
        ("http500", "HTTP 500"),
        ("drop_mid_stream", "connection closed by server mid-stream after"),
        ("malformed_sse", "malformed SSE event from server"),
    ],
)
def test_faults_fail_one_request_with_a_clear_error_and_keep_the_rest(
    server: FakeSSEServer, fault: str, expected: str
) -> None:
    endpoint = _endpoint(server)
    requests = _requests(
        endpoint,
        6,
        fake_ttft_ms=2,
        fake_itl_ms=1,
        fake_fault=lambda i: fault if i == 2 else None,
        fake_fault_after=lambda i: 3 if i == 2 else None,
    )
    outcome, _ = _run(endpoint, requests, LoadLevel(axis=Axis.CONCURRENCY, value=2))
    by_index = {r.index: r for r in outcome.records}
    assert len(by_index) == 6
    failed = by_index[2]
    assert not failed.success
    assert failed.error is not None and failed.error.startswith(expected), failed.error
    assert all(by_index[i].success for i in (0, 1, 3, 4, 5))


def test_stalled_server_times_out_with_partial_chunks_kept(server: FakeSSEServer) -> None:
    endpoint = _endpoint(server)
    requests = _requests(
        endpoint, 2, fake_ttft_ms=2, fake_itl_ms=1, fake_fault=lambda i: "stall" if i == 0 else None
    )
    outcome, _ = _run(endpoint, requests, LoadLevel(axis=Axis.CONCURRENCY, value=2), idle_timeout_s=0.5)
    stalled = next(r for r in outcome.records if r.index == 0)
    assert not stalled.success
    assert stalled.error is not None and stalled.error.startswith("server stalled: no data for 0.5s")
    assert next(r for r in outcome.records if r.index == 1).success


def test_cancel_keeps_finished_requests(server: FakeSSEServer) -> None:
    endpoint = _endpoint(server)
    requests = _requests(endpoint, 200, fake_ttft_ms=5, fake_itl_ms=5)
    outcome, _ = _run(endpoint, requests, LoadLevel(axis=Axis.CONCURRENCY, value=4), cancel_after_records=8)
    assert outcome.cancelled
    assert 8 <= len(outcome.records) < 200
    assert all(r.success for r in outcome.records)


def test_two_workers_split_the_level(server: FakeSSEServer) -> None:
    endpoint = _endpoint(server)
    outcome, _ = _run(
        endpoint,
        _requests(endpoint, 20, fake_ttft_ms=2, fake_itl_ms=1),
        LoadLevel(axis=Axis.CONCURRENCY, value=4),
        workers=2,
    )
    assert sorted(r.index for r in outcome.records) == list(range(20))
    assert outcome.client.workers == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_url_is_one_clear_error() -> None:
    endpoint = parse_endpoint(f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(TargetError, match=r"cannot connect to 127\.0\.0\.1:\d+: Connection refused"):
        _run(endpoint, _requests(endpoint, 2), LoadLevel(axis=Axis.CONCURRENCY, value=1))


def test_bad_urls_are_rejected() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        parse_endpoint("ftp://example.com")
    assert parse_endpoint("https://api.example.com/v1").tls
    assert parse_endpoint("localhost:8000").port == 8000
