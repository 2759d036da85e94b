"""CUDA graphs for the optimisation's step: one launch a step instead of hundreds.

A step is several hundred small kernels (the rasterizer, the encoder's forward and backward, Adam, the stop
rules); on a GPU their launches, not their arithmetic, set the pace. Captured once and replayed, they cost
about one launch. Where every stroke set of a batch is drawn by the fixed rasterizer, the whole step is
one graph per batch layout (StepGraph); where one is not (the tiles and diffvg follow the strokes with
their shapes, so they wait for the host), only the encoder's pass is (LossPass). Off CUDA, or where
capture fails (an operation that cannot be captured), the step runs as it is, said once in the log.

The service prepares its next batch in other threads while the worker steps, and their GPU work may run
during a capture: captures are in CUDA's "thread_local" mode, in which only the capturing thread's unsafe
calls break them. Keeping preparations out of captures cost the service 10-21 % of its pace on an H200,
and about one capture in a hundred failed all the same (none of 24 without it: too few to tell), so a
failed capture is tried again (CAPTURE_TRIES) instead.
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable, Hashable

import torch
from torch import Tensor

from ..errors import one_line
from .losses import SketchLoss

log = logging.getLogger("clipasso.engine")

#: Whether CUDA graphs are used where they can be (benchmarks switch it off to measure what they gain).
ENABLED = True
#: Steps run as they are before a capture: lazy initialisations (cuBLAS and cuDNN handles and plans, the
#: caching allocator's first blocks) happen outside the graph, as PyTorch's docs ask.
WARMUP_STEPS = 2

#: Captures a batch tries before its steps run without graphs. A capture can fail for a passing reason, not
#: only for an operation that cannot be captured: on an H200 one of a run's many captures was invalidated
#: (the step then ran as it is, and its job succeeded), so one failure costs a step, not the batch's graphs.
CAPTURE_TRIES = 2
#: Only the capturing thread's unsafe CUDA calls break a capture (CUDA's cudaStreamCaptureModeThreadLocal).
CAPTURE_MODE = "thread_local"
#: make_graphed_callables takes a capture mode from PyTorch 2.13 on; before, it captures in the global mode.
_MODE = ({"capture_error_mode": CAPTURE_MODE}
         if "capture_error_mode" in inspect.signature(torch.cuda.make_graphed_callables).parameters else {})

_told: set[tuple[str, str]] = set()  # the fallbacks already logged as warnings


def available(device: torch.device) -> bool:
    """Whether steps on `device` are captured where they can be."""
    return ENABLED and device.type == "cuda"


def _fall_back(what: str, exc: Exception, then: str = "running without them") -> None:
    """Log that `what` could not be captured, and what `then`: a warning the first time in the process, then
    quietly."""
    told = (what, then)
    level = logging.DEBUG if told in _told else logging.WARNING
    _told.add(told)
    log.log(level, "CUDA graphs are not available for %s (%s); %s", what, one_line(exc), then)


class StepGraph:
    """A whole optimisation step, `body()`, replayed as one CUDA graph per layout of the batch.

    `body` must read and write only tensors that outlive it, and write them in place: a replay reads and
    writes the memory the capture saw. The caller copies each step's inputs (the iteration, the augmentations)
    into such tensors before calling, and names a new layout whenever it replaces any of them (runs left
    the batch): the graph is then captured again, after WARMUP_STEPS steps run as they are. A capture that
    fails is tried again, after as many steps, up to CAPTURE_TRIES times a batch (`given_up`).
    """

    def __init__(self, body: Callable[[], None]) -> None:
        self.body = body
        self.layout: Hashable = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.stream: torch.cuda.Stream | None = None
        self.failures = 0

    @property
    def given_up(self) -> bool:
        """Whether captures have failed CAPTURE_TRIES times: the batch's steps then run as they are."""
        return self.failures >= CAPTURE_TRIES

    def __call__(self, layout: Hashable) -> bool:
        """Run one step. False where its capture failed: the caller runs this step as it is (and the
        following ones too once `given_up`)."""
        if layout != self.layout:
            self.layout, self.graph, self.warm = layout, None, 0  # the old graph's memory goes with it
        if self.graph is None and self.warm < WARMUP_STEPS:
            self._on_side_stream()
            self.warm += 1
            return True
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, capture_error_mode=CAPTURE_MODE):
                    self.body()  # recorded, not run: the state is as it was
            except Exception as exc:  # noqa: BLE001 - any capture failure means: this step without a graph
                self.failures += 1
                self.warm = 0  # warm up again before the next try
                _fall_back("the whole step", exc, "running without them" if self.given_up else "trying again")
                return False
            self.graph = graph
        self.graph.replay()
        return True

    def _on_side_stream(self) -> None:
        """One step as it is, on a side stream, as PyTorch's docs warm up a capture."""
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self.body()
        torch.cuda.current_stream().wait_stream(self.stream)


class LossPass:
    """Calls the loss on (B, S, S) renders, through a CUDA graph of the batch's shape where `graphed`."""

    def __init__(self, loss: SketchLoss, graphed: bool) -> None:
        self.loss = loss
        self.graphs = graphed
        self.shape: tuple | None = None
        self.graphed = None

    def __call__(self, renders: Tensor, plain: Tensor, picks: Tensor, owners: Tensor) -> tuple[Tensor, Tensor]:
        """The total loss (its gradient reaches the renders) and each render's plain-view loss (detached)."""
        if not self.graphs:
            return self._eager(renders, plain, picks, owners)
        shape = (tuple(renders.shape), tuple(picks.shape))
        if shape != self.shape:
            self.graphed, self.shape = None, None  # the old graph's memory goes with it
            # The sample tensors become the graph's input buffers: fresh, contiguous ones.
            sample = (torch.zeros_like(renders, requires_grad=True), plain.clone(), picks.clone(), owners.clone())
            try:
                self.graphed = torch.cuda.make_graphed_callables(self._eager, sample, **_MODE)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run without graphs
                _fall_back("this encoder", exc)
                self.graphs = False
                return self._eager(renders, plain, picks, owners)
            self.shape = shape
        return self.graphed(renders, plain, picks, owners)

    def _eager(self, renders: Tensor, plain: Tensor, picks: Tensor, owners: Tensor) -> tuple[Tensor, Tensor]:
        total, losses = self.loss(renders[:, None].expand(-1, 3, -1, -1), plain, picks, owners)
        return total, losses.detach()
