"""Sketch engine speed on this machine: one JSON line per configuration.

- `lite0`: the default preset end to end on a real photo (16 strokes, one seed), with the split of each
  iteration into render, encoder forward and backward, and the process's peak resident memory.
- `rn101`: the default preset with CLIP RN101's architecture. Real weights cannot be downloaded here, and
  random weights cost the same, so a random RN101 is saved to a temporary file and loaded through the real
  loader. It runs `--rn101-iterations` steps and projects the preset's full run from them (random weights
  say nothing about when the loss would settle, so early stopping is not projected).
- `paper`: the paper preset's projected time (per-iteration time at its 4 augmentations x 2000 iterations
  x 3 seeds) for each encoder, and its ratio to the default preset.

Each configuration runs in its own process, so that peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def random_rn101(path: Path) -> None:
    """A CLIP RN101 with random weights, saved like a checkpoint (the same shapes as OpenAI's file)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import CLIP

    model = CLIP(512, 224, (3, 4, 23, 3), 64, None, 77, 49408, 512, 8, 12)
    torch.save(model.state_dict(), path)


def run_one(config: str, threads: int, iterations: int | None, preset: str) -> dict:
    import torch
    from PIL import Image

    from clipasso.engine import sketch
    from clipasso.options import PRESETS, SketchOptions

    torch.set_num_threads(threads)
    photo = Image.open(ROOT / "examples" / "chelsea.jpg").convert("RGB")
    extra = {}
    if config == "lite0":
        opts = SketchOptions(strokes=16, encoder="lite0", device="cpu", preset=preset, iterations=iterations,
                             seeds=1)
    else:
        tmp = Path(tempfile.mkdtemp()) / "rn101-random.pt"
        random_rn101(tmp)
        opts = SketchOptions(strokes=16, encoder="clip:RN101", weights=str(tmp), device="cpu", preset=preset,
                             iterations=iterations, seeds=1)
    t = time.perf_counter()
    result = sketch(photo, opts)
    wall = time.perf_counter() - t
    n = result.iterations
    per_it = {k: round(1000 * result.timings[k] / n, 1) for k in ("render", "forward", "backward")}
    per_it["total"] = round(sum(per_it.values()), 1)
    p = PRESETS[preset]
    fixed = result.timings["load"] + result.timings["init"]
    if config != "lite0":
        extra["projected_s"] = round(fixed + per_it["total"] / 1000 * p.iterations * p.seeds, 1)
    return {
        "config": config, "preset": preset, "strokes": 16, "threads": threads, "wall_s": round(wall, 2),
        "iterations": n, "per_iteration_ms": per_it, "load_s": round(result.timings["load"], 2),
        "init_s": round(result.timings["init"], 2), "peak_rss_mb": round(peak_rss_mb()), **extra,
        "load_average": round(os.getloadavg()[0], 2),
    }


def child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rn101-iterations", type=int, default=10)
    ap.add_argument("--paper-iterations", type=int, default=10, help="steps measured for the paper projection")
    ap.add_argument("--only", choices=("lite0", "rn101", "paper"))
    ap.add_argument("--child", nargs=4, metavar=("CONFIG", "THREADS", "ITERATIONS", "PRESET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        config, threads, iters, preset = args.child
        print(json.dumps(run_one(config, int(threads), int(iters) or None, preset)))
        return
    t = str(args.threads)
    results = {}
    if args.only in (None, "lite0"):
        results["lite0"] = child(["lite0", t, "0", "default"])
        print(json.dumps(results["lite0"]), flush=True)
    if args.only in (None, "rn101"):
        results["rn101"] = child(["rn101", t, str(args.rn101_iterations), "default"])
        print(json.dumps(results["rn101"]), flush=True)
    if args.only in (None, "paper"):
        from clipasso.options import PRESETS

        for config in ("lite0", "rn101"):
            paper = child([config, t, str(args.paper_iterations), "paper"])
            p = PRESETS["paper"]
            projected = paper["load_s"] + paper["init_s"] + paper["per_iteration_ms"]["total"] / 1000 * p.iterations * p.seeds
            row = {"config": f"paper-{config}", "per_iteration_ms": paper["per_iteration_ms"],
                   "measured_iterations": paper["iterations"], "projected_s": round(projected, 1)}
            default = results.get(config)
            if default is not None:
                default_s = default.get("projected_s", default["wall_s"])
                row["default_s"] = default_s
                row["ratio"] = round(projected / default_s, 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
