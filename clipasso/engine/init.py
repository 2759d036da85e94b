"""Where the first strokes go: on the photo's edges, where the encoder looks (saliency x edges).

Initialisation decides most of a sketch's quality and how fast it converges: strokes that start on
salient contours only need to settle, not to travel.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

from ..options import Init

XDOG = dict(sigma=0.8, k=10.0, gamma=0.98, phi=200.0, eps=-0.1)
TEMPERATURE = 0.3
#: Each next control point is the previous one plus U(-r, r) x canvas size.
POINT_SPREAD = 0.025


#: Contours for traced strokes: Canny's Gaussian (canvas pixels), and the share of the photo's pixels whose
#: gradient is weaker than Canny's upper threshold (its lower one is half that). A share, not an absolute
#: threshold, so that a low-contrast photo still has its contours: 5-12 % of the photo comes out as
#: edge on the twelve photos of benchmarks/quality.py, lines one pixel wide along outlines and parts.
#: Sigma 1.5 or the 95th percentile ended at a higher loss there (README, Quality).
CONTOUR_SIGMA = 1.0
CONTOUR_QUANTILE = 0.9
#: Canny's upper threshold in the 16-bit gradients it is given (they are scaled to put it there).
GRADIENT_SCALE = 1000.0

Box = tuple[int, int, int, int]


def _grey(rgb: np.ndarray, box: Box | None) -> tuple[np.ndarray, Box]:
    """The photo's part of the canvas in grey, and `box` (x, y, w, h; the whole canvas where None)."""
    box = box if box is not None else (0, 0, rgb.shape[1], rgb.shape[0])
    x, y, w, h = box
    return rgb[y : y + h, x : x + w] @ np.array([0.299, 0.587, 0.114], dtype=np.float32), box


def _on_canvas(part: np.ndarray, shape: tuple[int, ...], box: Box) -> np.ndarray:
    """The photo's edge map `part` placed at `box` on an empty (H, W) canvas map of `shape`."""
    x, y, w, h = box
    edges = np.zeros(shape[:2], dtype=bool)
    edges[y : y + h, x : x + w] = part
    return edges


def contour_edges(rgb: np.ndarray, box: Box | None = None) -> np.ndarray:
    """Binary map (H, W) of an RGB image's contours in [0, 1]: Canny (OpenCV), thresholds from the photo's
    own gradients (CONTOUR_QUANTILE). One pixel wide, so that a stroke started on one can follow it.

    `box` (x, y, w, h) limits it to where the photo is on a letterboxed canvas, so the paper's border
    does not count as an edge.
    """
    grey, box = _grey(rgb, box)
    smooth = gaussian_filter(grey, CONTOUR_SIGMA).astype(np.float32)
    dx, dy = cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    high = float(np.quantile(np.hypot(dx, dy), CONTOUR_QUANTILE))
    if high <= 1e-6:  # a flat photo has no contours
        return np.zeros(rgb.shape[:2], dtype=bool)
    # Canny on the float gradients, scaled so that the upper threshold is GRADIENT_SCALE in OpenCV's 16-bit
    # integers: the same contours whatever the photo's contrast, none lost to 8-bit rounding.
    dx, dy = (np.clip(d * (GRADIENT_SCALE / high), -32767, 32767).astype(np.int16) for d in (dx, dy))
    found = cv2.Canny(dx, dy, GRADIENT_SCALE / 2, GRADIENT_SCALE, L2gradient=True)
    return _on_canvas(found > 0, rgb.shape, box)


