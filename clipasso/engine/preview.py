"""A picture of a sketch: its strokes drawn on white, for `--preview` PNGs and the gallery."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..options import Renderer, SketchResult
from .render import render

#: How dark the artist's kept paths show in a preview (the new strokes are black): grey, as in the live view.
KEPT_INK = 0.45


def preview_image(result: SketchResult, max_side: int = 1024) -> Image.Image:
    """The strokes drawn on white at the image's size (longest side at most `max_side`), greyscale, with
    the renderer the sketch was made with; the artist's kept paths in grey under them."""
    scale = min(1.0, max_side / max(result.width, result.height))
    w, h = max(1, round(result.width * scale)), max(1, round(result.height * scale))
    backend = Renderer(result.options.renderer).backend
    with torch.no_grad():
        ink = render(torch.tensor(result.strokes * scale, dtype=torch.float32), h, w,
                     stroke_width=result.stroke_width * scale, backend=backend)
        kept = result.kept
        if kept:
            cubics = np.concatenate([p.cubics for p in kept]) * scale
            widths = np.concatenate([np.full(len(p.cubics), p.drawn_width * scale) for p in kept])
            grey = render(torch.tensor(cubics, dtype=torch.float32), h, w,
                          stroke_width=torch.tensor(widths, dtype=torch.float32), backend=backend)
            ink = ink * (1 - KEPT_INK * (1 - grey))
    return Image.fromarray((ink.clamp(0, 1).numpy() * 255).round().astype(np.uint8), "L")
