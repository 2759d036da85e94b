"""Every kind of user image load_photo meets: good ones converted, bad ones refused in one line."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from clipasso.errors import InputError
from images_support import huge_png

from clipasso import images
from clipasso.images import DECODE_BUDGET, MAX_DECODE_BYTES, DecoderBusy, Letterbox, PngBands, _Budget, load_photo


def load_image(source):
    """The decoded pixels (the tests below look at them)."""
    return load_photo(source).image


def png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def raw_png(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (for sizes Pillow will not write)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_real_photo_loads_as_rgb():
    im = load_image(png_bytes(Image.fromarray(data.chelsea())))
    assert im.mode == "RGB" and im.size == (451, 300)


def test_transparency_becomes_white_paper():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    im = load_image(png_bytes(rgba))
    assert im.getpixel((5, 5)) == (255, 255, 255)
    assert im.getpixel((0, 0)) == (0, 0, 0)


def test_transparency_is_kept_as_the_subjects_outline():
    """A cut-out keeps its alpha beside the RGB (subject focus reads it); an opaque one has none. A cut-out
    already in memory is composited on white too, not on the black under its transparent pixels."""
    rgba = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (16, 8, 48, 40))
    photo = load_photo(png_bytes(rgba))
    assert photo.alpha is not None and photo.alpha.mode == "L"
    assert np.array_equal(np.asarray(photo.alpha), np.asarray(rgba.getchannel("A")))
    assert images.Photo.of(rgba).image.getpixel((0, 0)) == (255, 255, 255)
    assert np.array_equal(np.asarray(images.Photo.of(rgba).alpha), np.asarray(rgba.getchannel("A")))
    assert load_photo(png_bytes(rgba.convert("RGB").convert("RGBA"))).alpha is None
    assert load_photo(png_bytes(Image.fromarray(data.chelsea()))).alpha is None


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16", "LA", "1"])
def test_modes_are_converted(mode):
    base = Image.fromarray(data.camera()[:64, :64])
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base).astype(np.uint16) * 257)
        raw = png_bytes(im)
    elif mode == "CMYK":
        buf = io.BytesIO()
        base.convert("CMYK").save(buf, format="JPEG")
        raw = buf.getvalue()
    else:
        raw = png_bytes(base.convert(mode))
    out = load_image(raw)
    assert out.mode == "RGB" and out.size == (64, 64)
    if mode in ("L", "I;16", "P"):
        # Darks stay dark and lights stay light: the conversion keeps the picture.
        grey = np.asarray(out.convert("L"), dtype=float)
        assert np.corrcoef(grey.ravel(), np.asarray(base, dtype=float).ravel())[0, 1] > 0.95


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((0, 0, 0), (255, 255, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue()).getpixel((8, 8)) == (0, 0, 0)


def test_multipage_tiff_uses_first_page():
    pages = [Image.new("RGB", (16, 16), c) for c in ((10, 20, 30), (200, 200, 200))]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    assert load_image(buf.getvalue()).getpixel((8, 8)) == (10, 20, 30)


def test_missing_file(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_not_an_image(tmp_path: Path):
    p = tmp_path / "notes.png"
    p.write_text("this is text, not pixels")
    with pytest.raises(InputError, match="not an image"):
        load_image(p)


def test_truncated_image():
    raw = png_bytes(Image.fromarray(data.chelsea()))
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_image(raw[: len(raw) // 2])


def test_empty_upload():
    with pytest.raises(InputError, match="empty"):
        load_image(b"")


@pytest.mark.parametrize("size", [(0, 0), (1, 1), (1, 500)])
def test_too_small(size):
    raw = raw_png(*size) if 0 in size else png_bytes(Image.new("RGB", size))
    with pytest.raises(InputError) as err:
        load_image(raw)
    assert "\n" not in str(err.value)


def test_over_the_pixel_limit_is_refused_with_the_limit():
    with pytest.raises(InputError, match="limit is 100 megapixels"):
        load_image(raw_png(12000, 9000))
    # Just over it, the figure says so ("100 megapixels; the limit is 100 megapixels" did not).
    with pytest.raises(InputError, match=r"10001x10001 is 100.02 megapixels; the limit is 100 megapixels"):
        load_image(raw_png(10001, 10001))
    with pytest.raises(InputError, match="limit is 100 megapixels"):
        load_image(raw_png(12000, 9000))


def test_a_phone_photo_over_the_pixel_limit_decodes_at_a_reduced_scale():
    """108 megapixels (a phone camera's full-resolution mode) as JPEG: decoded at 1/8 in the DCT, well
    within the decode budget, where a PNG that size is refused."""
    buffer = io.BytesIO()
    Image.new("L", (12000, 9000), 128).save(buffer, "JPEG", quality=50)
    photo = load_photo(buffer.getvalue())
    assert (photo.width, photo.height) == (12000, 9000) and max(photo.image.size) <= 1024


def progressive_jpeg_header(width: int, height: int) -> bytes:
    """A greyscale progressive JPEG of `width` x `height` with one DC scan of zeros: a few bytes a block."""
    def segment(marker: int, payload: bytes) -> bytes:
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload

    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    return (b"\xff\xd8" + segment(0xDB, b"\x00" + b"\x01" * 64)
            + segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
            + segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")
            + segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + b"\x00" * ((blocks + 7) // 8) + b"\xff\xd9")


def test_a_progressive_jpeg_counts_its_coefficients_at_full_size():
    """A progressive JPEG's decoder keeps every coefficient of the whole image whatever the draft scale: a
    1.8 MB file of 30000x30000 took 1.76 GB, counted as its 1/8-scale pixels (14 MB). A small progressive
    JPEG still loads."""
    with pytest.raises(InputError, match=r"30000x30000 L needs 1814 MB to decode; the limit is 400 MB"):
        load_image(progressive_jpeg_header(30000, 30000))
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", progressive=True)
    assert load_photo(buffer.getvalue()).image.size == (451, 300)


def test_a_webp_counts_what_libwebp_takes_to_decode_it():
    """A 100-megapixel lossless WebP of 4 KB took 1.56 GB to decode where 400 MB was counted."""
    buffer = io.BytesIO()
    Image.new("RGB", (10000, 10000), "white").save(buffer, "WEBP", lossless=True, method=0)
    with pytest.raises(InputError, match=r"10000x10000 RGB needs 1600 MB to decode; the limit is 400 MB \(.*25 of WebP, "):
        load_image(buffer.getvalue())


def test_only_photo_formats_are_opened(tmp_path: Path):
    """Pillow's EPS loader runs Ghostscript on the file (a PostScript loop spun a core with no end): formats
    other than the photos people have are not tried."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n{ } loop\n"
    with pytest.raises(InputError, match=r"not an image CLIPasso reads \(PNG, JPEG, WebP, TIFF, GIF or BMP\)"):
        load_image(eps)
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "GIF", "BMP"):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), "red").save(buffer, fmt)
        assert load_photo(buffer.getvalue()).image.size == (64, 48), fmt


