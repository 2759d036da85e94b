"""When one seed's optimisation ends: small stop rules, one per preset, fed the plain-view loss each step."""

from __future__ import annotations

import numpy as np

from ..options import Stop

#: Our rule: the plain-view loss must improve by this fraction of itself within PATIENCE iterations.
#: 0.2 % is below what a stroke settling onto a contour gains, above Adam's jitter around a minimum.
MIN_IMPROVEMENT = 0.002
#: 40 steps: long enough for a re-laid stroke (see relay.py) to reach its contour.
PATIENCE = 40
#: The first iterations always run, whatever the loss does: strokes are still finding their contours.
MIN_ITERATIONS = 60
#: The reference's rule: evaluate every EVAL_EVERY steps, stop after two changes below REFERENCE_TOLERANCE.
EVAL_EVERY = 10
REFERENCE_TOLERANCE = 1e-5


class Plateau:
    """Stop once the loss has not improved by MIN_IMPROVEMENT for PATIENCE iterations (after MIN_ITERATIONS)."""

    def __init__(self) -> None:
        self.best = float("inf")
        self.last_gain_at = 0

    def restart(self, iteration: int) -> None:
        """Strokes were moved: give them PATIENCE iterations to settle."""
        self.last_gain_at = iteration

    def done(self, iteration: int, loss: float) -> bool:
        if loss < self.best * (1 - MIN_IMPROVEMENT):
            self.last_gain_at = iteration
        self.best = min(self.best, loss)
        return iteration >= MIN_ITERATIONS and iteration - self.last_gain_at >= PATIENCE


class ReferenceStop:
    """The reference's rule: the last two evaluations (every EVAL_EVERY steps) each changed the loss by
    under REFERENCE_TOLERANCE."""

    def __init__(self) -> None:
        self.evals: list[float] = []

    def restart(self, iteration: int) -> None:
        pass

    def done(self, iteration: int, loss: float) -> bool:
        if iteration % EVAL_EVERY == 0:
            self.evals.append(loss)
        return reference_converged(self.evals)


def reference_converged(evals: list[float]) -> bool:
    """The last two evaluations each changed the loss by under REFERENCE_TOLERANCE."""
    steps = np.abs(np.diff(evals[-3:]))
    return len(steps) == 2 and bool((steps < REFERENCE_TOLERANCE).all())


STOP_RULES: dict[Stop, type[Plateau] | type[ReferenceStop]] = {Stop.PLATEAU: Plateau, Stop.REFERENCE: ReferenceStop}
