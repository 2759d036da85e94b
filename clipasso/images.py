"""Reading user images safely, and the letterbox geometry between an image and the square canvas.

Every caller (CLI, service, benchmarks) goes through `load_image`, so bad input is refused the same way
everywhere: one `InputError` line, never a traceback from Pillow.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError, one_line

MAX_PIXELS = 100_000_000
MIN_SIDE = 2

ImageSource = str | os.PathLike | bytes


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a file path or bytes as an 8-bit RGB image on white paper.

    Takes the first frame of animated or multi-page files, applies the EXIF orientation, converts
    16-bit, greyscale, palette and CMYK images, and composites transparency over white.
    """
    if isinstance(source, bytes):
        name = "the uploaded image"
        if not source:
            raise InputError("the uploaded image is empty")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise InputError(f"{name}: no such file")
        if not path.is_file():
            raise InputError(f"{name}: not a file")
        stream = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # we apply our own limit below, with a clearer message
            with Image.open(stream) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise InputError(
                        f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels; the limit is "
                        f"{max_pixels / 1e6:.0f} megapixels"
                    )
                if w < MIN_SIDE or h < MIN_SIDE:
                    raise InputError(f"{name}: {w}x{h} is too small (at least {MIN_SIDE}x{MIN_SIDE} pixels)")
                im.seek(0)
                im.load()
                rgb = _to_rgb_on_white(ImageOps.exif_transpose(im))
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image Pillow can read (PNG, JPEG, WebP, TIFF, GIF, BMP ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({one_line(exc, 200)})") from None
    return rgb


def _to_rgb_on_white(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB, with transparent areas as white paper."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        im = Image.fromarray(((arr - lo) * scale).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "RGBa", "PA"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        paper = Image.new("RGB", im.size, (255, 255, 255))
        paper.paste(im, mask=im.getchannel("A"))
        return paper
    return im.convert("RGB")


@dataclass(frozen=True)
class Letterbox:
    """Where an image of `width` x `height` sits, centred and unstretched, on a `size` x `size` canvas.

    The placed image has whole-pixel size and offset, and the mapping below is exactly the one the
    pixels were resampled with, so strokes map back to the photo without a half-pixel drift.
    """

    width: int
    height: int
    size: int

    @property
    def placed(self) -> tuple[int, int]:
        """Width and height of the image on the canvas, in canvas pixels."""
        s = self.size / max(self.width, self.height)
        return max(1, round(self.width * s)), max(1, round(self.height * s))

    @property
    def offset(self) -> tuple[int, int]:
        """Canvas position of the image's top-left corner."""
        w, h = self.placed
        return (self.size - w) // 2, (self.size - h) // 2

    @property
    def scale(self) -> tuple[float, float]:
        """Canvas pixels per image pixel, along x and y."""
        w, h = self.placed
        return w / self.width, h / self.height

    def to_image(self, canvas_xy: np.ndarray) -> np.ndarray:
        """Canvas pixel coordinates (..., 2) to the image's own pixel coordinates."""
        (ox, oy), (sx, sy) = self.offset, self.scale
        out = np.asarray(canvas_xy, dtype=np.float64).copy()
        out[..., 0] = (out[..., 0] - ox) / sx
        out[..., 1] = (out[..., 1] - oy) / sy
        return out

    def to_canvas(self, image_xy: np.ndarray) -> np.ndarray:
        """The image's own pixel coordinates (..., 2) to canvas pixel coordinates."""
        (ox, oy), (sx, sy) = self.offset, self.scale
        out = np.asarray(image_xy, dtype=np.float64).copy()
        out[..., 0] = out[..., 0] * sx + ox
        out[..., 1] = out[..., 1] * sy + oy
        return out

    def place(self, image: Image.Image) -> np.ndarray:
        """The image resized and centred on white paper: float32 (size, size, 3) in [0, 1]."""
        resized = image.resize(self.placed, Image.Resampling.LANCZOS)
        paper = Image.new("RGB", (self.size, self.size), (255, 255, 255))
        paper.paste(resized, self.offset)
        return np.asarray(paper, dtype=np.float32) / 255.0
