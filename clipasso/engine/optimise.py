"""`sketch()`: the CLIPasso optimisation, the one entry point for the CLI, the service, tests and benchmarks.

The method in a screenful: prepare the photo's side once (`prepare_target`), then for each seed start
strokes on salient contours and move their control points with Adam until the encoder sees the photo in
them, keeping the best strokes by the plain-view loss; the best seed is the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..encoders import load_encoder, resolve_device
from ..images import Letterbox, Photo
from ..options import CANVAS, ProgressCallback, Renderer, SketchOptions, SketchResult, image_stroke_width
from .init import STARTS
from .ladder import build_ladder
from .relay import relay_for
from .render import check_backend
from .stopping import STOP_RULES
from .target import AUGMENTATION_BANK, Target, prepare_target

#: Adam's step on control points in canvas pixels (the reference's): about a pixel per step at first.
LEARNING_RATE = 1.0
#: Seed k of a run is seed + k * SEED_STRIDE, as the reference's 0, 1000, 2000.
SEED_STRIDE = 1000


def sketch(
    image: Image.Image | Photo,
    options: SketchOptions = SketchOptions(),
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_encoder: Callable[[str, str], None] | None = None,
) -> SketchResult:
    """Optimise `options.strokes` Bezier strokes so the encoder sees the photo in them.

    `image` is a photo from images.load_photo (or a PIL image, taken at its size). Runs `seeds` independent
    optimisations and keeps the one with the lowest loss on the plain (un-augmented) view. Cancelling through
    `should_stop` returns the best strokes so far with `cancelled=True`. `on_encoder(name, reason)` hears
    which encoder runs (what `auto` chose) as soon as it is loaded.
    """
    opts = options.validated()
    check_backend(Renderer(opts.renderer).backend, resolve_device(opts.device))  # before the slow part
    photo = image if isinstance(image, Photo) else Photo.of(image)
    timings = {"init": 0.0, "render": 0.0, "forward": 0.0, "backward": 0.0}
    t_start = time.perf_counter()
    encoder, reason = load_encoder(opts.encoder, opts.device, opts.weights, preferred=opts.recipe.encoder)
    timings["load"] = time.perf_counter() - t_start
    if on_encoder is not None:
        on_encoder(encoder.name, reason)

    t0 = time.perf_counter()
    target = prepare_target(photo, encoder, opts)
    timings["init"] = time.perf_counter() - t0

    progress = Progress(opts.iterations * opts.seeds, on_progress, target.box)
    runs: list[SeedRun] = []
    for k in range(opts.seeds):
        runs.append(optimise_seed(target, opts.seed + SEED_STRIDE * k, opts, progress, should_stop, timings))
        if runs[-1].cancelled:
            break
    best = min(runs, key=lambda run: run.loss)
    levels = None
    if opts.levels:  # the abstraction ladder (engine/ladder.py): coarser levels made from the best run
        t = time.perf_counter()
        ladder = build_ladder(target, best.points, opts.levels)
        levels = {n: target.box.to_image(p.cpu().numpy().astype(np.float64)) for n, p in ladder.items()}
        timings["ladder"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - t_start
    return SketchResult(
        strokes=target.box.to_image(best.points.cpu().numpy().astype(np.float64)),
        width=photo.width,
        height=photo.height,
        stroke_width=image_stroke_width(opts, photo.width, photo.height),
        loss=best.loss,
        encoder=encoder.name,
        encoder_reason=reason,
        options=opts,
        iterations=progress.done,
        best_seed=best.seed,
        cancelled=runs[-1].cancelled,
        timings=timings,
        levels=levels,
    )


@dataclass
class SeedRun:
    """One seed's best strokes (canvas pixels) and their plain-view loss."""

    seed: int
    points: Tensor
    loss: float = float("inf")
    cancelled: bool = False


@dataclass
class Progress:
    """Counts iterations over all seeds and reports each with the strokes in the photo's pixels."""

    total: int
    callback: ProgressCallback | None
    box: Letterbox
    done: int = field(default=0)

    def start(self, points: Tensor) -> None:
        """Report the starting strokes as iteration 0 (their loss is not known yet: NaN)."""
        if self.callback is not None:
            self.callback(0, self.total, float("nan"), self.box.to_image(points.detach().cpu().numpy()))

    def advance(self, loss: float, points: Tensor) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total, loss, self.box.to_image(points.detach().cpu().numpy()))


def optimise_seed(
    target: Target,
    seed: int,
    opts: SketchOptions,
    progress: Progress,
    should_stop: Callable[[], bool] | None,
    timings: dict[str, float],
) -> SeedRun:
    """Start strokes from `seed` and move them until the preset's stop rule (or a cancel) ends the run."""
    recipe = opts.recipe
    gen = torch.Generator().manual_seed(seed)
    start = target.start_strokes(STARTS[recipe.init], opts.strokes, gen)  # with the strokes to refine
    points = target.clamp(start.to(target.device)).requires_grad_(True)
    optimiser = torch.optim.Adam([points], lr=LEARNING_RATE)
    stop = STOP_RULES[recipe.stop]()
    relay = relay_for(recipe.relay, opts.iterations, opts.strokes)
    run = SeedRun(seed, points.detach().clone())
    if progress.done == 0:  # the first strokes show before the loss's photo side is ready
        progress.start(points)
        t = time.perf_counter()
        _ = target.loss  # the photo's side of the loss, built now so that "init" times it
        timings["init"] += time.perf_counter() - t
    for it in range(opts.iterations):
        if should_stop is not None and should_stop():
            run.cancelled = True
            break
        loss = loss_and_gradient(points, target, draw_views(recipe.augmentations, gen, target.device), timings)
        # The plain view's loss belongs to the points before this step: keep them if they are best.
        if loss < run.loss:
            run.loss, run.points = loss, points.detach().clone()
        optimiser.step()
        if relay(it, points, target, gen):
            optimiser = torch.optim.Adam([points], lr=LEARNING_RATE)
            stop.restart(it)
        with torch.no_grad():  # strokes stay on the photo, not on the letterbox's paper
            points.copy_(target.clamp(points))
        progress.advance(loss, points)
        if stop.done(it, loss):
            break
    return run


def draw_views(augmentations: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """This step's views: the plain one (-1) first, then `augmentations` random picks from the bank."""
    picks = torch.randint(0, AUGMENTATION_BANK, (augmentations,), generator=generator)
    return torch.cat([torch.tensor([-1]), picks]).to(device)


def loss_and_gradient(points: Tensor, target: Target, views: Tensor, timings: dict[str, float]) -> float:
    """Render the strokes, compare them with the photo under `views` (-1: plain), and leave the loss's
    gradient in points.grad. Returns the plain view's loss."""
    t = time.perf_counter()
    ink = target.render(points)
    t1 = time.perf_counter()
    loss, plain = target.loss(ink[None, None].expand(1, 3, CANVAS, CANVAS), views)
    t2 = time.perf_counter()
    points.grad = None
    loss.backward()
    t3 = time.perf_counter()
    timings["render"] += t1 - t
    timings["forward"] += t2 - t1
    timings["backward"] += t3 - t2
    return float(plain.detach())
