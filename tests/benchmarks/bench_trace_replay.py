"""Trace replay: how close the load generator's achieved send times come to a trace's (scaled) times.

    python -m tests.benchmarks.bench_trace_replay [--requests 200] [--scales 1,0.5] [--json PATH]

A Mooncake trace of ``--requests`` requests with bursty gaps (gamma, shape 0.5, mean 50 ms; seed 7) is
written to a temporary file and replayed by ``servedeck``'s bench core (``run_sweep``, dataset kind
"trace", ``--request-rate inf``) against the fake SSE server in its own process (pinned to core 0).
Per request: error = the moment its bytes were written (``RequestRecord.sent_at``) - its traced time
times the scale (``queued_at``, the schedule); both on the generator's clock from the level start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, SweepConfig
from backends.bench.sweep import run_sweep
from backends.targets import discover_target
from tests.fakes.sse_server import start_in_process, stop_process


def write_trace(path: Path, requests: int, seed: int = 7) -> list[float]:
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=0.5, scale=0.1, size=requests - 1)  # mean 50 ms, bursty
    times_ms = np.concatenate(([0.0], np.cumsum(gaps) * 1000.0))
    with path.open("w") as handle:
        for t in times_ms:
            record = {"timestamp": round(t), "input_length": 64, "output_length": 8, "hash_ids": [0]}
            handle.write(json.dumps(record) + "\n")
    return [float(t) for t in times_ms]


def replay(port: int, trace: Path, requests: int, scale: float) -> dict[str, float]:
    target = asyncio.run(discover_target(f"http://127.0.0.1:{port}"))
    config = SweepConfig(
        target=target,
        dataset=DatasetSpec(kind="trace", path=str(trace), trace_time_scale=scale),
        axis=Axis.REQUEST_RATE,
        levels=[float("inf")],
        num_prompts=requests,
    )
    result = asyncio.run(run_sweep(config, lambda _event: None))
    records = result.levels[0].records
    errors_ms = np.array(
        [(r.sent_at - r.queued_at) * 1000.0 for r in records if r.sent_at is not None], dtype=float
    )
    return {
        "scale": scale,
        "requests": len(records),
        "sent": int(errors_ms.size),
        "span_s": max(r.queued_at for r in records),
        "error_p50_ms": float(np.percentile(errors_ms, 50)),
        "error_p99_ms": float(np.percentile(errors_ms, 99)),
        "error_max_ms": float(errors_ms.max()),
        "error_min_ms": float(errors_ms.min()),
        "abs_error_p99_ms": float(np.percentile(np.abs(errors_ms), 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--scales", default="1,0.5")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    port, process = start_in_process(cpu=cpus[0] if len(cpus) > 1 else None)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            trace = Path(folder) / "trace.jsonl"
            write_trace(trace, args.requests)
            for scale in (float(s) for s in args.scales.split(",")):
                row = replay(port, trace, args.requests, scale)
                rows.append(row)
                print(
                    f"scale {row['scale']:g}: {row['sent']}/{row['requests']} sent "
                    f"over {row['span_s']:.2f} s; "
                    f"send - traced time: p50 {row['error_p50_ms']:.3f} ms, "
                    f"p99 {row['error_p99_ms']:.3f} ms, max {row['error_max_ms']:.3f} ms, "
                    f"min {row['error_min_ms']:.3f} ms; |error| p99 {row['abs_error_p99_ms']:.3f} ms",
                    flush=True,
                )
    finally:
        stop_process(process)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
