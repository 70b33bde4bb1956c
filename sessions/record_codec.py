"""Compact, lossless storage of per-request records.

A chunk is one ``add_records`` call. Scalar fields are stored as JSON columns; the two long lists
(``chunk_times``: float64 seconds, ``chunk_tokens``: ints) are stored as binary arrays. Each float's
bits are XOR-ed with its predecessor's and split into 8 byte planes: neighbouring times share sign,
exponent and high mantissa bits, so the high planes become runs of zeros that zlib shrinks to
nearly nothing, while the low planes are measurement noise and are stored as they are (compressing
noise costs most of the time and saves nothing). Every bit survives, so decoding gives back exactly
the floats that were written.
"""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError
from pydantic_core import from_json

from backends.bench.models import RequestRecord
from sessions.jsoncodec import dump_plain

CODEC_JSONL_ZLIB = "jsonl+zlib"  # schema v1: zlib of one RequestRecord JSON object per line
CODEC_COLUMNAR = "columnar-v1"

_MAGIC = b"SDR1"
_HEADER = struct.Struct("<4sIII")  # magic, records, chunk times, chunk tokens
_BLOCK = struct.Struct("<BI")  # stored raw (0) or zlib (1), stored length
_RAW, _ZLIB = 0, 1
_ARRAY_FIELDS = ("chunk_times", "chunk_tokens")
_ZLIB_LEVEL = 1
_SAMPLE_BYTES = 4096
_WORTH_COMPRESSING = 0.9  # compress a block only if a sample shrinks below 90%

U64Array = np.ndarray[Any, np.dtype[np.uint64]]


class RecordDecodeError(ValueError):
    """A stored chunk cannot be decoded (damaged file or unknown codec)."""


def _scalar_fields() -> list[str]:
    return [name for name in RequestRecord.model_fields if name not in _ARRAY_FIELDS]


def _pack_block(data: bytes) -> bytes:
    sample = data[:_SAMPLE_BYTES]
    if len(sample) >= 64 and len(zlib.compress(sample, _ZLIB_LEVEL)) > _WORTH_COMPRESSING * len(sample):
        return _BLOCK.pack(_RAW, len(data)) + data
    packed = zlib.compress(data, _ZLIB_LEVEL)
    return _BLOCK.pack(_ZLIB, len(packed)) + packed


def _byte_planes(words: U64Array) -> list[bytes]:
    planes = np.ascontiguousarray(words.view(np.uint8).reshape(-1, 8).T)
    return [planes[i].tobytes() for i in range(8)]


def encode_records(records: Sequence[RequestRecord]) -> bytes:
    columns = {name: [getattr(record, name) for record in records] for name in _scalar_fields()}
    time_counts = np.fromiter((len(r.chunk_times) for r in records), dtype=np.uint32, count=len(records))
    token_counts = np.fromiter((len(r.chunk_tokens) for r in records), dtype=np.uint32, count=len(records))
    n_times = int(time_counts.sum())
    n_tokens = int(token_counts.sum())
    times = np.fromiter(
        itertools.chain.from_iterable(r.chunk_times for r in records), dtype=np.float64, count=n_times
    ).view(np.uint64)
    xored = times.copy()
    xored[1:] ^= times[:-1]
    tokens = np.fromiter(
        itertools.chain.from_iterable(r.chunk_tokens for r in records), dtype=np.int64, count=n_tokens
    )
    blocks = [
        dump_plain(columns).encode(),
        time_counts.tobytes(),
        token_counts.tobytes(),
        *_byte_planes(xored),
        b"".join(_byte_planes(tokens.view(np.uint64))),
    ]
    header = _HEADER.pack(_MAGIC, len(records), n_times, n_tokens)
    return header + b"".join(_pack_block(block) for block in blocks)


class _BlockReader:
    def __init__(self, payload: bytes, start: int) -> None:
        self._payload = payload
        self._pos = start

    def next(self) -> bytes:
        kind, length = _BLOCK.unpack_from(self._payload, self._pos)
        start = self._pos + _BLOCK.size
        self._pos = start + length
        if self._pos > len(self._payload):
            raise RecordDecodeError("chunk is truncated")
        data = self._payload[start : self._pos]
        if kind == _ZLIB:
            return zlib.decompress(data)
        if kind == _RAW:
            return data
        raise RecordDecodeError("bad block kind")

    def at_end(self) -> bool:
        return self._pos == len(self._payload)


def _from_planes(planes: list[bytes], count: int) -> U64Array:
    if any(len(plane) != count for plane in planes):
        raise RecordDecodeError("array length does not match the chunk header")
    stacked = np.frombuffer(b"".join(planes), dtype=np.uint8).reshape(8, count)
    return np.ascontiguousarray(stacked.T).view(np.uint64).reshape(count)


def _decode_columnar(payload: bytes) -> list[RequestRecord]:
    magic, n_records, n_times, n_tokens = _HEADER.unpack_from(payload, 0)
    if magic != _MAGIC:
        raise RecordDecodeError("bad chunk header")
    reader = _BlockReader(payload, _HEADER.size)
    columns: dict[str, list[Any]] = from_json(reader.next())
    time_counts = np.frombuffer(reader.next(), dtype=np.uint32, count=n_records).tolist()
    token_counts = np.frombuffer(reader.next(), dtype=np.uint32, count=n_records).tolist()
    xored = _from_planes([reader.next() for _ in range(8)], n_times)
    token_bytes = reader.next()
    token_planes = [token_bytes[i * n_tokens : (i + 1) * n_tokens] for i in range(8)]
    tokens = _from_planes(token_planes, n_tokens).view(np.int64).tolist()
    if not reader.at_end():
        raise RecordDecodeError("chunk has trailing bytes")
    times = np.bitwise_xor.accumulate(xored).view(np.float64).tolist()

    records: list[RequestRecord] = []
    time_pos = 0
    token_pos = 0
    names = list(columns)
    for i in range(n_records):
        values: dict[str, Any] = {name: columns[name][i] for name in names}
        values["chunk_times"] = times[time_pos : time_pos + time_counts[i]]
        values["chunk_tokens"] = tokens[token_pos : token_pos + token_counts[i]]
        time_pos += time_counts[i]
        token_pos += token_counts[i]
        records.append(RequestRecord.model_validate(values))
    return records


def _decode_jsonl(payload: bytes) -> list[RequestRecord]:
    raw = zlib.decompress(payload)
    return [RequestRecord.model_validate(json.loads(line)) for line in raw.splitlines() if line.strip()]


def decode_records(codec: str, payload: bytes) -> list[RequestRecord]:
    try:
        if codec == CODEC_COLUMNAR:
            return _decode_columnar(payload)
        if codec == CODEC_JSONL_ZLIB:
            return _decode_jsonl(payload)
    except (zlib.error, struct.error, ValueError, KeyError, IndexError, TypeError, ValidationError) as exc:
        raise RecordDecodeError(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__) from None
    raise RecordDecodeError(f"unknown record codec {codec!r}")
