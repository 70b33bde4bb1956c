"""The pod-log line protocol of the distributed bench: exact round trips, clear errors."""

from __future__ import annotations

import pytest

from backends.bench.models import ClientStats, RequestRecord
from backends.kube_bench.codec import (
    PROTOCOL,
    PodFatal,
    PodMessage,
    PodProgress,
    PodReady,
    PodStart,
    PodSummary,
    ProtocolError,
    decode,
    encode,
    is_protocol_line,
)


def _record() -> RequestRecord:
    return RequestRecord(
        index=41,
        prompt_len=123,
        expected_output_len=5,
        queued_at=0.1,
        sent_at=0.10000000000000003,
        first_token_at=0.2371981234567891,
        chunk_times=[0.2371981234567891, 0.24 + 1e-17, 1 / 3, 2.000000000000001],
        chunk_tokens=[1, 1, 2, 1],
        input_tokens=123,
        output_tokens=5,
        finish_reason="length",
        http_status=200,
        error=None,
        success=True,
        server_timings={"prompt_ms": 12.5, "predicted_ms": 44.125},
    )


def test_a_request_record_round_trips_exactly() -> None:
    record = _record()
    line = encode(record)
    assert line.startswith(f"{PROTOCOL} record {{")
    assert "\n" not in line
    decoded = decode(line)
    assert decoded == record
    assert isinstance(decoded, RequestRecord)
    assert decoded.chunk_times == record.chunk_times  # bit-exact floats
    assert decoded.ttft == record.ttft


def test_a_failed_record_with_nones_round_trips() -> None:
    record = RequestRecord(
        index=3, prompt_len=9, expected_output_len=16, queued_at=1.5, http_status=503, error="HTTP 503: busy"
    )
    assert decode(encode(record)) == record


def test_calibration_probe_data_is_not_shipped() -> None:
    record = _record().model_copy(update={"probe_emit_arrival_ns": [1, 2, 3, 4]})
    decoded = decode(encode(record))
    assert isinstance(decoded, RequestRecord)
    assert decoded.probe_emit_arrival_ns is None


@pytest.mark.parametrize(
    "message",
    [
        PodReady(pod_index=2, connections=16, epoch=1_700_000_000.25),
        PodStart(pod_index=1, zero_epoch=1_700_000_090.5, late_s=0.0),
        PodProgress(pod_index=0, t=3.5, sent=10, completed=8, failed=1, in_flight=1, tokens=400),
        PodSummary(pod_index=0, records=9, duration_s=12.75, client=ClientStats(workers=1, cpu_percent=12.0)),
        PodFatal(
            pod_index=3, message="cannot connect to gemma.ns.svc.cluster.local:8000: Name does not resolve"
        ),
    ],
)
def test_every_message_kind_round_trips(message: PodMessage) -> None:
    line = encode(message)
    assert is_protocol_line(line)
    assert decode(line) == message


def test_other_log_lines_are_not_protocol() -> None:
    for line in (
        "Collecting pydantic>=2.7",
        "",
        "  Downloading numpy-2.1.0.whl (16 MB)",
        "@servedeck is great",
    ):
        assert decode(line) is None
        assert not is_protocol_line(line)


def test_a_trailing_newline_is_tolerated() -> None:
    record = _record()
    assert decode(encode(record) + "\r\n") == record


def test_another_protocol_version_says_to_align_versions() -> None:
    with pytest.raises(
        ProtocolError, match=r"speaks @servedeck-bench/2, this ServeDeck reads @servedeck-bench/1"
    ):
        decode('@servedeck-bench/2 record {"index": 1}')


def test_a_damaged_line_is_one_clear_error() -> None:
    line = encode(_record())
    with pytest.raises(ProtocolError) as info:
        decode(line[: len(line) // 2])
    assert "damaged record line" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ProtocolError, match="unknown load-generator message kind 'bogus'"):
        decode(f"{PROTOCOL} bogus {{}}")
