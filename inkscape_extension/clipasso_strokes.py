"""The backend's stroke drawings (results and live previews) as the extension uses them.

The backend writes one `<path d="M x0,y0 C x1,y1 x2,y2 x3,y3">` per stroke in an SVG whose viewBox is the
photo's pixel box; the effect places the path data as it is. The artist's kept paths (group
`clipasso-kept`) are theirs already and are left out; an abstraction ladder has one group `level-N` per level.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from lxml import etree

SVG_NS = "http://www.w3.org/2000/svg"


class StrokeError(ValueError):
    """The SVG is not a stroke drawing the backend makes."""


KEPT_GROUP = "clipasso-kept"
LEVEL_GROUP = re.compile(r"level-(\d+)$")


class Strokes(NamedTuple):
    """A drawing of strokes: its viewBox (x, y, width, height) and each new stroke as (path data, width);
    for a ladder, `levels` holds (stroke count, strokes) per level, finest first, and `paths` the finest."""

    viewbox: tuple
    paths: list
    levels: list = []


def read_strokes(svg: bytes) -> Strokes:
    """The viewBox and the strokes of an SVG from the backend; StrokeError if it is not one with a size."""
    try:
        root = etree.fromstring(svg, parser=etree.XMLParser(resolve_entities=False, no_network=True))
        box = root.get("viewBox") or f"0 0 {root.get('width')} {root.get('height')}"
        viewbox = tuple(float(v) for v in re.split(r"[\s,]+", box.strip()))
        if len(viewbox) != 4 or viewbox[2] <= 0 or viewbox[3] <= 0:
            raise ValueError(box)
    except (etree.XMLSyntaxError, ValueError, TypeError):
        raise StrokeError("not an SVG with a size") from None
    levels = []
    for group in root.iter(f"{{{SVG_NS}}}g"):
        match = LEVEL_GROUP.match(group.get("id") or "")
        if match:
            levels.append((int(match.group(1)), _paths(group)))
    if levels:
        levels.sort(key=lambda level: -level[0])
        return Strokes(viewbox, levels[0][1], levels)
    new = [p for p in _paths(root, raw=True) if not any(a.get("id") == KEPT_GROUP for a in p.iterancestors())]
    return Strokes(viewbox, [(p.get("d"), stroke_width(p)) for p in new])


def _paths(element, raw: bool = False) -> list:
    """The paths with data under `element`: the elements, or (path data, width) pairs."""
    found = [p for p in element.iter(f"{{{SVG_NS}}}path") if p.get("d")]
    return found if raw else [(p.get("d"), stroke_width(p)) for p in found]


def stroke_width(element) -> float:
    """The stroke width an element draws with: its own or inherited, from style or attribute (SVG default 1)."""
    while element is not None:
        style = re.search(r"(?:^|;)\s*stroke-width\s*:\s*([0-9.eE+-]+)", element.get("style") or "")
        value = style.group(1) if style else element.get("stroke-width")
        if value:
            try:
                return float(re.sub(r"px$", "", value.strip()))
            except ValueError:
                pass
        element = element.getparent()
    return 1.0