def test_letterbox_round_trip_and_no_stretch():
    box = Letterbox(451, 300, 224)
    assert box.placed == (224, 149)
    sx, sy = box.scale
    assert abs(sx - sy) < 0.01  # aspect kept
    pts = np.array([[0.0, 0.0], [451.0, 300.0], [100.5, 20.25]])
    assert np.allclose(box.to_image(box.to_canvas(pts)), pts)
    corner = box.to_canvas(np.array([[0.0, 0.0]]))[0]
    assert corner[0] == 0 and corner[1] == box.offset[1]
    placed = box.place(Image.new("RGB", (451, 300), (0, 0, 0)))
    assert placed.shape == (224, 224, 3)
    assert placed[0, 0, 0] == 1.0 and placed[112, 112, 0] == 0.0  # white border, photo in the middle


@pytest.mark.parametrize("mode, width, limit", [("L;16", 10_000, MAX_DECODE_BYTES + 100e6),
                                               ("RGB", 10_000, DECODE_BUDGET), ("RGBA", 5_000, DECODE_BUDGET)])
def test_the_largest_uploads_decode_within_the_budget(tmp_path: Path, mode: str, width: int, limit: float):
    """The worst cases seen took 3.4 GB (16-bit grey) and 1.2 GB (RGBA) at 100 MP. Measured in a fresh
    process: its peak memory, less what Python and the imports take, stays within MAX_DECODE_BYTES; 8-bit
    PNGs, decoded in bands, within a fraction of the shared budget (about 30 MB)."""
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png(width, 10_000, mode))
    code = (
        "import resource, sys; from clipasso.images import load_photo; "
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"p = load_photo({str(path)!r}); "
        "print(p.width, p.height, p.image.size, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == [str(width), "10000"] and out[3] == "1024)"
    grew = int(out[4]) * 1024
    assert grew < limit, f"decoding took {grew / 1e6:.0f} MB"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_a_large_png_decoded_in_bands_is_the_whole_image_reduced(monkeypatch, mode: str):
    """Band by band (several here), each band's first row filtered against the band before: the same
    pixels as decoding the whole image, then averaging boxes of the same factor."""
    photo = Image.fromarray(data.astronaut()).resize((2100, 2060)).convert(mode)
    if "A" in mode:  # a real alpha ramp, so premultiplied averaging is exercised
        pixels = np.asarray(photo).copy()
        pixels[..., -1] = np.linspace(0, 255, photo.width, dtype=np.uint8)[None, :]
        photo = Image.fromarray(pixels, mode)
    raw = png_bytes(photo)
    monkeypatch.setattr(images, "PNG_BAND_BYTES", 1_000_000)
    with Image.open(io.BytesIO(raw)) as im:
        bands = PngBands.of(im, 1024)
        assert bands is not None and bands.factor == 2 and bands.rows < im.height // 4
        reduced = bands.decode()
    with Image.open(io.BytesIO(raw)) as im:
        expected = im.reduce(2)
    assert reduced.mode == mode and np.array_equal(np.asarray(reduced), np.asarray(expected))


