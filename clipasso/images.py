"""Reading user images safely, and the letterbox geometry between an image and the square canvas.

Every caller (CLI, service, benchmarks) goes through `load_photo`, so bad input is refused the same way
everywhere: one `InputError` line, never a traceback from Pillow. Decoding is bounded in memory: a photo is
kept at WORKING_SIDE px at most (its coordinates stay the file's), large PNGs never whole, and decodes
share a byte budget.
"""

from __future__ import annotations

import ctypes
import io
import math
import os
import struct
import sys
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import InputError, one_line

MAX_PIXELS = 100_000_000
#: The formats Pillow may open (its names): the photos people have. No other decoder is tried: Pillow's EPS
#: loader runs Ghostscript on the file (a PostScript loop spun a core with no end), and the rarely used
#: ones are what a crafted upload would aim at. (JPEG's opener also opens MPO: a phone's JPEG with a second
#: picture in it.)
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "GIF", "BMP")
#: What Pillow calls the JPEGs it opens: those are decoded at a reduced scale (draft).
JPEGS = ("JPEG", "MPO")
MIN_SIDE = 2
#: The longest side a decoded photo is kept at. The engine draws on a 224 px canvas; 1024 px keeps every
#: detail that survives that, and a 100-megapixel upload then costs megabytes once decoded.
WORKING_SIDE = 1024
#: Most memory one decode may take: 100 megapixels of RGB (Pillow keeps RGB as 4 bytes a pixel).
#: Transparent images take twice their pixels (resizing premultiplies them into a copy), so 50 MP of RGBA.
MAX_DECODE_BYTES = 400_000_000
#: Memory that decodes in this process may take together: uploads decoded in parallel wait for each other.
#: A decode that needs more runs alone (as one of MAX_DECODE_BYTES does); large PNGs, decoded in bands,
#: need about 20 MB, so a few of them run side by side.
DECODE_BUDGET = 100_000_000
#: How long a decode waits for its turn before giving up (the service answers 503 then).
DECODE_WAIT_SECONDS = 60.0

#: Pixels of a large PNG decoded at a time (see PngBands): about this many bytes of decoded rows.
PNG_BAND_BYTES = 4 * 2**20

ImageSource = str | os.PathLike | bytes | BinaryIO

# Pillow allocates pixels in blocks (16 MB by default). glibc serves blocks of that size from per-thread
# heaps that it rarely returns, so ten decodes in ten request threads kept 3.5 GB. Blocks over glibc's
# largest mmap threshold (32 MB) are mapped and unmapped each time: memory goes back after each decode.
# (The same as PILLOW_BLOCK_SIZE=64m in the environment.)
Image.core.set_block_size(64 * 2**20)


#: glibc's malloc_trim, where the C library is glibc (None elsewhere): see _give_back_freed_memory.
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform.startswith("linux") else None


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


def load_photo(source: ImageSource, max_pixels: int = MAX_PIXELS, working_side: int = WORKING_SIDE,
               orient: bool = True, name: str | None = None) -> Photo:
    """Open a file path or bytes as an 8-bit RGB photo on white paper, decoded within the memory budget.

    Takes the first frame of animated or multi-page files, applies the EXIF orientation (unless `orient` is
    false: the pixels as stored, as Inkscape shows a PNG or WebP), converts
    16-bit, greyscale, palette and CMYK images, and composites transparency over white. JPEGs are decoded
    at a reduced scale where that still gives `working_side` pixels; other formats are reduced right after
    decoding, before any conversion copies them (8-bit PNGs at least twice that long a band of rows at a
    time: see PngBands).
    """
    with _open(source, max_pixels, name) as (im, name):
        width, height = _oriented_size(im) if orient else im.size
        try:
            im.seek(0)
            coefficients = jpeg_coefficients(im)  # at full size, whatever the draft below
            if im.format in JPEGS:
                im.draft(im.mode, (working_side, working_side))
            cost = decode_cost(im) + coefficients
            if cost > MAX_DECODE_BYTES:
                raise InputError(
                    f"{name}: {width}x{height} {im.mode} needs {cost / 1e6:.0f} MB to decode; the limit is "
                    f"{MAX_DECODE_BYTES / 1e6:.0f} MB (100 megapixels of RGB, 50 of RGBA, 25 of WebP, about 130 of a "
                    "progressive colour JPEG)"
                )
            bands = PngBands.of(im, working_side)
            with _BUDGET.take(bands.cost if bands else cost, DECODE_WAIT_SECONDS):
                if bands:
                    small = _reduced(bands.decode(), working_side)
                else:
                    im.load()
                    small = _reduced(im, working_side)
            rgb, alpha = _to_rgb_on_white(ImageOps.exif_transpose(small) if orient else small)
        except InputError:  # (a ValueError too) said as it is: a photo too large to decode is no corrupt one
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError, zlib.error) as exc:
            raise InputError(f"{name}: corrupt or truncated image ({one_line(exc, 200)})") from None
    _give_back_freed_memory()
    return Photo(rgb, width, height, alpha)


