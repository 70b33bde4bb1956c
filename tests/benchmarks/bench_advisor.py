"""How long the capacity advisor takes over the whole catalog for Gemma 3 27B (budget: < 30 s on one core).

    .venv/bin/python -m tests.benchmarks.bench_advisor [--repeats 1] [--output-len 256] [--core 1]

The work of ``servedeck plan --advise --rate 20 --slo p99_ttft:2000,p99_tpot:100 --output-len 256``:
1000 bundled ShareGPT prompts (tiktoken counts) sampled once, then every catalog shape of at most 8 GPUs
searched with 1000-prompt fast-forward levels, then ranked. The process is pinned to one core. Prints
the wall and CPU time (``time.process_time``: what counts on a shared machine, where co-tenants take the
core) of sampling and of the search, the levels run, and the ranking's head.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from backends.advisor.advise import rank, search_shapes
from backends.bench.models import Axis
from backends.bench.results import SweepConfig
from backends.bench.slo import parse_slo
from backends.target_types import Target, TargetKind
from backends.twin.fastforward import sample_dataset
from manifests.catalog import default_catalog

SLO = "p99_ttft:2000,p99_tpot:100"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--core", type=int, default=None, help="pin to this core (default: the last one)")
    args = parser.parse_args()
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    target = Target(name="twin", base_url="twin://bench", model="google/gemma-3-27b-it", kind=TargetKind.TWIN)
    sweep = SweepConfig(
        target=target, axis=Axis.REQUEST_RATE, levels=[1.0], num_prompts=1000, output_len=args.output_len
    )
    started, started_cpu = time.perf_counter(), time.process_time()
    requests = sample_dataset(sweep).requests
    sample_wall, sample_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    catalog = default_catalog()
    slo = parse_slo(SLO)
    walls, cpus = [], []
    search = None
    for _ in range(args.repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        search = search_shapes("gemma-3-27b-it", requests, slo=slo, catalog=catalog)
        advice = rank(search, rate=20.0, catalog=catalog)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - started_cpu)
    assert search is not None
    levels = sum(len(s.knee.trials) for s in search.shapes if s.simulated_as is None)
    print(f"core {core}; load average {os.getloadavg()[0]:.1f}")
    print(f"sampling 1000 prompts: {sample_wall:.2f} s wall, {sample_cpu:.2f} s CPU")
    print(
        f"search + rank: {statistics.median(walls):.2f} s wall, {statistics.median(cpus):.2f} s CPU "
        f"(median of {args.repeats}); {len(search.shapes)} shapes fit, {len(search.skipped)} do not, "
        f"{levels} fast-forward levels of 1000 prompts"
    )
    print(f"total CPU (sampling + search): {sample_cpu + statistics.median(cpus):.2f} s")
    for shape in advice.shapes[:3]:
        rate, usd = shape.knee.rate or 0.0, shape.usd_per_million or 0.0
        print(f"  {shape.label}: {rate:.2f} req/s per replica, ${usd:.2f} per 1M tokens at 20 req/s")


if __name__ == "__main__":
    main()
