"""What a sketch is optimised against: the photo on the square canvas and everything derived from it once.

The letterboxed photo, where the strokes may go (the photo, not the paper around it), the start-point
distribution (salient edges), the contours' tangent field, a drawing of the contours, and the loss with
the photo's features cached.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch
from scipy.ndimage import binary_dilation, distance_transform_edt, gaussian_filter
from torch import Tensor

from ..encoders import Encoder
from ..encoders.base import AUTOCAST
from ..images import Letterbox, Photo
from ..options import CANVAS, Focus, Renderer, SketchOptions, drawn_paths, image_stroke_width
from ..paths import DrawnPath
from .focus import Source, find_subject
from .init import STARTS, PaperStart, TracedStart, edge_tangents, init_distribution
from .losses import SketchLoss, augmentation_bank
from .render import render, render_batch

#: Least weight of the loss anywhere on the photo: the subject map only tilts it, so a wrong map
#: still leaves the whole photo some pull.
FOCUS_FLOOR = 0.25
#: Size of the fixed augmentation bank whose photo features are computed once: enough variety that
#: strokes do not fit one warp, few enough that the photo's side (with its contour drawing's) costs under
#: a second.
AUGMENTATION_BANK = 24
#: How many photos' loss sides are kept for the next sketch of the same photo (another stroke count, seed or
#: ladder, as an artist tries them): each is the encoder's maps under the 25 views, 15-60 MB.
LOSS_CACHE = 4
#: How far (canvas pixels) traced strokes may run beyond the subject where they start: a stroke's width
#: and a little more, so that one laid along the outline is not cut short by the mask's rough edge.
REGION_MARGIN = 4
#: How far (canvas pixels, a Gaussian's sigma) new strokes' start points keep from the artist's kept
#: paths: the new strokes complete the picture instead of doubling what is drawn.
KEPT_CLEARANCE = 4.0


@dataclass
class Target:
    box: Letterbox
    placed: np.ndarray  #: the letterboxed photo, (S, S, 3) float32 in [0, 1]
    prob: np.ndarray  #: (S, S) probability of each pixel to start a stroke
    region: np.ndarray  #: (S, S) bool: where traced strokes may run (the subject, and REGION_MARGIN around it)
    #: the photo as the loss sees it, (1, 3, S, S) on the encoder's device: the letterbox's paper filled with
    #: the photo's edge pixels (see `unbordered`)
    canvas: Tensor
    encoder: Encoder
    grids: Tensor  #: the augmentation bank's sampling grids
    focus: Tensor  #: (S, S) weight of each place in the geometric loss
    loss_key: bytes  #: a digest of what the loss compares with (the photo, its contour drawing, the focus weights)
    stroke_width: float  #: in canvas pixels
    low: Tensor  #: the photo's top-left and bottom-right corners on the canvas: strokes stay inside
    high: Tensor
    backend: str  #: the rasterizer everything of this sketch is drawn with (render.BACKENDS)
    seed: int  #: the augmentation bank's seed
    subject: Source  #: where the subject's outline came from
    #: (1, 3, S, S) the photo's contours drawn with the strokes' width (`line_drawing`), and how far the
    #: geometric loss's target leans towards it (the recipe's `lines`; without a drawing where 0)
    lines: Tensor | None = None
    line_weight: float = 0.0
    #: (S, S) the artist's kept paths, drawn once (1 = paper): every render of the strokes is multiplied by it
    kept: Tensor | None = None
    #: (R, 4, 2) strokes to refine, in canvas pixels: each seed starts from them
    refine: Tensor | None = None

    @cached_property
    def loss(self) -> SketchLoss:
        """The loss, with the photo's features under every augmentation computed once, when first needed:
        most of the preparation, which the first strokes need not wait for. The same photo, encoder and
        bank seed (and the same AUTOCAST dtype) as one of the last LOSS_CACHE sketches reuse that sketch's."""
        key = (id(self.encoder), self.seed, self.loss_key, AUTOCAST.get(self.device.type))
        with _losses_lock:
            cached = _losses.get(key)
            if cached is not None:
                _losses.move_to_end(key)
                return cached[1]
        loss = SketchLoss(self.encoder, self.canvas, self.grids, self.focus, self.lines, self.line_weight)
        with _losses_lock:
            _losses[key] = (self.encoder, loss)  # the encoder is held so that its id is not reused meanwhile
            while len(_losses) > LOSS_CACHE:
                _losses.popitem(last=False)
        return loss

    @property
    def subject_map(self) -> np.ndarray:
        """(S, S) bool: where the subject was found, the upper half of the focus weights (the subject mask
        where there is one, else the saliency). The quality benchmark measures it against hand-drawn subjects."""
        return (self.focus > FOCUS_FLOOR + (1 - FOCUS_FLOOR) / 2).cpu().numpy()

    @cached_property
    def tangents(self) -> np.ndarray:
        """(S, S, 2) unit tangents of the photo's contours, for strokes traced along them."""
        return edge_tangents(self.placed, self.box.rect)

    @property
    def device(self) -> torch.device:
        return self.low.device

    def render(self, points: Tensor) -> Tensor:
        """Strokes (N, 4, 2) in canvas pixels drawn on the canvas, over the kept paths: (S, S), 1 = paper."""
        ink = render(points, CANVAS, CANVAS, stroke_width=self.stroke_width, backend=self.backend)
        return ink if self.kept is None else ink * self.kept

    def render_batch(self, points: Tensor) -> Tensor:
        """B sketches (B, N, 4, 2) drawn at once, each over the kept paths: (B, S, S)."""
        ink = render_batch(points, CANVAS, CANVAS, stroke_width=self.stroke_width, backend=self.backend)
        return ink if self.kept is None else ink * self.kept[None]

    def start_strokes(self, strategy: TracedStart | PaperStart, n: int, generator: torch.Generator) -> Tensor:
        """A seed's first strokes: those to refine, if any, then n new ones laid by `strategy`."""
        fresh = strategy.strokes(self, n, generator) if n > 0 else torch.zeros(0, 4, 2)
        return fresh if self.refine is None else torch.cat([self.refine.to(fresh), fresh])

    def clamp(self, points: Tensor) -> Tensor:
        """Points moved onto the photo (not the letterbox's paper)."""
        return clamp(points, self.low, self.high)


