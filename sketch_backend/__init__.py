"""CLIPasso sketch backend: rasterizer, encoders, optimisation, SVG output, CLI and HTTP service."""

__version__ = "0.1.0"
