"""The CLIPasso optimisation: one entry point, `sketch()`, for the CLI, the service and the tests."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .losses import SketchLoss

MAX_STROKES = 512
MAX_ITERATIONS = 10_000
CANVAS = 224
#: Stroke width at the 224 px canvas; it scales with the image (3 px at 224 px, as in the paper's SVGs).
CANVAS_STROKE_WIDTH = 3.0


@dataclass(frozen=True)
class Preset:
    iterations: int
    seeds: int
    augmentations: int
    encoder: str  # what "auto" prefers when CLIP weights are at hand
    init: str  # "traced": strokes laid along salient contours; "paper": short random strokes
    stop: str  # "plateau": our early stop; "reference": the reference's (see should_stop_early)


PRESETS: dict[str, Preset] = {
    # The fast recipe: tuned on the built-in encoder for a laptop CPU.
    "default": Preset(iterations=200, seeds=1, augmentations=1, encoder="clip:RN101", init="traced", stop="plateau"),
    # The reference settings, for comparison.
    "paper": Preset(iterations=2000, seeds=3, augmentations=4, encoder="clip:RN101", init="paper", stop="reference"),
}

ProgressCallback = Callable[[int, int, float, np.ndarray], None]
"""on_progress(iteration, total, loss, strokes): iteration counts over all seeds (1..total); strokes
are (N, 4, 2) control points in the input image's pixel coordinates."""


