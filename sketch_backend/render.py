"""A differentiable rasterizer of open cubic Bezier strokes in plain PyTorch.

CLIPasso needs an image of its strokes with gradients back to the control points. diffvg does this but
is a compiled extension that is hard to install; this module needs only torch ops, so it runs wherever
torch does (CPU, CUDA, Apple MPS).

Method: each cubic is flattened into a polyline fine enough to stay within a small fraction of a pixel
of the curve. The image is cut into square tiles; each line segment is evaluated only on the tiles its
padded bounding box touches, so the work grows with the strokes' covered area, not with N x pixels.
A stroke covers a pixel by a 1 px linear ramp of (distance to the stroke - half width), which is the
exact area coverage of a straight edge and matches diffvg's 2x2 supersampled box filter closely.
Strokes are black and composited "over" white paper: image = prod_i (1 - opacity_i * coverage_i).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Longest polyline segment, px: short segments keep their bounding boxes (the work) small.
SEGMENT_LENGTH = 8.0
#: Largest distance between the polyline and the true curve, px.
FLATTEN_TOLERANCE = 0.05
#: Most segments one stroke is cut into (bounds the work for huge, wildly curved strokes).
MAX_SEGMENTS = 256
#: Tile side, px.
TILE = 8
#: Smallest 1 - coverage kept before the log, so fully covered pixels keep finite gradients.
_MIN_TRANSMISSION = 1e-6

BACKENDS = ("torch", "diffvg")


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
    if backend == "diffvg":
        return _render_diffvg(points, height, width, stroke_width, opacity)
    return render_batch(
        points[None],
        height,
        width,
        stroke_width if not isinstance(stroke_width, Tensor) else stroke_width[None],
        None if opacity is None else opacity[None],
        backend,
    )[0]


def render_batch(
    points: Tensor,
    height: int,
    width: int,
    stroke_width: float | Tensor = 3.0,
    opacity: Tensor | None = None,
    backend: str = "torch",
) -> Tensor:
    """Render B sketches at once: points (B, N, 4, 2) -> (B, height, width).

    stroke_width: a float, an (N,) or a (B, N) tensor; opacity: None, (N,) or (B, N).
    """
    if points.dim() != 4 or points.shape[-2:] != (4, 2):
        raise ValueError(f"points must be (B, N, 4, 2), got {tuple(points.shape)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    b, n = points.shape[:2]
    if backend == "diffvg":
        widths = _per_stroke(stroke_width, b, n, points)
        alphas = None if opacity is None else _per_stroke(opacity, b, n, points)
        return torch.stack(
            [
                _render_diffvg(points[i], height, width, widths[i], None if alphas is None else alphas[i])
                for i in range(b)
            ]
        )
    widths = _per_stroke(stroke_width, b, n, points)
    alphas = torch.ones_like(widths) if opacity is None else _per_stroke(opacity, b, n, points)
    return _render_tiles(points, widths, alphas, int(height), int(width))


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
    dev, dtype = points.device, points.dtype
    m = b * n
    ctrl = points.reshape(m, 4, 2)
    half = (widths.reshape(m) * 0.5).clamp(min=0)
    alpha = alphas.reshape(m)

    # Flatten: stroke m gets K_m segments, K_m + 1 vertices at t = j / K_m.
    k = _segment_counts(ctrl)
    n_seg = int(k.sum())
    stroke_of_seg = torch.repeat_interleave(torch.arange(m, device=dev), k)
    seg_start = torch.cumsum(k, 0) - k
    j = torch.arange(n_seg, device=dev) - seg_start[stroke_of_seg]
    kf = k.to(dtype)[stroke_of_seg]
    t0 = j.to(dtype) / kf
    t1 = (j + 1).to(dtype) / kf
    seg_ctrl = ctrl[stroke_of_seg]  # (S, 4, 2)
    a = _bezier(seg_ctrl, t0)
    e = _bezier(seg_ctrl, t1) - a  # segment direction

    # Tiles each segment's padded bounding box touches.
    tiles_y = -(-height // TILE)
    tiles_x = -(-width // TILE)
    pad = (half.detach() + 0.5)[stroke_of_seg]
    lo = torch.minimum(a, a + e).detach() - pad[:, None]
    hi = torch.maximum(a, a + e).detach() + pad[:, None]
    lim = torch.tensor([tiles_x - 1, tiles_y - 1], device=dev)
    t_lo = torch.floor(lo / TILE).long().clamp(min=0)
    t_hi = torch.minimum(torch.floor(hi / TILE).long(), lim)
    span = (t_hi - t_lo + 1).clamp(min=0)
    count = span[:, 0] * span[:, 1]
    seg_of_pair = torch.repeat_interleave(torch.arange(n_seg, device=dev), count)
    local = torch.arange(seg_of_pair.numel(), device=dev) - (torch.cumsum(count, 0) - count)[seg_of_pair]
    nx = span[seg_of_pair, 0]
    tx = t_lo[seg_of_pair, 0] + local % nx.clamp(min=1)
    ty = t_lo[seg_of_pair, 1] + local // nx.clamp(min=1)
    stroke_of_pair = stroke_of_seg[seg_of_pair]
    key = stroke_of_pair * (tiles_y * tiles_x) + ty * tiles_x + tx
    uniq, cell_of_pair = torch.unique(key, return_inverse=True)  # (stroke, tile) cells
    n_cells = uniq.numel()

    # Distance from each tile pixel to each segment, then the nearest segment per (stroke, tile) cell.
    oy, ox = torch.meshgrid(torch.arange(TILE, device=dev), torch.arange(TILE, device=dev), indexing="ij")
    px = (tx * TILE)[:, None].to(dtype) + ox.reshape(1, -1).to(dtype) + 0.5
    py = (ty * TILE)[:, None].to(dtype) + oy.reshape(1, -1).to(dtype) + 0.5
    ax, ay = a[seg_of_pair, 0, None], a[seg_of_pair, 1, None]
    ex, ey = e[seg_of_pair, 0, None], e[seg_of_pair, 1, None]
    dx, dy = px - ax, py - ay
    inv = 1.0 / (ex * ex + ey * ey).clamp(min=1e-12)
    t = ((dx * ex + dy * ey) * inv).clamp(0, 1)
    qx, qy = dx - t * ex, dy - t * ey
    dist = torch.sqrt((qx * qx + qy * qy).clamp(min=1e-12))
    cell_dist = torch.full((n_cells, TILE * TILE), float("inf"), dtype=dtype, device=dev)
    cell_dist = cell_dist.scatter_reduce(
        0, cell_of_pair[:, None].expand(-1, TILE * TILE), dist, reduce="amin", include_self=False
    )

    # Coverage per cell, then the "over" composite of all strokes as a sum of log transmissions.
    cell_stroke = uniq // (tiles_y * tiles_x)
    cell_tile = (cell_stroke // n) * (tiles_y * tiles_x) + uniq % (tiles_y * tiles_x)
    cover = (half[cell_stroke, None] + 0.5 - cell_dist).clamp(0, 1) * alpha[cell_stroke, None]
    log_t = torch.log((1 - cover).clamp(min=_MIN_TRANSMISSION))
    total = torch.zeros((b * tiles_y * tiles_x, TILE * TILE), dtype=dtype, device=dev)
    total = total.index_add(0, cell_tile, log_t)
    img = torch.exp(total).reshape(b, tiles_y, tiles_x, TILE, TILE)
    img = img.permute(0, 1, 3, 2, 4).reshape(b, tiles_y * TILE, tiles_x * TILE)
    return img[:, :height, :width]


def _bezier(ctrl: Tensor, t: Tensor) -> Tensor:
    """Points at parameters t (S,) on cubics ctrl (S, 4, 2)."""
    s = 1 - t
    w = torch.stack([s * s * s, 3 * s * s * t, 3 * s * t * t, t * t * t], dim=1)  # (S, 4)
    return (w[:, :, None] * ctrl).sum(dim=1)


def _render_diffvg(
    points: Tensor, height: int, width: int, stroke_width: float | Tensor, opacity: Tensor | None
) -> Tensor:
    """The same image through diffvg (2x2 supersampling), for comparison where pydiffvg is installed."""
    try:
        import pydiffvg
    except ImportError as exc:
        raise RuntimeError(
            "backend='diffvg' needs the pydiffvg package (https://github.com/BachiLi/diffvg); "
            "use backend='torch' instead"
        ) from exc
    n = points.shape[0]
    widths = _per_stroke(stroke_width, 1, n, points)[0]
    alphas = torch.ones_like(widths) if opacity is None else _per_stroke(opacity, 1, n, points)[0]
    shapes, groups = [], []
    for i in range(n):
        shapes.append(
            pydiffvg.Path(
                num_control_points=torch.tensor([2]),
                points=points[i],
                stroke_width=widths[i] * 0.5,  # diffvg takes a half width
                is_closed=False,
            )
        )
        color = torch.cat([torch.zeros(3, dtype=points.dtype, device=points.device), alphas[i : i + 1]])
        groups.append(pydiffvg.ShapeGroup(shape_ids=torch.tensor([i]), fill_color=None, stroke_color=color))
    args = pydiffvg.RenderFunction.serialize_scene(width, height, shapes, groups)
    rgba = pydiffvg.RenderFunction.apply(width, height, 2, 2, 0, None, *args)
    alpha = rgba[:, :, 3]
    return rgba[:, :, 0] * alpha + (1 - alpha)  # composite over white; ink is black
