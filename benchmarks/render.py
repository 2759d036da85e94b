"""Speed of the stroke rasterizer: one JSON line per configuration (median ms over repeated runs).

Strokes have random control points anywhere in the canvas (fixed seed), 3 px wide, as in the diffvg
CPU timings this is compared with (fwd+bwd: 806 ms N=8, 1462 N=16, 2495 N=32, 4786 N=64 at 224 px,
6208 ms N=16 at 448 px).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from clipasso.engine.render import render

CONFIGS = [(8, 224), (16, 224), (32, 224), (64, 224), (16, 448)]
DIFFVG_CPU_MS = {(8, 224): 806, (16, 224): 1462, (32, 224): 2495, (64, 224): 4786, (16, 448): 6208}


def _times_ms(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def bench(strokes: int, size: int, runs: int, warmup: int, device: str) -> dict:
    """Forward and forward+backward medians, and the peak memory of one forward+backward."""
    gen = torch.Generator().manual_seed(strokes * 1000 + size)
    points = (torch.rand(strokes, 4, 2, generator=gen) * size).to(device).requires_grad_()
    weights = torch.rand(size, size, generator=gen).to(device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elif device == "mps":
            torch.mps.synchronize()

    def forward() -> None:
        with torch.no_grad():
            render(points, size, size, 3.0)
        sync()

    def forward_backward() -> None:
        points.grad = None
        (render(points, size, size, 3.0) * weights).mean().backward()
        sync()

    fwd = _times_ms(forward, runs, warmup)
    fwd_bwd = _times_ms(forward_backward, runs, warmup)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        forward_backward()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        # Torch's CPU allocations are not visible to tracemalloc; count the autograd graph's saved
        # tensors instead, which is what grows with the number of strokes.
        peak_mb = _saved_tensor_mb(lambda: (render(points, size, size, 3.0) * weights).mean())
    diffvg = DIFFVG_CPU_MS.get((strokes, size)) if device == "cpu" else None
    return {
        "strokes": strokes,
        "size": size,
        "device": device,
        "threads": torch.get_num_threads(),
        "forward_ms": round(statistics.median(fwd), 2),
        "forward_backward_ms": round(statistics.median(fwd_bwd), 2),
        # The fastest run shows the cost without interference from other jobs on a shared machine.
        "forward_backward_min_ms": round(min(fwd_bwd), 2),
        "saved_for_backward_mb": round(peak_mb, 2),
        "speedup_vs_diffvg_cpu": round(diffvg / statistics.median(fwd_bwd), 1) if diffvg else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _saved_tensor_mb(fn) -> float:
    """Megabytes of tensors autograd keeps for the backward pass of fn()."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for strokes, size in CONFIGS:
        print(json.dumps(bench(strokes, size, args.runs, args.warmup, args.device)), flush=True)


if __name__ == "__main__":
    main()
