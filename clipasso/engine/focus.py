"""The subject of a photo: where strokes belong, and what the loss should care about.

The reference masks the background with U2Net, a 170 MB download. Here an outline the artist drew
(`--subject`; in Inkscape, the photo's clip) is the subject where there is one, then the photo's own
transparency; otherwise GrabCut (OpenCV) separates the subject from the background,
seeded by the encoder's saliency: the salient core as likely subject, the rest as likely background, and
GrabCut's colour models move the boundary onto the subject's outline. An ImageNet encoder has no class for
people, so frontal faces (OpenCV's Haar cascades: a face with an eye in it) join the saliency first. A
mask that comes out implausible (next to nothing, or nearly the whole photo) is not trusted: the saliency
map serves instead.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..errors import InputError
from ..images import Letterbox, Photo

log = logging.getLogger("clipasso.engine")

#: Saliency above this seeds GrabCut as likely subject; above SURE_SUBJECT as certainly subject.
LIKELY_SUBJECT = 0.35
SURE_SUBJECT = 0.8
#: GrabCut's rounds of colour modelling and graph cut.
GRABCUT_ROUNDS = 4
#: GrabCut works on the photo at most this size (px, long side) and its mask is scaled up: 0.24 s instead
#: of 0.64 s of a sketch's preparation on 2 cores, and on the 12 photos of benchmarks/quality.py the masks
#: kept the subject and dropped more of the background (the sky beside a pagoda, the foliage under a bird).
GRABCUT_SIDE = 160
#: A mask covering less or more than these shares of the photo is not trusted.
MIN_SHARE, MAX_SHARE = 0.04, 0.92
#: Softening of the mask's edge (Gaussian sigma, canvas pixels): strokes on the outline are subject.
EDGE_SOFTNESS = 2.0
#: Faces are looked for on the photo at this size (px, long side): a face of 5 % of it is still found.
FACE_SIDE = 512
#: Smallest face looked for, as a share of the photo's short side.
MIN_FACE = 0.06
CASCADE = "haarcascade_frontalface_default.xml"
EYE_CASCADE = "haarcascade_eye.xml"
#: A face is enlarged to at least this width (px) before its eyes are looked for.
EYE_FACE_SIDE = 120


class Source(str, enum.Enum):
    """Where a photo's subject mask came from."""

    OUTLINE = "outline"  #: outlines the artist drew around the subject
    ALPHA = "alpha"  #: the photo's transparency
    GRABCUT = "grabcut"  #: the saliency-seeded segmentation
    SALIENCY = "saliency"  #: the encoder's saliency map alone (focus none, or an implausible segmentation)


@dataclass(frozen=True)
class Subject:
    mask: np.ndarray  #: (S, S) float32 in [0, 1]: 1 on the subject, 0 off it and off the photo
    saliency: np.ndarray  #: (S, S) the encoder's saliency with the faces found added
    source: Source


def find_subject(photo: Photo, box: Letterbox, placed: np.ndarray, saliency: np.ndarray,
                 inside: np.ndarray, outlines: Sequence[np.ndarray] = ()) -> Subject:
    """The subject of `photo`, letterboxed by `box` on the canvas, where `placed` is the photo on the canvas
    (S, S, 3) in [0, 1], `saliency` (S, S) in [0, 1] where the encoder looks, `inside` (S, S) 1 where
    the photo is (0 on the letterbox's paper), and `outlines` polygons (P, 2) in the image's pixels that
    the artist drew around the subject (InputError when they enclose none of the photo)."""
    x, y, w, h = box.rect
    saliency = np.maximum(saliency, face_map(faces(photo.image), box, saliency.shape[0]))
    if len(outlines):
        drawn = enclosed(outlines, box)
        if not drawn.any():
            raise InputError(f"subject: its outline encloses none of the {photo.width}x{photo.height} photo; "
                             "its coordinates must be the photo's pixels")
        return Subject(canvas_mask(drawn, box, inside), saliency, Source.OUTLINE)
    if photo.alpha is not None:
        alpha = box.place(photo.alpha)
        if _plausible(alpha > 0.5, w * h):
            return Subject(alpha * inside, saliency, Source.ALPHA)
    cut = _grabcut(placed[y : y + h, x : x + w], saliency[y : y + h, x : x + w])
    if cut is None:
        return Subject(saliency.astype(np.float32) * inside, saliency, Source.SALIENCY)
    return Subject(canvas_mask(cut, box, inside), saliency, Source.GRABCUT)


def enclosed(outlines: Sequence[np.ndarray], box: Letterbox) -> np.ndarray:
    """What the polygons (P, 2) in the image's pixels enclose, on the photo's part of the canvas (h, w)."""
    x, y, w, h = box.rect
    area = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(area)
    for polygon in outlines:
        points = box.to_canvas(polygon) - (x, y)
        draw.polygon([(float(px), float(py)) for px, py in points], fill=1)
    return np.asarray(area, dtype=bool)


def canvas_mask(cut: np.ndarray, box: Letterbox, inside: np.ndarray) -> np.ndarray:
    """A boolean subject mask of the photo (h, w) placed on the canvas by `box`, softened outside its outline
    (strokes along the outline are on the subject), nothing off the photo (`inside`)."""
    x, y, w, h = box.rect
    mask = np.zeros(inside.shape, dtype=np.float32)
    soft = ndimage.gaussian_filter(cut.astype(np.float32), EDGE_SOFTNESS)
    mask[y : y + h, x : x + w] = np.maximum(soft, cut)  # soft outside the outline, whole inside
    return mask * inside