def xdog_edges(rgb: np.ndarray, box: Box | None = None) -> np.ndarray:
    """Binary edge map (H, W) of an RGB image in [0, 1]: extended difference of Gaussians, Otsu-cut (the
    paper's), thick where dark regions meet bright ones.

    `box` (x, y, w, h) limits it to where the photo is on a letterboxed canvas, so the paper's border
    does not count as an edge.
    """
    grey, box = _grey(rgb, box)
    p = XDOG
    d = gaussian_filter(grey, p["sigma"]) - p["gamma"] * gaussian_filter(grey, p["sigma"] * p["k"])
    ink = -np.tanh(p["phi"] * np.minimum(d - p["eps"], 0.0))  # 0 on paper, towards 1 on edges
    found = ink > otsu_threshold(ink[ink > 0]) if (ink > 0).sum() > 16 else np.zeros_like(ink, dtype=bool)
    return _on_canvas(found, rgb.shape, box)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best splits `values` into two classes (Otsu 1979)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def init_distribution(saliency: np.ndarray, edges: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Probability of each pixel to start a stroke: softmax(saliency / T) over salient edge pixels.

    Falls back to salient pixels, then to the whole image, when a plainer map has nothing in it (a blank
    photo still gets a sketch).
    """
    for support in (edges * saliency * mask > 0, saliency * mask > 0, mask > 0):
        if support.any():
            break
    logits = np.where(support, saliency / TEMPERATURE, -np.inf)
    w = np.exp(logits - logits[support].max())
    return w / w.sum()


def initial_strokes(prob: np.ndarray, n: int, generator: torch.Generator) -> Tensor:
    """n strokes (n, 4, 2) in canvas pixels: a start pixel drawn from `prob` without replacement (with,
    when there are fewer candidates than strokes), then three points each a short random step on."""
    h, w = prob.shape
    flat = torch.from_numpy(prob.reshape(-1)).double()
    available = int((flat > 0).sum())
    idx = torch.multinomial(flat, n, replacement=available < n, generator=generator)
    start = torch.stack([(idx % w).double() + 0.5, (idx // w).double() + 0.5], dim=-1)
    steps = (torch.rand(n, 3, 2, generator=generator, dtype=torch.float64) * 2 - 1) * POINT_SPREAD * max(h, w)
    points = torch.cat([start[:, None], start[:, None] + torch.cumsum(steps, dim=1)], dim=1)
    return points.float()


def edge_tangents(rgb: np.ndarray, box: Box | None = None, sigma: float = 1.5, rho: float = 3.0) -> np.ndarray:
    """Unit tangent (H, W, 2) of the image's contours: the structure tensor's minor eigenvector.

    `box` (x, y, w, h) limits it to where the photo is on a letterboxed canvas (elsewhere the tangents
    point along x): the photo's border with the paper is the strongest edge near it, and a stroke traced
    from a start there would follow the border instead of the photo's own contours.
    """
    grey, (x, y, w, h) = _grey(rgb, box)
    tangents = np.zeros((*rgb.shape[:2], 2), dtype=np.float32)
    tangents[..., 0] = 1.0
    if min(grey.shape) < 2:  # a photo one canvas pixel thin: no gradient to read, and no contour
        return tangents
    grey = gaussian_filter(grey, sigma)
    gy, gx = np.gradient(grey)
    jxx, jxy, jyy = (gaussian_filter(a, rho) for a in (gx * gx, gx * gy, gy * gy))
    # The gradient direction's angle is half the angle of (jxx - jyy, 2 jxy); the tangent is normal to it.
    theta = 0.5 * np.arctan2(2 * jxy, jxx - jyy) + np.pi / 2
    tangents[y : y + h, x : x + w] = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    return tangents


def spread_starts(prob: np.ndarray, n: int, radius: float, generator: torch.Generator) -> np.ndarray:
    """n start pixels (n, 2) as (x, y) centres, drawn one by one from `prob`, each draw damping the
    probability around itself so that strokes spread over the subject instead of piling up."""
    h, w = prob.shape
    p = prob.astype(np.float64).copy()
    ys, xs = np.arange(h), np.arange(w)
    starts = []
    for _ in range(n):
        flat = p.reshape(-1)
        if flat.sum() <= 0:
            flat = prob.reshape(-1).astype(np.float64)
        i = draw_index(flat, generator)
        x, y = i % w, i // w
        starts.append((x + 0.5, y + 0.5))
        # The damping is separable: one outer product of two Gaussian rows, not an exponential per pixel.
        p *= 1 - np.outer(np.exp(-((ys - y) ** 2) / (2 * radius**2)), np.exp(-((xs - x) ** 2) / (2 * radius**2)))
    return np.array(starts, dtype=np.float32)


def draw_index(weights: np.ndarray, generator: torch.Generator) -> int:
    """One index drawn with probability proportional to `weights` (>= 0, some > 0), from one uniform number
    of `generator` through the cumulative sum: torch.multinomial draws an exponential per entry (1.6 ms for
    a canvas' 50,000 pixels, 40 ms a sketch's start)."""
    cumulative = np.cumsum(weights)
    u = float(torch.rand((), generator=generator, dtype=torch.float64)) * cumulative[-1]
    i = int(np.searchsorted(cumulative, u, side="right"))
    if i >= len(weights) or weights[i] <= 0:  # u within rounding of the total: the last entry that can be drawn
        i = int(np.flatnonzero(weights)[-1])
    return i


def traced_strokes(
    prob: np.ndarray, tangents: np.ndarray, n: int, length: float, generator: torch.Generator,
    region: np.ndarray | None = None,
) -> Tensor:
    """n strokes (n, 4, 2) in canvas pixels that start on salient edges and follow the contour there.

    Each stroke is traced from its start point along the tangent field, both ways, in three steps of
    length/3: strokes begin lying on contours, so the optimisation only has to settle them. Where `region`
    (S, S) bool is given, a trace ends where its next point would leave it (the rest of the stroke's
    points stay there): a stroke that starts on the subject does not run off it onto the background.
    """
    h, w = prob.shape
    starts = spread_starts(prob, n, radius=length / 2, generator=generator)
    strokes = np.zeros((n, 4, 2), dtype=np.float32)
    step = length / 3

    def tangent_at(p: np.ndarray, previous: np.ndarray) -> np.ndarray:
        x = int(np.clip(p[0], 0, w - 1))
        y = int(np.clip(p[1], 0, h - 1))
        t = tangents[y, x]
        return t if float(t @ previous) >= 0 else -t

    def within(p: np.ndarray) -> bool:
        if region is None:
            return True
        x, y = int(np.floor(p[0])), int(np.floor(p[1]))
        return 0 <= x < w and 0 <= y < h and bool(region[y, x])

    for k, s in enumerate(starts):
        t0 = tangents[int(s[1]), int(s[0])]
        mid_a = s - t0 * step / 2  # trace half a step back, then three steps forward
        pts = [mid_a if within(mid_a) else s]
        direction = t0
        for _ in range(3):
            direction = tangent_at(pts[-1], direction)
            ahead = pts[-1] + direction * step
            pts.append(ahead if within(ahead) else pts[-1])  # once held, the same step is held again
        strokes[k] = np.array(pts)
    jitter = (torch.rand(n, 4, 2, generator=generator) * 2 - 1).numpy() * 1.0
    strokes += jitter
    strokes[..., 0] = np.clip(strokes[..., 0], 0, w)
    strokes[..., 1] = np.clip(strokes[..., 1], 0, h)
    return torch.from_numpy(strokes)


def traced_length(strokes: int) -> float:
    """Initial stroke length in canvas pixels: fewer strokes must each cover more of the contours.

    43 px for 16 strokes on the 224-px canvas: over 12 photos x 3 seeds of benchmarks/quality.py, 1.6 times
    the earlier length (27 px) ended at a loss 0.16 +- 0.04 lower, paired sketch by sketch, with whole
    contours (a face's outline, a roof's eaves) where shorter strokes left fragments; twice as long lowered
    it less and put 4 % less ink on the photos' edges (README, Quality)."""
    return float(np.clip(172.8 / np.sqrt(strokes), 10.0, 60.0))


class Photo(Protocol):
    """What a start strategy reads of the photo (engine.target.Target provides it)."""

    prob: np.ndarray  #: (S, S) start-pixel probabilities
    region: np.ndarray  #: (S, S) bool: where traced strokes may run
    tangents: np.ndarray  #: (S, S, 2) contour tangents, computed when first read


class TracedStart:
    """Our recipe: strokes laid along thin salient contours, spread over the subject."""

    edges = staticmethod(contour_edges)

    def strokes(self, photo: Photo, n: int, generator: torch.Generator) -> Tensor:
        return traced_strokes(photo.prob, photo.tangents, n, traced_length(n), generator, photo.region)


class PaperStart:
    """The reference's: short random strokes from start pixels on salient edges (the paper's XDoG)."""

    edges = staticmethod(xdog_edges)

    def strokes(self, photo: Photo, n: int, generator: torch.Generator) -> Tensor:
        return initial_strokes(photo.prob, n, generator)


STARTS: dict[Init, TracedStart | PaperStart] = {Init.TRACED: TracedStart(), Init.PAPER: PaperStart()}
