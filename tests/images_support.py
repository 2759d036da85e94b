"""Worst-case images for the decoding tests: huge in pixels, tiny as files."""

from __future__ import annotations

import struct
import zlib

#: PNG colour type and bytes per pixel for the modes these tests make.
_PNG_MODES = {"L;16": (0, 16, 2), "RGBA": (6, 8, 4), "RGB": (2, 8, 3)}


def huge_png(width: int, height: int, mode: str) -> bytes:
    """A valid PNG of width x height blank pixels, compressed as it is written (never held whole)."""
    colour, depth, bpp = _PNG_MODES[mode]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + width * bpp)  # filter byte "none", then the row's bytes
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
