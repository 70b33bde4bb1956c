"""Sweeps end to end against the fake SSE server: events, metrics, cancel keeps what finished."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from backends.bench.models import Axis, ProgressSnapshot, Target
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
from backends.targets import discover_target
from tests.fakes.sse_server import FakeSSEServer


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
    config = _config(_target(server), Axis.CONCURRENCY, [])
    with pytest.raises(ConfigError, match="at least one level"):
        _sweep(config)
