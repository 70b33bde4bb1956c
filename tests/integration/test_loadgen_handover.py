"""How a worker hands finished requests to its parent: the pipe writer and the record builder."""

from __future__ import annotations

import multiprocessing as mp
import threading
from array import array

from backends.bench.loadgen.finished import FinishedRequest, build_record
from backends.bench.loadgen.stream_protocol import StreamState
from backends.bench.loadgen.worker import _ParentLink

USAGE_EVENT = b'{"id":"c","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}'
FINISH_EVENT = b'{"id":"c","choices":[{"index":0,"text":"","finish_reason":"length"}]}'


def test_a_parent_that_does_not_read_never_blocks_the_sender() -> None:
    parent_end, child_end = mp.Pipe(duplex=True)
    link = _ParentLink(child_end)
    payload = b"x" * 1_000_000  # a few of these fill any pipe buffer
    sent = threading.Event()

    def send_all() -> None:
        for i in range(20):
            link.send(("progress", i, payload))
        sent.set()

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    # Nothing is read yet: a send on the pipe itself would block on the second message.
    assert sent.wait(timeout=30), "send() blocked while the parent was not reading"
    received = [parent_end.recv() for _ in range(20)]
    link.close()
    assert [m[1] for m in received] == list(range(20))
    assert all(m[2] == payload for m in received)


def test_close_delivers_everything_queued_and_survives_a_gone_parent() -> None:
    parent_end, child_end = mp.Pipe(duplex=True)
    link = _ParentLink(child_end)
    link.send(("ready", 3))
    link.send(("done", None))
    link.close()
    assert parent_end.recv() == ("ready", 3)
    assert parent_end.recv() == ("done", None)

    gone_parent, child_end = mp.Pipe(duplex=True)
    link = _ParentLink(child_end)
    gone_parent.close()
    link.send(("progress", b"y" * 1_000_000))
    link.close()  # returns: the write failed, nobody is left to tell


def _state(chunks: list[float], tail: list[bytes], status: int = 200) -> StreamState:
    state = StreamState()
    state.sent_at = 10.0
    state.first_token_at = chunks[0] if chunks else None
    state.chunk_times = array("d", chunks)
    state.chunk_tokens = array("q", [1] * len(chunks))
    state.continuous_usage_seen = True
    state.http_status = status
    state.tail_events = tail
    return state


def test_a_record_is_built_from_what_the_worker_measured() -> None:
    finished = FinishedRequest.from_state(2, 0.5, _state([10.25, 10.5, 10.75], [FINISH_EVENT, USAGE_EVENT]))
    record = build_record(finished, start_at=10.0, index=42, prompt_len=7, expected_output_len=3)
    assert record.index == 42 and record.prompt_len == 7 and record.expected_output_len == 3
    assert record.queued_at == 0.5
    assert record.sent_at == 0.0
    assert record.first_token_at == 0.25
    assert record.chunk_times == [0.25, 0.5, 0.75]
    assert record.chunk_tokens == [1, 1, 1]
    assert (record.input_tokens, record.output_tokens) == (7, 3)
    assert record.finish_reason == "length"
    assert record.success and record.error is None
    assert record.ttft == 0.25


def test_failures_are_named_when_the_worker_saw_none() -> None:
    error_event = b'{"error":{"message":"engine died","type":"InternalServerError","code":500}}'
    cases = [
        (_state([10.1], [error_event]), "engine died"),
        (_state([], [USAGE_EVENT]), "no tokens received"),
        (_state([], [], status=503), "HTTP 503"),
    ]
    for state, error in cases:
        record = build_record(FinishedRequest.from_state(0, 0.0, state), 10.0, 0, 1, 1)
        assert not record.success
        assert record.error == error


def test_probe_pairs_come_back_as_flat_emit_arrival_pairs() -> None:
    state = _state([10.1, 10.2], [USAGE_EVENT])
    state.probe = array("q", [100, 150, 200, 260])
    record = build_record(FinishedRequest.from_state(0, 0.0, state), 10.0, 0, 1, 2)
    assert record.probe_emit_arrival_ns == [100, 150, 200, 260]
