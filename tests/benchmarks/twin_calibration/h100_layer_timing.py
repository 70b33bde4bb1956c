"""Time a Gemma-3-27B-shaped decoder layer on a real GPU, to set the twin's roofline constants.

    python3 tests/benchmarks/twin_calibration/h100_layer_timing.py --json OUT.json          # one GPU
    python3 tests/benchmarks/twin_calibration/h100_layer_timing.py --allreduce --json OUT.json  # all GPUs

Random bf16 weights with Gemma 3 27B's shapes (hidden 5376, 32 query / 16 KV heads of 128, gated MLP
21504) split as one tensor-parallel rank of TP 1, 2 or 4 would hold them. As vLLM runs decode, each
decode step is captured in a CUDA graph and replayed; times come from CUDA events over the replays.

Measured (per layer, per TP shard):
- ``linear``: the q/k/v, o, gate/up and down projections plus Gemma's four RMSNorms, at M tokens
  (decode batch sizes and prefill chunk sizes). ``LAYERS_IN_FLIGHT`` distinct layers are chained so the
  weights stream from HBM (one layer is 0.8 GB at TP 1, far above the 50-60 MB L2).
- ``decode_attention``: one token per sequence against a dense KV cache of ``ctx`` tokens (GQA folded
  into the query length, as flash-decoding does), for full-attention (ctx) and sliding (min(ctx, 1024))
  layers.
- ``prefill_attention``: causal attention of a fresh chunk of M tokens.
- ``allreduce`` (``--allreduce``, all visible GPUs): NCCL all-reduce of M x 5376 bf16 values under a CUDA
  graph, at 2 and 4 ranks when there are that many GPUs.

The efficiency the twin uses is measured / datasheet peak of the GPU it ran on (``--peak-bw``,
``--peak-flops``; defaults are the H200's 4.8 TB/s and the Hopper 989 TFLOP/s dense bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

HIDDEN = 5376
HEADS = 32
KV_HEADS = 16
HEAD_DIM = 128
INTERMEDIATE = 21504
WINDOW = 1024
LAYERS_IN_FLIGHT = 4
REPLAYS = 20
WARMUP = 3

DECODE_BATCHES = (1, 8, 32, 64, 128, 256, 512)
DECODE_CONTEXTS = (512, 2048, 8192)
PREFILL_CHUNKS = (256, 512, 1024, 2048, 4096, 8192)
ALLREDUCE_TOKENS = (1, 8, 32, 128, 512, 2048, 8192)
MAX_KV_TOKENS = 256 * 8192  # cap on batch x context for one layer's cache


def _torch() -> Any:
    import torch  # type: ignore[import-not-found]  # only on the GPU machine, not in the project venv

    return torch


class ShardLayer:
    """One TP rank's slice of a Gemma 3 27B decoder layer (random bf16 weights)."""

    def __init__(self, tp: int, device: Any) -> None:
        torch = _torch()
        self.tp = tp
        self.q_heads = HEADS // tp
        self.kv_heads = max(1, KV_HEADS // tp)
        qkv_out = (self.q_heads + 2 * self.kv_heads) * HEAD_DIM
        inter = INTERMEDIATE // tp

        def weight(out_features: int, in_features: int) -> Any:
            return torch.randn(out_features, in_features, device=device, dtype=torch.bfloat16) * 0.02

        self.w_qkv = weight(qkv_out, HIDDEN)
        self.w_o = weight(HIDDEN, self.q_heads * HEAD_DIM)
        self.w_gate_up = weight(2 * inter, HIDDEN)
        self.w_down = weight(HIDDEN, inter)
        self.norms = [torch.ones(HIDDEN, device=device, dtype=torch.bfloat16) for _ in range(4)]
        self.weight_bytes = sum(w.numel() * 2 for w in (self.w_qkv, self.w_o, self.w_gate_up, self.w_down))
        self.linear_flops_per_token = 2 * self.weight_bytes / 2

    @staticmethod
    def rms_norm(x: Any, weight: Any) -> Any:
        torch = _torch()
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + 1e-6)).to(x.dtype) * (1.0 + weight)

    def gemms(self, x: Any) -> Any:
        """The four projections alone (vLLM fuses the norms, residual adds and GeGLU into few kernels)."""
        qkv = x @ self.w_qkv.t()
        o = qkv[:, : self.q_heads * HEAD_DIM] @ self.w_o.t()
        gate_up = o @ self.w_gate_up.t()
        return gate_up[:, : self.w_down.shape[1]] @ self.w_down.t()

    def linear(self, x: Any) -> Any:
        """Everything of the layer but attention itself: projections, norms, residuals, GeGLU."""
        torch = _torch()
        f = torch.nn.functional
        h = self.rms_norm(x, self.norms[0])
        qkv = h @ self.w_qkv.t()
        attn_out = qkv[:, : self.q_heads * HEAD_DIM]
        o = attn_out @ self.w_o.t()
        x = x + self.rms_norm(o, self.norms[1])
        h = self.rms_norm(x, self.norms[2])
        gate, up = (h @ self.w_gate_up.t()).chunk(2, dim=-1)
        down = (f.gelu(gate, approximate="tanh") * up) @ self.w_down.t()
        return x + self.rms_norm(down, self.norms[3])


