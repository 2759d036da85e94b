"""An artist's own SVG paths (and shapes, as their outlines), read for `--keep` (drawn as they are),
`--refine` (strokes to start from) and `--subject` (outlines of the subject).

The file's coordinates are the photo's pixels: its viewBox is the frame of our own output SVG. svgelements
reads the path data (lines, curves, arcs, several subpaths), the transforms on the way down and the
styles, as SVG defines them; this module turns each path into cubic segments in the viewBox's units,
which is all the engine needs to draw it. No torch here.
"""

from __future__ import annotations

import functools
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np
import svgelements as se

from .errors import InputError, one_line

#: A kept path's width when the file gives none: SVG's own default.
DEFAULT_STROKE_WIDTH = 1.0
#: The id of an invisible rectangle the size of the photo in our own SVG output (svg.py): imported into a
#: document, the sketch's box is then the photo's, so that Align or the W and H fields put it exactly over
#: the photo (the strokes' own box is smaller). It is not read as a path.
FRAME_ID = "clipasso-frame"
#: The id of a stroke in a ladder's level, as svg.py writes it: only the finest level's are read.
LADDER_STROKE = re.compile(r"level-(\d+)-stroke-\d+")
#: Points sampled along each cubic to tell whether a path passes over the photo (the extension's own check
#: samples as many, so that both judge a path alike).
CROSSING_SAMPLES = 32
#: Shapes read as the paths of their outlines, beside <path>.
SHAPES = (se.Rect, se.Circle, se.Ellipse, se.SimpleLine, se.Polyline, se.Polygon)
#: Elements that `<use>` references may add to a file. svgelements copies what each one names as it parses,
#: and nested ones multiply: 2.4 KB of ten-fold `<use>` nine deep stood for 10^9 paths, which grew a
#: server past 7 GB before anything could count them. A clone or a symbol used a few hundred times passes.
MAX_USE_COPIES = 10_000
#: How deep `<use>` references and groups may nest, followed one inside another.
MAX_NESTING = 200
_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"


@dataclass(frozen=True, eq=False)
class DrawnPath:
    """One `<path>` of the artist's file."""

    d: str  #: the path data as written in the file
    transform: str | None  #: matrix(...) from the path's own units to the viewBox's; None when there is none
    stroke_width: float  #: as written (in the path's own units)
    cubics: np.ndarray  #: (K, 4, 2) the path as cubic segments, in the viewBox's units (the photo's pixels)
    scale: float  #: how much the transform enlarges lengths (the stroke width drawn is stroke_width * scale)
    colour: str | None = None  #: its stroke colour as #rrggbb, None for black (or none given)
    opacity: float = 1.0  #: its stroke's opacity
    first_cubics: int = 1  #: how many of `cubics` the path's first segment is (an arc is several)

    @property
    def drawn_width(self) -> float:
        """The stroke width in the photo's pixels."""
        return self.stroke_width * self.scale

    def first_stroke(self) -> np.ndarray:
        """The path's first segment as one cubic (4, 2): where a refined stroke starts. An arc, which
        svgelements splits into cubics of at most 30 degrees, is fitted whole (a door's half circle
        started from its first sixth)."""
        return one_cubic(self.cubics[: self.first_cubics])

    def outline(self, samples: int = 8) -> np.ndarray:
        """The path as a polygon (P, 2): each cubic segment sampled at `samples` points, for filling it."""
        t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None]
        weights = np.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], axis=1)  # (S, 4, 1)
        return np.concatenate([(weights * c[None]).sum(axis=1) for c in self.cubics] + [self.cubics[-1, 3:]])

    def inside(self, width: int, height: int) -> bool:
        """Whether the path passes over the photo: a point sampled along it (CROSSING_SAMPLES a cubic) lies on
        it. Its control points may all lie off a curve that crosses the photo."""
        p = self.outline(CROSSING_SAMPLES)
        return bool(np.any((p[:, 0] >= 0) & (p[:, 0] <= width) & (p[:, 1] >= 0) & (p[:, 1] <= height)))

    def overlaps(self, width: int, height: int) -> bool:
        """Whether the box around the path's control points overlaps the photo (an outline around it does)."""
        p = self.cubics.reshape(-1, 2)
        low, high = p.min(axis=0), p.max(axis=0)
        return bool(low[0] <= width and low[1] <= height and high[0] >= 0 and high[1] >= 0)


def _bernstein(t: np.ndarray) -> np.ndarray:
    """(N, 4) the cubic Bernstein weights at parameters t (N,)."""
    t = t[:, None]
    return np.concatenate([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], axis=1)


