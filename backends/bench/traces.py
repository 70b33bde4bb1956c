"""Trace replay: arrival times and input/output lengths from a recorded trace.

Two formats:

- Mooncake (JSON Lines): ``{"timestamp": <ms>, "input_length": n, "output_length": m, "hash_ids": [...]}``
  a line (``hash_ids``, the trace's prefix-cache block ids, are not needed to replay the load);
- BurstGPT (CSV): columns ``Timestamp`` (seconds), ``Model``, ``Request tokens``, ``Response tokens``,
  ``Total tokens``, ``Log Type``; rows with 0 request or response tokens (failed requests in the trace)
  are left out, with a note.

The first request of the trace arrives at t = 0; every later one at its offset from the first, times the
time scale (0.5 replays twice as fast). Timestamps must be >= 0 and in order: a trace out of order is a
mistake to show, not to sort away. The prompts themselves are built by ``datasets.sample_trace``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from backends.bench.models import Axis, SampledRequest
from backends.errors import ConfigError, DatasetError

TraceFormat = Literal["mooncake", "burstgpt"]
TRACE_FORMATS: tuple[TraceFormat, ...] = ("mooncake", "burstgpt")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type")
_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: its arrival (seconds from the trace's first request) and lengths."""

    arrival_s: float
    input_len: int
    output_len: int


@dataclass(frozen=True)
class Trace:
    path: str
    format: TraceFormat
    requests: tuple[TraceRequest, ...]
    notes: tuple[str, ...] = ()


def trace_format(path: str | Path, given: str | None = None) -> TraceFormat:
    """The format asked for, else the one the file's suffix says (.jsonl Mooncake, .csv BurstGPT)."""
    if given is not None:
        if given not in TRACE_FORMATS:
            raise DatasetError(f"unknown trace format {given!r}: use mooncake (JSON Lines) or burstgpt (CSV)")
        return given
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "mooncake"
    if suffix == ".csv":
        return "burstgpt"
    raise DatasetError(
        f"cannot tell the trace format of {Path(path).name} from its suffix: give --trace-format mooncake "
        "(JSON Lines) or burstgpt (CSV)"
    )


def load_trace(path: str | Path, fmt: str | None = None, *, time_scale: float = 1.0) -> Trace:
    """Read and check a trace; arrivals are relative to its first request and scaled by ``time_scale``."""
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise DatasetError(f"the trace time scale must be a number > 0 (1 = as recorded), not {time_scale:g}")
    file = Path(path).expanduser()
    kind = trace_format(file, fmt)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"trace file not found: {file}; check the path") from None
    except IsADirectoryError:
        raise DatasetError(f"trace path {file} is a folder; give a .jsonl or .csv file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read trace file {file}: {exc}") from None
    notes: list[str] = []
    if kind == "mooncake":
        rows = _mooncake_rows(file, text)
        unit = 1e-3  # milliseconds
    else:
        rows, notes = _burstgpt_rows(file, text)
        unit = 1.0
    if not rows:
        raise DatasetError(f"trace file {file} holds no requests")
    previous = -math.inf
    for where, timestamp, _, _ in rows:
        if timestamp < 0:
            raise DatasetError(f"{where}: negative timestamp {timestamp:g}; trace timestamps must be >= 0")
        if timestamp < previous:
            raise DatasetError(
                f"{where}: timestamp {timestamp:g} comes before the previous one ({previous:g}); "
                "the trace must be sorted by time"
            )
        previous = timestamp
    first = rows[0][1]
    requests = tuple(
        TraceRequest(arrival_s=(timestamp - first) * unit * time_scale, input_len=n_in, output_len=n_out)
        for _, timestamp, n_in, n_out in rows
    )
    return Trace(path=str(file), format=kind, requests=requests, notes=tuple(notes))


Row = tuple[str, float, int, int]  # (where, timestamp, input tokens, output tokens)


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DatasetError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _count(value: Any, where: str, name: str) -> int:
    number = _number(value, where, name)
    if number != int(number) or number < 1:
        raise DatasetError(f"{where}: {name} must be a whole number of tokens >= 1, got {value!r}")
    return int(number)


def _mooncake_rows(file: Path, text: str) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(
                f"{where} is not JSON ({err.msg}): a Mooncake trace is JSON Lines of "
                '{"timestamp", "input_length", "output_length"}'
            ) from None
        if not isinstance(record, dict):
            raise DatasetError(f"{where} is not a JSON object (Mooncake trace: one request a line)")
        missing = [key for key in _MOONCAKE_KEYS if key not in record]
        if missing:
            raise DatasetError(
                f"{where} has no {', '.join(repr(k) for k in missing)} (Mooncake trace format)"
            )
        rows.append(
            (
                where,
                _number(record["timestamp"], where, "timestamp"),
                _count(record["input_length"], where, "input_length"),
                _count(record["output_length"], where, "output_length"),
            )
        )
    return rows


def _burstgpt_rows(file: Path, text: str) -> tuple[list[Row], list[str]]:
    reader = csv.DictReader(text.splitlines())
    header = [name.strip() for name in reader.fieldnames or []]
    needed = ("Timestamp", "Request tokens", "Response tokens")
    missing = [name for name in needed if name not in header]
    if missing:
        raise DatasetError(
            f"{file.name} has no {', '.join(repr(m) for m in missing)} column (BurstGPT CSV columns: "
            f"{', '.join(BURSTGPT_COLUMNS)}); its header is {', '.join(header) or 'empty'}"
        )
    reader.fieldnames = header
    rows: list[Row] = []
    failed = 0
    for number, record in enumerate(reader, start=2):
        where = f"{file.name} line {number}"
        values = {}
        for name in needed:
            raw = (record.get(name) or "").strip()
            try:
                values[name] = float(raw)
            except ValueError:
                raise DatasetError(f"{where}: {name} must be a number, got {raw!r}") from None
            if not math.isfinite(values[name]):
                raise DatasetError(f"{where}: {name} must be a finite number, got {raw!r}")
        n_in, n_out = values["Request tokens"], values["Response tokens"]
        for name, count in (("Request tokens", n_in), ("Response tokens", n_out)):
            if count < 0 or count != int(count):
                raise DatasetError(f"{where}: {name} must be a whole number >= 0, got {count:g}")
        if n_in == 0 or n_out == 0:
            failed += 1
            continue
        rows.append((where, values["Timestamp"], int(n_in), int(n_out)))
    notes = []
    if failed:
        notes.append(
            f"{failed:,} requests of {file.name} with 0 request or response tokens (failed) left out"
        )
    return rows, notes


def trace_arrivals(requests: Sequence[SampledRequest]) -> list[float] | None:
    """The arrival times a trace gave these requests; None when they come from no trace."""
    if not requests or any(r.arrival_s is None for r in requests):
        return None
    return [float(r.arrival_s) for r in requests if r.arrival_s is not None]


def check_trace_levels(axis: Axis, levels: Sequence[float], ramp_up_strategy: str | None = None) -> None:
    """A trace sets its own arrival times: rates to sweep or a ramp-up would be ignored."""
    if ramp_up_strategy is not None:
        raise ConfigError("a trace replays its own arrival times: give no --ramp-up-strategy with --trace")
    finite = [v for v in levels if not math.isinf(v)]
    if axis is Axis.REQUEST_RATE and finite:
        raise ConfigError(
            f"a trace replays its own arrival times, so --request-rate {finite[0]:g} would be ignored: give "
            "--concurrency N (the trace's arrivals, at most N in flight), or with bench --request-rate inf "
            "(no cap); --trace-time-scale speeds the trace up or slows it down"
        )
