"""Adam for a batch of runs stacked in one tensor, each run with its own step count.

One update serves every run of a batch (a few kernels, not a few per run), and one run can start its
moments afresh after its strokes were re-laid while the others carry on. The arithmetic is
torch.optim.Adam's with its default betas and eps, operation for operation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .stopping import exact_dtype

BETAS = (0.9, 0.999)
EPS = 1e-8


class BatchAdam:
    def __init__(self, params: Tensor, lr: float) -> None:
        """params: (B, ...) the runs' parameters, stacked on the first dimension."""
        self.lr = lr
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.steps = torch.zeros(len(params), dtype=exact_dtype(params.device), device=params.device)

    def reset(self, run: int) -> None:
        """Run `run` starts again from zero moments, as a new optimiser would."""
        self.exp_avg[run] = 0
        self.exp_avg_sq[run] = 0
        self.steps[run] = 0

    def keep(self, rows: Tensor) -> None:
        """Keep only these runs (the others have ended)."""
        self.exp_avg, self.exp_avg_sq, self.steps = self.exp_avg[rows], self.exp_avg_sq[rows], self.steps[rows]

    @torch.no_grad()
    def step(self, params: Tensor, grad: Tensor) -> None:
        """One Adam step of every run's parameters, in place."""
        beta1, beta2 = BETAS
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        per_run = (-1,) + (1,) * (params.dim() - 1)
        step_size = (self.lr / (1 - beta1**self.steps)).to(params.dtype).view(per_run)
        correction2_sqrt = ((1 - beta2**self.steps) ** 0.5).to(params.dtype).view(per_run)
        denom = (self.exp_avg_sq.sqrt() / correction2_sqrt).add_(EPS)
        params.sub_(step_size * self.exp_avg / denom)
