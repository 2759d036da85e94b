"""The pixels behind an SVG <image>: its href to bytes, and the format and pixel size from the header.

Standard library only: this runs in Inkscape's own Python, which has no Pillow on every platform. The
pixel size is the one Inkscape displays (a JPEG's EXIF orientation applied), because that is the size
the image's preserveAspectRatio is worked out with.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
import sys
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes
from urllib.request import url2pathname

FORMATS = "PNG, JPEG, GIF, BMP, TIFF or WebP"
#: How much of a linked file is read to identify it (its header); the rest only when it is sent.
HEADER_BYTES = 1 << 20
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:")


class ImageError(Exception):
    """An image the extension cannot sketch; the message is shown to the user as it is."""


@dataclass(frozen=True)
class Picture:
    """An image with what the extension needs to know about it. A linked file is read whole only when its
    bytes are needed (`data`), so a file too large to send is refused before it is read."""

    mime: str
    width: int  # pixels, as displayed
    height: int
    filename: str  # for the upload, e.g. "photo.jpg" or "embedded.png"
    size: int  # bytes
    path: str | None = None  # a linked file
    embedded: bytes | None = None  # the bytes of a data: URI

    @property
    def data(self) -> bytes:
        if self.embedded is not None:
            return self.embedded
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ImageError(f"cannot read the linked file {self.path} ({exc.strerror or exc})") from None


def load_picture(href: str | None, label: str, base_dirs: list[str], absref: str | None = None) -> Picture:
    """Read and identify the image an <image> element shows.

    `href` is a data: URI or a linked file (a path relative to one of `base_dirs`, an absolute path or a
    file: URI); `absref` is Inkscape's sodipodi:absref, tried when the link itself is missing.
    """
    if not href or not href.strip():
        raise ImageError(f"{label} has no pixels: its href is empty")
    href = href.strip()
    if href[:5].lower() == "data:":
        data = decode_data_uri(href, label)
        mime, width, height = _identify(data, label)
        return Picture(mime, width, height, "embedded" + _EXT[mime], len(data), embedded=data)
    path = _linked_path(href, label, base_dirs, absref)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
            if size > HEADER_BYTES and _sniff_mime(head) in ("image/jpeg", "image/tiff") and _size_or_none(head) is None:
                head += f.read()  # a JPEG's frame header behind large metadata, a TIFF's tags after its pixels
    except OSError as exc:
        raise ImageError(f"{label}: cannot read the linked file {path} ({exc.strerror or exc})") from None
    mime, width, height = _identify(head, label)
    return Picture(mime, width, height, os.path.basename(path), size, path=path)


def decode_data_uri(uri: str, label: str) -> bytes:
    """The bytes of a `data:[<mediatype>][;base64],<data>` URI."""
    header, comma, payload = uri.partition(",")
    if not comma:
        raise ImageError(f"{label}: its embedded data: URI is corrupt (no comma before the data)")
    if header.lower().endswith(";base64"):
        compact = re.sub(r"\s+", "", unquote_to_bytes(payload).decode("latin-1"))
        compact += "=" * (-len(compact) % 4)  # the padding may be left out (Inkscape shows such images)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(f"{label}: its embedded data: URI is corrupt (not valid base64)") from None
    else:
        data = unquote_to_bytes(payload)
    if not data:
        raise ImageError(f"{label}: its embedded data: URI is empty")
    return data


def _linked_path(href: str, label: str, base_dirs: list[str], absref: str | None) -> str:
    """The existing file a link points to, or an ImageError that names the missing one."""
    if href[:5].lower() == "file:":
        rest = href[5:]
        if rest.startswith("//"):  # file://host/path
            host, _, tail = rest[2:].partition("/")
            # A host other than localhost is a network share: a UNC path on Windows (//host/share/...).
            keep = host and host.lower() != "localhost" and sys.platform == "win32"
            rest = f"//{host}/{tail}" if keep else "/" + tail
        path = url2pathname(rest)  # not urlparse: a '?' in a file name is no query
    elif _SCHEME.match(href) and not re.match(r"^[a-zA-Z]:[\\/]", href):
        raise ImageError(
            f"{label} is linked from {href.split(':', 1)[0]}: (not a local file); "
            "embed the image or save it to a file and link that"
        )
    else:
        path = href
    candidates: list[str] = []
    for p in dict.fromkeys([path, unquote(path)]):  # links may be written %-escaped or not
        p = os.path.expanduser(p)
        candidates += [p] if os.path.isabs(p) else [os.path.join(d, p) for d in base_dirs]
    if not candidates:
        raise ImageError(
            f"{label} links to the relative path {path!r} but the document has not been saved; "
            "save the document or embed the image"
        )
    for candidate in candidates + ([absref] if absref else []):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise ImageError(f"{label}: the linked file {candidates[0]} is missing")


_EXT = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/bmp": ".bmp", "image/webp": ".webp",
        "image/tiff": ".tif"}


def _sniff_mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\0", b"MM\0*"):
        return "image/tiff"
    return None


def _is_svg(data: bytes) -> bool:
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return data.startswith(b"\x1f\x8b") or (head.startswith(b"<") and b"<svg" in head)


def _identify(data: bytes, label: str) -> tuple[str, int, int]:
    """Check that the bytes (the file's start) are a bitmap we can send; its type and displayed size."""
    mime = _sniff_mime(data)
    if mime is None:
        if _is_svg(data):
            raise ImageError(
                f"{label} is an SVG (vector) image; CLIPasso sketches photos: select a bitmap ({FORMATS}) image"
            )
        raise ImageError(f"{label} is not a supported image; CLIPasso reads {FORMATS} images")
    try:
        width, height = _SIZE_READERS[mime](data)
    except (struct.error, IndexError, ValueError):
        width = height = 0
    if width <= 0 or height <= 0:
        raise ImageError(f"{label}: the {_EXT[mime][1:].upper()} data is corrupt or truncated (no valid size)")
    return mime, width, height


def _size_or_none(data: bytes) -> tuple[int, int] | None:
    """The size, or None where the header is not all in `data` (or the format is not ours)."""
    try:
        return _SIZE_READERS[_sniff_mime(data)](data)
    except (KeyError, struct.error, IndexError, ValueError):
        return None


def _png_size(data: bytes) -> tuple[int, int]:
    if data[12:16] != b"IHDR":
        raise ValueError("no IHDR")
    return struct.unpack(">II", data[16:24])


def _gif_size(data: bytes) -> tuple[int, int]:
    return struct.unpack("<HH", data[6:10])


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # a negative height means top-down rows


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ValueError("no VP8 start code")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ValueError("no VP8L signature")
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise ValueError("unknown WebP chunk")


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG markers up to the frame header; orientations 5 to 8 swap width and height."""
    i, orientation = 2, 1
    while True:
        if data[i] != 0xFF:
            raise ValueError("not a JPEG marker")
        while data[i + 1] == 0xFF:  # fill bytes
            i += 1
        marker = data[i + 1]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("no frame header before the image data")
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        segment = data[i + 4 : i + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            orientation = _exif_orientation(segment[6:])
        if marker in _SOF:
            height, width = struct.unpack(">HH", segment[1:5])
            return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        i += 2 + length


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 when absent or unreadable."""
    try:
        return _ifd0(tiff).get(0x0112, 1)
    except (KeyError, struct.error):
        return 1


def _ifd0(tiff: bytes) -> dict[int, int]:
    """The first directory's numeric tags (SHORT or LONG values) of TIFF-structured bytes."""
    order = {b"II": "<", b"MM": ">"}[tiff[:2]]
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    tags = {}
    for n in range(count):
        entry = ifd + 2 + 12 * n
        tag, kind = struct.unpack(order + "HH", tiff[entry : entry + 4])
        value = {3: "H", 4: "I"}.get(kind)  # SHORT, LONG: the value sits in the entry's first bytes
        if value is not None:
            (tags[tag],) = struct.unpack(order + value, tiff[entry + 8 : entry + 8 + struct.calcsize(value)])
    return tags


def _tiff_size(data: bytes) -> tuple[int, int]:
    """Width and height from the first directory; Inkscape shows a TIFF turned by its orientation tag."""
    try:
        tags = _ifd0(data)
        width, height = tags[256], tags[257]
    except KeyError:
        raise ValueError("not a TIFF, or no size in its first directory") from None
    return (height, width) if tags.get(0x0112, 1) in (5, 6, 7, 8) else (width, height)


_SIZE_READERS = {
    "image/png": _png_size,
    "image/jpeg": _jpeg_size,
    "image/gif": _gif_size,
    "image/bmp": _bmp_size,
    "image/webp": _webp_size,
    "image/tiff": _tiff_size,
}
