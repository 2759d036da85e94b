"""The sketch loss: geometric (intermediate features) plus semantic (embedding), over augmented views.

The photo's side never needs gradients, so its features are computed once per augmentation in a fixed
bank and reused: each step pays only for the sketch's forward and backward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..encoders import Encoder

SEMANTIC_WEIGHT = 0.1
#: Photo views per encoder pass when the photo's features are computed, by device type (others: all at once).
#: On a CPU one view at a time peaked at 100 MB above the encoder instead of 550 MB for all 25 views (the
#: activations of a pass live together), and ran faster, the activations staying in cache.
PHOTO_CHUNK = {"cpu": 1}


def augmentation_bank(count: int, generator: torch.Generator, size: int) -> Tensor:
    """`count` random warps as (count, size, size, 2) sampling grids for `warp`.

    Each is a random perspective distortion (scale 0.5) followed by a random square crop of 80-100 % of the
    area, the reference's augmentation, applied identically to sketch and photo.
    """
    grids = []
    for _ in range(count):
        h = _perspective(generator, 0.5) @ _crop(generator, 0.8)
        grids.append(_grid(h, size))
    return torch.stack(grids)


def _perspective(g: torch.Generator, distortion: float) -> Tensor:
    """Homography (normalised coords, output -> input) moving each corner inward by up to distortion/2."""
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    shift = torch.rand(4, 2, generator=g, dtype=torch.float64) * distortion  # in [0, d] of the half-size 1
    moved = corners - corners.sign() * shift
    return _homography(corners, moved)


def _crop(g: torch.Generator, min_scale: float) -> Tensor:
    """Affine map (normalised coords, output -> input) of a random square crop of min_scale..1 of the area."""
    area = min_scale + (1 - min_scale) * float(torch.rand(1, generator=g, dtype=torch.float64))
    side = math.sqrt(area)
    cx, cy = ((torch.rand(2, generator=g, dtype=torch.float64) * 2 - 1) * (1 - side)).tolist()
    return torch.tensor([[side, 0, cx], [0, side, cy], [0, 0, 1]], dtype=torch.float64)


def _homography(src: Tensor, dst: Tensor) -> Tensor:
    """3x3 H with H @ [src, 1] ~ [dst, 1] for four point pairs (direct linear transform)."""
    rows = []
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist()):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    a = torch.tensor(rows, dtype=torch.float64)
    b = dst.reshape(-1)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones(1, dtype=torch.float64)]).view(3, 3)


def _grid(h: Tensor, size: int) -> Tensor:
    """Sampling grid (size, size, 2) for grid_sample: output pixel -> input position through H."""
    t = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1) @ h.T
    return (pts[..., :2] / pts[..., 2:]).float()


def warp(images: Tensor, grids: Tensor) -> Tensor:
    """Warp (B, C, S, S) images on white paper with (B, S, S, 2) grids; outside is white."""
    return F.grid_sample(images - 1.0, grids, mode="bilinear", padding_mode="zeros", align_corners=False) + 1.0


def _unit(t: Tensor) -> Tensor:
    """Unit-normalise over channels at every location (as LPIPS does): compares patterns, not contrast."""
    return t * torch.rsqrt(t.square().sum(dim=1, keepdim=True) + 1e-10)


def _view_features(encoder: Encoder, image: Tensor, grids: Tensor) -> tuple[list[Tensor], Tensor]:
    """The encoder's stage maps and embeddings of an image's plain view and its views under every grid."""
    views = torch.cat([image, warp(image.expand(len(grids), -1, -1, -1), grids)])
    passes = [encoder.encode(v) for v in views.split(PHOTO_CHUNK.get(image.device.type, len(views)))]
    return [torch.cat(stage) for stage in zip(*(m for m, _ in passes))], torch.cat([e for _, e in passes])


def _target_maps(photo: list[Tensor], lines: list[Tensor], line_weight: float) -> list[Tensor]:
    """The geometric term's target at each stage: the photo's and its contour drawing's unit maps, mixed.

    Strokes on white cannot make a photo's fur, foliage or shading, so against the photo alone the early
    stages mostly measure a gap no sketch closes; a line drawing of the photo's contours is something
    strokes can match. The squared distance to the mix is the mix of the squared distances to each, less
    a constant: the loss pulls towards both, by their weights.
    """
    return [(1 - line_weight) * _unit(p) + line_weight * _unit(q) for p, q in zip(photo, lines)]


class SketchLoss:
    """Loss of sketch views against the photo under the same views, with the photo's features cached.

    The geometric term is a weighted mean over locations, the weight being the subject map `focus`:
    photo texture in the background then pulls no strokes away from the subject. One loss can serve
    several photos at once (`joined`): the sketches of a batch are then compared in one encoder pass, each
    with its own photo's views.
    """

    def __init__(self, encoder: Encoder, photo: Tensor, grids: Tensor, focus: Tensor | None = None,
                 lines: Tensor | None = None, line_weight: float = 0.0) -> None:
        """photo: (1, 3, S, S); grids: (K, S, S, 2) augmentation bank; focus: (S, S) weights in [0, 1];
        lines: (1, 3, S, S) the photo's contours drawn as strokes are, which the geometric term's target
        leans towards by line_weight (see `_target_maps`). View 0 is the plain photo, view k + 1 the photo
        under grids[k]."""
        self.encoder = encoder
        self.grids = grids
        self.bank = len(grids)
        with torch.no_grad():
            maps, emb = _view_features(encoder, photo, grids)
            if lines is not None and line_weight > 0:
                maps = _target_maps(maps, _view_features(encoder, lines, grids)[0], line_weight)
            else:
                maps = [_unit(m) for m in maps]
            if focus is None:
                focus = torch.ones(photo.shape[-2:], device=photo.device)
            f = focus[None, None].to(photo)
            # warp() treats 0 as white: warp 1 - focus so that outside the photo has no weight.
            fviews = torch.cat([f, 1 - warp(1 - f.expand(len(grids), -1, -1, -1), grids)])
        self.photo_maps = maps
        self.weights = [F.adaptive_avg_pool2d(fviews, m.shape[-2:])[:, 0] for m in maps]
        self.weights = [w / w.sum(dim=(1, 2), keepdim=True).clamp_min(1e-8) for w in self.weights]
        self.photo_emb = F.normalize(emb, dim=-1)

    @classmethod
    def joined(cls, losses: list["SketchLoss"]) -> "SketchLoss":
        """One loss over several photos (same encoder, same bank size): photo i's plain view is view
        i * (bank + 1) and its augmentation k is grids[i * bank + k]. One photo's loss is itself."""
        if len(losses) == 1:
            return losses[0]
        out = cls.__new__(cls)
        out.encoder, out.bank = losses[0].encoder, losses[0].bank
        out.grids = torch.cat([loss.grids for loss in losses])
        out.photo_maps = [torch.cat(stage) for stage in zip(*(loss.photo_maps for loss in losses))]
        out.weights = [torch.cat(stage) for stage in zip(*(loss.weights for loss in losses))]
        out.photo_emb = torch.cat([loss.photo_emb for loss in losses])
        return out

    def plain_view(self, photo: int) -> int:
        """The view index of photo `photo`'s plain view (0 for a loss of one photo)."""
        return photo * (self.bank + 1)

    def __call__(self, sketches: Tensor, plain: Tensor, picks: Tensor, owners: Tensor) -> tuple[Tensor, Tensor]:
        """The loss of B sketches under their views, in one encoder pass.

        sketches: (B, 3, S, S) with gradients; plain: (B,) each sketch's plain view (`plain_view`);
        picks: (M,) augmentations (indices into the joined bank); owners: (M,) the sketch each warps.
        Returns the total over all views and each sketch's plain-view loss (B,).
        """
        images = torch.cat([sketches, warp(sketches[owners], self.grids[picks])]) if len(picks) else sketches
        # Augmentation k of photo i is view i * (bank + 1) + 1 + k, and picks hold i * bank + k.
        idx = torch.cat([plain, picks + picks // self.bank + 1])
        per_view = self._per_view(images, idx)
        return per_view.sum(), per_view[: len(sketches)]

    def _per_view(self, images: Tensor, idx: Tensor) -> Tensor:
        """Loss of each of (B, 3, S, S) images against the photo's view idx[b]."""
        per_location, emb = self._geometric(images, idx)
        semantic = SEMANTIC_WEIGHT * (1 - (F.normalize(emb, dim=-1) * self.photo_emb[idx]).sum(-1))
        return semantic + sum(e.sum(dim=(1, 2)) for e in per_location)

    def _geometric(self, images: Tensor, idx: Tensor) -> tuple[list[Tensor], Tensor]:
        """Per stage, the subject-weighted feature distance at each location (B, H_i, W_i); the embedding."""
        maps, emb = self.encoder.encode(images)
        per_location = [
            (_unit(m) - pm[idx]).square().sum(dim=1) * w[idx] for m, pm, w in zip(maps, self.photo_maps, self.weights)
        ]
        return per_location, emb

    @torch.no_grad()
    def stroke_drop_losses(self, renders: Tensor, views: Tensor, chunk: int = 16) -> Tensor:
        """Plain-view loss of each image in (B, S, S) sketch renders (e.g. a sketch minus one stroke)
        against the plain view views[b], `chunk` images per encoder pass."""
        return torch.cat([self._per_view(r[:, None].expand(-1, 3, -1, -1), v)
                          for r, v in zip(renders.split(chunk), views.split(chunk))])

    @torch.no_grad()
    def error_maps(self, renders: Tensor, views: Tensor) -> Tensor:
        """(B, S, S) maps of where each plain sketch differs most from its photo view, weighted by the subject."""
        size = renders.shape[-1]
        per_location, _ = self._geometric(renders[:, None].expand(-1, 3, -1, -1), views)
        total = torch.zeros(len(renders), 1, size, size, device=renders.device)
        for err in per_location:
            share = err[:, None] / err.sum(dim=(1, 2)).clamp_min(1e-12)[:, None, None, None]
            total = total + F.interpolate(share, size=(size, size), mode="bilinear")
        return total[:, 0]
