"""CLIPasso line sketches from photos, as editable SVG strokes for Inkscape.

Layers, each importing only those below it: `cli` and `server` (the commands), `engine` (the optimisation
and the rasterizer), `encoders` (frozen networks), and at the bottom the torch-free contract `options`
with `images`, `svg`, `files` and `errors`.
"""

__version__ = "0.1.0"