def one_cubic(cubics: np.ndarray, samples: int = 16) -> np.ndarray:
    """One cubic (4, 2) from the start to the end of consecutive cubics (K, 4, 2), its inner control points
    fitted by least squares to points along them (parameters by chord length). One cubic is itself."""
    if len(cubics) == 1:
        return cubics[0]
    points = np.concatenate([_bernstein(np.linspace(0, 1, samples)) @ c for c in cubics])
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    if chord[-1] == 0:
        return cubics[0]
    weights = _bernstein(chord / chord[-1])
    start, end = points[0], points[-1]
    rest = points - np.outer(weights[:, 0], start) - np.outer(weights[:, 3], end)
    inner = np.linalg.lstsq(weights[:, 1:3], rest, rcond=None)[0]
    return np.stack([start, inner[0], inner[1], end])


def _cubics(segment: se.PathSegment) -> list[tuple[complex, ...]]:
    """A segment as cubics, each four control points as complex x + iy; Move and empty Close give none."""
    if isinstance(segment, se.Move) or segment.start is None or segment.end is None:
        return []
    z = lambda p: complex(p[0], p[1])  # noqa: E731
    s, e = z(segment.start), z(segment.end)
    if isinstance(segment, se.CubicBezier):
        return [(s, z(segment.control1), z(segment.control2), e)]
    if isinstance(segment, se.QuadraticBezier):  # degree elevation: exact
        c = z(segment.control)
        return [(s, s + (c - s) * 2 / 3, e + (c - e) * 2 / 3, e)]
    if isinstance(segment, se.Arc) and (curves := list(segment.as_cubic_curves())):
        return [(z(c.start), z(c.control1), z(c.control2), z(c.end)) for c in curves]
    if isinstance(segment, (se.Line, se.Close, se.Arc)) and s != e:  # an arc of radius 0 is a line (SVG 1.1, F.6.2)
        return [(s, s + (e - s) / 3, s + (e - s) * 2 / 3, e)]
    return []


@functools.lru_cache(maxsize=8)
def read_paths(svg_text: str) -> tuple[DrawnPath, ...]:
    """Every `<path>` with drawable segments in an SVG document, and every shape's outline (`SHAPES`);
    InputError if it is not SVG or has none.

    Cached: the service reads the same text when it checks a job, runs it and draws its previews.
    """
    try:
        root = _xml(svg_text)
        _check_copies(root)
        svg = se.SVG.parse(io.StringIO(svg_text), reify=False)
    except InputError:
        raise
    except Exception as exc:  # svgelements raises what the XML parser and its own parsers raise
        raise InputError(f"not an SVG file ({one_line(exc, 120)})") from None
    if not isinstance(svg, se.SVG):
        raise InputError("not an SVG file")
    try:
        viewbox = svg.viewbox_transform
    except ZeroDivisionError:
        raise InputError("its viewBox has no area (a width or height of 0)") from None
    to_viewbox = ~se.Matrix(viewbox) if viewbox else se.Matrix()
    paths, levels = [], []
    for element in svg.elements():
        if element.values.get("visibility") in ("hidden", "collapse"):  # inherited: a hidden path or group
            continue
        if element.id == FRAME_ID:  # our own output's frame: no one's stroke
            continue
        if isinstance(element, SHAPES):  # drawn with an editor's ellipse, rectangle or line tool: its outline
            element = se.Path(element)
            d = element.d(transformed=False)
        elif isinstance(element, se.Path) and element.values.get("d"):
            d = element.values["d"]
        else:
            continue
        m = se.Matrix(element.transform) * to_viewbox
        try:
            segments = [found for segment in element if (found := _cubics(segment))]
            cubics = [c for found in segments for c in found]
        except (ValueError, OverflowError, ZeroDivisionError):  # an arc of radius 1e308, say
            raise InputError("a path's coordinates are not finite numbers (an arc's radius is too large)") from None
        if not cubics:
            continue
        points = np.array([[(p.real, p.imag) for p in c] for c in cubics], dtype=np.float64)
        affine = np.array([[m.a, m.c], [m.b, m.d]])
        with np.errstate(all="ignore"):  # said below, in one line
            points = points @ affine.T + np.array([m.e, m.f])
        if not np.isfinite(points).all():
            raise InputError("a path's coordinates are not finite numbers (its transform is too large)")
        if np.ptp(points.reshape(-1, 2), axis=0).max() == 0:
            continue  # a transform that takes it to one point (scale(0), matrix(0,0,0,0,0,0)) draws nothing
        width = element.stroke_width  # its own or inherited, from attribute or style
        stroke = element.stroke if element.stroke is not None and element.stroke.value is not None else None
        level = LADDER_STROKE.fullmatch(str(element.values.get("id") or ""))
        levels.append(int(level.group(1)) if level else None)
        paths.append(DrawnPath(
            d=d,
            transform=None if m.is_identity() else f"matrix({m.a:.12g},{m.b:.12g},{m.c:.12g},{m.d:.12g},{m.e:.12g},{m.f:.12g})",
            stroke_width=DEFAULT_STROKE_WIDTH if width is None else float(width),
            cubics=points,
            scale=float(np.sqrt(abs(np.linalg.det(affine)))),
            colour=None if stroke is None else stroke.hexrgb,
            opacity=1.0 if stroke is None else round(stroke.opacity, 4),
            first_cubics=len(segments[0]),
        ))
    if not paths:
        if any(el.tag.rpartition("}")[2] in ("clipPath", "mask") and len(el) for el in root.iter()):
            raise InputError("has no <path> or shape that is drawn; those inside a clip or mask are not read "
                             "(in Inkscape: Object > Clip > Release, then save)")
        raise InputError("has no <path> with path data in it, nor a shape")
    if any(n is not None for n in levels):  # our own ladder: its coarser levels repeat the finest one's strokes
        finest = max(n for n in levels if n is not None)
        paths = [p for p, n in zip(paths, levels) if n is None or n == finest]
    return tuple(paths)


