"""Each chat token event carries the answer's running stats, so a view needs no accumulator of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from backends.chat import AnswerEnd, ChatParams, ChatStream, ChatTurn, TokenDelta
from backends.chat_stats import StatsAccumulator
from backends.target_types import Target
from tests.fakes.sse_server import FakeSSEServer


@pytest.fixture(scope="module")
def fake_target() -> Iterator[Target]:
    with FakeSSEServer() as server:
        yield Target(name="fake", base_url=f"http://127.0.0.1:{server.port}/v1", model="fake-model")


def _stream(target: Target, max_tokens: int) -> tuple[list[TokenDelta], AnswerEnd]:
    async def collect() -> tuple[list[TokenDelta], AnswerEnd]:
        deltas: list[TokenDelta] = []
        stream = ChatStream(
            target, [ChatTurn(role="user", content="hello")], ChatParams(max_tokens=max_tokens)
        )
        async with asyncio.timeout(60):
            async for event in stream.events():
                if isinstance(event, AnswerEnd):
                    return deltas, event
                deltas.append(event)
        raise AssertionError("no AnswerEnd")

    return asyncio.run(collect())


def test_every_token_event_has_the_stats_as_of_that_chunk(fake_target: Target) -> None:
    deltas, end = _stream(fake_target, 12)
    assert len(deltas) == 12 and end.stats.output_tokens_source == "usage"
    # What a view accumulating the events' times itself would show at each event.
    own = StatsAccumulator(0.0)
    for delta in deltas:
        own.on_token_chunk(delta.t)
        stats, expected = delta.stats, own.snapshot()
        assert stats.partial and stats.output_tokens == delta.index + 1
        assert stats.ttft_s == pytest.approx(deltas[0].t) and stats.e2e_s == pytest.approx(delta.t)
        assert stats.itl_s == pytest.approx(expected.itl_s) and len(stats.itl_s) == delta.index
        assert (stats.tpot_s is None) == (expected.tpot_s is None)
        if stats.tpot_s is not None:
            assert stats.tpot_s == pytest.approx(expected.tpot_s)
        # Usage and the finish reason belong to the end; read late, an event still says what it knew.
        assert stats.output_tokens_source == "chunks" and stats.finish_reason is None
    assert deltas[-1].stats.itl_s == end.stats.itl_s
    assert deltas[-1].stats.ttft_s == end.stats.ttft_s and deltas[-1].stats.e2e_s == end.stats.e2e_s
    assert "clock" not in deltas[0].model_dump()