def test_a_truncated_large_png_is_one_line():
    raw = png_bytes(Image.fromarray(data.astronaut()).resize((2100, 2060)))
    with pytest.raises(InputError, match="corrupt or truncated") as err:
        load_image(raw[: len(raw) // 2])
    assert "\n" not in str(err.value)


def test_a_100_megapixel_transparent_image_is_refused_before_decoding(tmp_path: Path):
    with pytest.raises(InputError, match="^the uploaded image: 10000x10000 RGBA needs 800 MB to decode; the limit "
                                         "is 400 MB") as err:
        load_photo(huge_png(10_000, 10_000, "RGBA"))
    assert "corrupt" not in str(err.value)  # it was 'corrupt or truncated image (... needs 800 MB ...)'


def test_decodes_wait_for_the_budget_and_give_up_clearly():
    budget = _Budget(100)
    with budget.take(80, wait=1.0):
        with pytest.raises(DecoderBusy, match="decoding other large images"):
            with budget.take(30, wait=0.05):
                pass
        with budget.take(20, wait=0.05):  # fits beside the first
            assert budget.used == 100
    with budget.take(500, wait=0.05):  # larger than the budget, but alone: it may go
        assert budget.used == 500
    assert budget.used == 0


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF", "WEBP"])
def test_exif_orientation_gives_the_displayed_size(fmt: str):
    """Size and pixels turned alike (Pillow turns a TIFF itself as it opens it; our size must agree)."""
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 40, 5))  # a white band along the top, stored
    exif = im.getexif()
    exif[0x0112] = 6  # rotated a quarter
    buf = io.BytesIO()
    im.save(buf, format=fmt, exif=exif)
    photo = load_photo(buf.getvalue())
    assert (photo.width, photo.height) == (20, 40) and photo.image.size == (20, 40)
    assert photo.image.getpixel((17, 20))[0] > 200  # the band is now down the right side


@pytest.mark.parametrize("depth", ["16-bit PNG", "float TIFF"])
def test_deep_greys_keep_their_tones(depth):
    """A 16-bit grey PNG (or a float TIFF in 0..1) is its 8-bit copy's tones, not stretched to 0..255: the
    stretch made such a photo 36 levels brighter on average."""
    grey = (data.camera() // 2 + 40).astype(np.uint8)  # 40..167: a stretch would show
    buffer = io.BytesIO()
    if depth == "16-bit PNG":
        Image.fromarray(grey.astype(np.uint16) * 257).save(buffer, format="PNG")
    else:
        Image.fromarray(grey.astype(np.float32) / 255, "F").save(buffer, format="TIFF")
    loaded = np.asarray(load_photo(buffer.getvalue()).image.convert("L"), dtype=int)
    assert np.abs(loaded - grey).max() <= 1
