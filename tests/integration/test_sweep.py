"""Sweeps end to end against the fake SSE server: events, metrics, cancel keeps what finished."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator

import pytest
from aiohttp import web

from backends.bench.models import Axis, ProgressSnapshot
from backends.bench.results import DatasetSpec, RunStatus, SweepConfig, SweepResult
from backends.bench.sweep import (
    LevelFinished,
    LevelStarted,
    RecordsBatch,
    SweepEvent,
    SweepFinished,
    SweepStarted,
    run_sweep,
)
from backends.errors import ConfigError
from backends.target_types import Target
from backends.targets import discover_target
from tests.fakes.sse_server import FakeSSEServer
from tests.fakes.threaded_aiohttp import ThreadedAiohttpServer


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSSEServer]:
    srv = FakeSSEServer(mode="tick")
    srv.start_in_thread()
    yield srv
    srv.stop()


def _config(target: Target, axis: Axis, levels: list[float], num_prompts: int = 12) -> SweepConfig:
    return SweepConfig(
        target=target,
        dataset=DatasetSpec(kind="random", random_input_len=32, random_output_len=8),
        axis=axis,
        levels=levels,
        num_prompts=num_prompts,
        output_len=8,
        goodput_slos_ms={"ttft": 10_000.0},
        percentiles=[50.0, 99.0],
    )


def _sweep(
    config: SweepConfig, cancel_after_records: int | None = None
) -> tuple[SweepResult, list[SweepEvent]]:
    events: list[SweepEvent] = []

    async def main() -> SweepResult:
        cancel = asyncio.Event()
        seen = 0

        def emit(event: SweepEvent) -> None:
            nonlocal seen
            events.append(event)
            if isinstance(event, RecordsBatch):
                seen += len(event.records)
                if cancel_after_records is not None and seen >= cancel_after_records:
                    cancel.set()

        return await asyncio.wait_for(run_sweep(config, emit, cancel), timeout=120)

    return asyncio.run(main()), events


def _target(srv: FakeSSEServer) -> Target:
    return asyncio.run(discover_target(f"http://127.0.0.1:{srv.port}"))


def test_concurrency_sweep_emits_typed_events_and_vllm_metrics(server: FakeSSEServer) -> None:
    config = _config(_target(server), Axis.CONCURRENCY, [1, 4])
    result, events = _sweep(config)
    assert result.status is RunStatus.COMPLETE
    assert [type(e) for e in events][:2] == [SweepStarted, LevelStarted]
    assert isinstance(events[-1], SweepFinished)
    assert sum(isinstance(e, LevelFinished) for e in events) == 2
    batches = [e for e in events if isinstance(e, RecordsBatch)]
    assert sum(len(b.records) for b in batches) == 24
    assert any(isinstance(e, ProgressSnapshot) for e in events)
    for level in result.levels:
        m = level.metrics
        assert m.completed == 12 and m.failed == 0
        assert m.total_output_tokens == 12 * 8
        assert m.request_goodput == pytest.approx(m.request_throughput)
        assert set(m.ttft.percentiles) == {"50", "99"}
    assert result.levels[1].metrics.max_concurrent_requests == 4
    assert result.levels[0].metrics.max_concurrent_requests == 1


def test_request_rate_sweep_is_labelled_as_rate(server: FakeSSEServer) -> None:
    config = _config(_target(server), Axis.REQUEST_RATE, [20.0])
    result, _ = _sweep(config)
    assert result.status is RunStatus.COMPLETE
    level = result.levels[0].level
    assert level.axis is Axis.REQUEST_RATE and level.label == "20 req/s"


def test_cancel_marks_partial_and_keeps_finished_requests(server: FakeSSEServer) -> None:
    config = _config(_target(server), Axis.CONCURRENCY, [2, 4], num_prompts=200)
    result, _ = _sweep(config, cancel_after_records=6)
    assert result.status is RunStatus.PARTIAL
    assert len(result.levels) == 1
    level = result.levels[0]
    assert level.status is RunStatus.PARTIAL
    assert 6 <= level.metrics.completed < 200
    assert len(level.records) == level.metrics.completed


def test_empty_levels_are_rejected(server: FakeSSEServer) -> None:
    with pytest.raises(ConfigError, match="at least one level"):  # SweepConfig's own validator
        _sweep(_config(_target(server), Axis.CONCURRENCY, []))


def _sweep_killing_server(
    config: SweepConfig, srv: FakeSSEServer, level_index: int, after_records: int
) -> tuple[SweepResult, list[SweepEvent]]:
    """Run the sweep and stop ``srv`` (listener and connections) once ``after_records`` requests of level
    ``level_index`` have finished: later connections are refused, as from a killed server."""
    events: list[SweepEvent] = []

    async def main() -> SweepResult:
        seen = 0

        def emit(event: SweepEvent) -> None:
            nonlocal seen
            events.append(event)
            if isinstance(event, RecordsBatch) and event.level_index == level_index:
                seen += len(event.records)
                if seen >= after_records:
                    srv.stop()

        return await asyncio.wait_for(run_sweep(config, emit), timeout=120)

    return asyncio.run(main()), events


def test_a_server_killed_in_the_last_level_leaves_it_partial_and_its_rates_honest() -> None:
    srv = FakeSSEServer(mode="tick")
    srv.start_in_thread()
    try:
        config = _config(_target(srv), Axis.CONCURRENCY, [2, 2], num_prompts=120)
        result, _ = _sweep_killing_server(config, srv, level_index=1, after_records=10)
    finally:
        srv.stop()
    healthy, died = result.levels
    assert healthy.status is RunStatus.COMPLETE
    assert died.status is RunStatus.PARTIAL
    assert result.status is RunStatus.PARTIAL
    assert died.message is not None and "server went away" in died.message
    assert "cancel" not in (result.message or "") and "cancel" not in died.message
    # Requests refused by the dead server are kept but are no part of the level's rates or failures.
    assert 10 <= died.metrics.completed < 120
    assert died.metrics.completed + died.metrics.failed < len(died.records)
    assert "never reached the server" in died.message
    assert died.metrics.request_throughput <= healthy.metrics.request_throughput * 1.5


def test_a_server_killed_in_an_earlier_level_stops_the_sweep_with_what_finished() -> None:
    srv = FakeSSEServer(mode="tick")
    srv.start_in_thread()
    try:
        config = _config(_target(srv), Axis.CONCURRENCY, [2, 4, 8], num_prompts=120)
        result, events = _sweep_killing_server(config, srv, level_index=0, after_records=10)
    finally:
        srv.stop()
    assert isinstance(events[-1], SweepFinished)
    assert result.status is RunStatus.PARTIAL
    assert len(result.levels) == 1 and result.levels[0].status is RunStatus.PARTIAL
    assert result.message is not None and "server went away" in result.message
    assert "cancel" not in result.message


class _MixedFailures(ThreadedAiohttpServer):
    """Answers requests in turn with HTTP 500, HTTP 429 and a one-token stream."""

    def __init__(self) -> None:
        super().__init__()
        self._turn = itertools.count()

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mixed", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        turn = next(self._turn) % 3
        if turn < 2:
            status = 500 if turn == 0 else 429
            return web.json_response({"error": {"message": f"failure {status}"}}, status=status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "length"}]}
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response


def test_the_level_summary_counts_failures_by_cause() -> None:
    with _MixedFailures() as srv:
        target = asyncio.run(discover_target(srv.url))
        result, _ = _sweep(_config(target, Axis.CONCURRENCY, [1]))
    (level,) = result.levels
    assert level.metrics.completed == 4 and level.metrics.failed == 8
    assert level.message == "8 failed: 4 HTTP 429, 4 HTTP 500"
