"""The CLIPasso optimisation: one entry point, `sketch()`, for the CLI, the service and the tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np

from .errors import InputError

MAX_STROKES = 512
MAX_ITERATIONS = 10_000
CANVAS = 224
#: Stroke width at the 224 px canvas; it scales with the image (3 px at 224 px, as in the paper's SVGs).
CANVAS_STROKE_WIDTH = 3.0


@dataclass(frozen=True)
class Preset:
    iterations: int
    seeds: int
    augmentations: int
    encoder: str  # what "auto" prefers when CLIP weights are at hand


PRESETS: dict[str, Preset] = {
    # The fast recipe: tuned on the built-in encoder for a laptop CPU.
    "default": Preset(iterations=200, seeds=1, augmentations=1, encoder="clip:RN101"),
    # The reference settings, for comparison.
    "paper": Preset(iterations=2000, seeds=3, augmentations=4, encoder="clip:RN101"),
}

ProgressCallback = Callable[[int, int, float, np.ndarray], None]
"""on_progress(iteration, total, loss, strokes): iteration counts over all seeds (1..total); strokes
are (N, 4, 2) control points in the input image's pixel coordinates."""


@dataclass(frozen=True)
class SketchOptions:
    """What a caller may ask for. `None` means the preset's value."""

    strokes: int = 16
    iterations: int | None = None
    seed: int = 0
    seeds: int | None = None
    encoder: str = "auto"
    device: str = "auto"
    preset: str = "default"
    weights: str | None = None
    #: Stroke width in the input image's pixels; None scales 3 px at 224 px to the image size.
    stroke_width: float | None = None

    def validated(self) -> "SketchOptions":
        """These options with the preset filled in; raises InputError on a value out of range."""
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        p = PRESETS[self.preset]
        if not isinstance(self.strokes, int) or not 1 <= self.strokes <= MAX_STROKES:
            raise InputError(f"strokes must be between 1 and {MAX_STROKES}, got {self.strokes}")
        iterations = p.iterations if self.iterations is None else self.iterations
        if not isinstance(iterations, int) or not 1 <= iterations <= MAX_ITERATIONS:
            raise InputError(f"iterations must be between 1 and {MAX_ITERATIONS}, got {iterations}")
        seeds = p.seeds if self.seeds is None else self.seeds
        if not isinstance(seeds, int) or not 1 <= seeds <= 16:
            raise InputError(f"seeds must be between 1 and 16, got {seeds}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise InputError(f"seed must be between 0 and {2**31 - 1}, got {self.seed}")
        if self.stroke_width is not None and not 0 < self.stroke_width <= 1000:
            raise InputError(f"stroke width must be above 0 and at most 1000 px, got {self.stroke_width}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise InputError(f"unknown device {self.device!r}; choose auto, cpu, cuda or mps")
        from .encoders import check_encoder_name

        check_encoder_name(self.encoder)
        return replace(self, iterations=iterations, seeds=seeds)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SketchResult:
    strokes: np.ndarray  # (N, 4, 2) control points in the input image's pixel coordinates
    width: int
    height: int
    stroke_width: float  # in the input image's pixels
    loss: float
    encoder: str  # the encoder that ran, e.g. "lite0" or "clip:RN101"
    encoder_reason: str  # why that encoder (auto's choice, in one line)
    options: SketchOptions
    iterations: int  # iterations run, over all seeds
    best_seed: int
    cancelled: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds

    @property
    def svg(self) -> str:
        from .svg import strokes_to_svg

        return strokes_to_svg(self.strokes, self.width, self.height, self.stroke_width, self.metadata())

    def metadata(self) -> dict:
        """Settings and provenance, for the SVG's <metadata> and JSON summaries."""
        return {
            "generator": "clipasso-inkscape",
            "encoder": self.encoder,
            "strokes": int(self.strokes.shape[0]),
            "iterations": self.iterations,
            "best_seed": self.best_seed,
            "loss": round(float(self.loss), 6),
            "cancelled": self.cancelled,
            "options": self.options.to_dict(),
        }
