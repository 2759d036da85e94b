"""A differentiable rasterizer of open cubic Bezier strokes in plain PyTorch.

CLIPasso needs an image of its strokes with gradients back to the control points. diffvg does this but
is a compiled extension that is hard to install; this module needs only torch ops, so it runs wherever
torch does (CPU, CUDA, Apple MPS).

Method: each cubic is flattened into a polyline within FLATTEN_TOLERANCE px of the curve. The image is
cut into square tiles; each line segment is evaluated only on the tiles its padded bounding box touches,
so the work grows with the strokes' covered area, not with N x pixels. A stroke's coverage of a pixel is
the overlap of a 1 px box, centred at the pixel's distance to the stroke, with the stroke's cross-section
[-w/2, w/2]: the exact area coverage of a straight edge (round caps and joins, as in diffvg), which
matches diffvg's 2x2 supersampled box filter closely. Strokes are black and composited "over" white
paper: image = prod_i (1 - opacity_i * coverage_i). The backward pass is analytic and sparse (see
_Raster), which is what makes it fast on a CPU.

The tiles' work follows the strokes, so its shapes change with them: counted on the host, a sync or more a
step, which on a GPU costs more than the arithmetic and rules out CUDA graphs. On accelerators the
"fixed" rasterizer draws the same coverage with shapes that depend only on (B, N, height, width): a fixed
number of segments per stroke, each evaluated on a fixed window of pixels around it (_render_fixed).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import InputError
from ..options import DIFFVG_HINT

#: Longest polyline segment, px: short segments keep their bounding boxes (the work) small.
SEGMENT_LENGTH = 8.0
#: Largest distance between the polyline and the true curve, px.
FLATTEN_TOLERANCE = 0.1
#: Most segments one stroke is cut into (bounds the work for huge, wildly curved strokes).
MAX_SEGMENTS = 256
#: Tile side, px.
TILE = 8

#: The fixed rasterizer: segments per stroke, uniform in t. A stroke's speed |B'| is at most 3 times its
#: longest control leg, and a uniform step 1/K keeps the chord within |B''| / (8 K^2) of the curve: with
#: 64, every segment of a stroke whose control legs are under 213 px (any stroke within the 224 px canvas
#: that does not fold back on itself) is under FIXED_SPAN, and the polyline is within 0.1 px of any
#: cubic whose second differences |P0 - 2 P1 + P2|, |P1 - 2 P2 + P3| are under 546 px.
FIXED_SEGMENTS = 64
#: Longest segment, px, whose whole ink the fixed rasterizer's window holds (see fixed_window).
FIXED_SPAN = 10.0
#: Widest window the fixed rasterizer takes, px: its work and memory grow with the window's area (about
#: 1 GB for 32 sketches of 16 strokes at 16 px), so strokes wider than this allows (35 px) are drawn by the
#: tiles even off the CPU.
FIXED_MAX_WINDOW = 48

#: "torch" is ours: the tiles on a CPU, the fixed rasterizer elsewhere (ACCELERATOR_RASTER); "tiles" and
#: "fixed" name one of them wherever the points are.
BACKENDS = ("torch", "diffvg", "tiles", "fixed")
#: What "torch" draws with off the CPU (benchmarks set "tiles" to compare the two).
ACCELERATOR_RASTER = "fixed"


def render(
    points: Tensor,
    height: int,
    width: int,
    stroke_width: float | Tensor = 3.0,
    opacity: Tensor | None = None,
    backend: str = "torch",
) -> Tensor:
    """Render N black cubic strokes on white: a (height, width) grey image, 1 = paper, 0 = full ink.

    points: (N, 4, 2) control points in pixels (x right, y down, pixel centres at +0.5).
    stroke_width: the full stroke width in pixels, a float or an (N,) tensor.
    opacity: optional (N,) values in [0, 1] (default 1); not clamped, so its gradient stays exact.
    Differentiable with respect to points, stroke_width and opacity.
    """
    if points.dim() != 3:
        raise ValueError(f"points must be (N, 4, 2), got {tuple(points.shape)}")
    n = points.shape[0]
    widths = _per_stroke(stroke_width, 1, n, points)
    alphas = None if opacity is None else _per_stroke(opacity, 1, n, points)
    widest = None if isinstance(stroke_width, Tensor) else float(stroke_width)
    return render_batch(points[None], height, width, widths, alphas, backend, widest)[0]


def render_batch(
    points: Tensor,
    height: int,
    width: int,
    stroke_width: float | Tensor = 3.0,
    opacity: Tensor | None = None,
    backend: str = "torch",
    widest: float | None = None,
) -> Tensor:
    """Render B sketches at once: points (B, N, 4, 2) -> (B, height, width).

    stroke_width: a float, an (N,) or a (B, N) tensor; opacity: None, (N,) or (B, N).
    widest: for the fixed rasterizer, at least the widest stroke (px): its window is sized from it. Where
    it is None and stroke_width a tensor, the widths are read back from the device (a sync): a step that
    must not wait, or that is captured in a CUDA graph, passes it.
    """
    if points.dim() != 4 or points.shape[-2:] != (4, 2):
        raise ValueError(f"points must be (B, N, 4, 2), got {tuple(points.shape)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    b, n = points.shape[:2]
    widths = _per_stroke(stroke_width, b, n, points)
    if backend == "diffvg":
        alphas = None if opacity is None else _per_stroke(opacity, b, n, points)
        images = [
            _render_diffvg(points[i], int(height), int(width), widths[i], None if alphas is None else alphas[i])
            for i in range(b)
        ]
        return torch.stack(images) if images else points.new_ones(0, int(height), int(width))
    alphas = torch.ones_like(widths) if opacity is None else _per_stroke(opacity, b, n, points)
    if raster_for(backend, points.device) == "fixed":  # for thin strokes: then ask how wide they are
        if widest is None:
            widest = float(stroke_width) if not isinstance(stroke_width, Tensor) else float(widths.detach().amax())
        if raster_for(backend, points.device, widest) == "fixed":
            return _render_fixed(points, widths, alphas, int(height), int(width), fixed_window(widest))
    return _render_tiles(points, widths, alphas, int(height), int(width))


def raster_for(backend: str, device: torch.device, widest: float = 0.0) -> str:
    """The rasterizer that draws for `backend` on `device`, strokes up to `widest` px wide: "tiles", "fixed"
    or "diffvg"."""
    if backend == "torch":
        too_wide = fixed_window(widest) > FIXED_MAX_WINDOW
        return "tiles" if device.type == "cpu" or too_wide else ACCELERATOR_RASTER
    return backend


def _per_stroke(value: float | Tensor, b: int, n: int, like: Tensor) -> Tensor:
    """A float, (N,) or (B, N) per-stroke value as a (B, N) tensor on the points' device and dtype."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t.expand(b, n)
    if t.shape == (n,):
        return t[None].expand(b, n)
    if t.shape == (b, n):
        return t
    raise ValueError(f"per-stroke values must be a number, ({n},) or ({b}, {n}), got {tuple(t.shape)}")


