"""Speed of the stroke rasterizers, ours and diffvg side by side: one JSON line per configuration.

Strokes have random control points anywhere in the canvas (fixed seed), 3 px wide. Each renderer draws
the same strokes with the same method (median ms over repeated runs after warm-up); diffvg is measured
when pydiffvg is installed, with fewer runs (it is two orders of magnitude slower on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from clipasso.engine.render import render
from clipasso.options import available_renderers

CONFIGS = [(8, 224), (16, 224), (32, 224), (64, 224), (16, 448)]


def _times_ms(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def bench(strokes: int, size: int, runs: int, warmup: int, device: str, backend: str = "torch") -> dict:
    """Forward and forward+backward medians, and the peak memory of one forward+backward."""
    gen = torch.Generator().manual_seed(strokes * 1000 + size)
    points = (torch.rand(strokes, 4, 2, generator=gen) * size).to(device).requires_grad_()
    weights = torch.rand(size, size, generator=gen).to(device)

    def draw() -> torch.Tensor:
        return render(points, size, size, 3.0, backend=backend)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elif device == "mps":
            torch.mps.synchronize()

    def forward() -> None:
        with torch.no_grad():
            draw()
        sync()

    def forward_backward() -> None:
        points.grad = None
        (draw() * weights).mean().backward()
        sync()

    fwd = _times_ms(forward, runs, warmup)
    fwd_bwd = _times_ms(forward_backward, runs, warmup)
    result = {
        "forward_ms": round(statistics.median(fwd), 2),
        "forward_backward_ms": round(statistics.median(fwd_bwd), 2),
        # The fastest run shows the cost without interference from other jobs on a shared machine.
        "forward_backward_min_ms": round(min(fwd_bwd), 2),
        "runs": runs,
    }
    if backend != "torch":
        return result  # diffvg keeps its buffers in C++, out of the reach of the measure below
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        forward_backward()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        # Torch's CPU allocations are not visible to tracemalloc; count the autograd graph's saved
        # tensors instead, which is what grows with the number of strokes.
        peak_mb = _saved_tensor_mb(lambda: (draw() * weights).mean())
    return {**result, "saved_for_backward_mb": round(peak_mb, 2)}


def side_by_side(strokes: int, size: int, args: argparse.Namespace, with_diffvg: bool) -> dict:
    """Both renderers on the same strokes, and how many times slower diffvg is (forward+backward)."""
    row = {"strokes": strokes, "size": size, "device": args.device, "threads": torch.get_num_threads(),
           "torch": bench(strokes, size, args.runs, args.warmup, args.device)}
    if with_diffvg:
        row["diffvg"] = bench(strokes, size, args.diffvg_runs, 1, args.device, backend="diffvg")
        row["diffvg_over_torch"] = round(row["diffvg"]["forward_backward_ms"] / row["torch"]["forward_backward_ms"], 1)
    row["load_average_1min"] = round(os.getloadavg()[0], 2)
    return row


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
    parser.add_argument("--diffvg-runs", type=int, default=5, help="runs for diffvg (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-diffvg", action="store_true", help="ours only, even where pydiffvg is installed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with_diffvg = "diffvg" in available_renderers() and not args.no_diffvg
    for strokes, size in CONFIGS:
        print(json.dumps(side_by_side(strokes, size, args, with_diffvg)), flush=True)


if __name__ == "__main__":
    main()
