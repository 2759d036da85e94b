"""The sketch engine: the differentiable rasterizer, the loss, where strokes start, and the optimisation.

`sketch()` is the one entry point (`sketch_batch()` makes several sketches at once, and `prepare()` readies
sketches ahead of stepping them); it needs torch, unlike the options contract (`clipasso.options`).
"""

from .optimise import Prepared, SketchRequest, prepare, sketch, sketch_batch
from .preview import preview_image
from .render import render, render_batch

__all__ = ["Prepared", "SketchRequest", "prepare", "preview_image", "render", "render_batch", "sketch", "sketch_batch"]