def prepare_target(photo: Photo, encoder: Encoder, options: SketchOptions) -> Target:
    """Place the photo on the canvas, find where strokes should start, and cache the photo's features."""
    device = next(encoder.parameters()).device
    box = Letterbox(photo.width, photo.height, CANVAS)
    placed = box.place(photo.image)
    mask = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    ox, oy, pw, ph = box.rect
    mask[oy : oy + ph, ox : ox + pw] = 1.0
    with torch.no_grad():
        saliency = encoder.saliency(_batch_of_one(placed, device)).cpu().numpy()
    edges = STARTS[options.recipe.init].edges(placed, box.rect)
    grids = bank_grids(options.seed, device)
    weight, starts_on, subject = saliency, mask, Source.SALIENCY
    if options.focus == Focus.AUTO.value:
        outlines = [p.outline() for p in drawn_paths("subject", options.subject)]
        found = find_subject(photo, box, placed, saliency, mask, outlines)
        saliency, weight, subject = found.saliency, found.mask, found.source
        starts_on = (found.mask > 0.5).astype(np.float32)
    focus = ((FOCUS_FLOOR + (1 - FOCUS_FLOOR) * weight) * mask).astype(np.float32)
    stroke_width = image_stroke_width(options, photo.width, photo.height) * min(box.scale)
    lines = line_drawing(edges, stroke_width) if options.recipe.lines > 0 else None
    keep, refine, _ = options.drawn_on_photo(photo.width, photo.height)
    backend = Renderer(options.renderer).backend
    # pydiffvg keeps one device for the whole process: drawing the kept paths' CPU tensors with it would
    # switch it under a batch another thread steps on CUDA. Ours draws the same coverage.
    kept = draw_kept(keep, box, mask, "tiles" if backend == "diffvg" else backend) if keep else None
    prob = init_distribution(saliency, edges, starts_on)
    if kept is not None:  # new strokes start away from what the artist drew
        away = prob * gaussian_filter(kept.numpy(), KEPT_CLEARANCE)
        prob = away / away.sum() if away.sum() > 0 else prob
    starts = None
    if refine:
        starts = torch.from_numpy(box.to_canvas(np.stack([p.first_stroke() for p in refine]))).float()
    return Target(
        box=box,
        placed=placed,
        prob=prob,
        region=binary_dilation(starts_on > 0.5, iterations=REGION_MARGIN),
        canvas=_batch_of_one(unbordered(placed, box), device),
        encoder=encoder,
        grids=grids,
        focus=torch.from_numpy(focus).to(device),
        loss_key=hashlib.blake2b(placed.tobytes() + focus.tobytes() + (b"" if lines is None else lines.tobytes())
                                 + str(options.recipe.lines).encode(), digest_size=16).digest(),
        stroke_width=stroke_width,
        low=torch.tensor([ox, oy], dtype=torch.float32, device=device),
        high=torch.tensor([ox + pw, oy + ph], dtype=torch.float32, device=device),
        backend=backend,
        seed=options.seed,
        subject=subject,
        lines=None if lines is None else _batch_of_one(lines, device),
        line_weight=options.recipe.lines,
        kept=None if kept is None else kept.to(device),
        refine=None if starts is None else starts.to(device),
    )


