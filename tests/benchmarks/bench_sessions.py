"""Sessions store benchmark: store 100k realistic per-request records, then load runs back.

    python -m tests.benchmarks.bench_sessions [--records 100000] [--levels 10] [--batch 1000] [--chunks 256]

A sweep of ``--levels`` levels writes its records through ``RunWriter.add_records`` in batches of
``--batch`` (what a runner flushing once a second does), each record carrying ``--chunks`` chunk
times, like a 256-token streamed answer. Generating the records is not timed; only store calls are.
Then: open the store again, list runs, load the run for an overlay (metrics only), load one level's
records, load all records. Prints one JSON object of measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from backends.bench.models import RequestRecord
from backends.bench.results import RunStatus, SweepConfig
from sessions import SessionStore
from tests.sessions_helpers import make_config, make_level_result


def realistic_records(rng: np.random.Generator, start: int, count: int, chunks: int) -> list[RequestRecord]:
    """Streamed answers: TTFT 50 ms to 1.5 s, then gamma-distributed inter-token gaps (~20 ms)."""
    queued = rng.uniform(0.0, 60.0, count)
    sent = queued + rng.uniform(0.0, 0.005, count)
    first = sent + rng.uniform(0.05, 1.5, count)
    gaps = rng.gamma(4.0, 0.005, (count, chunks - 1))
    times = np.concatenate([first[:, None], first[:, None] + np.cumsum(gaps, axis=1)], axis=1)
    prompt_lens = rng.integers(4, 1024, count)
    records = []
    for i in range(count):
        records.append(
            RequestRecord(
                index=start + i,
                prompt_len=int(prompt_lens[i]),
                expected_output_len=chunks,
                queued_at=float(queued[i]),
                sent_at=float(sent[i]),
                first_token_at=float(first[i]),
                chunk_times=times[i].tolist(),
                chunk_tokens=[1] * chunks,
                input_tokens=int(prompt_lens[i]),
                output_tokens=chunks,
                finish_reason="length",
                http_status=200,
                success=True,
                server_timings={"prompt_ms": float(first[i] - sent[i]) * 800.0, "predicted_ms": 5000.0},
            )
        )
    return records


def batches(total: int, levels: int, batch: int) -> Iterator[tuple[int, int, int]]:
    """(level, first record index in the level, count) for every add_records call."""
    per_level = total // levels
    for level in range(levels):
        for start in range(0, per_level, batch):
            yield level, start, min(batch, per_level - start)


def timed(action: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def database_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.name.startswith("sessions.db"))


def run(records: int, levels: int, batch: int, chunks: int, folder: Path) -> dict[str, Any]:
    config: SweepConfig = make_config(levels=[float(2**i) for i in range(levels)], label="bench")
    rng = np.random.default_rng(0)
    add_times: list[float] = []
    with SessionStore.open(folder) as store:
        writer = store.runs.writer()
        run_id = writer.begin_run(config, gpu="benchmark")
        current_level = 0
        for level, start, count in batches(records, levels, batch):
            if level != current_level:
                writer.finish_level(make_level_result(config, current_level))
                current_level = level
            chunk = realistic_records(rng, start, count, chunks)
            elapsed, _ = timed(lambda level=level, chunk=chunk: writer.add_records(level, chunk))
            add_times.append(elapsed)
        writer.finish_level(make_level_result(config, current_level))
        writer.finish_run(RunStatus.COMPLETE)
    size_after_close = database_bytes(folder)

    open_s, store = timed(lambda: SessionStore.open(folder))
    with store:
        list_s, summaries = timed(store.runs.list_runs)
        overlay_s, sweeps = timed(lambda: store.runs.load_sweeps([run_id]))
        overlay3_s, _ = timed(lambda: store.runs.load_sweeps([run_id, run_id, run_id]))
        one_level_s, level_records = timed(lambda: store.runs.level_records(run_id, 0))
        all_s, full = timed(lambda: store.runs.load_sweep(run_id, with_records=True))
    stored = sum(len(level.records) for level in full.levels)
    assert stored == records - records % levels, (stored, records)
    assert summaries[0].records_stored == stored
    assert len(sweeps[0].levels) == levels

    total_add = sum(add_times)
    return {
        "records": stored,
        "chunk_times_per_record": chunks,
        "levels": levels,
        "records_per_add_call": batch,
        "store_total_s": round(total_add, 3),
        "store_records_per_s": round(stored / total_add),
        "store_us_per_record": round(total_add / stored * 1e6, 1),
        "add_records_call_p50_ms": round(statistics.median(add_times) * 1000, 1),
        "add_records_call_max_ms": round(max(add_times) * 1000, 1),
        "database_mb": round(size_after_close / 1e6, 1),
        "bytes_per_record": round(size_after_close / stored),
        "raw_float64_bytes_per_record": chunks * 8,
        "open_store_ms": round(open_s * 1000, 1),
        "list_runs_ms": round(list_s * 1000, 2),
        "load_overlay_1_run_ms": round(overlay_s * 1000, 2),
        "load_overlay_3_runs_ms": round(overlay3_s * 1000, 2),
        "load_one_level_records_s": round(one_level_s, 3),
        "records_in_one_level": len(level_records),
        "load_all_records_s": round(all_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--dir", type=Path, help="folder for the database (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="servedeck-bench-sessions-") as tmp:
        folder = args.dir or Path(tmp)
        result = run(args.records, args.levels, args.batch, args.chunks, folder)
    result["machine"] = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "platform": platform.platform(),
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
