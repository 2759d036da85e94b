"""When a run's optimisation ends before its last iteration: small stop rules, one per preset.

Each rule judges a whole batch of runs at once on their device, fed the plain-view losses of each step
as a tensor: deciding needs no copy of the losses to the host, so a GPU is never made to wait for it. The
iteration may be a tensor on the device too, and the rules change their state in place: a step captured
in a CUDA graph replays them (engine/graphs.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

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


def exact_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (the rules compare losses as a float64 host loop would)."""
    return torch.float32 if device.type == "mps" else torch.float64


class Plateau:
    """Stop a run once its loss has not improved by MIN_IMPROVEMENT for PATIENCE iterations (after
    MIN_ITERATIONS)."""

    def __init__(self, runs: int, device: torch.device) -> None:
        self.best = torch.full((runs,), float("inf"), dtype=exact_dtype(device), device=device)
        self.last_gain_at = torch.zeros(runs, dtype=torch.long, device=device)

    def restart(self, run: int, iteration: int) -> None:
        """Run `run`'s strokes were moved: give them PATIENCE iterations to settle."""
        self.last_gain_at[run] = iteration

    def done(self, iteration: int | Tensor, loss: Tensor) -> Tensor:
        """(B,) bool: which runs stop after this iteration, given its (B,) plain-view losses."""
        loss = loss.detach().to(self.best.dtype)
        gain = loss < self.best * (1 - MIN_IMPROVEMENT)
        self.last_gain_at.copy_(torch.where(gain, iteration, self.last_gain_at))
        self.best.copy_(torch.minimum(self.best, loss))
        return (iteration - self.last_gain_at >= PATIENCE) & (iteration >= MIN_ITERATIONS)

    def keep(self, rows: Tensor) -> None:
        """Keep only these runs (the others have ended)."""
        self.best, self.last_gain_at = self.best[rows], self.last_gain_at[rows]


class ReferenceStop:
    """The reference's rule: the last two evaluations (every EVAL_EVERY steps) each changed the loss by
    under REFERENCE_TOLERANCE."""

    def __init__(self, runs: int, device: torch.device) -> None:
        self.evals = torch.full((runs, 3), float("nan"), dtype=exact_dtype(device), device=device)
        self.count = torch.zeros(runs, dtype=torch.long, device=device)  # evaluations so far

    def restart(self, run: int, iteration: int) -> None:
        pass

    def done(self, iteration: int | Tensor, loss: Tensor) -> Tensor:
        due = torch.as_tensor(iteration, device=self.evals.device) % EVAL_EVERY == 0
        shifted = torch.cat([self.evals[:, 1:], loss.detach().to(self.evals.dtype)[:, None]], dim=1)
        self.evals.copy_(torch.where(due, shifted, self.evals))
        self.count += due
        return due & (self.evals.diff(dim=1).abs() < REFERENCE_TOLERANCE).all(dim=1) & (self.count >= 3)

    def keep(self, rows: Tensor) -> None:
        self.evals, self.count = self.evals[rows], self.count[rows]


STOP_RULES: dict[Stop, type[Plateau] | type[ReferenceStop]] = {Stop.PLATEAU: Plateau, Stop.REFERENCE: ReferenceStop}
