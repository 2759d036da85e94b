"""Sketch engine speed on this machine: one JSON line per configuration.

- `lite0`: the default preset end to end on a real photo (16 strokes, one seed), with the split of each
  iteration into render, encoder forward and backward, and the process's peak resident memory.
- `rn101`: the default preset with CLIP RN101's architecture. Real weights cannot be downloaded here, and
  random weights cost the same, so a random RN101 is saved to a temporary file and loaded through the real
  loader. It runs `--rn101-iterations` steps and projects the preset's full run from them (random weights
  say nothing about when the loss would settle, so early stopping is not projected).
- `--against CHECKOUT`: the `lite0` configuration with this checkout's package and an earlier one's, in
  alternation, and the ratio of their median times (wall and CPU).
- `paper`: the paper preset's projected time (per-iteration time at its 4 augmentations x 2000 iterations
  x 3 seeds) for each encoder, and its ratio to the default preset.

Each configuration runs in its own process, so that peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: --against runs the same configuration with the package of another checkout (see main).
sys.path.insert(0, os.environ.get("CLIPASSO_SOURCE", str(ROOT)))


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
    t, cpu = time.perf_counter(), time.process_time()
    result = sketch(photo, opts)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    n = result.iterations
    per_it = {k: round(1000 * result.timings[k] / n, 1) for k in ("render", "forward", "backward")}
    per_it["total"] = round(sum(per_it.values()), 1)
    p = PRESETS[preset]
    fixed = result.timings["load"] + result.timings["init"]
    if config != "lite0":
        extra["projected_s"] = round(fixed + per_it["total"] / 1000 * p.iterations * p.seeds, 1)
    return {
        "config": config, "preset": preset, "strokes": 16, "threads": threads, "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2), "loss": round(result.loss, 4),
        "iterations": n, "per_iteration_ms": per_it, "load_s": round(result.timings["load"], 2),
        "init_s": round(result.timings["init"], 2), "peak_rss_mb": round(peak_rss_mb()), **extra,
        "load_average": round(os.getloadavg()[0], 2),
    }


def child(args: list[str], source: str | None = None) -> dict:
    """One configuration in a process of its own, with this checkout's package or the one at `source`."""
    env = dict(os.environ, **({"CLIPASSO_SOURCE": source} if source else {}))
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(threads: str, against: str, rounds: int) -> None:
    """The default lite0 sketch with this checkout and with `against`'s, alternately (the machine's load
    drifts), and the ratios of their median wall and CPU times."""
    runs: dict[str, list[dict]] = {"this": [], "against": []}
    for _ in range(rounds):
        for name, source in (("against", against), ("this", None)):
            row = child(["lite0", threads, "0", "default"], source)
            runs[name].append(row)
            print(json.dumps({"checkout": name, **row}), flush=True)
    med = {name: {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "cpu_s")} for name, rows in runs.items()}
    print(json.dumps({"config": "lite0-vs", "against": against, "rounds": rounds, "median": med,
                      "wall_ratio": round(med["this"]["wall_s"] / med["against"]["wall_s"], 2),
                      "cpu_ratio": round(med["this"]["cpu_s"] / med["against"]["cpu_s"], 2)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rn101-iterations", type=int, default=10)
    ap.add_argument("--paper-iterations", type=int, default=10, help="steps measured for the paper projection")
    ap.add_argument("--only", choices=("lite0", "rn101", "paper"))
    ap.add_argument("--against", metavar="CHECKOUT", help="a checkout of an earlier commit: run the default lite0 "
                    "sketch with its package and this one's alternately, and print the ratio (then nothing else)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations for --against (default 3)")
    ap.add_argument("--child", nargs=4, metavar=("CONFIG", "THREADS", "ITERATIONS", "PRESET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        config, threads, iters, preset = args.child
        print(json.dumps(run_one(config, int(threads), int(iters) or None, preset)))
        return
    t = str(args.threads)
    if args.against:
        compare(t, str(Path(args.against).resolve()), args.rounds)
        return
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
