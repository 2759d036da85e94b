"""Reading user images safely, and the letterbox geometry between an image and the square canvas.

Every caller (CLI, service, benchmarks) goes through `load_photo`, so bad input is refused the same way
everywhere: one `InputError` line, never a traceback from Pillow. Decoding is bounded in memory: a photo is
kept at WORKING_SIDE px at most (its coordinates stay the file's), and decodes share a byte budget.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import InputError, one_line

MAX_PIXELS = 100_000_000
MIN_SIDE = 2
#: The longest side a decoded photo is kept at. The engine draws on a 224 px canvas; 1024 px keeps every
#: detail that survives that, and a 100-megapixel upload then costs megabytes once decoded.
WORKING_SIDE = 1024
#: Most memory one decode may take: 100 megapixels of RGB (Pillow keeps RGB as 4 bytes a pixel).
#: Transparent images take twice their pixels (resizing premultiplies them into a copy), so 50 MP of RGBA.
MAX_DECODE_BYTES = 400_000_000
#: Memory that decodes in this process may take together: uploads decoded in parallel wait for each other.
DECODE_BUDGET = MAX_DECODE_BYTES
#: How long a decode waits for its turn before giving up (the service answers 503 then).
DECODE_WAIT_SECONDS = 60.0

ImageSource = str | os.PathLike | bytes | BinaryIO

# Pillow allocates pixels in blocks (16 MB by default). glibc serves blocks of that size from per-thread
# heaps that it rarely returns, so ten decodes in ten request threads kept 3.5 GB. Blocks over glibc's
# largest mmap threshold (32 MB) are mapped and unmapped each time: memory goes back after each decode.
# (The same as PILLOW_BLOCK_SIZE=64m in the environment.)
Image.core.set_block_size(64 * 2**20)


class DecoderBusy(Exception):
    """Too many large images are being decoded at once; try again shortly (HTTP 503)."""


@dataclass(frozen=True)
class Photo:
    """A decoded photo: RGB pixels on white paper at most WORKING_SIDE px long, and the size of the image
    as its file shows it (EXIF orientation applied), which every coordinate refers to."""

    image: Image.Image
    width: int
    height: int
    #: The photo's transparency (mode "L", the size of `image`) where it has some: the subject's outline.
    alpha: Image.Image | None = None

    @classmethod
    def of(cls, image: Image.Image) -> "Photo":
        """An image already in memory, kept at its size."""
        rgb, alpha = _to_rgb_on_white(image)
        return cls(rgb, image.width, image.height, alpha)


class _Budget:
    """A counting gate in bytes: a decode waits until what it will allocate fits beside the running ones."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._free = threading.Condition()

    @contextmanager
    def take(self, cost: int, wait: float) -> Iterator[None]:
        with self._free:
            if not self._free.wait_for(lambda: self.used == 0 or self.used + cost <= self.limit, timeout=wait):
                raise DecoderBusy("the server is decoding other large images; try again in a few seconds")
            self.used += cost
        try:
            yield
        finally:
            with self._free:
                self.used -= cost
                self._free.notify_all()


_BUDGET = _Budget(DECODE_BUDGET)
#: Decoded bytes per pixel in each Pillow mode (what Image.load allocates; 4 for anything unlisted).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "RGB": 4,
                    "YCbCr": 4, "LAB": 4, "HSV": 4}


def load_photo(source: ImageSource, max_pixels: int = MAX_PIXELS, working_side: int = WORKING_SIDE) -> Photo:
    """Open a file path or bytes as an 8-bit RGB photo on white paper, decoded within the memory budget.

    Takes the first frame of animated or multi-page files, applies the EXIF orientation, converts
    16-bit, greyscale, palette and CMYK images, and composites transparency over white. JPEGs are decoded
    at a reduced scale where that still gives `working_side` pixels; other formats are reduced right after
    decoding, before any conversion copies them.
    """
    with _open(source, max_pixels) as (im, name):
        width, height = _oriented_size(im)
        try:
            im.seek(0)
            if im.format == "JPEG":
                im.draft(im.mode, (working_side, working_side))
            cost = decode_cost(im)
            if cost > MAX_DECODE_BYTES:
                raise InputError(
                    f"{name}: {width}x{height} {im.mode} needs {cost / 1e6:.0f} MB to decode; the limit is "
                    f"{MAX_DECODE_BYTES / 1e6:.0f} MB (100 megapixels of RGB, 50 of RGBA)"
                )
            with _BUDGET.take(cost, DECODE_WAIT_SECONDS):
                im.load()
                small = _reduced(im, working_side)
            rgb, alpha = _to_rgb_on_white(ImageOps.exif_transpose(small))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
            raise InputError(f"{name}: corrupt or truncated image ({one_line(exc, 200)})") from None
    return Photo(rgb, width, height, alpha)


@contextmanager
def _open(source: ImageSource, max_pixels: int) -> Iterator[tuple[Image.Image, str]]:
    """The image opened lazily (header only) after the checks every caller needs; one InputError line for
    anything Pillow cannot read."""
    if isinstance(source, bytes) or hasattr(source, "read"):
        name = "the uploaded image"
        stream: BinaryIO | Path = io.BytesIO(source) if isinstance(source, bytes) else source
        stream.seek(0, os.SEEK_END)
        if stream.tell() == 0:
            raise InputError("the uploaded image is empty")
        stream.seek(0)
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
                yield im, name
    except (InputError, DecoderBusy):
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image Pillow can read (PNG, JPEG, WebP, TIFF, GIF, BMP ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({one_line(exc, 200)})") from None


def decode_cost(im: Image.Image) -> int:
    """Bytes that decoding and reducing `im` (at its draft size) allocate at the most."""
    alpha = im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info
    return im.width * im.height * _BYTES_PER_PIXEL.get(im.mode, 4) * (2 if alpha else 1)


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """The size as displayed: EXIF orientations 5 to 8 turn the picture a quarter.

    For a PNG, only the EXIF found before the pixels is read: Pillow's getexif() would decode the whole
    image to look behind them, outside the decode budget."""
    if im.format == "PNG":
        exif = Image.Exif()
        if im.info.get("exif"):
            exif.load(im.info["exif"])
    else:
        exif = im.getexif()
    w, h = im.size
    return (h, w) if exif.get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8) else (w, h)


def _reduced(im: Image.Image, side: int) -> Image.Image:
    """The decoded image at most `side` px long, in its own mode (a box filter; palettes are sampled), so
    that conversions then copy megabytes, not gigabytes."""
    scale = side / max(im.size)
    if scale >= 1:
        return im
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.BOX)


def _to_rgb_on_white(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Any Pillow mode to RGB, with transparent areas as white paper; and the transparency, if any pixel
    has some."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        im = Image.fromarray(((arr - lo) * scale).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "RGBa", "PA"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        alpha = im.getchannel("A")
        paper = Image.new("RGB", im.size, (255, 255, 255))
        paper.paste(im, mask=alpha)
        return paper, alpha if alpha.getextrema()[0] < 255 else None
    return im.convert("RGB"), None


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
        """The image resized and centred on paper: float32 (size, size, 3) in [0, 1] for RGB on white; for a
        transparency ("L"), (size, size) with the paper transparent."""
        resized = image.resize(self.placed, Image.Resampling.LANCZOS)
        paper = Image.new(image.mode, (self.size, self.size), 0 if image.mode == "L" else (255, 255, 255))
        paper.paste(resized, self.offset)
        return np.asarray(paper, dtype=np.float32) / 255.0