def time_graph(fn: Any, replays: int | None = None) -> float:
    """Mean seconds of one replay of ``fn`` captured in a CUDA graph."""
    torch = _torch()
    replays = replays or REPLAYS
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(WARMUP):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(WARMUP):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    seconds: float = start.elapsed_time(end) / 1000.0 / replays
    del graph
    return seconds


def time_eager(fn: Any, replays: int = 5) -> float:
    torch = _torch()
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        fn()
    end.record()
    torch.cuda.synchronize()
    seconds: float = start.elapsed_time(end) / 1000.0 / replays
    return seconds


def measure_linear(tp: int, device: Any, rows: list[dict[str, Any]]) -> None:
    torch = _torch()
    layers = [ShardLayer(tp, device) for _ in range(LAYERS_IN_FLIGHT)]
    for m in sorted(set(DECODE_BATCHES + PREFILL_CHUNKS)):
        x = torch.randn(m, HIDDEN, device=device, dtype=torch.bfloat16)

        def run(x: Any = x) -> Any:
            for layer in layers:
                x = layer.linear(x)
            return x

        seconds = (time_graph(run) if m <= 512 else time_eager(run)) / LAYERS_IN_FLIGHT
        layer = layers[0]
        rows.append(
            {
                "kind": "linear",
                "tp": tp,
                "tokens": m,
                "seconds": seconds,
                "weight_bytes": layer.weight_bytes,
                "flops": layer.linear_flops_per_token * m,
            }
        )
        print(f"linear tp={tp} M={m:5d}: {seconds * 1e6:9.1f} us", flush=True)
    layers.clear()
    torch.cuda.empty_cache()


