"""Laying weak strokes again: a stroke that adds little to the sketch moves to where the sketch misses most.

A few strokes of any start land on clutter or double another stroke; moving them once or twice during
the run costs a few forward passes and recovers most of what a second seed would.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .init import traced_length, traced_strokes
from .target import Target

#: Fractions of the iterations at which the weakest strokes are laid again: late enough that strokes
#: have settled and their worth shows, early enough that the moved ones settle too.
REPLACE_AT = (0.25, 0.5)
#: Above this many strokes, judging each one's worth (one forward pass per stroke) costs more than it gains.
MAX_REPLACE_STROKES = 64


@torch.no_grad()
def stroke_worth(points: Tensor, target: Target, full: Tensor | None = None) -> Tensor:
    """How much the plain-view loss rises without each stroke: (N,) on the CPU. `full`: the strokes'
    render, when the caller has it."""
    n = points.shape[0]
    full = target.render(points) if full is None else full
    without = torch.stack([torch.cat([points[:i], points[i + 1 :]]) for i in range(n)])
    drops = target.loss.stroke_drop_losses(target.render_batch(without))
    base = target.loss.stroke_drop_losses(full[None])[0]
    return (drops - base).cpu()


def replace_weak_strokes(points: Tensor, target: Target, generator: torch.Generator) -> int:
    """Move the strokes that matter least to where the sketch misses most of the subject.

    A stroke's worth is how much the plain-view loss rises without it. The weakest quarter (those
    worth less than half the median stroke) are laid again, along contours, where the
    subject-weighted feature error is largest. Returns how many strokes moved.
    """
    n = points.shape[0]
    if n < 4:
        return 0
    full = target.render(points)
    worth = stroke_worth(points, target, full)
    threshold = 0.5 * float(worth.median())
    weak = [i for i in worth.argsort()[: n // 4].tolist() if float(worth[i]) < threshold]
    if not weak:
        return 0
    error = target.loss.error_map(full).cpu().numpy()
    wanted = target.prob * error
    wanted = wanted / wanted.sum() if wanted.sum() > 0 else target.prob
    fresh = traced_strokes(wanted, target.tangents, len(weak), traced_length(n), generator).to(points)
    points[weak] = fresh
    return len(weak)


class WeakStrokeRelay:
    """Our recipe: at REPLACE_AT of the run, lay the weak strokes again (up to MAX_REPLACE_STROKES strokes)."""

    def __init__(self, iterations: int, strokes: int) -> None:
        self.at = {int(iterations * f) for f in REPLACE_AT} if strokes <= MAX_REPLACE_STROKES else set()

    def __call__(self, iteration: int, points: Tensor, target: Target, generator: torch.Generator) -> int:
        """How many strokes moved at this iteration (0 when none were due)."""
        if iteration not in self.at:
            return 0
        with torch.no_grad():
            return replace_weak_strokes(points, target, generator)


class NoRelay:
    """The reference's: strokes only move by gradient."""

    def __init__(self, iterations: int, strokes: int) -> None:
        pass

    def __call__(self, iteration: int, points: Tensor, target: Target, generator: torch.Generator) -> int:
        return 0


def relay_for(enabled: bool, iterations: int, strokes: int) -> WeakStrokeRelay | NoRelay:
    return (WeakStrokeRelay if enabled else NoRelay)(iterations, strokes)