def unbordered(placed: np.ndarray, box: Letterbox) -> np.ndarray:
    """The letterboxed photo with the paper around it filled by repeating the photo's edge pixels.

    Where dark photo met white paper the encoder saw the strongest edge of the canvas, and the loss pulled
    a stroke onto the photo's border (the keep sheet's stroke across the cat photo's top). Strokes stay
    on the photo and the paper has no weight in the geometric loss; the semantic embedding reads the filled
    paper, as it read the white before.
    """
    x, y, w, h = box.rect
    size = placed.shape[0]
    return np.pad(placed[y : y + h, x : x + w], ((y, size - y - h), (x, size - x - w), (0, 0)), mode="edge")


def line_drawing(edges: np.ndarray, width: float) -> np.ndarray:
    """Contours (S, S) bool, one pixel wide, drawn black on white as a stroke of `width` pixels would draw
    them, with an antialiased rim: (S, S, 3) float32 in [0, 1], what the geometric loss holds strokes to."""
    if not edges.any():
        return np.ones(edges.shape + (3,), dtype=np.float32)
    ink = np.clip(width / 2 + 0.5 - distance_transform_edt(~edges), 0, 1).astype(np.float32)
    return np.repeat(1 - ink[..., None], 3, axis=2)


def _batch_of_one(rgb: np.ndarray, device: torch.device) -> Tensor:
    """An (S, S, 3) image as the (1, 3, S, S) batch the encoder takes, on `device`."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)


def clamp(points: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Points held between the corners low and high (broadcast: one photo's, or one per run of a batch)."""
    return torch.maximum(torch.minimum(points, high), low)


_losses: OrderedDict[tuple, tuple[Encoder, SketchLoss]] = OrderedDict()
_losses_lock = threading.Lock()


@lru_cache(maxsize=8)
def bank_grids(seed: int, device: torch.device) -> Tensor:
    """The augmentation bank of a seed: the same for every photo, so made once per seed and device (for the
    last few seeds asked for)."""
    return augmentation_bank(AUGMENTATION_BANK, torch.Generator().manual_seed(seed), CANVAS).to(device)


def draw_kept(paths: tuple[DrawnPath, ...], box: Letterbox, mask: np.ndarray, backend: str) -> Tensor:
    """The artist's paths drawn once on the canvas with their own widths, clipped to the photo: (S, S)."""
    cubics = np.concatenate([p.cubics for p in paths])
    widths = np.concatenate([np.full(len(p.cubics), p.drawn_width * min(box.scale)) for p in paths])
    with torch.no_grad():
        ink = render(torch.from_numpy(box.to_canvas(cubics)).float(), CANVAS, CANVAS,
                     stroke_width=torch.from_numpy(widths).float(), backend=backend)
    return 1 - (1 - ink) * torch.from_numpy(mask)