def measure_gemms(tp: int, device: Any, rows: list[dict[str, Any]]) -> None:
    torch = _torch()
    layers = [ShardLayer(tp, device) for _ in range(LAYERS_IN_FLIGHT)]
    for m in sorted(set(DECODE_BATCHES + PREFILL_CHUNKS)):
        x = torch.randn(m, HIDDEN, device=device, dtype=torch.bfloat16)

        def run(x: Any = x) -> Any:
            for layer in layers:
                x = layer.gemms(x)
            return x

        seconds = (time_graph(run) if m <= 512 else time_eager(run)) / LAYERS_IN_FLIGHT
        layer = layers[0]
        rows.append(
            {
                "kind": "gemms",
                "tp": tp,
                "tokens": m,
                "seconds": seconds,
                "weight_bytes": layer.weight_bytes,
                "flops": layer.linear_flops_per_token * m,
            }
        )
        print(f"gemms tp={tp} M={m:5d}: {seconds * 1e6:9.1f} us", flush=True)
    layers.clear()
    vocab = 262_144 // tp
    head = torch.randn(vocab, HIDDEN, device=device, dtype=torch.bfloat16)
    for m in (1, 32, 256, 1024):
        x = torch.randn(m, HIDDEN, device=device, dtype=torch.bfloat16)

        def logits(x: Any = x, head: Any = head) -> Any:
            return x @ head.t()

        seconds = time_graph(logits)
        rows.append(
            {
                "kind": "lm_head",
                "tp": tp,
                "tokens": m,
                "seconds": seconds,
                "weight_bytes": head.numel() * 2,
                "flops": 2 * head.numel() * m,
            }
        )
        print(f"lm_head tp={tp} M={m:5d}: {seconds * 1e6:9.1f} us", flush=True)
    del head
    torch.cuda.empty_cache()


