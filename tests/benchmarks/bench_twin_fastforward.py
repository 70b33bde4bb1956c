"""How long the twin takes to fast-forward one 1000-prompt level (budget: < 2 s).

    python -m tests.benchmarks.bench_twin_fastforward [--repeats 3]

ShareGPT (bundled, tiktoken), 1000 prompts, output 256; each cell is a fresh engine running one level, timed
with ``time.perf_counter`` around ``run_level`` (dataset sampling excluded: it is shared with the bench
core). Prints the median wall time and the median CPU time of the process (``time.process_time``; what
counts on a busy machine, where other processes take the core), and the virtual duration covered.
"""

from __future__ import annotations

import argparse
import statistics
import time

from backends.bench.models import Axis, LoadLevel
from backends.bench.results import SweepConfig
from backends.target_types import Target, TargetKind
from backends.twin.engine import TwinConfig, TwinEngine
from backends.twin.fastforward import run_level, sample_dataset

CELLS = (
    ("h100", 1, 1.0),
    ("h100", 1, 10.0),
    ("h100", 2, 50.0),
    ("h100", 2, 100.0),
    ("h100", 4, 100.0),
    ("h100", 4, 500.0),
    ("l4", 4, 1.0),
    ("a100-80gb", 1, 10.0),
    ("cpu-c4", 1, 10.0),
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    target = Target(name="twin", base_url="twin://bench", model="google/gemma-3-27b-it", kind=TargetKind.TWIN)
    sweep = SweepConfig(target=target, axis=Axis.REQUEST_RATE, levels=[1.0], num_prompts=1000, output_len=256)
    requests = sample_dataset(sweep).requests
    print(f"{'profile':>14} {'req/s':>6} {'wall s':>7} {'CPU s':>6} {'virtual s':>10} {'speed-up':>9}")
    for gpu, count, rate in CELLS:
        config = TwinConfig.build("gemma-3-27b-it", gpu, count, max_model_len=8192)
        level = LoadLevel(axis=Axis.REQUEST_RATE, value=rate)
        walls, cpus = [], []
        virtual = 0.0
        for _ in range(args.repeats):
            engine = TwinEngine(config)
            started, started_cpu = time.perf_counter(), time.process_time()
            result = run_level(engine, level, requests)
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - started_cpu)
            virtual = result.metrics.duration
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        print(
            f"{count}x{gpu:>10} {rate:>6g} {wall:>7.2f} {cpu:>6.2f} {virtual:>10.1f} {virtual / cpu:>8.0f}x"
        )


if __name__ == "__main__":
    main()
