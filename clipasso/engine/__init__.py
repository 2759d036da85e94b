"""The sketch engine: the differentiable rasterizer, the loss, where strokes start, and the optimisation.

`sketch()` is the one entry point; it needs torch, unlike the options contract (`clipasso.options`).
"""

from .optimise import sketch
from .preview import preview_image
from .render import render, render_batch

__all__ = ["preview_image", "render", "render_batch", "sketch"]