def faces(image: Image.Image) -> np.ndarray:
    """Frontal faces as (F, 4) boxes x, y, w, h in the image's pixels (none where OpenCV has no cascade)."""
    cascade = _cascade(CASCADE, "faces are not looked for")
    if cascade is None:
        return np.zeros((0, 4))
    grey = image.convert("L")
    scale = min(1.0, FACE_SIDE / max(grey.size))
    if scale < 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.BILINEAR)
    pixels = cv2.equalizeHist(np.asarray(grey))
    side = max(1, int(MIN_FACE * min(pixels.shape)))
    with _cascade_lock:  # one classifier object is not safe to use from two threads at once
        found = cascade.detectMultiScale(pixels, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        found = [box for box in np.asarray(found, dtype=int).reshape(-1, 4) if _has_an_eye(pixels, box)]
    return np.asarray(found, dtype=np.float64).reshape(-1, 4) / scale


def _has_an_eye(pixels: np.ndarray, box: np.ndarray) -> bool:
    """Whether OpenCV's eye cascade finds an eye in the upper part of a face the face cascade found: the
    face cascade alone took a patch of green blur beside a bird and three coins for faces, and a face made
    sure subject drags the segmentation onto whatever it lies on. Without the eye cascade, faces stand."""
    eyes = _cascade(EYE_CASCADE, "faces are not checked for eyes")
    if eyes is None:
        return True
    x, y, w, h = box
    upper = pixels[y : y + h * 6 // 10, x : x + w]
    zoom = max(1.0, EYE_FACE_SIDE / w)  # the cascade's window is 20 px: small faces are enlarged first
    if zoom > 1:
        upper = cv2.resize(upper, (round(upper.shape[1] * zoom), round(upper.shape[0] * zoom)))
    found = eyes.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=3, minSize=(round(w * zoom / 10),) * 2)
    return len(found) > 0


def face_map(found: np.ndarray, box: Letterbox, size: int) -> np.ndarray:
    """(size, size) in [0, 1]: 1 over each face (an ellipse a little larger than its box: hair, chin),
    falling off around it; 0 without faces."""
    out = np.zeros((size, size), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for fx, fy, fw, fh in found:
        (cx, cy), (ex, ey) = box.to_canvas(np.array([[fx + fw / 2, fy + fh / 2], [fx + fw, fy + fh]]))
        rx, ry = 0.65 * (ex - cx) * 2, 0.8 * (ey - cy) * 2
        r2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        out = np.maximum(out, np.exp(-np.maximum(r2 - 1, 0) * 2).astype(np.float32))
    return out


_cascade_lock = threading.Lock()


@lru_cache(maxsize=2)
def _cascade(name: str, without: str) -> cv2.CascadeClassifier | None:
    """One of OpenCV's Haar cascades, which its 4.x wheels ship (pyproject pins them); None without it,
    with a warning that says what then goes undone (`without`)."""
    data, classifier = getattr(cv2, "data", None), getattr(cv2, "CascadeClassifier", None)
    cascade = None if classifier is None else classifier(str(Path(getattr(data, "haarcascades", "")) / name))
    if cascade is None or cascade.empty():
        log.warning("OpenCV has no %s here: %s", name, without)
        return None
    return cascade


def _grabcut(rgb: np.ndarray, saliency: np.ndarray) -> np.ndarray | None:
    """Boolean subject mask of one photo (h, w, 3) from its saliency (h, w), or None if implausible."""
    h, w = saliency.shape
    if min(h, w) < 8:
        return None
    seeds = np.full((h, w), cv2.GC_PR_BGD, dtype=np.uint8)
    seeds[saliency >= LIKELY_SUBJECT] = cv2.GC_PR_FGD
    seeds[saliency >= SURE_SUBJECT] = cv2.GC_FGD
    if not (seeds == cv2.GC_PR_BGD).any():
        return None
    image = np.ascontiguousarray((rgb * 255).round().astype(np.uint8)[..., ::-1])  # OpenCV's BGR
    scale = min(1.0, GRABCUT_SIDE / max(h, w))
    if scale < 1:
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        seeds = cv2.resize(seeds, size, interpolation=cv2.INTER_NEAREST)
    background, foreground = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.setRNGSeed(0)  # GrabCut's colour models start from k-means on OpenCV's (per-thread) generator
        cv2.grabCut(image, seeds, None, background, foreground, GRABCUT_ROUNDS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a photo GrabCut cannot model (e.g. one flat colour): no segmentation
        return None
    subject = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.float32)
    subject = cv2.resize(subject, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5 if scale < 1 else subject > 0
    subject = _salient_parts(subject, saliency)
    return subject if _plausible(subject, h * w) else None


def _salient_parts(subject: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """The subject's connected parts that hold salient pixels, holes filled: specks of background that
    happen to share the subject's colours are dropped."""
    labels, count = ndimage.label(subject)
    if count == 0:
        return subject
    peak = ndimage.maximum(saliency, labels, index=np.arange(1, count + 1))
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = peak >= LIKELY_SUBJECT
    return ndimage.binary_fill_holes(keep[labels])


def _plausible(subject: np.ndarray, area: int) -> bool:
    share = float(subject.sum()) / max(area, 1)
    return MIN_SHARE <= share <= MAX_SHARE
