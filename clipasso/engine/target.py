"""What a sketch is optimised against: the photo on the square canvas and everything derived from it once.

The letterboxed photo, where the strokes may go (the photo, not the paper around it), the start-point
distribution (salient edges), the contours' tangent field, and the loss with the photo's features cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch
from torch import Tensor

from ..encoders import Encoder
from ..images import Letterbox, Photo
from ..options import CANVAS, Renderer, SketchOptions, image_stroke_width
from .init import STARTS, edge_tangents, init_distribution, xdog_edges
from .losses import SketchLoss, augmentation_bank

#: Least weight of the loss anywhere on the photo: the subject map only tilts it, so a wrong map
#: still leaves the whole photo some pull.
FOCUS_FLOOR = 0.25
#: Size of the fixed augmentation bank whose photo features are computed once: enough variety that
#: strokes do not fit one warp, few enough that the photo's side costs under a second.
AUGMENTATION_BANK = 24


@dataclass
class Target:
    box: Letterbox
    placed: np.ndarray  #: the letterboxed photo, (S, S, 3) float32 in [0, 1]
    prob: np.ndarray  #: (S, S) probability of each pixel to start a stroke
    canvas: Tensor  #: the letterboxed photo as (1, 3, S, S) on the encoder's device
    encoder: Encoder
    grids: Tensor  #: the augmentation bank's sampling grids
    focus: Tensor  #: (S, S) weight of each place in the geometric loss
    stroke_width: float  #: in canvas pixels
    low: Tensor  #: the photo's top-left and bottom-right corners on the canvas: strokes stay inside
    high: Tensor
    backend: str  #: the rasterizer everything of this sketch is drawn with (render.BACKENDS)

    @cached_property
    def loss(self) -> SketchLoss:
        """The loss, with the photo's features under every augmentation computed once, when first needed:
        most of the preparation, which the first strokes need not wait for."""
        return SketchLoss(self.encoder, self.canvas, self.grids, self.focus)

    @cached_property
    def tangents(self) -> np.ndarray:
        """(S, S, 2) unit tangents of the photo's contours, for strokes traced along them."""
        return edge_tangents(self.placed)

    @property
    def device(self) -> torch.device:
        return self.low.device

    def clamp(self, points: Tensor) -> Tensor:
        """Points moved onto the photo (not the letterbox's paper)."""
        return torch.maximum(torch.minimum(points, self.high), self.low)


def prepare_target(photo: Photo, encoder: Encoder, options: SketchOptions) -> Target:
    """Place the photo on the canvas, find where strokes should start, and cache the photo's features."""
    device = next(encoder.parameters()).device
    box = Letterbox(photo.width, photo.height, CANVAS)
    placed = box.place(photo.image)
    canvas = torch.from_numpy(placed).permute(2, 0, 1)[None].to(device)
    mask = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    (ox, oy), (pw, ph) = box.offset, box.placed
    mask[oy : oy + ph, ox : ox + pw] = 1.0
    with torch.no_grad():
        saliency = encoder.saliency(canvas).cpu().numpy()
    edges = xdog_edges(placed, (ox, oy, pw, ph), k=STARTS[options.recipe.init].edge_k)
    grids = bank_grids(options.seed, device)
    focus = torch.from_numpy(FOCUS_FLOOR + (1 - FOCUS_FLOOR) * saliency).to(device) * torch.from_numpy(mask).to(device)
    return Target(
        box=box,
        placed=placed,
        prob=init_distribution(saliency, edges, mask),
        canvas=canvas,
        encoder=encoder,
        grids=grids,
        focus=focus,
        stroke_width=image_stroke_width(options, photo.width, photo.height) * min(box.scale),
        low=torch.tensor([ox, oy], dtype=torch.float32, device=device),
        high=torch.tensor([ox + pw, oy + ph], dtype=torch.float32, device=device),
        backend=Renderer(options.renderer).backend,
    )


@lru_cache(maxsize=8)
def bank_grids(seed: int, device: torch.device) -> Tensor:
    """The augmentation bank of a seed: the same for every photo, so made once per seed and device (for the
    last few seeds asked for)."""
    return augmentation_bank(AUGMENTATION_BANK, torch.Generator().manual_seed(seed), CANVAS).to(device)
