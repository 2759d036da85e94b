"""Where an <image> shows its pixels: the SVG viewBox-to-viewport mapping, done once, exactly.

An <image> of intrinsic size W x H pixels is drawn into its viewport (x, y, width, height) the way an
element with `viewBox="0 0 W H"` is (SVG 1.1, 7.8 and 7.9): `preserveAspectRatio` picks a uniform scale
(meet: the whole image fits; slice: it covers the viewport and is clipped) and an alignment, or
stretches it ('none'). Plain tuples, no inkex: the extension composes the result with the element's
transforms.
"""

from __future__ import annotations

from typing import NamedTuple

Matrix = tuple  # (a, b, c, d, e, f) as in SVG's matrix(a b c d e f)

_ALIGNS = {f"x{x}Y{y}" for x in ("Min", "Mid", "Max") for y in ("Min", "Mid", "Max")} | {"none"}
_FRACTION = {"Min": 0.0, "Mid": 0.5, "Max": 1.0}


class AspectRatio(NamedTuple):
    align: str  # 'none' or xMinYMin ... xMaxYMax
    slice: bool  # False: meet


def parse_aspect_ratio(value: str | None) -> AspectRatio:
    """Parse `[defer] <align> [meet|slice]`; a missing or invalid value is the default xMidYMid meet."""
    words = (value or "").split()
    if words[:1] == ["defer"]:
        words = words[1:]
    if not words or words[0] not in _ALIGNS or len(words) > 2 or words[1:] not in ([], ["meet"], ["slice"]):
        return AspectRatio("xMidYMid", False)
    return AspectRatio(words[0], words[1:] == ["slice"])


def viewbox_to_viewport(
    viewbox: tuple[float, float, float, float],
    viewport: tuple[float, float, float, float],
    aspect: AspectRatio,
) -> Matrix:
    """The matrix that draws `viewbox` (min-x, min-y, width, height) into `viewport` (x, y, width, height)."""
    vx, vy, vw, vh = viewbox
    x, y, w, h = viewport
    if vw <= 0 or vh <= 0:
        raise ValueError(f"empty viewBox {viewbox}")
    sx, sy = w / vw, h / vh
    tx, ty = x - vx * sx, y - vy * sy
    if aspect.align != "none":
        sx = sy = max(sx, sy) if aspect.slice else min(sx, sy)
        fx, fy = _FRACTION[aspect.align[1:4]], _FRACTION[aspect.align[5:8]]
        tx = x - vx * sx + fx * (w - vw * sx)
        ty = y - vy * sy + fy * (h - vh * sy)
    return (sx, 0.0, 0.0, sy, tx, ty)
