"""The fixed rasterizer on a GPU, against the tiles: one JSON line per check, in well under a minute.

- `parity`: renders and gradients (points, widths) of both, on random strokes and on a sketch's strokes:
  per-pixel max and mean difference, gradient cosine and relative error (on the CPU,
  tests/engine/test_render_fixed.py measures the same);
- `syncs`: whether each one's forward and backward asks the host anything (CUDA's sync debug mode);
- `graph`: the fixed rasterizer's forward and backward captured as a CUDA graph, replayed on other strokes,
  against the same done as it is;
- `speed`: forward+backward ms of each for 32 sketches of 16 strokes, and the fixed one's peak memory;
- `step`: a short lite0 sketch with and without CUDA graphs: its loss and ms per iteration each way, and
  what the engine logged (a fallback from the whole-step graph would show there).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clipasso.engine import graphs, render_batch, sketch  # noqa: E402
from clipasso.options import SketchOptions  # noqa: E402

SIZE = 224
SKETCH = ROOT / "tests" / "data" / "diffvg" / "medium16_224.pt"


def random_strokes(batch: int, strokes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, strokes, 1, 2, generator=g) * SIZE + (torch.rand(batch, strokes, 4, 2, generator=g) - 0.5) * 80


def image_and_grads(points: torch.Tensor, weights: torch.Tensor, backend: str) -> tuple[torch.Tensor, ...]:
    points = points.clone().requires_grad_()
    widths = torch.full(points.shape[:2], 3.0, device=points.device, requires_grad=True)
    image = render_batch(points, SIZE, SIZE, widths, backend=backend, widest=3.0)
    grad_points, grad_widths = torch.autograd.grad((image * weights).sum(), (points, widths))
    return image.detach(), grad_points, grad_widths


def parity(name: str, points: torch.Tensor, device: str) -> dict:
    points = points.to(device)
    weights = torch.rand(points.shape[0], SIZE, SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    tiles, fixed = (image_and_grads(points, weights, backend) for backend in ("tiles", "fixed"))
    diff = (fixed[0] - tiles[0]).abs()
    row = {"check": "parity", "strokes": name, "max": diff.max().item(), "mean": diff.mean().item()}
    for label, a, b in (("points", fixed[1], tiles[1]), ("widths", fixed[2], tiles[2])):
        row[f"{label}_cosine"] = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        row[f"{label}_relative"] = ((a - b).norm() / b.norm()).item()
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}


def syncs(backend: str, device: str) -> dict:
    points = random_strokes(4, 16, 1).to(device)
    weights = torch.ones(4, SIZE, SIZE, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        image_and_grads(points, weights, backend)
        error = None
    except RuntimeError as exc:
        error = str(exc).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return {"check": "syncs", "renderer": backend, "syncs": error is not None, "first": error}


def graph(device: str) -> dict:
    """Capture forward+backward as PyTorch's docs do (warm-up on a side stream), replay on new strokes."""
    weights = torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    static = random_strokes(4, 16, 2).to(device).requires_grad_()

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        image = render_batch(static, SIZE, SIZE, 3.0 * torch.ones(4, 16, device=device), backend="fixed", widest=3.0)
        return image, torch.autograd.grad((image * weights).sum(), static)[0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        image, grad = step()
    fresh = random_strokes(4, 16, 3).to(device)
    with torch.no_grad():
        static.copy_(fresh)
    g.replay()
    torch.cuda.synchronize()
    eager_image, eager_grad = step()
    return {"check": "graph", "image_max_diff": (image - eager_image).abs().max().item(),
            "grad_relative_diff": ((grad - eager_grad).norm() / eager_grad.norm()).item()}


def speed(backend: str, device: str, runs: int = 20) -> dict:
    points = random_strokes(32, 16, 4).to(device)
    weights = torch.rand(32, SIZE, SIZE, device=device)
    times = []
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    for i in range(runs + 3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        image_and_grads(points, weights, backend)
        torch.cuda.synchronize()
        if i >= 3:
            times.append(1000 * (time.perf_counter() - t))
    return {"check": "speed", "renderer": backend, "batch": 32, "strokes": 16,
            "forward_backward_ms": round(statistics.median(times), 2),
            "peak_extra_mb": round((torch.cuda.max_memory_allocated() - base) / 2**20)}


class Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname}: {record.getMessage()}")


def step(device: str) -> list[dict]:
    photo = Image.open(ROOT / "examples" / "chelsea.jpg").convert("RGB")
    options = SketchOptions(strokes=16, iterations=60, encoder="lite0", device=device)
    logged = Logged()
    logging.getLogger("clipasso.engine").addHandler(logged)
    rows = []
    for enabled in (True, False):
        graphs.ENABLED = enabled
        sketch(photo, options)  # loading, capture
        torch.cuda.synchronize()
        t = time.perf_counter()
        result = sketch(photo, options)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        rows.append({"check": "step", "graphs": enabled, "loss": round(result.loss, 5),
                     "iterations": result.iterations, "ms_per_iteration": round(1000 * seconds / result.iterations, 2),
                     "logged": logged.lines[:5]})
        logged.lines.clear()
    graphs.ENABLED = True
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    device = ap.parse_args().device
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA GPU here; this check is for one (--device cpu runs it on the CPU)")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else device
    print(json.dumps({"device": name, "torch": torch.__version__}), flush=True)
    checks = [
        lambda: parity("random", random_strokes(4, 16, 0), device),
        lambda: parity("sketch", torch.load(SKETCH)["points"].float()[None], device),
        lambda: syncs("fixed", device),
        lambda: syncs("tiles", device),
        lambda: graph(device),
        lambda: speed("tiles", device),
        lambda: speed("fixed", device),
        lambda: step(device),
    ]
    for check in checks:
        try:
            rows = check()
        except Exception as exc:  # one failed check must not hide the others
            rows = {"check": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]}
        for row in rows if isinstance(rows, list) else [rows]:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
