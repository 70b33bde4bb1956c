"""The compressed record format gives back exactly what went in, and refuses damaged chunks."""

from __future__ import annotations

import json
import math
import zlib

import pytest

from backends.bench.models import RequestRecord
from sessions.record_codec import (
    CODEC_COLUMNAR,
    CODEC_JSONL_ZLIB,
    RecordDecodeError,
    decode_records,
    encode_records,
)
from tests.sessions_helpers import make_records


def test_realistic_records_round_trip_bit_for_bit() -> None:
    records = make_records(0, 300, seed=3)
    back = decode_records(CODEC_COLUMNAR, encode_records(records))
    assert back == records
    # Equality of floats could hide -0.0 vs 0.0; compare the exact bits of every chunk time.
    assert [[t.hex() for t in r.chunk_times] for r in back] == [
        [t.hex() for t in r.chunk_times] for r in records
    ]


def test_edge_values_round_trip() -> None:
    odd = [
        RequestRecord(index=0, prompt_len=1, expected_output_len=1, queued_at=0.0),
        RequestRecord(
            index=2**40,
            prompt_len=7,
            expected_output_len=3,
            queued_at=-0.0,
            sent_at=1e-300,
            first_token_at=5e-324,
            chunk_times=[math.nan, math.inf, -math.inf, -0.0, 0.0, 1.7976931348623157e308],
            chunk_tokens=[0, -1, 2**62, 3, 4, 5],
            error='línea 1\nline 2 \u2603 "quoted"',
            server_timings={"prompt_ms": math.inf},
        ),
        RequestRecord(index=5, prompt_len=2, expected_output_len=2, queued_at=1.0, chunk_times=[1.5]),
    ]
    back = decode_records(CODEC_COLUMNAR, encode_records(odd))
    assert [r.model_dump(exclude={"chunk_times"}) for r in back] == [
        r.model_dump(exclude={"chunk_times"}) for r in odd
    ]
    assert [[t.hex() for t in r.chunk_times] for r in back] == [[t.hex() for t in r.chunk_times] for r in odd]


def test_empty_chunk_round_trips() -> None:
    assert decode_records(CODEC_COLUMNAR, encode_records([])) == []


def test_compresses_realistic_records() -> None:
    records = make_records(0, 200, seed=1)
    plain_json = sum(len(r.model_dump_json()) for r in records)
    assert len(encode_records(records)) < plain_json / 3


def test_schema_v1_json_lines_chunks_still_decode() -> None:
    records = make_records(10, 20, seed=2)
    payload = zlib.compress("\n".join(r.model_dump_json() for r in records).encode())
    assert decode_records(CODEC_JSONL_ZLIB, payload) == records


@pytest.mark.parametrize("cut", [1, 10, 200, -1])
def test_truncated_chunk_is_refused(cut: int) -> None:
    payload = encode_records(make_records(0, 30, seed=4))
    with pytest.raises(RecordDecodeError):
        decode_records(CODEC_COLUMNAR, payload[:cut])


def test_flipped_bytes_are_refused_or_detected() -> None:
    payload = bytearray(encode_records(make_records(0, 30, seed=5)))
    payload[0:4] = b"XXXX"
    with pytest.raises(RecordDecodeError, match="header"):
        decode_records(CODEC_COLUMNAR, bytes(payload))


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(RecordDecodeError, match="unknown record codec"):
        decode_records("zstd-v9", b"")


def test_json_lines_garbage_is_refused() -> None:
    with pytest.raises(RecordDecodeError):
        decode_records(CODEC_JSONL_ZLIB, zlib.compress(json.dumps({"index": "x"}).encode()))
