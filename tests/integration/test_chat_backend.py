"""Streaming chat: stats against the real local engine; every failure against the fake SSE server."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading

import pytest

from backends.chat import (
    AnswerEnd,
    ChatError,
    ChatParams,
    ChatParamsError,
    ChatStream,
    ChatTurn,
    TokenDelta,
    few_shot_prompt,
    is_base_model,
    parse_extra_body,
)
from backends.chat_stats import StatsAccumulator
from backends.engines.local import LocalEngine
from backends.target_types import Target
from tests.fakes.sse_server import VOCAB, FakeSSEServer

TIMEOUT_S = 60.0


@pytest.fixture
def fake_target(fake_server: FakeSSEServer) -> Target:
    return Target(name="fake", base_url=f"http://127.0.0.1:{fake_server.port}/v1", model="fake-model")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ask(text: str) -> list[ChatTurn]:
    return [ChatTurn(role="user", content=text)]


async def collect(stream: ChatStream, stop_after: int | None = None) -> tuple[list[TokenDelta], AnswerEnd]:
    deltas: list[TokenDelta] = []
    async with asyncio.timeout(TIMEOUT_S):
        async for event in stream.events():
            if isinstance(event, TokenDelta):
                deltas.append(event)
                if stop_after is not None and len(deltas) >= stop_after:
                    stream.stop()
            else:
                return deltas, event
    raise AssertionError("the stream ended without an AnswerEnd")


def run(stream: ChatStream, stop_after: int | None = None) -> tuple[list[TokenDelta], AnswerEnd]:
    return asyncio.run(collect(stream, stop_after))


def fake_words(count: int) -> str:
    return "".join(VOCAB[i % len(VOCAB)] for i in range(count))


# ---- the real engine ----------------------------------------------------------------------------


@pytest.mark.engine
def test_real_engine_streams_an_answer_with_sane_stats(local_engine: LocalEngine) -> None:
    stream = ChatStream(
        local_engine.target(),
        ask("Name three colours."),
        ChatParams(system_prompt="Answer briefly.", temperature=0.0, max_tokens=16),
    )
    deltas, end = run(stream)
    stats = end.stats

    assert end.error is None and not end.stopped and not stats.partial
    assert stats.finish_reason in ("stop", "length")
    assert end.text == "".join(delta.text for delta in deltas) and end.text.strip()
    assert stats.output_tokens_source == "usage"
    assert 1 <= stats.output_tokens <= 16
    # llama.cpp streams one token per chunk and reports how many it predicted.
    assert stats.server_timings is not None
    assert stats.output_tokens == int(stats.server_timings["predicted_n"])
    assert len(deltas) == stats.output_tokens
    assert stats.prompt_tokens is not None and stats.prompt_tokens > 0
    assert stats.ttft_s is not None and stats.ttft_s > 0
    assert stats.e2e_s is not None and stats.e2e_s >= stats.ttft_s
    assert len(stats.itl_s) == len(deltas) - 1 and all(gap >= 0 for gap in stats.itl_s)
    assert [delta.index for delta in deltas] == list(range(len(deltas)))
    assert deltas[0].t == pytest.approx(stats.ttft_s)
    if stats.output_tokens > 1:
        assert stats.tpot_s == pytest.approx((stats.e2e_s - stats.ttft_s) / (stats.output_tokens - 1))
    assert stats.tokens_per_s == pytest.approx(stats.output_tokens / stats.e2e_s)


@pytest.mark.engine
def test_real_engine_receives_the_system_prompt_and_history(local_engine: LocalEngine) -> None:
    params = ChatParams(temperature=0.0, max_tokens=1)
    _, bare = run(ChatStream(local_engine.target(), ask("Hi."), params))
    history = [
        ChatTurn(role="user", content="My name is Ada."),
        ChatTurn(role="assistant", content="Hello Ada."),
        ChatTurn(role="user", content="Hi."),
    ]
    with_system = params.model_copy(update={"system_prompt": "You are a terse assistant for engineers."})
    _, longer = run(ChatStream(local_engine.target(), history, with_system))

    assert bare.error is None and longer.error is None
    assert bare.stats.prompt_tokens is not None and longer.stats.prompt_tokens is not None
    assert longer.stats.prompt_tokens > bare.stats.prompt_tokens + 10


@pytest.mark.engine
def test_the_base_model_answers_in_the_few_shot_frame_and_stops_at_the_turn(
    local_engine: LocalEngine,
) -> None:
    """Gemma 3 270M is a base checkpoint: sent as a chat it echoed the prompt and rambled to max tokens."""
    target = local_engine.target()
    assert is_base_model(target)
    _, end = run(
        ChatStream(target, ask("What is the capital of Italy?"), ChatParams(temperature=0.0, max_tokens=64))
    )

    assert end.error is None and end.stats.finish_reason == "stop"
    assert end.stats.output_tokens < 64
    assert "Rome" in end.text
    assert "Q:" not in end.text and "capital of Italy?" not in end.text


def test_the_few_shot_frame_holds_examples_history_and_ends_with_an_open_answer() -> None:
    turns = [
        ChatTurn(role="user", content="My name is Ada."),
        ChatTurn(role="assistant", content="Hello\nAda."),
        ChatTurn(role="user", content="What is my name?"),
    ]
    prompt = few_shot_prompt("", turns)
    assert prompt.startswith("Questions and short, correct answers.\n\nQ: What is the capital of France?\n")
    assert prompt.endswith("Q: My name is Ada.\nA: Hello Ada.\n\nQ: What is my name?\nA:")
    assert few_shot_prompt("Answer like a pirate.", turns).startswith("Answer like a pirate.\n\nQ: ")
    assert not is_base_model(Target(name="x", base_url="http://127.0.0.1:1", model="google/gemma-3-27b-it"))


# ---- a complete stream from the fake server -----------------------------------------------------


def test_fake_stream_text_usage_and_timing(fake_target: Target) -> None:
    deltas, end = run(ChatStream(fake_target, ask("hello"), ChatParams(max_tokens=12)))
    stats = end.stats

    assert end.error is None and not stats.partial
    assert end.text == fake_words(12)
    assert stats.finish_reason == "length"
    assert stats.output_tokens == 12 and stats.output_tokens_source == "usage"
    assert stats.prompt_tokens == 1  # the fake counts characters // 4
    assert len(stats.itl_s) == 11
    assert all(later.t >= earlier.t for earlier, later in itertools.pairwise(deltas))
    assert stats.ttft_s is not None and stats.e2e_s is not None and stats.tpot_s is not None
    assert stats.tpot_s == pytest.approx((stats.e2e_s - stats.ttft_s) / 11)
    assert stats.e2e_s == pytest.approx(deltas[-1].t)


def test_without_usage_the_tokens_are_counted_from_chunks(fake_target: Target) -> None:
    params = ChatParams(max_tokens=7, extra_body={"fake_fault": "no_usage"})
    deltas, end = run(ChatStream(fake_target, ask("hello"), params))

    assert end.error is None and not end.stats.partial
    assert end.stats.output_tokens == len(deltas) == 7
    assert end.stats.output_tokens_source == "chunks"
    assert end.stats.prompt_tokens is None


def test_the_server_ends_early_with_stop(fake_target: Target) -> None:
    params = ChatParams(max_tokens=50, extra_body={"fake_output_tokens": 5})
    _, end = run(ChatStream(fake_target, ask("hello"), params))

    assert end.stats.finish_reason == "stop" and end.stats.output_tokens == 5 and end.error is None


# ---- failures: one clear message each, partial text kept ----------------------------------------


@pytest.mark.parametrize("error_format", ["flat", "nested"])
def test_http_400_shows_vllms_own_message(fake_target: Target, error_format: str) -> None:
    params = ChatParams(extra_body={"fake_fault": "http400", "fake_error_format": error_format})
    deltas, end = run(ChatStream(fake_target, ask("hello"), params))

    assert deltas == [] and end.text == "" and end.stats.partial
    assert end.error is not None
    assert end.error.startswith("fake answered HTTP 400: This model's maximum context length is 2048 tokens.")
    assert "lower max tokens" in end.error


def test_http_500_says_the_server_failed(fake_target: Target) -> None:
    params = ChatParams(extra_body={"fake_fault": "http500"})
    _, end = run(ChatStream(fake_target, ask("hello"), params))

    assert end.error is not None
    assert "HTTP 500: EngineCore encountered an issue" in end.error and "check its logs" in end.error


def test_server_killed_mid_stream_keeps_the_partial_answer(fake_target: Target) -> None:
    params = ChatParams(max_tokens=12, extra_body={"fake_fault": "drop_mid_stream", "fake_fault_after": 4})
    deltas, end = run(ChatStream(fake_target, ask("hello"), params))

    assert end.text == fake_words(4) and len(deltas) == 4
    assert end.stats.partial and end.stats.output_tokens == 4 and end.stats.finish_reason is None
    assert end.error is not None
    assert end.error.startswith("fake dropped the connection mid-answer after 4 token chunks")
    assert "partial answer is kept" in end.error


def test_malformed_sse_stops_reading_and_keeps_the_text(fake_target: Target) -> None:
    params = ChatParams(max_tokens=12, extra_body={"fake_fault": "malformed_sse", "fake_fault_after": 3})
    _, end = run(ChatStream(fake_target, ask("hello"), params))

    assert end.text == fake_words(3) and end.stats.partial
    assert end.error is not None and "malformed stream event" in end.error and "this is not JSON" in end.error


def test_a_silent_server_times_out_with_the_partial_answer(fake_target: Target) -> None:
    params = ChatParams(max_tokens=12, extra_body={"fake_fault": "stall", "fake_fault_after": 2})
    stream = ChatStream(fake_target, ask("hello"), params, stall_timeout_s=0.5)
    _, end = run(stream)

    assert end.text == fake_words(2) and end.stats.partial
    assert end.error is not None and "went silent for 0.5 s mid-answer after 2 token chunks" in end.error


def test_a_dead_server_says_it_cannot_be_reached() -> None:
    port = closed_port()
    target = Target(name="gone", base_url=f"http://127.0.0.1:{port}", model="m")
    deltas, end = run(ChatStream(target, ask("hello"), ChatParams()))

    assert deltas == [] and end.text == "" and end.stats.partial
    assert end.error is not None
    assert end.error.startswith(f"cannot reach gone at http://127.0.0.1:{port}/v1")
    assert "check that the server is running" in end.error


# ---- stopping -----------------------------------------------------------------------------------


def test_stop_mid_answer_keeps_what_arrived(fake_target: Target) -> None:
    params = ChatParams(max_tokens=200, extra_body={"fake_itl_ms": 30})
    deltas, end = run(ChatStream(fake_target, ask("hello"), params), stop_after=3)

    assert end.stopped and end.error is None and end.stats.partial
    assert end.text == "".join(delta.text for delta in deltas)
    assert 3 <= len(deltas) < 200
    assert end.stats.output_tokens == len(deltas)


def test_stop_from_another_thread_ends_the_stream(fake_target: Target) -> None:
    params = ChatParams(max_tokens=500, extra_body={"fake_itl_ms": 20})
    stream = ChatStream(fake_target, ask("hello"), params)

    async def consume() -> tuple[list[TokenDelta], AnswerEnd]:
        deltas: list[TokenDelta] = []
        async with asyncio.timeout(TIMEOUT_S):
            async for event in stream.events():
                if isinstance(event, TokenDelta):
                    deltas.append(event)
                    if len(deltas) == 2:
                        threading.Thread(target=stream.stop).start()
                else:
                    return deltas, event
        raise AssertionError("no AnswerEnd")

    deltas, end = asyncio.run(consume())
    assert end.stopped and len(deltas) < 500 and end.text == "".join(d.text for d in deltas)


def test_stop_before_streaming_sends_nothing(fake_server: FakeSSEServer, fake_target: Target) -> None:
    before = fake_server.stats().generation_requests
    stream = ChatStream(fake_target, ask("hello"), ChatParams())
    stream.stop()
    deltas, end = run(stream)

    assert deltas == [] and end.stopped and end.text == ""
    assert fake_server.stats().generation_requests == before


def test_a_stream_is_used_once(fake_target: Target) -> None:
    stream = ChatStream(fake_target, ask("hello"), ChatParams(max_tokens=2))
    run(stream)
    with pytest.raises(ChatError, match="already used"):
        run(stream)


# ---- bad input ----------------------------------------------------------------------------------


def test_a_request_must_end_with_the_user(fake_target: Target) -> None:
    with pytest.raises(ChatError, match="must end with the user's message"):
        ChatStream(fake_target, [ChatTurn(role="assistant", content="hi")], ChatParams())


def test_a_missing_api_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEDECK_TEST_KEY", raising=False)
    target = Target(name="secure", base_url="http://127.0.0.1:1", model="m", api_key_env="SERVEDECK_TEST_KEY")
    with pytest.raises(ChatError, match=r"\$SERVEDECK_TEST_KEY, which is not set"):
        ChatStream(target, ask("hi"), ChatParams())


@pytest.mark.parametrize(
    ("temperature", "max_tokens", "extra", "message"),
    [
        ("hot", "256", "", "temperature 'hot' is not a number"),
        ("2.5", "256", "", "temperature 2.5 is out of range"),
        ("0.7", "many", "", "max tokens 'many' is not a whole number"),
        ("0.7", "0", "", "max tokens 0 is out of range"),
        ("0.7", "256", "{top_k: 40}", "extra request fields are not valid JSON"),
        ("0.7", "256", "[1, 2]", "must be a JSON object"),
        ("0.7", "256", '{"stream": false}', "may not set stream"),
    ],
)
def test_form_values_get_one_clear_message(
    temperature: str, max_tokens: str, extra: str, message: str
) -> None:
    with pytest.raises(ChatParamsError, match=message):
        ChatParams.from_form(
            system_prompt="", temperature=temperature, max_tokens=max_tokens, extra_body=extra
        )


def test_form_values_parse() -> None:
    params = ChatParams.from_form(
        system_prompt="Be brief.", temperature=" 0.2 ", max_tokens="64", extra_body='{"top_k": 40}'
    )
    assert params == ChatParams(
        system_prompt="Be brief.", temperature=0.2, max_tokens=64, extra_body={"top_k": 40}
    )
    assert parse_extra_body("  ") == {}


# ---- the stats definitions ----------------------------------------------------------------------


def test_stats_follow_vllms_definitions() -> None:
    stats = StatsAccumulator(started_at=10.0)
    for arrival in (10.2, 10.25, 10.35, 10.5):
        stats.on_token_chunk(arrival)
    live = stats.snapshot()
    assert live.partial and live.output_tokens == 4 and live.output_tokens_source == "chunks"
    assert live.ttft_s == pytest.approx(0.2) and live.e2e_s == pytest.approx(0.5)
    assert live.itl_s == pytest.approx([0.05, 0.1, 0.15])
    assert live.tpot_s == pytest.approx(0.3 / 3)

    stats.usage_completion_tokens = 7  # e.g. speculative decoding: several tokens per chunk
    final = stats.snapshot(partial=False)
    assert final.output_tokens == 7 and final.output_tokens_source == "usage"
    assert final.tpot_s == pytest.approx(0.3 / 6)
    assert final.tokens_per_s == pytest.approx(7 / 0.5)


def test_stats_of_an_answer_without_tokens() -> None:
    empty = StatsAccumulator(started_at=1.0).snapshot()
    assert empty.ttft_s is None and empty.tpot_s is None and empty.tokens_per_s is None and empty.itl_s == []
