"""Laying weak strokes again: a stroke that adds little to the sketch moves to where the sketch misses most.

A few strokes of any start land on clutter or double another stroke; moving them once or twice during
the run costs a few forward passes and recovers most of what a second seed would.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from ..options import CANVAS
from .init import traced_length, traced_strokes
from .losses import SketchLoss
from .render import render_batch
from .target import Target

#: Fractions of the iterations at which the weakest strokes are laid again: late enough that strokes
#: have settled and their worth shows, early enough that the moved ones settle too.
REPLACE_AT = (0.25, 0.5)
#: Above this many strokes, judging each one's worth (one forward pass per stroke) costs more than it gains.
MAX_REPLACE_STROKES = 64


def relay_iterations(enabled: bool, iterations: int, strokes: int) -> frozenset[int]:
    """The iterations after whose step a run's weak strokes are laid again (none for the reference's
    recipe, where strokes only move by gradient)."""
    if not enabled or strokes > MAX_REPLACE_STROKES:
        return frozenset()
    return frozenset(int(iterations * f) for f in REPLACE_AT)


def drawn_alone(points: Tensor, widths: float | Tensor, backend: str) -> Tensor:
    """(R, N, S, S): each stroke of R sketches (R, N, 4, 2) drawn alone on the canvas (no kept paths).
    widths: a float or (R, N)."""
    runs, n = points.shape[:2]
    if isinstance(widths, Tensor):
        widths = widths.reshape(runs * n, 1)
    alone = render_batch(points.reshape(runs * n, 1, 4, 2), CANVAS, CANVAS, widths, backend=backend)
    return alone.view(runs, n, CANVAS, CANVAS)


def without_each(alone: Tensor) -> Tensor:
    """(R, N, S, S) strokes drawn alone -> each sketch drawn without each of its strokes, (R, N, S, S).

    Strokes are composited "over" the paper, a product of transmissions (render.py), so a sketch without
    stroke i is the product of the strokes before i and of those after it: N renders of one stroke and two
    running products, where drawing the N sketches of N - 1 strokes cost N^2 strokes' work and memory
    (a 512,256 ladder peaked at 4.5 GB, now 1.2 GB; README, Mix). Exact for our rasterizers; with diffvg, whose 2x2 samples
    are averaged per stroke here, it differs where strokes cross within a pixel."""
    ones = torch.ones_like(alone[:, :1])
    before = torch.cat([ones, alone[:, :-1]], 1).cumprod(1)
    after = torch.cat([alone[:, 1:], ones], 1).flip(1).cumprod(1).flip(1)
    return before.mul_(after)


@torch.no_grad()
def stroke_worths(alone: Tensor, kept: Tensor | None, views: Tensor, loss: SketchLoss, chunk: int) -> Tensor:
    """How much each of R sketches' plain-view loss rises without each of its strokes: (R, N) on the CPU.

    alone: (R, N, S, S) each stroke drawn alone (`drawn_alone`); kept: None or (R, S, S) the artist's kept
    paths each sketch is drawn over; views: (R,) each sketch's plain view in `loss`.
    """
    runs, n = alone.shape[:2]
    without = without_each(alone)
    full = without[:, 0] * alone[:, 0]
    if kept is not None:
        without, full = without * kept[:, None], full * kept
    drops = loss.stroke_drop_losses(without.flatten(0, 1), views.repeat_interleave(n), chunk).view(runs, n)
    base = loss.stroke_drop_losses(full, views, chunk)
    return (drops - base[:, None]).cpu()


def stroke_worth(points: Tensor, target: Target) -> Tensor:
    """(N,) what one sketch's plain-view loss loses without each of its strokes (N, 4, 2), on its own target."""
    view = torch.zeros(1, dtype=torch.long, device=points.device)
    alone = drawn_alone(points[None], target.stroke_width, target.backend)
    return stroke_worths(alone, None if target.kept is None else target.kept[None], view, target.loss, 16)[0]


@torch.no_grad()
def replace_weak_strokes(
    points: Tensor,
    widths: Tensor,
    kept: Tensor | None,
    targets: list[Target],
    views: Tensor,
    loss: SketchLoss,
    generators: list[torch.Generator],
    chunk: int,
    each: Callable[..., Iterator] = map,
) -> list[int]:
    """Move the strokes that matter least, in R runs at once, to where each sketch misses most of its subject.

    points: (R, N, 4, 2) strokes, changed in place; widths: (R, N); kept: None or (R, S, S) the artist's
    kept paths each sketch is drawn over; views: (R,) each run's plain view in `loss`. A stroke's worth is
    how much the plain-view loss rises without it. The weakest quarter (those worth less than half the
    median stroke) are laid again, along contours, where the subject-weighted feature error is largest (never
    the artist's strokes to refine, which come first);
    `each` (map, or a thread pool's) lays the runs' strokes. Returns how many strokes moved in each run.
    """
    runs, n = points.shape[:2]
    if n < 4:
        return [0] * runs
    backend = targets[0].backend

    full = render_batch(points, CANVAS, CANVAS, widths, backend=backend)
    full = full if kept is None else full * kept
    worth = stroke_worths(drawn_alone(points, widths, backend), kept, views, loss, chunk)
    errors = loss.error_maps(full, views).cpu().numpy()

    def fresh_strokes(r: int) -> tuple[list[int], Tensor | None]:
        target = targets[r]
        threshold = 0.5 * float(worth[r].median())
        mine = 0 if target.refine is None else len(target.refine)  # the artist's strokes move by the loss only
        weak = [i for i in worth[r].argsort().tolist() if i >= mine][: n // 4]
        weak = [i for i in weak if float(worth[r, i]) < threshold]
        if not weak:
            return weak, None
        wanted = target.prob * errors[r]
        wanted = wanted / wanted.sum() if wanted.sum() > 0 else target.prob
        return weak, traced_strokes(wanted, target.tangents, len(weak), traced_length(n), generators[r], target.region)

    moved = []
    for r, (weak, fresh) in enumerate(each(fresh_strokes, range(runs))):
        if weak:
            points[r, weak] = fresh.to(points)
        moved.append(len(weak))
    return moved