def _segment_counts(ctrl: Tensor) -> Tensor:
    """How many polyline segments each cubic (M, 4, 2) needs, as an int64 (M,) tensor.

    Uniform parameter steps 1/K keep the chord within max|B''| / (8 K^2) of the curve, and
    |B''| <= 6 max(|P0 - 2 P1 + P2|, |P1 - 2 P2 + P3|); the control polygon's length bounds the arc.
    """
    c = ctrl.detach()
    polygon = (c[:, 1:] - c[:, :-1]).norm(dim=-1).sum(dim=1)
    second = (c[:, :-2] - 2 * c[:, 1:-1] + c[:, 2:]).norm(dim=-1).amax(dim=1) * 6
    k = torch.maximum(polygon / SEGMENT_LENGTH, torch.sqrt(second / (8 * FLATTEN_TOLERANCE)))
    k = torch.nan_to_num(k, nan=1.0, posinf=MAX_SEGMENTS)
    return k.ceil().clamp(1, MAX_SEGMENTS).long()


def _render_tiles(points: Tensor, widths: Tensor, alphas: Tensor, height: int, width: int) -> Tensor:
    b, n = points.shape[:2]
    m = b * n
    tiles_y, tiles_x = -(-height // TILE), -(-width // TILE)
    half = (widths.reshape(m) * 0.5).clamp(min=0)
    img = _Raster.apply(points.reshape(m, 4, 2), half, alphas.reshape(m), b, n, tiles_y, tiles_x)
    img = img.reshape(b, tiles_y, tiles_x, TILE, TILE).permute(0, 1, 3, 2, 4)
    return img.reshape(b, tiles_y * TILE, tiles_x * TILE)[:, :height, :width]


def fixed_window(widest: float) -> int:
    """Side (px, even) of the fixed rasterizer's window for strokes up to `widest` px wide.

    A window centred on a segment's midpoint (rounded to a pixel) holds every pixel centre within
    side/2 - 1 of it; a segment's ink reaches |e|/2 + w/2 + 0.5 from its midpoint. So a side of
    FIXED_SPAN + w + 3 holds all the ink of segments up to FIXED_SPAN long: 16 px for 3 px strokes.
    """
    return 2 * math.ceil((FIXED_SPAN + max(float(widest), 0.0) + 3) / 2)


def _render_fixed(points: Tensor, widths: Tensor, alphas: Tensor, height: int, width: int, side: int) -> Tensor:
    """The tiles' image with shapes fixed by (B, N, height, width, side): no host syncs, capturable in a
    CUDA graph, differentiable through autograd.

    Each stroke is cut into FIXED_SEGMENTS segments uniform in t; each segment's distances are computed on
    a side x side window around its midpoint (kept inside the image); each stroke's coverage of a pixel is
    the largest over its segments (coverage falls with distance, so this is the coverage at the nearest
    segment), gathered into a dense (B, N, pixels) buffer; the strokes are then composited densely.
    """
    b, n = points.shape[:2]
    dev, dtype = points.device, points.dtype
    if n == 0:
        return points.new_ones(b, height, width)
    # The buffer is at least a window large, so that a window always fits in it.
    rows, cols = max(height, side), max(width, side)
    t = torch.linspace(0, 1, FIXED_SEGMENTS + 1, device=dev, dtype=dtype)
    vertices = torch.einsum("kj,bnjd->bnkd", _bernstein(t), points)  # (B, N, K + 1, 2)
    a = vertices[:, :, :-1]
    e = vertices[:, :, 1:] - a
    # Window origins: centred on each segment's midpoint, kept inside the buffer (not differentiated).
    mid = torch.nan_to_num((a + 0.5 * e).detach())  # a NaN stroke draws nothing, and indexes nothing wrong
    ox = torch.floor(mid[..., 0] - side / 2 + 0.5).clamp(0, cols - side)
    oy = torch.floor(mid[..., 1] - side / 2 + 0.5).clamp(0, rows - side)
    pix = torch.arange(side, device=dev, dtype=dtype) + 0.5
    # Window pixel (j, i) is pixel (oy + j, ox + i); distances are taken from the segment's start.
    dx = (ox - a[..., 0])[..., None, None] + pix[None, :]  # (B, N, K, 1, side)
    dy = (oy - a[..., 1])[..., None, None] + pix[:, None]  # (B, N, K, side, 1)
    ex, ey = e[..., 0, None, None], e[..., 1, None, None]
    inv = 1.0 / (ex * ex + ey * ey).clamp(min=1e-12)
    along = ((dx * ex + dy * ey) * inv).clamp(0, 1)
    qx, qy = dx - along * ex, dy - along * ey
    # Kept off 0, where sqrt's gradient is infinite (and unused: the pixel is on the centre line).
    d = (qx * qx + qy * qy).clamp(min=1e-12).sqrt()
    cover = _band((widths * 0.5).clamp(min=0)[..., None, None, None], d)[0].nan_to_num(0.0)
    step = torch.arange(side, device=dev)
    index = (oy.long()[..., None, None] + step[:, None]) * cols + ox.long()[..., None, None] + step[None, :]
    coverage = torch.zeros(b, n, rows * cols, device=dev, dtype=dtype).scatter_reduce(
        2, index.reshape(b, n, -1), cover.reshape(b, n, -1), reduce="amax", include_self=False)
    image = _product(1 - alphas[..., None] * coverage)
    return image.reshape(b, rows, cols)[:, :height, :width]


def _product(trans: Tensor) -> Tensor:
    """(B, N, P) -> (B, P): the product over N by pairwise halving. Not torch.prod: its backward asks the
    host whether any factor is 0 (a sync, which a CUDA graph cannot hold)."""
    while trans.shape[1] > 1:
        if trans.shape[1] % 2:
            trans = torch.cat([trans, torch.ones_like(trans[:, :1])], dim=1)
        trans = trans[:, 0::2] * trans[:, 1::2]
    return trans[:, 0]


def _bernstein(t: Tensor) -> Tensor:
    """Cubic Bernstein weights (S, 4) at parameters t (S,)."""
    s = 1 - t
    return torch.stack([s * s * s, 3 * s * s * t, 3 * s * t * t, t * t * t], dim=1)


def _flatten(ctrl: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cut each cubic into its polyline: the stroke of each segment and the Bernstein weights (S, 4)
    of the segment's start and end, so that start = w0 @ ctrl[stroke] and end = w1 @ ctrl[stroke]."""
    k = _segment_counts(ctrl)
    stroke_of_seg = torch.repeat_interleave(torch.arange(ctrl.shape[0], device=ctrl.device), k)
    j = torch.arange(stroke_of_seg.numel(), device=ctrl.device) - (torch.cumsum(k, 0) - k)[stroke_of_seg]
    kf = k.to(ctrl.dtype)[stroke_of_seg]
    return stroke_of_seg, _bernstein(j.to(ctrl.dtype) / kf), _bernstein((j + 1).to(ctrl.dtype) / kf)


def _tile_pairs(
    a: Tensor, end: Tensor, pad: Tensor, tiles_y: int, tiles_x: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Every (segment, tile) pair where the segment's bounding box, grown by pad, touches the tile:
    the segment index and the tile's column and row, one entry per pair."""
    lo = torch.minimum(a, end) - pad[:, None]
    hi = torch.maximum(a, end) + pad[:, None]
    lim = torch.tensor([tiles_x - 1, tiles_y - 1], device=a.device)
    t_lo = torch.floor(lo / TILE).long().clamp(min=0)
    t_hi = torch.minimum(torch.floor(hi / TILE).long(), lim)
    span = (t_hi - t_lo + 1).clamp(min=0)
    count = span[:, 0] * span[:, 1]
    seg = torch.repeat_interleave(torch.arange(a.shape[0], device=a.device), count)
    local = torch.arange(seg.numel(), device=a.device) - (torch.cumsum(count, 0) - count)[seg]
    nx = span[seg, 0]  # at least 1 wherever a pair exists
    return seg, t_lo[seg, 0] + local % nx, t_lo[seg, 1] + local // nx


class _Cells(NamedTuple):
    """Every (segment, tile) pair and the (stroke, tile) cell it falls in, with distances per pixel."""

    seg: Tensor  #: each pair's segment
    tx: Tensor  #: each pair's tile column and row
    ty: Tensor
    of_pair: Tensor  #: each pair's cell
    stroke: Tensor  #: each cell's stroke
    tile: Tensor  #: each cell's tile in the batch's tile grid
    pair_d2: Tensor  #: (pairs, TILE * TILE) squared distance of each tile pixel to the pair's segment
    d2: Tensor  #: (cells, TILE * TILE) squared distance to the nearest segment of the cell's stroke


def _tile_pixels(dev: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Row-major pixel centres (x, y) within a tile."""
    pix = torch.arange(TILE, device=dev, dtype=dtype) + 0.5
    return pix.repeat(TILE), pix.repeat_interleave(TILE)


def _cell_distances(a: Tensor, e: Tensor, half: Tensor, stroke_of_seg: Tensor, n: int, tiles_y: int,
                    tiles_x: int) -> _Cells:
    """Squared distance from each pixel of each touched tile to the segments (start a, vector e) there."""
    dev, dtype = a.device, a.dtype
    n_tiles = tiles_y * tiles_x
    seg, tx, ty = _tile_pairs(a, a + e, (half + 0.5)[stroke_of_seg], tiles_y, tiles_x)
    key = stroke_of_seg[seg] * n_tiles + ty * tiles_x + tx
    cells, cell_of_pair = torch.unique(key, return_inverse=True)  # (stroke, tile) cells
    cell_stroke = cells // n_tiles
    cell_tile = (cell_stroke // max(n, 1)) * n_tiles + cells % n_tiles

    gx, gy = _tile_pixels(dev, dtype)
    ax = (a[seg, 0] - tx * TILE)[:, None]
    ay = (a[seg, 1] - ty * TILE)[:, None]
    ex, ey = e[seg, 0, None], e[seg, 1, None]
    inv = 1.0 / (ex * ex + ey * ey).clamp(min=1e-12)
    # In place where possible: these are the largest tensors, and fresh ones cost page faults.
    dx, dy = gx - ax, gy - ay
    t = torch.mul(dx, ex).addcmul_(dy, ey).mul_(inv).clamp_(0, 1)
    dx.addcmul_(t, ex, value=-1)
    dy.addcmul_(t, ey, value=-1)
    d2 = dx.mul_(dx).addcmul_(dy, dy)
    del dy, t
    cell_d2 = torch.full((cells.numel(), TILE * TILE), float("inf"), dtype=dtype, device=dev)
    index = cell_of_pair[:, None].expand(-1, TILE * TILE)
    cell_d2.scatter_reduce_(0, index, d2, reduce="amin", include_self=False)
    return _Cells(seg, tx, ty, cell_of_pair, cell_stroke, cell_tile, d2, cell_d2)


def _coverage(r: Tensor, d2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Area coverage of a band of half width r by a 1 px box at distance d: the overlap of
    [d - 0.5, d + 0.5] with [-r, r]; and where it ramps. Its far-edge term ramps where
    0 < r + 0.5 - d < 1 and, for strokes thinner than a pixel, its near-edge term where 0 < 0.5 - r - d < 1."""
    cover, outer, inner = _band(r, d2.sqrt())
    return cover, (outer > 0) & (outer < 1), (inner > 0) & (inner < 1)


def _band(r: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The coverage model: the overlap of [d - 0.5, d + 0.5] with [-r, r]; and its far-edge and near-edge
    terms r + 0.5 - d and 0.5 - r - d (each counts where it lies in (0, 1))."""
    outer, inner = r + 0.5 - d, 0.5 - r - d
    return outer.clamp(0, 1) - inner.clamp(0, 1), outer, inner


def _composite(trans: Tensor, cell_tile: Tensor, tiles: int) -> tuple[Tensor, Tensor]:
    """"Over" composite: the product of transmissions per pixel, with fully opaque factors counted apart
    so that the backward pass can still divide one stroke out of the product. (clear, n_opaque) per tile."""
    opaque = trans <= 0
    tile_index = cell_tile[:, None].expand(-1, TILE * TILE)
    clear = torch.ones((tiles, TILE * TILE), dtype=trans.dtype, device=trans.device)
    clear.scatter_reduce_(0, tile_index, torch.where(opaque, 1.0, trans), reduce="prod")
    n_opaque = torch.zeros_like(clear).scatter_add_(0, tile_index, opaque.to(trans.dtype))
    return clear, n_opaque


class _Raster(torch.autograd.Function):
    """Forward: nearest-segment distance per (stroke, tile) cell, coverage, product of transmissions.

    Backward is analytic and sparse: only pixels on a stroke's 1 px anti-aliasing ramp move with its
    points or width, so it touches those pixels and their nearest segment (and, for opacity, the
    covered pixels), instead of replaying every (segment, pixel) distance through autograd.
    """

    @staticmethod
    def forward(
        ctx, ctrl: Tensor, half: Tensor, alpha: Tensor, b: int, n: int, tiles_y: int, tiles_x: int
    ) -> Tensor:
        dtype = ctrl.dtype
        stroke_of_seg, w0, w1 = _flatten(ctrl)
        seg_ctrl = ctrl[stroke_of_seg]
        a = torch.einsum("sk,skd->sd", w0, seg_ctrl)
        e = torch.einsum("sk,skd->sd", w1, seg_ctrl) - a
        cells = _cell_distances(a, e, half, stroke_of_seg, n, tiles_y, tiles_x)
        cover, on_outer, on_inner = _coverage(half[cells.stroke, None], cells.d2)
        trans = 1 - alpha[cells.stroke, None] * cover
        clear, n_opaque = _composite(trans, cells.tile, b * tiles_y * tiles_x)
        image = clear * (n_opaque == 0)

        # Pixels on a ramp and the segment nearest to each (exact ties share the gradient).
        # Only needed for gradients of points or widths: skipped for a plain forward pass.
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            ramp_d2 = torch.where(on_outer | on_inner, cells.d2, -1.0)
            win_pair, win_pix = torch.nonzero(cells.pair_d2 == ramp_d2[cells.of_pair], as_tuple=True)
        else:
            win_pair = win_pix = torch.zeros(0, dtype=torch.long, device=ctrl.device)
        win_cell = cells.of_pair[win_pair]
        ones = torch.ones_like(win_pix, dtype=dtype)
        ties = torch.zeros_like(cover).index_put_((win_cell, win_pix), ones, accumulate=True)
        gx, gy = _tile_pixels(ctrl.device, dtype)
        win_centre = torch.stack([cells.tx[win_pair] * TILE + gx[win_pix], cells.ty[win_pair] * TILE + gy[win_pix]], dim=1)
        ctx.save_for_backward(
            ctrl, alpha, w0, w1, stroke_of_seg, a, e, cells.stroke, cells.tile, cover, trans, clear, n_opaque,
            cells.seg[win_pair], win_centre, win_cell, win_pix, ties[win_cell, win_pix],
            on_outer[win_cell, win_pix].to(dtype), on_inner[win_cell, win_pix].to(dtype),
        )
        return image

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_image: Tensor):
        (ctrl, alpha, w0, w1, stroke_of_seg, a, e, cell_stroke, cell_tile, cover, trans, clear, n_opaque,
         w_seg, p, w_cell, w_pix, w_ties, on_outer, on_inner) = ctx.saved_tensors
        # d image / d (alpha * cover) of a stroke = -(product of the other strokes' transmissions).
        clear, n_opaque = clear[cell_tile], n_opaque[cell_tile]
        opaque = trans <= 0
        others = torch.where(
            opaque, clear * (n_opaque == 1), clear / torch.where(opaque, 1.0, trans) * (n_opaque == 0)
        )
        g_ac = -grad_image[cell_tile] * others  # dL / d(alpha * cover), per cell pixel
        grad_ctrl = grad_half = grad_alpha = None
        if ctx.needs_input_grad[2]:
            grad_alpha = torch.zeros_like(alpha).index_add_(0, cell_stroke, (g_ac * cover).sum(dim=1))
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            g_cover = (g_ac * alpha[cell_stroke, None])[w_cell, w_pix] / w_ties
            stroke = cell_stroke[w_cell]
            if ctx.needs_input_grad[1]:  # d cover / d half width: +1 on either ramp
                grad_half = torch.zeros_like(alpha).index_add_(0, stroke, g_cover * (on_outer + on_inner))
            if ctx.needs_input_grad[0]:
                g_dist = g_cover * (on_inner - on_outer)  # d cover / d distance: -1 far edge, +1 near
                sa, se = a[w_seg], e[w_seg]
                t = (((p - sa) * se).sum(1) / (se * se).sum(1).clamp(min=1e-12)).clamp(0, 1)
                q = p - sa - t[:, None] * se
                unit = q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)
                # distance = |p - a - t e| at its minimising t: d/da = -unit, d/de = -t unit; the
                # segment's end is a + e.
                g_end = -(g_dist * t)[:, None] * unit
                g_start = -g_dist[:, None] * unit - g_end
                g_a = torch.zeros_like(a).index_add_(0, w_seg, g_start)
                g_b = torch.zeros_like(a).index_add_(0, w_seg, g_end)
                per_seg = w0[:, :, None] * g_a[:, None, :] + w1[:, :, None] * g_b[:, None, :]
                grad_ctrl = torch.zeros_like(ctrl).index_add_(0, stroke_of_seg, per_seg)
        return grad_ctrl, grad_half, grad_alpha, None, None, None, None


def check_backend(backend: str, device: torch.device) -> None:
    """Raise InputError unless `backend` can render on `device` here (for diffvg: pydiffvg imports, and
    runs on the CPU, or on CUDA where it was built with CUDA). Cheap: call it before slow work."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "diffvg":
        _diffvg_on(device)


def _diffvg_on(device: torch.device):
    """pydiffvg, told to render on `device` (it keeps one device for all calls, picked at its import);
    InputError where it cannot."""
    pydiffvg = _pydiffvg()
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"the diffvg renderer runs on the CPU or CUDA, not on {device.type}; "
                         "use device cpu or renderer auto")
    if device.type == "cuda" and not diffvg_has_cuda():
        raise InputError("this pydiffvg was built without CUDA: rebuild it with DIFFVG_CUDA=1, "
                         "or use device cpu or renderer auto")
    pydiffvg.set_use_gpu(device.type == "cuda")
    pydiffvg.set_device(device)
    return pydiffvg


def _pydiffvg():
    """The pydiffvg module, or an InputError that says how to get it."""
    try:
        import pydiffvg  # here, not at the top: it is optional, and only the diffvg backend needs it
    except ImportError as exc:
        raise InputError(f"the diffvg renderer needs pydiffvg, which does not import here ({exc}): "
                         f"{DIFFVG_HINT}; or use renderer auto") from None
    return pydiffvg


@functools.cache
def diffvg_has_cuda() -> bool:
    """Whether pydiffvg was built with CUDA. Its C++ side says so only by refusing a GPU scene, so this
    renders a 1x1 one: the scene is laid out on the CPU, and a CPU build refuses it before any CUDA call,
    so the answer is False on a machine without a GPU too."""
    pydiffvg = _pydiffvg()
    path = pydiffvg.Path(num_control_points=torch.tensor([0]), points=torch.zeros(2, 2),
                         stroke_width=torch.tensor(1.0), is_closed=False)
    group = pydiffvg.ShapeGroup(shape_ids=torch.tensor([0]), fill_color=None, stroke_color=torch.ones(4))
    pydiffvg.set_device(torch.device("cpu"))
    scene = pydiffvg.RenderFunction.serialize_scene(1, 1, [path], [group])
    try:
        pydiffvg.set_device(torch.device("cuda"))
        pydiffvg.RenderFunction.apply(1, 1, 1, 1, 0, None, *scene)
    except RuntimeError as exc:
        if "not compiled with GPU" in str(exc):
            return False
        raise
    finally:
        pydiffvg.set_device(torch.device("cpu"))
    return True


def _render_diffvg(points: Tensor, height: int, width: int, widths: Tensor, alphas: Tensor | None) -> Tensor:
    """The same image through diffvg (2x2 supersampling): points (N, 4, 2), widths and alphas (N,).

    pydiffvg reads its buffers as float32 whatever their dtype, and renders on the device it was last
    told about: so each call hands it float32 copies (gradients flow back through the casts), names the
    points' device, and returns the image in the points' dtype.
    """
    device = points.device
    pydiffvg = _diffvg_on(device)
    if points.shape[0] == 0:
        return points.new_ones(height, width)
    points32 = points.float()
    half = widths.float() * 0.5  # diffvg takes a half width
    alphas32 = torch.ones_like(half) if alphas is None else alphas.float()
    black = torch.zeros(3, device=device)
    shapes, groups = [], []
    for i in range(points.shape[0]):
        shapes.append(
            pydiffvg.Path(num_control_points=torch.tensor([2]), points=points32[i].contiguous(),
                          stroke_width=half[i], is_closed=False)
        )
        color = torch.cat([black, alphas32[i : i + 1]])
        groups.append(pydiffvg.ShapeGroup(shape_ids=torch.tensor([i]), fill_color=None, stroke_color=color))
    args = pydiffvg.RenderFunction.serialize_scene(width, height, shapes, groups)
    rgba = pydiffvg.RenderFunction.apply(width, height, 2, 2, 0, None, *args)
    alpha = rgba[:, :, 3]
    image = rgba[:, :, 0] * alpha + (1 - alpha)  # composite over white; ink is black
    return image.to(points.dtype)
