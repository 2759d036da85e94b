"""SVG output: one plain, editable `<path>` per stroke, in the input image's own pixel coordinates."""

from __future__ import annotations

import json

import numpy as np
from lxml import etree

SVG_NS = "http://www.w3.org/2000/svg"
CLIPASSO_NS = "https://github.com/clipasso-inkscape/clipasso-inkscape#"


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
) -> str:
    """A standalone SVG document: size and viewBox equal to the image's pixel size."""
    strokes = np.asarray(strokes, dtype=np.float64).reshape(-1, 4, 2)
    root = etree.Element(
        f"{{{SVG_NS}}}svg",
        nsmap={None: SVG_NS},
        width=str(int(width)),
        height=str(int(height)),
        viewBox=f"0 0 {int(width)} {int(height)}",
        version="1.1",
    )
    if metadata is not None:
        meta = etree.SubElement(root, f"{{{SVG_NS}}}metadata")
        data = etree.SubElement(meta, f"{{{CLIPASSO_NS}}}settings", nsmap={"clipasso": CLIPASSO_NS})
        data.text = json.dumps(metadata, sort_keys=True)
    # Each path carries its own style, so that a stroke moved out of the group keeps its look.
    style = {
        "fill": "none",
        "stroke": "#000000",
        "stroke-width": f"{stroke_width:.4g}",
        "stroke-linecap": "round",
        "stroke-linejoin": "round",
    }
    group = etree.SubElement(root, f"{{{SVG_NS}}}g", id="clipasso-strokes")
    for i, stroke in enumerate(strokes):
        etree.SubElement(group, f"{{{SVG_NS}}}path", id=f"stroke-{i + 1}", d=path_data(stroke), attrib=style)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True).decode("utf-8")