def measure_decode_attention(tp: int, device: Any, rows: list[dict[str, Any]]) -> None:
    torch = _torch()
    f = torch.nn.functional
    kv_heads = max(1, KV_HEADS // tp)
    group = (HEADS // tp) // kv_heads
    for ctx in DECODE_CONTEXTS:
        for batch in DECODE_BATCHES:
            if batch * ctx > MAX_KV_TOKENS:
                continue
            k = torch.randn(batch, kv_heads, ctx, HEAD_DIM, device=device, dtype=torch.bfloat16)
            v = torch.randn_like(k)
            # GQA folded into the query length: the group's query heads attend to one KV head.
            q = torch.randn(batch, kv_heads, group, HEAD_DIM, device=device, dtype=torch.bfloat16)

            def run(q: Any = q, k: Any = k, v: Any = v) -> Any:
                return f.scaled_dot_product_attention(q, k, v)

            seconds = time_graph(run)
            rows.append(
                {
                    "kind": "decode_attention",
                    "tp": tp,
                    "batch": batch,
                    "context": ctx,
                    "seconds": seconds,
                    "kv_bytes": 2 * k.numel() * 2,
                    "flops": 4 * batch * (HEADS // tp) * HEAD_DIM * ctx,
                }
            )
            print(f"decode attn tp={tp} B={batch:4d} ctx={ctx:5d}: {seconds * 1e6:9.1f} us", flush=True)
            del k, v, q
        torch.cuda.empty_cache()


def measure_prefill_attention(tp: int, device: Any, rows: list[dict[str, Any]]) -> None:
    torch = _torch()
    f = torch.nn.functional
    heads = HEADS // tp
    for m in PREFILL_CHUNKS:
        q = torch.randn(1, heads, m, HEAD_DIM, device=device, dtype=torch.bfloat16)
        k = torch.randn_like(q)
        v = torch.randn_like(q)

        def run(q: Any = q, k: Any = k, v: Any = v) -> Any:
            return f.scaled_dot_product_attention(q, k, v, is_causal=True)

        seconds = time_eager(run, replays=10)
        causal_pairs = m * (m + 1) / 2
        rows.append(
            {
                "kind": "prefill_attention",
                "tp": tp,
                "tokens": m,
                "seconds": seconds,
                "flops": 4 * heads * HEAD_DIM * causal_pairs,
            }
        )
        print(f"prefill attn tp={tp} M={m:5d}: {seconds * 1e6:9.1f} us", flush=True)


def measure_copy_bandwidth(device: Any, rows: list[dict[str, Any]]) -> None:
    torch = _torch()
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = time_eager(lambda: dst.copy_(src), replays=10)
    rows.append({"kind": "copy", "bytes_moved": 2 * src.numel(), "seconds": seconds})
    print(f"device copy: {2 * src.numel() / seconds / 1e12:.2f} TB/s (read + write)", flush=True)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    seconds = time_eager(lambda: a @ b, replays=10)
    rows.append({"kind": "gemm_8192", "flops": 2 * 8192**3, "seconds": seconds})
    print(f"8192^3 bf16 GEMM: {2 * 8192**3 / seconds / 1e12:.0f} TFLOP/s", flush=True)


def _allreduce_worker(rank: int, world: int, port: int, queue: Any) -> None:
    torch = _torch()
    import torch.distributed as dist  # type: ignore[import-not-found]

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    results = []
    for m in ALLREDUCE_TOKENS:
        x = torch.randn(m, HIDDEN, device="cuda", dtype=torch.bfloat16)

        def run(x: Any = x) -> None:
            for _ in range(8):
                dist.all_reduce(x)

        try:
            seconds = time_graph(run) / 8
            mode = "graph"
        except RuntimeError:
            seconds = time_eager(run) / 8
            mode = "eager"
        results.append(
            {
                "kind": "allreduce",
                "world": world,
                "tokens": m,
                "bytes": m * HIDDEN * 2,
                "seconds": seconds,
                "mode": mode,
            }
        )
    dist.barrier()
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def measure_allreduce(rows: list[dict[str, Any]]) -> None:
    torch = _torch()
    import torch.multiprocessing as mp  # type: ignore[import-not-found]

    gpus = torch.cuda.device_count()
    for world in (2, 4):
        if world > gpus:
            continue
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_allreduce_worker, args=(rank, world, 29500 + world, queue))
            for rank in range(world)
        ]
        for p in procs:
            p.start()
        results = queue.get(timeout=300)
        for p in procs:
            p.join(timeout=60)
        for row in results:
            print(
                f"allreduce world={world} M={row['tokens']:5d} ({row['bytes'] / 1024:8.1f} KiB): "
                f"{row['seconds'] * 1e6:8.1f} us",
                flush=True,
            )
        rows.extend(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", help="write the measurements here")
    parser.add_argument("--tp", default="1,2,4", help="TP shard shapes to time on this one GPU")
    parser.add_argument("--allreduce", action="store_true", help="time NCCL all-reduce across all GPUs")
    parser.add_argument(
        "--sections", default="copy,linear,gemms,decode,prefill", help="comma list of what to time on one GPU"
    )
    parser.add_argument("--replays", type=int, default=20, help="CUDA graph replays per timing")
    parser.add_argument("--peak-bw", type=float, default=4.8e12, help="datasheet HBM bytes/s of this GPU")
    parser.add_argument("--peak-flops", type=float, default=989e12, help="datasheet dense bf16 FLOP/s")
    args = parser.parse_args(argv)
    global REPLAYS
    REPLAYS = args.replays
    torch = _torch()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    device = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(device)
    info = {
        "device": props.name,
        "sms": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "peak_bw": args.peak_bw,
        "peak_flops": args.peak_flops,
    }
    print(json.dumps(info), flush=True)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    if args.allreduce:
        measure_allreduce(rows)
    else:
        sections = set(args.sections.split(","))
        if "copy" in sections:
            measure_copy_bandwidth(device, rows)
        for tp in (int(t) for t in args.tp.split(",")):
            if "linear" in sections:
                measure_linear(tp, device, rows)
            if "gemms" in sections:
                measure_gemms(tp, device, rows)
            if "decode" in sections:
                measure_decode_attention(tp, device, rows)
            if "prefill" in sections:
                measure_prefill_attention(tp, device, rows)
    info["elapsed_s"] = time.perf_counter() - started
    for row in rows:
        if "weight_bytes" in row:
            row["bandwidth_fraction"] = row["weight_bytes"] / row["seconds"] / args.peak_bw
        if "kv_bytes" in row:
            row["bandwidth_fraction"] = row["kv_bytes"] / row["seconds"] / args.peak_bw
        if "flops" in row:
            row["compute_fraction"] = row["flops"] / row["seconds"] / args.peak_flops
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"info": info, "rows": rows}, handle, indent=1)
    print(f"done in {info['elapsed_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
