"""The loss's encoder pass, forward and backward, as a CUDA graph: one launch a step instead of hundreds.

A step's encoder forward and backward are several hundred small kernels; on a GPU their launches, not
their arithmetic, set the pace. Captured once per batch shape and replayed, they cost about one launch.
Off CUDA, or where capture fails (an encoder with an operation that cannot be captured), the loss runs
as it is.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..errors import one_line
from .losses import SketchLoss

log = logging.getLogger("clipasso.engine")

#: Whether CUDA graphs are used where they can be (benchmarks switch it off to measure what they gain).
ENABLED = True


class LossPass:
    """Calls the loss on (B, S, S) renders, through a CUDA graph of the batch's shape where possible."""

    def __init__(self, loss: SketchLoss, device: torch.device) -> None:
        self.loss = loss
        self.graphs = ENABLED and device.type == "cuda"
        self.shape: tuple | None = None
        self.graphed = None

    def __call__(self, renders: Tensor, plain: Tensor, picks: Tensor, owners: Tensor) -> tuple[Tensor, Tensor]:
        """The total loss (backward reaches the renders) and each render's plain-view loss (detached)."""
        if not self.graphs:
            return self._eager(renders, plain, picks, owners)
        shape = (tuple(renders.shape), tuple(picks.shape))
        if shape != self.shape:
            self.graphed, self.shape = None, None  # the old graph's memory goes with it
            # The sample tensors become the graph's input buffers: fresh, contiguous ones.
            sample = (torch.zeros_like(renders, requires_grad=True), plain.clone(), picks.clone(), owners.clone())
            try:
                self.graphed = torch.cuda.make_graphed_callables(self._eager, sample)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run without graphs
                log.warning("CUDA graphs are not available for this encoder (%s); running without them",
                            one_line(exc))
                self.graphs = False
                return self._eager(renders, plain, picks, owners)
            self.shape = shape
        return self.graphed(renders, plain, picks, owners)

    def _eager(self, renders: Tensor, plain: Tensor, picks: Tensor, owners: Tensor) -> tuple[Tensor, Tensor]:
        total, losses = self.loss(renders[:, None].expand(-1, 3, -1, -1), plain, picks, owners)
        return total, losses.detach()
