"""The twin's predictions for the seed article's runs, as markdown rows for CALIBRATION.md.

    python -m tests.benchmarks.twin_calibration.calibration_table [--levels 1,10,50,100,500] [--cold]

ShareGPT (bundled, tiktoken counts), 1000 prompts, output 256, request-rate axis, seed 0, as the article's
``benchmark_serving.py --request-rate R --num-prompts 1000 --sharegpt-output-len 256``. By default one twin
serves every level in order (a warm server, as the article ran its levels against one deployment);
``--cold`` starts a fresh twin per level. Both KV allocators are shown: the hybrid one the twin uses by
default (vLLM >= 0.10) and full attention for every layer (the article's vLLM 0.8.2).
"""

from __future__ import annotations

import argparse
import time

from backends.bench.models import Axis
from backends.bench.results import SweepConfig
from backends.target_types import Target, TargetKind
from backends.twin.engine import TwinConfig
from backends.twin.fastforward import run_sweep, sample_dataset

# ShareGPT requests stay under 2048 tokens; 8192 lets the full-attention allocator start on every profile
# (the KV cache size does not depend on it).
MAX_MODEL_LEN = 8192

PROFILES = (
    ("l4", 4),
    ("a100-40gb", 2),
    ("a100-40gb", 4),
    ("a100-80gb", 1),
    ("a100-80gb", 2),
    ("h100", 1),
    ("h100", 2),
    ("h100", 4),
    ("cpu-c4", 1),
    ("cpu-c4d", 1),
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,10,50,100,500")
    parser.add_argument("--cold", action="store_true", help="a fresh twin per level")
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--profiles", help="e.g. h100:1,h100:4 (default: the article's)")
    args = parser.parse_args()
    levels = [float(v) for v in args.levels.split(",")]
    profiles: tuple[tuple[str, int], ...] = PROFILES
    if args.profiles:
        profiles = tuple((p.split(":")[0], int(p.split(":")[1])) for p in args.profiles.split(","))
    target = Target(
        name="twin", base_url="twin://calibration", model="google/gemma-3-27b-it", kind=TargetKind.TWIN
    )
    # The article sent the same prompts at every level (vLLM's behaviour); CALIBRATION.md's "warm" rows too.
    sweep = SweepConfig(
        target=target,
        axis=Axis.REQUEST_RATE,
        levels=levels,
        num_prompts=args.num_prompts,
        output_len=256,
        same_prompts=True,
    )
    dataset = sample_dataset(sweep)
    print(
        "| profile | allocator | req/s | total tok/s | output tok/s | p99 TTFT (ms) | mean TPOT (ms) "
        "| max running | preemptions | prefix hit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for gpu, count in profiles:
        for hybrid in (True, False):
            config = TwinConfig.build(
                "gemma-3-27b-it", gpu, count, hybrid_kv_cache=hybrid, max_model_len=MAX_MODEL_LEN
            )
            started = time.perf_counter()
            runs = [sweep.model_copy(update={"levels": [lv]}) for lv in levels] if args.cold else [sweep]
            results = [run_sweep(config, run, dataset=dataset) for run in runs]
            level_results = [lvl for result in results for lvl in result.levels]
            queries = hits = preempted = 0.0
            for level in level_results:
                m = level.metrics
                last = level.server_snapshots[-1]
                q = (last.prefix_cache_queries_total or 0) - queries
                h = (last.prefix_cache_hits_total or 0) - hits
                p = (last.preemptions_total or 0) - preempted
                if not args.cold:
                    queries, hits, preempted = (
                        last.prefix_cache_queries_total or 0,
                        last.prefix_cache_hits_total or 0,
                        last.preemptions_total or 0,
                    )
                running = max(s.running or 0 for s in level.server_snapshots)
                print(
                    f"| {count}x{gpu} | {'hybrid' if hybrid else 'full (0.8.2)'} | {level.level.value:g} "
                    f"| {m.total_token_throughput:,.0f} | {m.output_throughput:,.0f} "
                    f"| {m.ttft.percentiles['99']:,.0f} | {m.tpot.mean:,.1f} | {running:.0f} | {p:.0f} "
                    f"| {h / q if q else 0:.2f} |",
                    flush=True,
                )
            print(
                f"<!-- {count}x{gpu} hybrid={hybrid}: {time.perf_counter() - started:.1f} s -->", flush=True
            )


if __name__ == "__main__":
    main()
