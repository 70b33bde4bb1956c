"""A finished request as the worker sends it, and the ``RequestRecord`` the receiving side makes of it.

The worker's event loop stamps chunk arrivals; every microsecond it spends elsewhere delays a stamp. So
it hands over what the protocol measured as it is (arrays of raw clock readings, the undecoded tail
events) and the receiver parses usage and errors and builds the record: pickling a pydantic record
with per-chunk lists cost the loop 70-150 µs a request, this costs a few.
"""

from __future__ import annotations

from array import array
from typing import Any, NamedTuple

import numpy as np

from backends.bench.loadgen.stream_protocol import StreamState, parse_tail_events
from backends.bench.models import RequestRecord
from backends.redaction import redact


class FinishedRequest(NamedTuple):
    position: int
    """Index into the worker's job lists."""
    queued_at: float
    """Seconds after the level's start (the arrival time)."""
    sent_at: float | None
    first_token_at: float | None
    chunk_times: array[float]
    """perf_counter() at each content chunk's socket read."""
    chunk_tokens: array[int] | None
    """Tokens per chunk, when the server sent continuous usage."""
    http_status: int | None
    error: str | None
    tail_events: list[bytes]
    probe: array[int] | None
    """Calibration only: server emit_ns, client time_ns, flat pairs."""
    prompt_len: int | None = None
    """Multi-turn: the turn's prompt (history included), known only once the earlier answers came."""

    @classmethod
    def from_state(
        cls, position: int, queued_at: float, state: StreamState, prompt_len: int | None = None
    ) -> FinishedRequest:
        return cls(
            position,
            queued_at,
            state.sent_at,
            state.first_token_at,
            state.chunk_times,
            state.chunk_tokens if state.continuous_usage_seen else None,
            state.http_status,
            state.error,
            state.tail_events,
            state.probe,
            prompt_len,
        )


def build_record(
    finished: FinishedRequest,
    start_at: float,
    index: int,
    prompt_len: int,
    expected_output_len: int,
    session: int | None = None,
    turn: int | None = None,
) -> RequestRecord:
    """The record of one finished request; ``start_at`` is the level's perf_counter() time zero."""
    tail = parse_tail_events(finished.tail_events) if finished.tail_events else {}
    error = finished.error or tail.get("error")
    usage: dict[str, Any] = tail.get("usage") or tail.get("chunk_usage") or {}
    chunks = finished.chunk_times
    success = error is None and finished.http_status == 200 and len(chunks) > 0
    if error is None and not success:
        error = "no tokens received" if finished.http_status == 200 else f"HTTP {finished.http_status}"
    if error is not None:
        error = redact(error)  # servers quote back what they were sent, the API key included
    probe = finished.probe
    # model_construct: every field is built here with its declared type, and validating a few hundred
    # floats a record would double the receiver's cost (22 -> ~10 µs a 256-chunk record).
    return RequestRecord.model_construct(
        index=index,
        prompt_len=prompt_len if finished.prompt_len is None else finished.prompt_len,
        expected_output_len=expected_output_len,
        queued_at=finished.queued_at,
        sent_at=None if finished.sent_at is None else finished.sent_at - start_at,
        first_token_at=None if finished.first_token_at is None else finished.first_token_at - start_at,
        chunk_times=(np.frombuffer(chunks, dtype=np.float64) - start_at).tolist() if chunks else [],
        chunk_tokens=[] if finished.chunk_tokens is None else finished.chunk_tokens.tolist(),
        input_tokens=_as_count(usage.get("prompt_tokens")),
        output_tokens=_as_count(usage.get("completion_tokens")),
        finish_reason=tail.get("finish_reason"),
        http_status=finished.http_status,
        error=error,
        success=success,
        server_timings=tail.get("timings"),
        session=session,
        turn=turn,
        probe_emit_arrival_ns=None if probe is None else probe.tolist(),
    )


def _as_count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