@functools.lru_cache(maxsize=8)
def _xml(svg_text: str) -> ET.Element:
    """The SVG's XML tree, parsed once for read_paths and drawing_notes (which only read it)."""
    return ET.fromstring(svg_text)


def _check_copies(root: ET.Element) -> None:
    """InputError where `<use>` references would add more than MAX_USE_COPIES elements, or nest deeper than
    MAX_NESTING: counted on the XML tree, each element once, before svgelements copies anything."""
    ids = {el.get("id"): el for el in root.iter() if el.get("id")}
    # An element's size with what its <use> references add, and how deep it nests below itself, by id():
    # an element reached again (a second <use> of it) is not walked again, but its depth still counts.
    known: dict[int, tuple[int, int]] = {}
    too_deep = f"its groups or <use> references nest over {MAX_NESTING} deep (or refer to themselves)"

    def walk(el: ET.Element, depth: int) -> tuple[int, int]:
        if id(el) not in known:
            if depth > MAX_NESTING:
                raise InputError(too_deep)
            href = el.get(_XLINK_HREF) or el.get("href") or ""
            below = [walk(child, depth + 1) for child in el]
            if el.tag.rpartition("}")[2] == "use" and href.startswith("#") and href[1:] in ids:
                below.append(walk(ids[href[1:]], depth + 1))
            known[id(el)] = (1 + sum(n for n, _ in below), 1 + max((h for _, h in below), default=0))
        size, height = known[id(el)]
        if depth + height > MAX_NESTING + 1:
            raise InputError(too_deep)
        return size, height

    added = walk(root, 0)[0] - sum(1 for _ in root.iter())
    if added > MAX_USE_COPIES:
        raise InputError(f"its <use> references stand for {added:,} more elements; at most {MAX_USE_COPIES:,} are read")


#: Elements whose content is not drawn where it stands (a clip's or mask's shapes, definitions).
_NOT_DRAWN = {"defs", "clipPath", "mask", "symbol", "marker", "pattern"}
_LENGTH = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(px)?\s*")


@functools.lru_cache(maxsize=8)
def drawing_notes(svg_text: str, width: int, height: int) -> tuple[str, ...]:
    """What of a (readable) SVG given as keep, refine or subject is not used as drawn, a line each: clips and
    masks (its paths are used whole), and a document whose size is not the photo's pixels (a millimetre
    page, say: its coordinates are taken as pixels all the same)."""
    root = _xml(svg_text)
    notes = []
    if _clipped(root):
        notes.append("its clips and masks are not applied: its paths are used whole")
    size = _size(root)
    if size is not None and (abs(size[0] - width) > 0.01 * width or abs(size[1] - height) > 0.01 * height):
        notes.append(f"it is {size[0]:g}x{size[1]:g} where the photo is {width}x{height} pixels: its coordinates "
                     "are taken as the photo's pixels all the same (draw over the photo opened at its own size, "
                     "or use the Inkscape extension, which maps your paths onto the photo)")
    return tuple(notes)


#: The elements read as paths (SHAPES and <path>), by tag.
_DRAWN_TAGS = {"path", "rect", "circle", "ellipse", "line", "polyline", "polygon"}


def _clipped(element: ET.Element) -> bool:
    """Whether a drawn path or shape (not a definition's) is clipped or masked, by itself or a group around
    it (a clipped photo beside the paths is not)."""
    for child in element:
        tag = child.tag.rpartition("}")[2]
        if tag in _NOT_DRAWN:
            continue
        style = child.get("style") or ""
        if child.get("clip-path") or child.get("mask") or re.search(r"(?:^|;)\s*(clip-path|mask)\s*:\s*url", style):
            if tag in _DRAWN_TAGS or any(el.tag.rpartition("}")[2] in _DRAWN_TAGS for el in child.iter()):
                return True
        elif _clipped(child):
            return True
    return False


def _size(root: ET.Element) -> tuple[float, float] | None:
    """The document's size in user units: its viewBox's, else its width and height where given in px."""
    box = re.split(r"[\s,]+", (root.get("viewBox") or "").strip())
    if len(box) == 4:
        try:
            return float(box[2]), float(box[3])
        except ValueError:
            return None
    w, h = (_LENGTH.fullmatch(root.get(k) or "") for k in ("width", "height"))
    return (float(w.group(1)), float(h.group(1))) if w and h else None  # a number, as the pattern has it
