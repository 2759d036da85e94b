"""A picture of a sketch: its strokes drawn on white, for `--preview` PNGs and the gallery."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..options import Renderer, SketchResult
from .render import render


def preview_image(result: SketchResult, max_side: int = 1024) -> Image.Image:
    """The strokes drawn on white at the image's size (longest side at most `max_side`), greyscale, with
    the renderer the sketch was made with."""
    scale = min(1.0, max_side / max(result.width, result.height))
    w, h = max(1, round(result.width * scale)), max(1, round(result.height * scale))
    with torch.no_grad():
        ink = render(torch.tensor(result.strokes * scale, dtype=torch.float32), h, w,
                     stroke_width=result.stroke_width * scale, backend=Renderer(result.options.renderer).backend)
    return Image.fromarray((ink.clamp(0, 1).numpy() * 255).round().astype(np.uint8), "L")
