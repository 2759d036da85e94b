"""The engine on a GPU: one JSON line per measurement, in under 3 minutes on an H100.

- `single`: one 16-stroke sketch of the example photo with the default preset, for lite0 and for CLIP
  RN101's architecture with random weights (real weights cannot be had here, and random ones cost the same;
  their sketch means nothing and is not kept);
- `seeds`: `--seeds 8` against one seed (the seeds run together), and the same seeds one after another;
- `service`: the service's job store and worker (no HTTP) finishing 32 queued 16-stroke lite0 jobs in
  batches of `--batch`, preparing the next batch while one steps (and, for comparison, a few jobs one at a
  time); `--prefetch off` prepares each batch only when it is taken (`auto`, the service's default: on off
  the CPU). Each job's photo is the example cut one pixel apart from the others' (`--photos distinct`), so
  that each pays for its own photo side, as different photos do; `--photos same` sends one photo, whose
  photo side the engine computes once and keeps;
- `breakdown`: what a batch of 16 and of 32 such sketches spends preparing (`prepare()`) and stepping;
- `precision` (where the encoders compute in a lower dtype, `--autocast`): benchmarks/photos.py's twelve
  photos, three seeds each, sketched in one batch in float32 and in that dtype, each sketch's loss then
  computed in float32: the mean paired difference (lower dtype less float32) and its standard error;
- each line has the peak GPU memory of its measurement (`peak_gpu_mb`), and on a GPU how many whole-step
  CUDA graphs it captured and how many of those captures failed (`captures`, warm-ups included).

`--no-graphs` runs without CUDA graphs (to measure what they gain), `--channels-last` runs the encoder's
convolutions channels-last (which the CPU does; to measure it on a GPU), `--autocast bf16|fp16|off` sets the dtype the encoders compute in (the engine's default for the
device where not given), `--cudnn-benchmark` lets cuDNN
time its algorithms for each new shape (`torch.backends.cudnn.benchmark`), `--prepare-threads N` and
`--switch-interval S` set the threads that prepare photos and Python's thread switch interval (how long
the stepping thread may wait for the interpreter while others prepare), `--renderer tiles` with the tiled
rasterizer off the CPU instead of the fixed one (whose steps are captured whole), `--only` some kinds of
measurement (comma-separated), `--only profile` where a step's time goes (torch.profiler over a short sketch: the operations that take the most
host time, and how often the host waited for the device).
`--device cpu --small` runs the same code with small sizes (a tiny random CLIP in place of RN101 and of
lite0 where many sketches are made, few iterations and jobs), so that the test suite smoke-tests it.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import statistics
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clipasso.encoders import base as encoder_base  # noqa: E402
from clipasso.encoders import registry  # noqa: E402
from clipasso.encoders.clip import ClipEncoder  # noqa: E402
from clipasso.engine import SketchRequest, graphs, prepare, sketch, sketch_batch  # noqa: E402
from clipasso.engine import optimise  # noqa: E402
from clipasso.engine import target as engine_target  # noqa: E402
from clipasso.options import SketchOptions  # noqa: E402
from clipasso.server.jobs import JobStore  # noqa: E402
from clipasso.server.schemas import FINAL_STATES  # noqa: E402
from clipasso.server.worker import Worker  # noqa: E402

#: The rasterizer module (the package exports a function of the same name).
raster = importlib.import_module("clipasso.engine.render")

PHOTO = ROOT / "examples" / "chelsea.jpg"
#: A ResNet CLIP as (blocks per stage, width): RN101's own, and a tiny one for --small.
RN101 = ((3, 4, 23, 3), 64)
TINY = ((1, 1, 1, 1), 8)
TINY_LABEL = "tiny CLIP ResNet (random weights)"
#: The weights key under which the random model is registered as if loaded (no file is written).
RANDOM = "random-weights"


def register_random_clip(device: str, layers: tuple[int, ...], width: int) -> None:
    """Put a random-weight CLIP ResNet where load_encoder keeps loaded encoders, as clip:RN101 with weights
    RANDOM: sketches then run the real CLIP code path on it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import ModifiedResNet
    visual = ModifiedResNet(layers, output_dim=512, heads=width * 32 // 64, input_resolution=224, width=width)
    registry._LOADED[("clip:RN101", device, RANDOM)] = ClipEncoder(visual, "RN101").to(device).freeze()


#: Whole-step captures (torch.cuda.graph) made and failed in this process: each costs a few steps' time.
CAPTURES = {"tried": 0, "failed": 0}


class CountedCapture(torch.cuda.graph):
    """torch.cuda.graph, counted in CAPTURES."""

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        except Exception:
            CAPTURES["failed"] += 1
            raise
        finally:
            CAPTURES["tried"] += 1


def captures_since(before: dict) -> dict:
    return {k: CAPTURES[k] - before[k] for k in CAPTURES}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else None


def timed(photo: Image.Image, options: SketchOptions, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` sketches (after the caller's warm-up), and the last result."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = sketch(photo, options)
        sync(options.device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def bench_single(photo: Image.Image, device: str, encoder: str, weights: str | None, label: str,
                 strokes: int, iterations: int | None, repeats: int, warm_up: bool) -> dict:
    options = SketchOptions(strokes=strokes, encoder=encoder, weights=weights, device=device, iterations=iterations)
    first = None
    if warm_up:
        t = time.perf_counter()
        sketch(photo, options)  # loading, first kernels, the CUDA graph's capture
        sync(device)
        first = round(time.perf_counter() - t, 3)
    peak_reset(device)
    seconds, result = timed(photo, options, repeats)
    return {"bench": "single", "encoder": label, "strokes": strokes, "graphs": graphs.available(torch.device(device)),
            "first_s": first, "seconds": round(seconds, 3), "iterations": result.iterations,
            "ms_per_iteration": round(1000 * seconds / result.iterations, 2), "loss": round(result.loss, 5),
            "peak_gpu_mb": peak_mb(device)}


def bench_seeds(photo: Image.Image, device: str, encoder: tuple[str, str | None, str], strokes: int,
                iterations: int | None, seeds: int, repeats: int, warm_up: bool) -> dict:
    name, weights, label = encoder  # label: what the line says it is (the CPU smoke test's tiny CLIP)
    one = SketchOptions(strokes=strokes, encoder=name, weights=weights, device=device, iterations=iterations, seeds=1)
    many = replace(one, seeds=seeds)
    if warm_up:
        sketch(photo, many)  # at the batch's size
    t1, _ = timed(photo, one, repeats)
    peak_reset(device)
    tk, result = timed(photo, many, repeats)
    peak = peak_mb(device)
    t = time.perf_counter()
    alone = sketch(photo, many, batch=1)  # the same seeds one after another: the same sketch, slower
    sequential = time.perf_counter() - t
    return {"bench": "seeds", "encoder": label, "seeds": seeds, "one_seed_s": round(t1, 3), "seeds_s": round(tk, 3),
            "ratio": round(tk / t1, 2), "one_after_another_s": round(sequential, 3),
            "iterations": result.iterations, "loss": round(result.loss, 5), "best_seed": result.best_seed,
            "one_after_another_loss": round(alone.loss, 5), "one_after_another_best_seed": alone.best_seed,
            "peak_gpu_mb": peak}


def photos_apart(photo: Image.Image, count: int) -> list[Image.Image]:
    """`count` photos that differ in every pixel's place: the photo cut one pixel further in each time."""
    return [photo.crop((k % 8, k // 8, photo.width - 8 + k % 8, photo.height - 8 + k // 8)) for k in range(count)]


def png_bytes(photo: Image.Image) -> bytes:
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    return buf.getvalue()


def bench_breakdown(photos: list[Image.Image], device: str, strokes: int, iterations: int | None) -> dict:
    """One batch of len(photos) single-seed sketches, as the service runs it: preparing, then stepping."""
    options = SketchOptions(strokes=strokes, encoder="lite0", device=device, iterations=iterations)
    engine_target._losses.clear()
    peak_reset(device)
    t = time.perf_counter()
    ready = prepare([SketchRequest(p, options) for p in photos])
    sync(device)
    prepared = time.perf_counter() - t
    t = time.perf_counter()
    results = sketch_batch(ready, len(photos))
    sync(device)
    stepped = time.perf_counter() - t
    return {"bench": "breakdown", "jobs": len(photos), "prepare_s": round(prepared, 3), "step_s": round(stepped, 3),
            "steps": max(r.iterations for r in results), "peak_gpu_mb": peak_mb(device)}


def bench_service(pngs: list[bytes], device: str, encoder: tuple[str, str | None, str], strokes: int, iterations: int | None,
                  jobs: int, batch: int, prefetch: bool | None) -> dict:
    """Queue `jobs` jobs (photo k % len(pngs) each), then time the worker from its start until every job has
    finished. Two sketches first, untimed: the first kernels and allocations are not the service's pace."""
    name, weights, label = encoder  # label: what the line says it is (the CPU smoke test's tiny CLIP)
    options = SketchOptions(strokes=strokes, encoder=name, iterations=iterations)
    sketch_batch([SketchRequest(Image.open(io.BytesIO(png)), replace(options, device=device)) for png in pngs[:2]])
    engine_target._losses.clear()
    with tempfile.TemporaryDirectory() as data:
        store = JobStore(data, device=device, weights=weights, max_queued=jobs)
        store.load()
        ids = [store.submit(pngs[k % len(pngs)], options)["id"] for k in range(jobs)]
        done = threading.Event()
        finish = store.finish

        def finish_and_count(*args, **kwargs) -> None:
            finish(*args, **kwargs)
            if all(store.snapshot(i)[1]["state"] in FINAL_STATES for i in ids):
                done.set()

        store.finish = finish_and_count
        worker = Worker(store, batch=batch, prefetch=prefetch)
        prefetch = worker.prefetch
        peak_reset(device)
        t = time.perf_counter()
        worker.start()
        done.wait()
        seconds = time.perf_counter() - t
        store.close()
        worker.join(30)
        states = [store.snapshot(i)[1]["state"] for i in ids]
    return {"bench": "service", "encoder": label, "jobs": jobs, "photos": min(jobs, len(pngs)), "batch": batch,
            "prefetch": prefetch,
            "strokes": strokes, "seconds": round(seconds, 2),
            "sketches_per_second": round(jobs / seconds, 2), "succeeded": states.count("succeeded"),
            "peak_gpu_mb": peak_mb(device)}


def float32_loss(photo: Image.Image, options: SketchOptions, strokes) -> float:
    """The plain-view loss of `strokes` (photo pixels) computed in float32, whatever the encoders' dtype."""
    dtype = encoder_base.AUTOCAST.pop(torch.device(options.device).type, None)
    try:
        target = prepare([SketchRequest(photo, options)])[0].target
        points = torch.tensor(target.box.to_canvas(strokes), dtype=torch.float32, device=target.device)
        view = torch.zeros(1, dtype=torch.long, device=target.device)
        return float(target.loss.stroke_drop_losses(target.render_batch(points[None]), view)[0])
    finally:
        if dtype is not None:
            encoder_base.AUTOCAST[torch.device(options.device).type] = dtype


def bench_precision(device: str, strokes: int, iterations: int | None, photos: int, seeds: int) -> dict:
    """The first `photos` of benchmarks/photos.py's, `seeds` seeds each, sketched in one batch in float32 and in the
    encoders' AUTOCAST dtype; each sketch's loss computed in float32: the mean paired difference."""
    from photos import PHOTOS, sample_photo  # benchmarks/photos.py, beside this file

    kind = torch.device(device).type
    dtype = encoder_base.AUTOCAST.get(kind)
    options = SketchOptions(strokes=strokes, encoder="lite0", device=device, iterations=iterations)
    jobs = [(sample_photo(name).convert("RGB"), replace(options, seed=s)) for name in PHOTOS[:photos] for s in range(seeds)]
    losses, seconds = {}, {}
    for label, setting in (("float32", None), (str(dtype), dtype)):
        encoder_base.AUTOCAST.pop(kind, None)
        if setting is not None:
            encoder_base.AUTOCAST[kind] = setting
        t = time.perf_counter()
        results = sketch_batch([SketchRequest(p, o) for p, o in jobs])
        sync(device)
        seconds[label] = round(time.perf_counter() - t, 2)
        losses[label] = [float32_loss(p, o, r.strokes) for (p, o), r in zip(jobs, results)]
    diffs = [b - a for a, b in zip(*losses.values())]
    spread = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return {"bench": "precision", "autocast": str(dtype), "sketches": len(jobs), "seconds": seconds,
            "float32_loss_mean": {k: round(statistics.mean(v), 4) for k, v in losses.items()},
            "paired_difference": round(statistics.mean(diffs), 4),
            "standard_error": None if spread is None else round(spread, 4)}


def profile(photo: Image.Image, device: str, strokes: int) -> list[dict]:
    """The operations that cost the most host time over a 40-iteration sketch, and the waits for the device."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    options = SketchOptions(strokes=strokes, encoder="lite0", device=device, iterations=40)
    sketch(photo, options)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    t = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        result = sketch(photo, options)
        sync(device)
    wall = time.perf_counter() - t
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{"bench": "profile", "iterations": result.iterations, "profiled_wall_s": round(wall, 3),
             "events": sum(e.count for e in events)}]
    for e in events[:15]:
        rows.append({"bench": "profile", "op": e.key, "count": e.count,
                     "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2)})
    waits = [e for e in events if "Synchronize" in e.key or "Memcpy" in e.key]
    rows += [{"bench": "profile", "wait": e.key, "count": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2)}
             for e in waits]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="small sizes, for a smoke test on a CPU")
    ap.add_argument("--batch", default="16", help="jobs per batch in the service measurement (several: 16,32)")
    ap.add_argument("--no-graphs", action="store_true", help="run without CUDA graphs")
    ap.add_argument("--jobs", type=int, help="jobs the service measurement queues (default 32; a quarter of them "
                                             "one at a time)")
    ap.add_argument("--photos", choices=("distinct", "same"), default="distinct",
                    help="the service's jobs: each its own photo, or all the same one")
    ap.add_argument("--channels-last", action="store_true", help="the encoders' convolutions channels-last")
    ap.add_argument("--autocast", choices=tuple(encoder_base.AUTOCAST_DTYPES),
                    help="the dtype the encoders compute in on the device (default: the engine's)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN times its algorithms for each shape")
    ap.add_argument("--prepare-threads", type=int, help="threads that prepare photos off the CPU")
    ap.add_argument("--switch-interval", type=float, help="Python's thread switch interval, seconds")
    ap.add_argument("--shrink-share", type=float,
                    help="off the CPU, a batch's ended runs leave once at most this share of them still run "
                         f"(default {optimise.SHRINK_SHARE}; each new batch shape is a new CUDA graph)")
    ap.add_argument("--prefetch", choices=("auto", "on", "off"), default="auto",
                    help="whether the service prepares the next batch while one steps (auto: off the CPU)")
    ap.add_argument("--renderer", choices=("fixed", "tiles"), default="fixed",
                    help="the rasterizer off the CPU (the CPU always draws with the tiles)")
    ap.add_argument("--only", help="some of single, seeds, service, breakdown, precision, profile (comma-separated)")
    args = ap.parse_args()
    only = None if args.only is None else set(args.only.split(","))
    if only is not None and not only <= {"single", "seeds", "service", "breakdown", "profile", "precision"}:
        ap.error(f"--only takes single, seeds, service, breakdown, precision or profile, got {args.only}")
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA GPU here; --device cpu --small runs the smoke test on the CPU")
    graphs.ENABLED = not args.no_graphs
    if device.startswith("cuda"):
        torch.cuda.graph = CountedCapture
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.autocast:
        encoder_base.set_autocast(torch.device(device).type, args.autocast)
    if args.prepare_threads:
        optimise.PREPARE_THREADS = args.prepare_threads
    if args.shrink_share is not None:
        optimise.SHRINK_SHARE = args.shrink_share
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    raster.ACCELERATOR_RASTER = args.renderer
    if args.small:
        strokes, iterations, repeats, seeds, jobs, clip = 4, 2, 1, 2, 2, TINY
    else:
        strokes, iterations, repeats, seeds, jobs, clip = 16, None, 3, 8, args.jobs or 32, RN101
    photo = Image.open(PHOTO).convert("RGB")
    apart = photos_apart(photo, jobs)
    pngs = [png_bytes(p) for p in apart] if args.photos == "distinct" else [png_bytes(photo)]
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__, "small": args.small,
                      "renderer": raster.raster_for("torch", torch.device(device)),
                      "cudnn_benchmark": args.cudnn_benchmark,
                      "autocast": str(encoder_base.AUTOCAST.get(torch.device(device).type, "off")), "prepare_threads": optimise.PREPARE_THREADS,
                      "shrink_share": optimise.SHRINK_SHARE,
                      "switch_interval": sys.getswitchinterval()}), flush=True)
    register_random_clip(device, *clip)
    if args.channels_last:
        registry.load_encoder("lite0", device)
        for enc in registry._LOADED.values():
            enc.memory_format = torch.channels_last
            enc.to(memory_format=torch.channels_last)
    warm = not args.small
    # The measurements of many sketches: lite0, or on a CPU smoke test the tiny CLIP (its photo side is cheap).
    many = ("clip:RN101", RANDOM, TINY_LABEL) if args.small else ("lite0", None, "lite0")
    rows = [
        ("single", lambda: bench_single(photo, device, "lite0", None, "lite0", strokes, iterations, repeats, warm)),
        ("single", lambda: bench_single(
            photo, device, "clip:RN101", RANDOM,
            TINY_LABEL if args.small else "clip:RN101 (random weights)",
            strokes, iterations, repeats, warm)),
        ("seeds", lambda: bench_seeds(photo, device, many, strokes, iterations, seeds, repeats, warm)),
    ]
    prefetch = {"auto": None, "on": True, "off": False}[args.prefetch]
    rows += [("service", lambda b=int(b): bench_service(pngs, device, many, strokes, iterations, jobs, b, prefetch))
             for b in args.batch.split(",")]
    rows.append(("service", lambda: bench_service(pngs, device, many, strokes, iterations, max(2, jobs // 4), 1,
                                                  prefetch)))
    rows += [("breakdown", lambda n=n: bench_breakdown(apart[:n], device, strokes, iterations))
             for n in ((2,) if args.small else (16, 32))]
    if encoder_base.AUTOCAST.get(torch.device(device).type) is not None:
        rows.append(("precision", lambda: bench_precision(device, strokes, iterations,
                                                                        *((2, 1) if args.small else (12, 3)))))
    for kind, row in rows:
        if only is None or kind in only:
            before = dict(CAPTURES)
            line = row()
            if device.startswith("cuda"):
                line["captures"] = captures_since(before)  # warm-ups included
            print(json.dumps(line), flush=True)
    if only is not None and "profile" in only:
        for line in profile(photo, device, strokes):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