@dataclass(frozen=True)
class SketchOptions:
    """What a caller may ask for. `None` means the preset's value."""

    strokes: int = 16
    iterations: int | None = None
    seed: int = 0
    seeds: int | None = None
    encoder: str = "auto"
    device: str = "auto"
    preset: str = "default"
    weights: str | None = None
    #: Stroke width in the input image's pixels; None scales 3 px at 224 px to the image size.
    stroke_width: float | None = None

    def validated(self) -> "SketchOptions":
        """These options with the preset filled in; raises InputError on a value out of range."""
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        p = PRESETS[self.preset]
        if not isinstance(self.strokes, int) or not 1 <= self.strokes <= MAX_STROKES:
            raise InputError(f"strokes must be between 1 and {MAX_STROKES}, got {self.strokes}")
        iterations = p.iterations if self.iterations is None else self.iterations
        if not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS:
            raise InputError(f"iterations must be between 1 and {MAX_ITERATIONS}, got {iterations}")
        seeds = p.seeds if self.seeds is None else self.seeds
        if not isinstance(seeds, int) or not 1 <= seeds <= 16:
            raise InputError(f"seeds must be between 1 and 16, got {seeds}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise InputError(f"seed must be between 0 and {2**31 - 1}, got {self.seed}")
        if self.stroke_width is not None and not 0 < self.stroke_width <= 1000:
            raise InputError(f"stroke width must be above 0 and at most 1000 px, got {self.stroke_width}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise InputError(f"unknown device {self.device!r}; choose auto, cpu, cuda or mps")
        from .encoders import check_encoder_name

        check_encoder_name(self.encoder)
        return replace(self, iterations=iterations, seeds=seeds)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SketchResult:
    strokes: np.ndarray  # (N, 4, 2) control points in the input image's pixel coordinates
    width: int
    height: int
    stroke_width: float  # in the input image's pixels
    loss: float
    encoder: str  # the encoder that ran, e.g. "lite0" or "clip:RN101"
    encoder_reason: str  # why that encoder (auto's choice, in one line)
    options: SketchOptions
    iterations: int  # iterations run, over all seeds
    best_seed: int
    cancelled: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds

    @property
    def svg(self) -> str:
        from .svg import strokes_to_svg

        return strokes_to_svg(self.strokes, self.width, self.height, self.stroke_width, self.metadata())

    def preview(self, max_side: int = 1024) -> "Image.Image":
        """The strokes drawn on white at the image's size (longest side at most `max_side`)."""
        import torch
        from PIL import Image

        from .render import render

        scale = min(1.0, max_side / max(self.width, self.height))
        w, h = max(1, round(self.width * scale)), max(1, round(self.height * scale))
        with torch.no_grad():
            ink = render(
                torch.tensor(self.strokes * scale, dtype=torch.float32), h, w, stroke_width=self.stroke_width * scale
            )
        return Image.fromarray((ink.clamp(0, 1).numpy() * 255).round().astype(np.uint8), "L")

    def summary(self) -> dict:
        """One-line JSON summary for `clipasso sketch --json` and the benchmarks."""
        return {
            **self.metadata(),
            "width": self.width,
            "height": self.height,
            "stroke_width": round(self.stroke_width, 4),
            "encoder_reason": self.encoder_reason,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def metadata(self) -> dict:
        """Settings and provenance, for the SVG's <metadata> and JSON summaries."""
        return {
            "generator": "clipasso-inkscape",
            "encoder": self.encoder,
            "strokes": int(self.strokes.shape[0]),
            "iterations": self.iterations,
            "best_seed": self.best_seed,
            "loss": round(float(self.loss), 6) if np.isfinite(self.loss) else None,
            "cancelled": self.cancelled,
            "options": self.options.to_dict(),
        }


#: Least weight of the loss anywhere on the photo: the subject map only tilts it.
FOCUS_FLOOR = 0.25
#: Size of the fixed augmentation bank whose photo features are computed once.
AUGMENTATION_BANK = 24
#: Early stop: the plain-view loss must improve by this fraction of itself within PATIENCE iterations.
MIN_IMPROVEMENT = 0.002
PATIENCE = 40
#: Fractions of the iterations at which the least useful strokes are laid again elsewhere.
REPLACE_AT = (0.25, 0.5)
#: Above this many strokes, judging each one's worth costs more than it gains.
MAX_REPLACE_STROKES = 64
#: The reference's stop: evaluate every EVAL_EVERY steps, stop after two changes below REFERENCE_TOLERANCE.
EVAL_EVERY = 10
REFERENCE_TOLERANCE = 1e-5
#: The first iterations always run, whatever the loss does: strokes are still finding their contours.
MIN_ITERATIONS = 60


def replace_weak_strokes(
    points: "torch.Tensor",
    loss_fn: "SketchLoss",
    prob: np.ndarray,
    tangents: np.ndarray,
    width: float,
    generator: "torch.Generator",
) -> int:
    """Move the strokes that matter least to where the sketch misses most of the subject.

    A stroke's worth is how much the plain-view loss rises without it. The weakest quarter (those
    worth less than half the median stroke) are laid again, along contours, where the
    subject-weighted feature error is largest. Returns how many strokes moved.
    """
    import torch

    from .render import render, render_batch
    from .saliency import traced_strokes

    n = points.shape[0]
    if n < 4:
        return 0
    full = render(points, CANVAS, CANVAS, stroke_width=width)
    without = torch.stack([torch.cat([points[:i], points[i + 1 :]]) for i in range(n)])
    drops = loss_fn.stroke_drop_losses(render_batch(without, CANVAS, CANVAS, stroke_width=width))
    base = loss_fn.stroke_drop_losses(full[None])[0]
    worth = (drops - base).cpu()
    threshold = 0.5 * float(worth.median())
    weak = [i for i in worth.argsort()[: n // 4].tolist() if float(worth[i]) < threshold]
    if not weak:
        return 0
    error = loss_fn.error_map(full).cpu().numpy()
    target = prob * error
    target = target / target.sum() if target.sum() > 0 else prob
    fresh = traced_strokes(target, tangents, len(weak), traced_length(n), generator).to(points)
    points[weak] = fresh
    return len(weak)


def reference_converged(evals: list[float]) -> bool:
    """The reference's stop rule: the last two evaluations each changed the loss by under 1e-5."""
    steps = np.abs(np.diff(evals[-3:]))
    return len(steps) == 2 and bool((steps < REFERENCE_TOLERANCE).all())


def image_stroke_width(options: SketchOptions, width: int, height: int) -> float:
    """Stroke width in the image's pixels: the asked one, or 3 px at 224 px scaled to the image."""
    from .images import Letterbox

    if options.stroke_width is not None:
        return float(options.stroke_width)
    return CANVAS_STROKE_WIDTH / min(Letterbox(width, height, CANVAS).scale)


def traced_length(strokes: int) -> float:
    """Initial stroke length in canvas pixels: fewer strokes must each cover more of the contours."""
    return float(np.clip(108.0 / np.sqrt(strokes), 10.0, 60.0))


def sketch(
    image: "Image.Image",
    options: SketchOptions = SketchOptions(),
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SketchResult:
    """Optimise `options.strokes` Bezier strokes so the encoder sees the photo in them.

    `image` is an RGB PIL image (see images.load_image). Runs `seeds` independent optimisations and
    keeps the one with the lowest loss on the plain (un-augmented) view. Cancelling through
    `should_stop` returns the best strokes so far with `cancelled=True`.
    """
    import torch

    from .encoders import load_encoder
    from .images import Letterbox
    from .losses import SketchLoss, augmentation_bank
    from .render import render
    from .saliency import (
        THIN_EDGE_K,
        edge_tangents,
        init_distribution,
        initial_strokes,
        traced_strokes,
        xdog_edges,
    )

    opts = options.validated()
    preset = PRESETS[opts.preset]
    timings = {"init": 0.0, "render": 0.0, "forward": 0.0, "backward": 0.0}
    t_start = time.perf_counter()

    encoder, reason = load_encoder(opts.encoder, opts.device, opts.weights, preferred=preset.encoder)
    device = next(encoder.parameters()).device
    timings["load"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    box = Letterbox(image.width, image.height, CANVAS)
    placed = box.place(image)
    photo = torch.from_numpy(placed).permute(2, 0, 1)[None].to(device)
    mask = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    (ox, oy), (pw, ph) = box.offset, box.placed
    mask[oy : oy + ph, ox : ox + pw] = 1.0
    width_canvas = image_stroke_width(opts, image.width, image.height) * min(box.scale)
    with torch.no_grad():
        saliency = encoder.saliency(photo).cpu().numpy()
    traced = preset.init == "traced"
    edges = xdog_edges(placed, (ox, oy, pw, ph), **({"k": THIN_EDGE_K} if traced else {}))
    prob = init_distribution(saliency, edges, mask)
    tangents = edge_tangents(placed) if traced else None
    bank_gen = torch.Generator().manual_seed(opts.seed)
    grids = augmentation_bank(AUGMENTATION_BANK, bank_gen, CANVAS).to(device)
    focus = torch.from_numpy(FOCUS_FLOOR + (1 - FOCUS_FLOOR) * saliency).to(device) * torch.from_numpy(mask).to(device)
    loss_fn = SketchLoss(encoder, photo, grids, focus)
    low = torch.tensor([ox, oy], dtype=torch.float32, device=device)
    high = torch.tensor([ox + pw, oy + ph], dtype=torch.float32, device=device)
    timings["init"] = time.perf_counter() - t0

    total = opts.iterations * opts.seeds
    done = 0
    best_loss, best_points, best_seed = float("inf"), None, opts.seed
    cancelled = False
    for k in range(opts.seeds):
        seed = opts.seed + 1000 * k
        gen = torch.Generator().manual_seed(seed)
        if tangents is not None:
            start = traced_strokes(prob, tangents, opts.strokes, traced_length(opts.strokes), gen)
        else:
            start = initial_strokes(prob, opts.strokes, gen)
        points = torch.maximum(torch.minimum(start.to(device), high), low).requires_grad_(True)
        optimiser = torch.optim.Adam([points], lr=1.0)
        replace_at = {int(opts.iterations * f) for f in REPLACE_AT} if tangents is not None else set()
        seed_best, seed_points, last_gain_at = float("inf"), points.detach().clone(), 0
        evals: list[float] = []
        for it in range(opts.iterations):
            if should_stop is not None and should_stop():
                cancelled = True
                break
            t = time.perf_counter()
            ink = render(points, CANVAS, CANVAS, stroke_width=width_canvas)
            sketch_img = ink[None, None].expand(1, 3, CANVAS, CANVAS)
            views = torch.cat(
                [torch.tensor([-1]), torch.randint(0, AUGMENTATION_BANK, (preset.augmentations,), generator=gen)]
            ).to(device)
            t1 = time.perf_counter()
            loss, plain = loss_fn(sketch_img, views)
            t2 = time.perf_counter()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            timings["render"] += t1 - t
            timings["forward"] += t2 - t1
            timings["backward"] += t3 - t2
            # The plain view's loss belongs to the points before this step: keep them if they are best.
            plain_value = float(plain.detach())
            if plain_value < seed_best * (1 - MIN_IMPROVEMENT):
                last_gain_at = it
            if plain_value < seed_best:
                seed_best, seed_points = plain_value, points.detach().clone()
            optimiser.step()
            if it in replace_at and opts.strokes <= MAX_REPLACE_STROKES:
                with torch.no_grad():
                    moved = replace_weak_strokes(points, loss_fn, prob, tangents, width_canvas, gen)
                if moved:
                    optimiser = torch.optim.Adam([points], lr=1.0)
                    last_gain_at = it  # give the moved strokes time to settle before stopping
            with torch.no_grad():  # strokes stay on the photo, not on the letterbox's paper
                points.copy_(torch.maximum(torch.minimum(points, high), low))
            done += 1
            if on_progress is not None:
                on_progress(done, total, plain_value, box.to_image(points.detach().cpu().numpy()))
            if preset.stop == "reference":
                if it % EVAL_EVERY == 0:
                    evals.append(plain_value)
                if reference_converged(evals):
                    break
            elif it >= MIN_ITERATIONS and it - last_gain_at >= PATIENCE:
                break
        if best_points is None or seed_best < best_loss:
            best_loss, best_points, best_seed = seed_best, seed_points, seed
        if cancelled:
            break

    strokes = box.to_image(best_points.cpu().numpy().astype(np.float64))
    timings["total"] = time.perf_counter() - t_start
    return SketchResult(
        strokes=strokes,
        width=image.width,
        height=image.height,
        stroke_width=image_stroke_width(opts, image.width, image.height),
        loss=best_loss,
        encoder=encoder.name,
        encoder_reason=reason,
        options=opts,
        iterations=done,
        best_seed=best_seed,
        cancelled=cancelled,
        timings=timings,
    )
