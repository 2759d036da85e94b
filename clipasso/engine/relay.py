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


@torch.no_grad()
def stroke_worths(points: Tensor, full: Tensor, draw: Callable[[Tensor], Tensor], views: Tensor, loss: SketchLoss,
                  chunk: int) -> Tensor:
    """How much each of R sketches' plain-view loss rises without each of its strokes: (R, N) on the CPU.

    points: (R, N, 4, 2); full: (R, S, S) their renders; draw: renders (R * N, N - 1, 4, 2) sketches, run r's
    N first; views: (R,) each sketch's plain view in `loss`.
    """
    runs, n = points.shape[:2]
    others = torch.tensor([[j for j in range(n) if j != i] for i in range(n)], device=points.device)
    without = points[:, others].flatten(0, 1)  # each sketch without each stroke
    drops = loss.stroke_drop_losses(draw(without), views.repeat_interleave(n), chunk).view(runs, n)
    base = loss.stroke_drop_losses(full, views, chunk)
    return (drops - base[:, None]).cpu()


def stroke_worth(points: Tensor, target: Target) -> Tensor:
    """(N,) what one sketch's plain-view loss loses without each of its strokes (N, 4, 2), on its own target."""
    view = torch.zeros(1, dtype=torch.long, device=points.device)
    return stroke_worths(points[None], target.render(points)[None], target.render_batch, view, target.loss, 16)[0]


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

    def draw(strokes: Tensor, rows: Tensor) -> Tensor:
        ink = render_batch(strokes, CANVAS, CANVAS, widths[rows, : strokes.shape[1]], backend=backend)
        return ink if kept is None else ink * kept[rows]

    every = torch.arange(runs, device=points.device)
    full = draw(points, every)
    worth = stroke_worths(points, full, lambda without: draw(without, every.repeat_interleave(n)), views, loss, chunk)
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
