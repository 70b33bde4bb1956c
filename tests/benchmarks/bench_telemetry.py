"""Does reading GPU telemetry beside a level slow the load generator? 1000 streams against a live twin,
with and without its /dcgm read 4 times a second, in one invocation.

    python -m tests.benchmarks.bench_telemetry [--streams 1000] [--rounds 2] [--json out.json]

The twin (gemma-3-12b-it on one H100 by default, in this process's server thread) is the target both
times; the
"without" arm is the same target with its kind set to vLLM, so the sweep finds no telemetry URL and
starts no GPU monitor. Arms alternate (without, with, without, with, ...) so drift on a shared host hits
both. Per level: the load generator's own self-check (event-loop lag p50/p99/max in the worker,
client-limited or not), output tok/s, and how many GPU readings were taken. The ratio is with/without
of the medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from typing import Any

from backends.bench.models import Axis
from backends.bench.results import DatasetSpec, SweepConfig, SweepResult
from backends.bench.sweep import run_sweep
from backends.target_types import TargetKind
from backends.targets import discover_target
from backends.twin.engine_config import TwinConfig
from backends.twin.server import TwinServer


def _run(config: SweepConfig) -> SweepResult:
    async def main() -> SweepResult:
        return await run_sweep(config, lambda event: None)

    return asyncio.run(main())


def measure(streams: int, rounds: int, output_len: int, model: str) -> dict[str, Any]:
    twin_config = TwinConfig.build(model, "h100", 1, max_model_len=4096)
    cells: list[dict[str, Any]] = []
    with TwinServer(twin_config, log_sink=lambda line: None) as twin:
        target = asyncio.run(discover_target(twin.base_url))
        base = SweepConfig(
            target=target,
            dataset=DatasetSpec(kind="random", random_input_len=128, random_output_len=output_len),
            axis=Axis.CONCURRENCY,
            levels=[float(streams)],
            num_prompts=streams * 2,
            output_len=output_len,
            ignore_eos=True,
        )
        arms = {
            "without": base.model_copy(
                update={"target": target.model_copy(update={"kind": TargetKind.VLLM})}
            ),
            "with": base,
        }
        for round_index in range(rounds):
            for arm, config in arms.items():
                level = _run(config).levels[0]
                gpu = level.gpu
                cell = {
                    "round": round_index,
                    "arm": arm,
                    "completed": level.metrics.completed,
                    "output_tok_s": level.metrics.output_throughput,
                    "loop_lag_p50_ms": level.client.loop_lag_p50_ms,
                    "loop_lag_p99_ms": level.client.loop_lag_p99_ms,
                    "loop_lag_max_ms": level.client.loop_lag_max_ms,
                    "client_cpu_percent": level.client.cpu_percent,
                    "client_limited": level.client.client_limited,
                    "client_reason": level.client.reason,
                    "gpu_readings": gpu.readings if gpu is not None else 0,
                }
                cells.append(cell)
                print(json.dumps(cell), file=sys.stderr)

    def median(arm: str, key: str) -> float:
        return statistics.median(float(c[key]) for c in cells if c["arm"] == arm)

    summary = {
        key: {
            "without": median("without", key),
            "with": median("with", key),
            "ratio": median("with", key) / median("without", key) if median("without", key) else None,
        }
        for key in ("loop_lag_p50_ms", "loop_lag_p99_ms", "output_tok_s", "client_cpu_percent")
    }
    return {
        "streams": streams,
        "model": model,
        "rounds": rounds,
        "cells": cells,
        "summary": summary,
        "client_limited": {
            arm: sum(1 for c in cells if c["arm"] == arm and c["client_limited"]) for arm in arms
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument(
        "--model", default="gemma-3-12b-it", help="the twin's model (its step time sets tok/s)"
    )
    parser.add_argument("--json", help="write the cells and summary here")
    args = parser.parse_args(argv)
    result = measure(args.streams, args.rounds, args.output_len, args.model)
    text = json.dumps(result["summary"], indent=2)
    print(text)
    print("client-limited levels:", result["client_limited"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