def _give_back_freed_memory() -> None:
    """Return the memory a decode has freed to the system.

    glibc keeps freed blocks below 32 MB (a PNG's bands, Python's buffers) in the decoding thread's heap,
    and the service decodes in many request threads: after ten large uploads the server kept 280 MB it no
    longer used. malloc_trim(0) hands back the free pages of every heap (a few milliseconds).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@contextmanager
def _open(source: ImageSource, max_pixels: int, name: str | None = None) -> Iterator[tuple[Image.Image, str]]:
    """The image opened lazily (header only) after the checks every caller needs; one InputError line for
    anything Pillow cannot read. Messages name a file by its path, bytes as `name`."""
    if isinstance(source, bytes) or hasattr(source, "read"):
        name = name or "the uploaded image"
        stream: BinaryIO | Path = io.BytesIO(source) if isinstance(source, bytes) else source
        stream.seek(0, os.SEEK_END)
        if stream.tell() == 0:
            raise InputError(f"{name} is empty")
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
            with Image.open(stream, formats=FORMATS) as im:
                w, h = im.size
                # A JPEG decodes at a reduced scale (1/2 to 1/8, in its DCT), so what bounds it is what that
                # decode costs (load_photo); a 108-megapixel phone photo takes 7 there.
                if w * h > max_pixels and im.format not in JPEGS:
                    near = w * h < max_pixels + 500_000  # "100 megapixels; the limit is 100" said nothing
                    raise InputError(
                        f"{name}: {w}x{h} is {w * h / 1e6:.{2 if near else 0}f} megapixels; the limit is "
                        f"{max_pixels / 1e6:.0f} megapixels"
                    )
                if w < MIN_SIDE or h < MIN_SIDE:
                    raise InputError(f"{name}: {w}x{h} is too small (at least {MIN_SIDE}x{MIN_SIDE} pixels)")
                yield im, name
    except (InputError, DecoderBusy):
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image CLIPasso reads (PNG, JPEG, WebP, TIFF, GIF or BMP)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        raise InputError(f"{name}: corrupt or truncated image ({one_line(exc, 200)})") from None


#: Bytes a pixel a WebP takes to decode, whatever its mode: libwebp decodes into a buffer of its own that
#: Pillow then copies (25 megapixels took 396 MB as RGB, 420 MB as RGBA, against 100 and 200 counted).
WEBP_BYTES_PER_PIXEL = 16


def decode_cost(im: Image.Image) -> int:
    """Bytes that decoding and reducing `im` (at its draft size) allocate at the most."""
    if im.format == "WEBP":
        return im.width * im.height * WEBP_BYTES_PER_PIXEL
    alpha = im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info
    return im.width * im.height * _BYTES_PER_PIXEL.get(im.mode, 4) * (2 if alpha else 1)


def jpeg_coefficients(im: Image.Image) -> int:
    """Bytes a progressive JPEG's decoder keeps besides its pixels: every DCT coefficient of the whole
    image (2 bytes each, 64 an 8x8 block of each component at its own sampling: 4:2:0 colour is half as
    much again as its grey), whatever scale it is drafted at. An 8 MB greyscale one of 65500x65500 pixels
    took 8.3 GB that way where its 1/8-scale pixels were counted as 67 MB. A baseline JPEG is decoded a
    few rows at a time: none."""
    if im.format not in JPEGS or not im.info.get("progressive"):
        return 0
    layers = getattr(im, "layer", None) or [(None, 1, 1, 0)] * len(im.getbands())  # (id, h, v, table) each
    most_h, most_v = max(h for _, h, _, _ in layers), max(v for _, _, v, _ in layers)
    return sum(math.ceil(im.width * h / most_h / 8) * math.ceil(im.height * v / most_v / 8) * 64 * 2
               for _, h, v, _ in layers)


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """The size as displayed: EXIF orientations 5 to 8 turn the picture a quarter.

    For a PNG, only the EXIF found before the pixels is read: Pillow's getexif() would decode the whole
    image to look behind them, outside the decode budget. A TIFF's size is read from its tags: Pillow 11
    and later turn a TIFF as they open it (its size is then the turned one), earlier versions do not."""
    w, h = im.size
    if im.format == "PNG":
        exif = Image.Exif()
        if im.info.get("exif"):
            exif.load(im.info["exif"])
    elif im.format == "TIFF":
        exif = im.getexif()
        w, h = im.tag_v2.get(256, w), im.tag_v2.get(257, h)
    else:
        exif = im.getexif()
    return (h, w) if exif.get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8) else (w, h)


@dataclass(frozen=True)
class PngBands:
    """A large 8-bit PNG decoded a band of rows at a time, each band shrunk before the next is decoded.

    A PNG's pixels are one zlib stream of filtered rows, and Pillow decodes all of it into one image: a
    100-megapixel PNG of a few hundred KB takes 400 MB. Here the stream is inflated a band at a time; each
    band goes through Pillow's own PNG decoder as a small PNG of its own (with the previous band's last
    row in front, unfiltered, which the band's first row's filter refers to) and is reduced by a whole
    factor (a box average) right away. What the photo costs is a band, about PNG_BAND_BYTES.
    """

    image: Image.Image  #: the PNG opened lazily (header read)
    factor: int  #: each band's rows and columns are averaged in factor x factor boxes
    rows: int  #: rows per band, a multiple of factor

    #: Pillow modes whose packed rows Pillow decodes and re-encodes unchanged (8 bits a sample).
    MODES = ("L", "LA", "RGB", "RGBA")

    @classmethod
    def of(cls, im: Image.Image, side: int) -> "PngBands | None":
        """Bands for a non-interlaced 8-bit PNG at least twice `side` long; None for anything else."""
        factor = max(im.size) // side
        tile = im.tile[0] if len(im.tile) == 1 else None
        if (im.format != "PNG" or factor < 2 or tile is None or im.mode not in cls.MODES or tile.args != im.mode
                or im.info.get("interlace")):
            return None
        rows = max(1, PNG_BAND_BYTES // (im.width * 4 * factor)) * factor
        return cls(im, factor, rows)

    @property
    def cost(self) -> int:
        """Bytes a decode takes at the most: a band's pixels (twice with alpha, premultiplied to be reduced),
        its packed rows as inflated, gathered and stored again, and the reduced image."""
        band = self.image.width * self.rows
        alpha = 2 if "A" in self.image.mode else 1
        return band * 4 * alpha + 4 * band * len(self.image.mode) + decode_cost(self.image) // self.factor**2

    def decode(self) -> Image.Image:
        """The whole image reduced by `factor`, in the PNG's own mode."""
        im, k = self.image, self.factor
        width, height = im.size
        stride = width * len(im.mode) + 1  # a filter-type byte, then the row's samples
        out = Image.new(im.mode, (math.ceil(width / k), math.ceil(height / k)))
        inflate = zlib.decompressobj()
        chunks = _idat_chunks(im)
        rows = bytearray(stride)  # the row above the first: PNG's filters see zeros there
        for top in range(0, height, self.rows):
            count = min(self.rows, height - top)
            size = (count + 1) * stride
            while len(rows) < size:  # inflated up to the band's last row, no further
                piece = inflate.unconsumed_tail or next(chunks, b"")
                if not piece:
                    raise EOFError(f"image data ends at row {top + len(rows) // stride - 1} of {height}")
                rows += inflate.decompress(piece, size - len(rows))
            # Pillow's PNG decoder ("zip") takes a zlib stream: the rows, stored as they are, not compressed again.
            band = Image.frombytes(im.mode, (width, count + 1), zlib.compress(rows, 0), "zip", im.mode)
            out.paste(band.reduce(k, (0, 1, width, count + 1)), (0, top // k))
            rows = bytearray(b"\0" + band.crop((0, count, width, count + 1)).tobytes())  # unfiltered ("none")
        out.info = dict(im.info)
        return out


def _idat_chunks(im: Image.Image) -> Iterator[bytes]:
    """The compressed image data of an opened PNG, a MB at a time, from its first IDAT chunk on."""
    fp = im.fp
    fp.seek(im.tile[0].offset - 8)
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise EOFError("the image data is cut short")
        length, kind = struct.unpack(">I4s", head)
        if kind != b"IDAT":
            return
        while length:
            piece = fp.read(min(length, 2**20))
            if not piece:
                raise EOFError("the image data is cut short")
            length -= len(piece)
            yield piece
        fp.read(4)  # the chunk's CRC


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
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        # The tones as stored, on the scale of the depth they fit: 16-bit greys (a PNG's I;16, or I), floats
        # in 0..1 or 0..255. Only values beyond those are stretched to 0..255 (stretching every image made a
        # 16-bit grey photo 36 levels brighter on average than its 8-bit copy).
        tops = (1.0, 255.0, 65535.0) if im.mode == "F" else (65535.0,)
        top = next((t for t in tops if lo >= 0 and hi <= t), None)
        if top is None:
            top = hi if hi > lo else lo + 1.0
        else:
            lo = 0.0
        im = Image.fromarray(np.clip(np.rint((arr - lo) * (255.0 / (top - lo))), 0, 255).astype(np.uint8), "L")
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
    def rect(self) -> tuple[int, int, int, int]:
        """Where the image is on the canvas: x, y, width, height in canvas pixels."""
        (x, y), (w, h) = self.offset, self.placed
        return x, y, w, h

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
