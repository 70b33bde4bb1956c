"""Power draw of one GPU under decode- and prefill-shaped matmuls, for the twin's DCGM power model.

Run on a machine with a CUDA GPU and PyTorch (not in CI)::

    python3 scripts/gpu_power.py --out power.json

nvidia-smi logs ``power.draw,utilization.gpu,memory.used,clocks.sm,temperature.gpu`` every 100 ms
beside the run; each line is stamped on arrival, so phases are matched to readings by time. Each phase
runs one shape for ``--phase-s`` seconds: a stack of Llama-3.1-8B-sized layer weights (q/k/v/o, gate/up,
down: 4096 x 6144, 4096 x 4096, 4096 x 28672, 14336 x 4096 bf16, 32 layers' worth, far past L2) times
an activation of M rows. M = 1..256 is a decode step's batch (weight-streaming, bandwidth-bound);
M = 2048..8192 a prefill chunk (compute-bound). The JSON gives, per phase, the mean of the readings in
its steady part (the first second dropped), the achieved TFLOP/s and HBM GB/s (weights + activations
read and written), and the fraction of peak each is of (989 TFLOP/s dense bf16, 3.35 TB/s: H100 SXM
datasheet).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from typing import Any

import torch  # type: ignore[import-not-found]

PEAK_FLOPS = 989e12
PEAK_BYTES_S = 3.35e12
LAYERS = 32
SHAPES = ((4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096))  # (in, out): qkv, o, gate_up, down
QUERY = "power.draw,utilization.gpu,memory.used,clocks.sm,temperature.gpu"


class SmiLog:
    def __init__(self) -> None:
        self.rows: list[tuple[float, list[float]]] = []
        self.proc = subprocess.Popen(
            ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                values = [float(v) for v in line.strip().split(",")]
            except ValueError:
                continue
            self.rows.append((time.time(), values))

    def window(self, start: float, end: float) -> list[list[float]]:
        return [v for t, v in self.rows if start <= t <= end]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


def run_phase(weights: list[torch.Tensor], m: int, seconds: float) -> dict[str, float]:
    acts = {k: torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for k in {w.shape[0] for w in weights}}
    flops_per_pass = sum(2.0 * m * w.shape[0] * w.shape[1] for w in weights)
    bytes_per_pass = sum(2.0 * (w.numel() + m * w.shape[0] + m * w.shape[1]) for w in weights)
    torch.cuda.synchronize()
    passes = 0
    start = time.time()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    while time.time() - start < seconds:
        for w in weights:
            torch.matmul(acts[w.shape[0]], w)
        passes += 1
        if passes % 4 == 0:
            torch.cuda.synchronize()  # keep the queue short so the phase ends on time
    end.record()
    torch.cuda.synchronize()
    gpu_s = begin.elapsed_time(end) / 1000.0
    return {
        "m": m,
        "start": start,
        "end": time.time(),
        "passes": passes,
        "tflops": flops_per_pass * passes / gpu_s / 1e12,
        "gb_s": bytes_per_pass * passes / gpu_s / 1e9,
        "tensor_frac": flops_per_pass * passes / gpu_s / PEAK_FLOPS,
        "dram_frac": bytes_per_pass * passes / gpu_s / PEAK_BYTES_S,
    }


def summarise(log: SmiLog, phase: dict[str, Any]) -> dict[str, Any]:
    rows = log.window(phase["start"] + 1.0, phase["end"])
    out = dict(phase)
    out["readings"] = len(rows)
    if rows:
        for i, name in enumerate(("power_w", "util_pct", "mem_mib", "sm_mhz", "temp_c")):
            out[name] = statistics.fmean(r[i] for r in rows)
        out["power_w_max"] = max(r[0] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="power.json")
    parser.add_argument("--phase-s", type=float, default=6.0)
    parser.add_argument("--log", default=None, help="also write the raw nvidia-smi readings (CSV)")
    args = parser.parse_args()
    log = SmiLog()
    time.sleep(1.0)
    torch.manual_seed(0)
    weights = [
        torch.randn(k, n, device="cuda", dtype=torch.bfloat16) / 64 for _ in range(LAYERS) for k, n in SHAPES
    ]
    torch.cuda.synchronize()
    # Warm-up: clocks and the cuBLAS heuristics settle before the first measured phase.
    run_phase(weights, 4096, 2.0)
    time.sleep(4.0)
    idle_start = time.time()
    time.sleep(args.phase_s)
    phases: list[dict[str, Any]] = [
        {"m": 0, "start": idle_start, "end": time.time(), "tflops": 0.0, "gb_s": 0.0, "tensor_frac": 0.0,
         "dram_frac": 0.0, "passes": 0}
    ]  # fmt: skip
    for m in (1, 16, 64, 256, 1024, 2048, 8192):
        phases.append(run_phase(weights, m, args.phase_s))
        time.sleep(1.5)  # let power fall back a little so phases do not smear into each other
    idle2 = time.time()
    time.sleep(args.phase_s)
    phases.append({**phases[0], "start": idle2, "end": time.time(), "label": "idle after load"})
    log.stop()
    result = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "weights_gib": sum(w.numel() * 2 for w in weights) / 2**30,
        "phases": [summarise(log, p) for p in phases],
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if args.log:
        with open(args.log, "w") as f:
            f.write("unix_time," + QUERY + "\n")
            for t, values in log.rows:
                f.write(f"{t:.3f}," + ",".join(str(v) for v in values) + "\n")
    for p in result["phases"]:
        print(
            f"M={p['m']:>5}  {p.get('power_w', float('nan')):6.1f} W (max {p.get('power_w_max', 0):5.1f})"
            f"  util {p.get('util_pct', float('nan')):5.1f}%  {p['tflops']:6.1f} TFLOP/s"
            f"  {p['gb_s']:7.1f} GB/s  tensor {p['tensor_frac']:.2f} dram {p['dram_frac']:.2f}"
            f"  sm {p.get('sm_mhz', 0):.0f} MHz  {p.get('temp_c', 0):.0f} C  n={p['readings']}"
        )


if __name__ == "__main__":
    main()
