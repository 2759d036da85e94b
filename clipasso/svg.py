"""SVG output: one plain, editable `<path>` per stroke, in the input image's own pixel coordinates, in
layers as Inkscape shows them."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
from lxml import etree

from .paths import FRAME_ID, DrawnPath

SVG_NS = "http://www.w3.org/2000/svg"
INKSCAPE_NS = "http://www.inkscape.org/namespaces/inkscape"
SODIPODI_NS = "http://sodipodi.sourceforge.net/DTD/sodipodi-0.dtd"
#: Colour of the artist's kept paths in live previews (the new strokes are black).
KEPT_PREVIEW_COLOUR = "#999999"
#: The id of the `<metadata>` whose text is the sketch's settings as JSON (an element of our own namespace
#: in it made Inkscape warn "unknown type" on every open and export).
SETTINGS_ID = "clipasso-settings"


def path_data(stroke: np.ndarray) -> str:
    """`M x0,y0 C x1,y1 x2,y2 x3,y3` for one (4, 2) cubic, rounded to 1/1000 px."""
    p = [f"{float(x):.3f},{float(y):.3f}".replace("-0.000", "0.000") for x, y in stroke]
    return f"M {p[0]} C {p[1]} {p[2]} {p[3]}"


def strokes_to_svg(
    strokes: np.ndarray,
    width: int,
    height: int,
    stroke_width: float,
    metadata: dict | None = None,
    kept: Sequence[DrawnPath] = (),
    kept_colour: str | None = None,
    levels: dict[int, np.ndarray] | None = None,
) -> str:
    """A standalone SVG document: size and viewBox equal to the image's pixel size.

    The artist's `kept` paths come first (group `clipasso-kept`, their path data, transforms, widths and
    colours as they were, or all in `kept_colour`: the previews' grey), then the strokes (group
    `clipasso-strokes`), or with `levels` one group `level-N` per level, the finest last. Each group is an
    Inkscape layer ("16 strokes"); of the levels only the finest is shown, as the extension places them.
    An invisible, locked rectangle (FRAME_ID) before them all is the photo's frame.
    """
    strokes = np.asarray(strokes, dtype=np.float64).reshape(-1, 4, 2)
    root = etree.Element(
        f"{{{SVG_NS}}}svg",
        nsmap={None: SVG_NS, "inkscape": INKSCAPE_NS, "sodipodi": SODIPODI_NS},
        width=str(int(width)),
        height=str(int(height)),
        viewBox=f"0 0 {int(width)} {int(height)}",
        version="1.1",
    )
    if metadata is not None:
        meta = etree.SubElement(root, f"{{{SVG_NS}}}metadata", id=SETTINGS_ID)
        meta.text = json.dumps(metadata, sort_keys=True)
    etree.SubElement(root, f"{{{SVG_NS}}}rect", id=FRAME_ID, width=str(int(width)), height=str(int(height)),
                     fill="none", stroke="none", attrib={f"{{{INKSCAPE_NS}}}label": "photo frame",
                                                         f"{{{SODIPODI_NS}}}insensitive": "true"})
    if kept:
        group = _layer(root, "clipasso-kept", "kept paths")
        for i, path in enumerate(kept):
            element = etree.SubElement(group, f"{{{SVG_NS}}}path", id=f"kept-{i + 1}", d=path.d,
                                       attrib=_style(path.stroke_width, kept_colour or path.colour or "#000000"))
            if kept_colour is None and path.opacity < 1:
                element.set("stroke-opacity", f"{path.opacity:.4g}")
            if path.transform:
                element.set("transform", path.transform)
    style = _style(stroke_width, "#000000")
    if levels is None:
        group = _layer(root, "clipasso-strokes", _strokes(len(strokes)))
        for i, stroke in enumerate(strokes):
            etree.SubElement(group, f"{{{SVG_NS}}}path", id=f"stroke-{i + 1}", d=path_data(stroke), attrib=style)
    else:
        finest = max(levels)
        for n, level in sorted(levels.items()):  # the finest last: on top, and Inkscape's current layer
            group = _layer(root, f"level-{n}", _strokes(n))
            if n != finest:
                group.set("style", "display:none")
            for i, stroke in enumerate(np.asarray(level, dtype=np.float64).reshape(-1, 4, 2)):
                etree.SubElement(group, f"{{{SVG_NS}}}path", id=f"level-{n}-stroke-{i + 1}", d=path_data(stroke),
                                 attrib=style)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True).decode("utf-8")


def _layer(parent: etree._Element, id: str, label: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{SVG_NS}}}g", id=id, attrib={f"{{{INKSCAPE_NS}}}groupmode": "layer",
                                                                       f"{{{INKSCAPE_NS}}}label": label})


def _strokes(n: int) -> str:
    return f"{n} stroke{'' if n == 1 else 's'}"


def _style(stroke_width: float, colour: str) -> dict[str, str]:
    """Each path carries its own style, so that a stroke moved out of its group keeps its look."""
    return {
        "fill": "none",
        "stroke": colour,
        "stroke-width": f"{stroke_width:.4g}",
        "stroke-linecap": "round",
        "stroke-linejoin": "round",
    }
