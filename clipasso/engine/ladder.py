"""The abstraction ladder: coarser sketches made from the finest one, each a simplification of the next.

A level keeps the strokes of the next finer level that the loss misses most without (the same strokes,
not a new run), then settles them briefly, each control point held within SETTLE_RADIUS of where it
was: the levels share their strokes, so flipping between them shows the sketch simplify. The whole ladder
costs a few dozen forward passes per level on top of the finest run.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..options import CANVAS
from .relay import stroke_worth
from .target import Target

#: Steps that settle a level's strokes after the others were dropped (on the plain view: they only adjust).
SETTLE_ITERATIONS = 15
#: How far (canvas pixels) a settled control point may move from the finer level's.
SETTLE_RADIUS = 3.0
#: Adam's step while settling (canvas pixels): small, the strokes only adjust.
SETTLE_RATE = 0.5
#: Dropping goes in this many rounds, the rest weighed again after each: a stroke's worth depends on the
#: strokes beside it, and each round costs one forward pass per stroke left.
DROP_ROUNDS = 2


def build_ladder(target: Target, finest: Tensor, levels: tuple[int, ...],
                 on_level: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict[int, Tensor]:
    """Each level's strokes (canvas pixels), finest first: `finest` is the first level's sketch.

    `on_level(i, n)` hears as level i (1 is the second, the first coarser one) of n strokes is begun: a
    ladder of many strokes takes seconds. Once `should_stop()` says so no further level is begun, and the
    levels made so far are returned.
    """
    ladder = {levels[0]: finest.detach()}
    current = finest.detach()
    for i, n in enumerate(levels[1:], start=1):
        if should_stop is not None and should_stop():
            break
        if on_level is not None:
            on_level(i, n)
        current = settle(simplify(current, target, n), target)
        ladder[n] = current
    return ladder


def simplify(points: Tensor, target: Target, n: int) -> Tensor:
    """The n strokes of `points` that matter most, in their order: the weakest are dropped in rounds,
    the rest weighed again after each."""
    keep = torch.arange(points.shape[0])
    for round_ in range(DROP_ROUNDS, 0, -1):
        if len(keep) <= n:
            break
        worth = stroke_worth(points[keep], target)
        drop = -(-(len(keep) - n) // round_)  # an even share of what is left to drop
        weakest = worth.argsort()[:drop]
        keep = keep[~torch.isin(torch.arange(len(keep)), weakest)]
    return points[keep].clone()


def settle(points: Tensor, target: Target) -> Tensor:
    """A few steps of the plain-view loss, each point held near where it was; the best strokes seen."""
    anchor = points.detach()
    points = anchor.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([points], lr=SETTLE_RATE)
    best, best_loss = anchor, float("inf")
    plain = torch.zeros(1, dtype=torch.long, device=target.device)  # the loss's plain view, no augmentations
    none = plain[:0]
    for _ in range(SETTLE_ITERATIONS):
        ink = target.render(points)
        loss, _ = target.loss(ink[None, None].expand(1, 3, CANVAS, CANVAS), plain, none, none)
        if float(loss.detach()) < best_loss:
            best, best_loss = points.detach().clone(), float(loss.detach())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            points.copy_(target.clamp(torch.clamp(points, anchor - SETTLE_RADIUS, anchor + SETTLE_RADIUS)))
    return best
