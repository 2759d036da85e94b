"""Mixing the artist's strokes with the engine's: kept paths, refined strokes and the abstraction ladder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lxml import etree
from PIL import Image
from skimage import data

from clipasso.encoders import load_encoder
from clipasso.engine import sketch
from clipasso.engine import ladder
from clipasso.engine.relay import drawn_alone, without_each
from clipasso.engine.render import render_batch
from clipasso.engine.target import prepare_target
from clipasso.errors import InputError
from clipasso.images import Photo
from clipasso.options import CANVAS_STROKE_WIDTH, SketchOptions, image_stroke_width
from clipasso.paths import read_paths

SVG = "{http://www.w3.org/2000/svg}"
#: Lines, a quadratic, an arc, a relative subpath, a cubic and a transform: the path data people draw.
MINE = """<svg xmlns="http://www.w3.org/2000/svg" width="451" height="300" viewBox="0 0 451 300">
  <path d="M 150 60 Q 200 20 260 60 A 80 90 0 0 1 300 200 L 280 280" fill="none" stroke="#000" stroke-width="6"/>
  <g transform="translate(10 0)"><path d="M 140 60 C 110 120 100 200 150 280 m 40 -150 l 15 0"
     style="fill:none;stroke:rgba(200,30,30,0.5);stroke-width:2" transform="scale(1 1)"/></g>
</svg>"""


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(data.chelsea())  # 451 x 300


def fast(**kw) -> SketchOptions:
    return SketchOptions(**{"strokes": 4, "iterations": 4, "encoder": "lite0", "device": "cpu", **kw})


def test_path_data_becomes_cubics_in_the_photo_pixels():
    first, second = read_paths(MINE)
    assert first.d.startswith("M 150 60 Q") and first.transform is None and first.drawn_width == 6
    # 1 quadratic + the arc's cubics + 1 line; the quadratic is elevated exactly, the line is straight.
    assert len(first.cubics) >= 3
    np.testing.assert_allclose(first.cubics[0], [[150, 60], [183.333, 33.333], [220, 33.333], [260, 60]],
                               atol=1e-3)
    assert np.allclose(first.cubics[-1][[0, 3]], [[300, 200], [280, 280]], atol=1e-6)
    # The group's translate is applied to the points and written as the path's transform; subpaths count.
    assert second.transform == "matrix(1,0,0,1,10,0)" and second.drawn_width == 2
    assert np.allclose(second.cubics[0][0], [150, 60]) and np.allclose(second.cubics[-1][[0, 3]], [[200, 130], [215, 130]])


def test_shapes_are_read_as_their_outlines():
    """An ellipse, a rectangle, a line, a polyline and a circle, as an editor's tools draw them: each a path
    in the photo's pixels, through the transforms above it."""
    text = ('<svg xmlns="http://www.w3.org/2000/svg" width="400" height="200" viewBox="0 0 200 100">'
            '<g transform="translate(10,0)"><ellipse cx="50" cy="50" rx="20" ry="10" transform="scale(2,1)"'
            ' style="stroke-width:3"/></g><rect x="1" y="2" width="3" height="4"/><line x1="0" y1="0" x2="5" y2="5"/>'
            '<polyline points="0,0 1,1 2,0"/><circle cx="5" cy="5" r="2"/><text x="1" y="1">not a stroke</text></svg>')
    found = read_paths(text)
    boxes = [np.concatenate([p.cubics.reshape(-1, 2).min(0), p.cubics.reshape(-1, 2).max(0)]) for p in found]
    np.testing.assert_allclose(boxes, [[70, 40, 150, 60], [1, 2, 4, 6], [0, 0, 5, 5], [0, 0, 2, 1], [3, 3, 7, 7]],
                               atol=1e-6)
    ellipse = found[0]
    assert ellipse.d.startswith("M 70,50 A 20,10") and ellipse.transform == "matrix(2,0,0,1,10,0)"
    assert ellipse.drawn_width == pytest.approx(3 * 2**0.5)


def test_a_ladder_is_read_as_its_finest_level():
    """Refining (or keeping) a ladder's result starts from its finest level: the coarser levels are subsets
    of it, and read too they would double its strokes."""
    def level(n: int) -> str:
        strokes = "".join(f'<path id="level-{n}-stroke-{i + 1}" d="M {i} {n} L {i + 9} {n}"/>' for i in range(n))
        return f'<g id="level-{n}">{strokes}</g>'

    text = ('<svg xmlns="http://www.w3.org/2000/svg"><g id="clipasso-kept"><path id="kept-1" d="M 0 0 L 5 5"/></g>'
            f'{level(3)}{level(2)}</svg>')
    found = read_paths(text)
    assert [p.cubics[0, 0].tolist() for p in found] == [[0, 0], [0, 3], [1, 3], [2, 3]]  # the kept path, level 3


def test_an_outline_is_the_path_sampled_along_its_curves():
    (square,) = read_paths('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 0 0 H 8 V 8 H 0 Z"/></svg>')
    ring = square.outline(samples=4)
    assert ring.shape == (4 * 4 + 1, 2) and np.allclose(ring[[0, 4, 8, 12, 16]], [[0, 0], [8, 0], [8, 8], [0, 8], [0, 0]])
    assert np.allclose(ring[1], [2, 0])  # a straight side's thirds are its cubic's controls: evenly sampled
    (arc,) = read_paths('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 0 0 A 5 5 0 0 1 10 0"/></svg>')
    radii = np.linalg.norm(arc.outline() - [5, 0], axis=1)
    assert np.allclose(radii, 5, atol=0.01)  # on the circle, not on its control polygon


def test_an_outline_around_the_whole_photo_overlaps_it():
    (around,) = read_paths('<svg xmlns="http://www.w3.org/2000/svg"><path d="M -5 -5 H 105 V 105 H -5 Z"/></svg>')
    (beside,) = read_paths('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 120 0 H 130 V 10 Z"/></svg>')
    assert around.overlaps(100, 100) and not around.inside(100, 100)
    assert not beside.overlaps(100, 100) and beside.overlaps(130, 100)


def test_a_path_its_transform_takes_to_one_point_draws_nothing():
    """It was refined as a stroke of no length at (0, 0)."""
    (kept,) = read_paths('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 1 1 L 9 9"/>'
                         '<path transform="matrix(0,0,0,0,0,0)" d="M 1 1 L 9 9"/></svg>')
    assert np.allclose(kept.cubics[0, [0, 3]], [[1, 1], [9, 9]])


def fanned_out(depth: int, fan: int = 10) -> str:
    """An SVG whose one path is copied `fan` times at each of `depth` levels of nested <use>."""
    groups = ['<g id="u0"><path d="M 20,20 L 180,130"/></g>'] + [
        f'<g id="u{i}">' + f'<use xlink:href="#u{i - 1}"/>' * fan + "</g>" for i in range(1, depth + 1)]
    return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="0 0 200 150">'
            f'<defs>{"".join(groups)}</defs><use xlink:href="#u{depth}"/></svg>')


def test_use_references_that_multiply_are_refused_before_they_are_copied():
    """2.4 KB of nested <use> stood for 10^9 paths, which svgelements copied as it parsed (a server grew past
    7 GB); they are counted on the XML first. A path used a hundred times is read as a hundred paths."""
    assert len(read_paths(fanned_out(2))) == 100
    with pytest.raises(InputError, match=r"stand for [\d,]+ more elements; at most 10,000"):
        read_paths(fanned_out(9))
    deep = '<svg xmlns="http://www.w3.org/2000/svg">' + "<g>" * 5000 + '<path d="M 1 1 L 9 9"/>' + "</g>" * 5000 + "</svg>"
    with pytest.raises(InputError, match="nest over 200 deep"):
        read_paths(deep)
    # Groups 180 deep, each ending in a <use> of the one before: each is counted once, its depth every time.
    chain = "".join(f'<g id="g{k}">' + "<g>" * 180 + (f'<use href="#g{k - 1}"/>' if k else '<path d="M 0 0 L 5 5"/>')
                    + "</g>" * 181 for k in range(8))
    with pytest.raises(InputError, match="nest over 200 deep"):
        read_paths(f'<svg xmlns="http://www.w3.org/2000/svg"><defs>{chain}</defs><use href="#g7"/></svg>')


def test_an_arc_is_refined_from_whole():
    """svgelements splits an arc into cubics of at most 30 degrees: a door's half circle was refined from its
    first sixth. Its first stroke now runs from end to end, within 0.5 px of the circle."""
    (door,) = read_paths('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 85,220 A 15,15 0 0 1 115,220 L 115 260"/></svg>')
    first = door.first_stroke()
    assert np.allclose(first[[0, 3]], [[85, 220], [115, 220]])
    t = np.linspace(0, 1, 50)[:, None]
    along = (1 - t) ** 3 * first[0] + 3 * t * (1 - t) ** 2 * first[1] + 3 * t**2 * (1 - t) * first[2] + t**3 * first[3]
    radius = np.linalg.norm(along - [100, 220], axis=1)
    assert np.abs(radius - 15).max() < 0.5 and along[:, 1].min() < 206  # over the top, as the arc goes


def test_an_arc_of_radius_0_is_a_line():
    """SVG draws an arc with a radius of 0 as a straight line; it was refused as no path data."""
    (arc,) = read_paths('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 100,100 A 0 0 0 0 0 120,100"/></svg>')
    assert np.allclose(arc.cubics, [[[100, 100], [320 / 3, 100], [340 / 3, 100], [120, 100]]])


def test_a_path_crossing_the_photo_with_its_ends_off_it_is_on_it():
    """Judged by points along the curve, not its control points: a curve whose control points all lie off
    the photo may still cross it (a straight line's lie on it by chance: its thirds)."""
    def on(d: str) -> bool:
        (path,) = read_paths(f'<svg xmlns="http://www.w3.org/2000/svg"><path d="{d}"/></svg>')
        return path.inside(100, 100)

    assert on("M -20 -20 C -20 120 120 120 120 -20")  # dips to y = 85 at x = 50
    assert on("M -10 50 L 110 50")
    assert not on("M -20 -20 C -20 0 120 0 120 -20")  # stays above the photo


def test_kept_paths_take_part_in_every_render(cat):
    encoder, _ = load_encoder("lite0", "cpu")
    target = prepare_target(Photo.of(cat), encoder, fast(keep=MINE).validated())
    kept = target.kept
    on_path = target.box.to_canvas(np.array([290.0, 240.0])).astype(int)  # on the 6 px path's last line
    assert float(kept[on_path[1], on_path[0]]) < 0.5 and float(kept[5, 112]) == 1.0
    points = torch.tensor([[[20.0, 20], [40, 30], [60, 30], [80, 20]]])
    plain = prepare_target(Photo.of(cat), encoder, fast(stroke_width=4.0).validated())  # the kept paths' width
    assert torch.allclose(target.render(points), plain.render(points) * kept)
    assert torch.allclose(target.render_batch(points[None])[0], target.render(points))
    # The width is honoured: the 6 px path covers about three times the ink of the 2 px one per length.
    thick = read_paths(MINE.replace('stroke-width="6"', 'stroke-width="2"'))
    assert float((1 - kept).sum()) > float((1 - prepare_target(
        Photo.of(cat), encoder, fast(keep=MINE.replace('stroke-width="6"', 'stroke-width="2"')).validated()
    ).kept).sum()) * 1.5 and len(thick) == 2


def test_new_strokes_take_the_artists_width_unless_one_is_asked(cat):
    """Beside kept or refined paths (6 and 2 px here) the strokes are drawn with their median width, held
    within half to twice the default; an asked width wins; without the artist's paths, the default."""
    default = image_stroke_width(fast(), 451, 300)
    assert default == pytest.approx(CANVAS_STROKE_WIDTH * 451 / 224, rel=1e-3)
    assert image_stroke_width(fast(keep=MINE), 451, 300) == 4.0
    assert image_stroke_width(fast(refine=MINE), 451, 300) == 4.0
    assert image_stroke_width(fast(keep=MINE, stroke_width=9.0), 451, 300) == 9.0
    hairline = MINE.replace('stroke-width="6"', 'stroke-width="0.1"').replace("stroke-width:2", "stroke-width:0.1")
    assert image_stroke_width(fast(keep=hairline), 451, 300) == pytest.approx(default / 2)
    result = sketch(cat, fast(keep=MINE))
    assert result.stroke_width == 4.0
    new = etree.fromstring(result.svg.encode()).find(f".//{SVG}g[@id='clipasso-strokes']")
    widths = {p.get("stroke-width") for p in new.iter(f"{SVG}path")}
    assert widths == {"4"}, widths


def test_keep_writes_the_artist_paths_first_then_the_new_strokes(cat):
    result = sketch(cat, fast(keep=MINE))
    root = etree.fromstring(result.svg.encode())
    kept = root.findall(f"{SVG}g[@id='clipasso-kept']/{SVG}path")
    assert [p.get("d") for p in kept] == [p.d for p in read_paths(MINE)]
    assert kept[1].get("transform") == "matrix(1,0,0,1,10,0)" and kept[0].get("stroke-width") == "6"
    # in their own colours (the engine's loss sees them black, as pencil on paper)
    assert [(p.get("stroke"), p.get("stroke-opacity")) for p in kept] == [("#000000", None), ("#c81e1e", "0.502")]
    new = root.findall(f"{SVG}g[@id='clipasso-strokes']/{SVG}path")
    assert len(new) == 4 and result.strokes.shape == (4, 4, 2)
    assert [g.get("id") for g in root.findall(f"{SVG}g")] == ["clipasso-kept", "clipasso-strokes"]


def test_refine_starts_from_each_path_first_segment(cat):
    seen = []
    result = sketch(cat, fast(strokes=2, iterations=2, refine=MINE),
                    on_progress=lambda i, n, loss, s: seen.append(s))
    starts = np.stack([p.first_stroke() for p in read_paths(MINE)])
    # Iteration 0 reports the starting strokes: the refined ones first, as given, then 2 new ones.
    assert seen[0].shape == (4, 4, 2) and np.allclose(seen[0][:2], starts, atol=0.01)
    assert result.strokes.shape == (4, 4, 2)
    moved = np.abs(result.strokes[:2] - starts).max()
    assert 0 < moved < 15  # moved by the loss, two small steps from where they started


def test_ladder_levels_are_subsets_of_the_finer_level(cat, monkeypatch):
    monkeypatch.setattr(ladder, "SETTLE_ITERATIONS", 3)  # the test is about the ladder's shape, kept short
    result = sketch(cat, fast(levels=(1, 6, 3), iterations=2))
    root = etree.fromstring(result.svg.encode())
    groups = root.findall(f"{SVG}g")
    assert [g.get("id") for g in groups] == ["level-1", "level-3", "level-6"]
    assert [len(g.findall(f"{SVG}path")) for g in groups] == [1, 3, 6]
    # Inkscape layers, the finest shown and last (on top, and the current layer: a hidden one was, and what
    # the artist drew went into it unseen); all of them drawn at once doubled every line (the CLI's output).
    inkscape = "{http://www.inkscape.org/namespaces/inkscape}"
    assert [(g.get(f"{inkscape}groupmode"), g.get(f"{inkscape}label"), g.get("style")) for g in groups] == [
        ("layer", "1 stroke", "display:none"), ("layer", "3 strokes", "display:none"), ("layer", "6 strokes", None)]
    # Before them, the photo's frame: invisible and locked, so that an imported sketch's box is the photo's.
    frame = root.find(f"{SVG}rect")
    assert (frame.get("id"), frame.get("width"), frame.get("height"), frame.get("fill"), frame.get("stroke")) == (
        "clipasso-frame", "451", "300", "none", "none")
    assert read_paths(result.svg)[0].cubics.shape == (1, 4, 2) and len(read_paths(result.svg)) == 6  # no frame
    assert result.options.strokes == 6 and np.array_equal(result.levels[6], result.strokes)
    radius = ladder.SETTLE_RADIUS * 451 / 224 + 1e-6  # canvas px -> photo px
    for finer, coarser in ((6, 3), (3, 1)):
        fine, coarse = result.levels[finer], result.levels[coarser]
        for stroke in coarse:
            assert np.abs(fine - stroke).max(axis=(1, 2)).min() <= radius


def test_the_ladder_says_each_level_and_stops_between_levels(cat, monkeypatch):
    """Making a ladder of many strokes takes seconds after the last step: each level is told as it is begun,
    and a stop asked meanwhile keeps the levels made so far (the result says cancelled)."""
    monkeypatch.setattr(ladder, "SETTLE_ITERATIONS", 1)
    heard: list[str] = []
    stop = {"asked": False}

    def on_activity(text: str) -> None:
        heard.append(text)
        stop["asked"] = text.startswith("making the abstraction ladder: 2 strokes")

    result = sketch(cat, fast(levels=(6, 4, 2, 1), iterations=2), should_stop=lambda: stop["asked"],
                    on_activity=on_activity)
    assert heard == ["making the abstraction ladder: 4 strokes (level 2 of 4)",
                     "making the abstraction ladder: 2 strokes (level 3 of 4)"]
    assert list(result.levels) == [6, 4, 2] and result.cancelled and len(result.levels[2]) == 2
    whole = sketch(cat, fast(levels=(6, 4, 2, 1), iterations=2))
    assert list(whole.levels) == [6, 4, 2, 1] and not whole.cancelled
    assert np.array_equal(whole.levels[4], result.levels[4])  # the same levels up to the stop


@pytest.mark.parametrize("backend", ["tiles", "fixed"])
def test_a_sketch_without_each_stroke_is_what_drawing_the_others_gives(backend):
    """Weighing strokes (the ladder, re-laying) draws each stroke once and composes the rest: the same
    images as drawing each sketch of N - 1 strokes, for the sketch's own compositing."""
    points = torch.rand(2, 9, 4, 2, generator=torch.Generator().manual_seed(0)) * 180 + 20
    widths = torch.tensor([[3.0] * 9, [5.0] * 9])
    others = torch.tensor([[j for j in range(9) if j != i] for i in range(9)])
    direct = render_batch(points[:, others].flatten(0, 1), 224, 224, widths[:, :8].repeat_interleave(9, 0),
                          backend=backend)
    composed = without_each(drawn_alone(points, widths, backend)).flatten(0, 1)
    assert (direct < 1).any() and torch.allclose(composed, direct, atol=1e-6)


@pytest.mark.parametrize("options, message", [
    (dict(keep="hello"), "keep: not an SVG file"),
    (dict(refine='<svg xmlns="http://www.w3.org/2000/svg"><text>hello</text></svg>'), "refine: has no <path>"),
    (dict(keep='<svg xmlns="http://www.w3.org/2000/svg">' + '<path d="M 1 1 L 2 2"/>' * 513 + "</svg>"),
     "at most 512"),
    (dict(keep='<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 451 0"><path d="M 1 1 L 9 9"/></svg>'),
     "keep: its viewBox has no area"),  # was a ZeroDivisionError's traceback
    (dict(keep='<svg xmlns="http://www.w3.org/2000/svg"><path transform="scale(1e400)" d="M 1 1 L 9 9"/></svg>'),
     "keep: a path's coordinates are not finite numbers"),
    (dict(keep='<svg xmlns="http://www.w3.org/2000/svg"><path d="M 20,20 A 1e308 1e308 0 1 1 30,30"/></svg>'),
     "keep: a path's coordinates are not finite numbers"),  # was a 500: svgelements' NaN outside the checks
    (dict(subject='<svg xmlns="http://www.w3.org/2000/svg"><g id="a"><path d="M 1 1 L 9 9"/><use href="#a"/></g></svg>'),
     "subject: its groups or <use> references nest over 200 deep"),
    (dict(subject='<svg xmlns="http://www.w3.org/2000/svg"><defs><clipPath id="c"><path d="M 1 1 L 9 9 L 1 9 Z"/>'
                  '</clipPath></defs><image href="cat.png" width="9" height="9" clip-path="url(#c)"/></svg>'),
     r"subject: has no <path> or shape that is drawn; those inside a clip or mask are not read \(in Inkscape"),
    (dict(levels=(8, 8)), "may appear once"),
    (dict(levels=(0, 8)), "between 1 and 512"),
    (dict(levels=(513,)), "between 1 and 512"),
    (dict(levels=tuple(range(1, 10))), "1 to 8"),
    (dict(levels=(1,), refine=MINE), "fewer than the 2 paths to refine"),
])
def test_bad_mixing_options(options, message):
    with pytest.raises(InputError, match=message):
        fast(**options).validated()


def test_what_of_an_inkscape_drawing_is_not_used_as_drawn_is_said():
    """A QA pass with Inkscape-made files: a path hidden with visibility was kept and drawn, a clip was
    dropped without a word (the kept circle came out whole), and an A4 page in millimetres was read as
    pixels (its roof landed as a wedge in the corner) without a word."""
    keep = ('<svg xmlns="http://www.w3.org/2000/svg" width="210mm" height="297mm" viewBox="0 0 210 297">'
            '<defs><clipPath id="c"><rect width="50" height="50"/></clipPath></defs>'
            '<g clip-path="url(#c)"><path d="M 0 0 L 90 90"/></g>'
            '<g style="visibility:hidden"><path d="M 0 90 L 90 0"/></g></svg>')
    options = fast(keep=keep)
    assert len(options.drawn_on_photo(451, 300)[0]) == 1  # the hidden one is left out
    assert options.warnings(451, 300) == [
        "keep: its clips and masks are not applied: its paths are used whole",
        "keep: it is 210x297 where the photo is 451x300 pixels: its coordinates are taken as the photo's pixels "
        "all the same (draw over the photo opened at its own size, or use the Inkscape extension, which maps your "
        "paths onto the photo)"]
    # A file in the photo's pixels, as the extension sends, has nothing to say; nor has one whose size is no
    # number (it was a ValueError's traceback), nor a clipped photo beside unclipped paths.
    assert fast(keep=MINE).warnings(451, 300) == []
    for width in (".", "1e", "-", "1.2.3"):
        assert fast(keep=MINE.replace('width="451"', f'width="{width}"').replace(' viewBox="0 0 451 300"', "")
                    ).warnings(451, 300) == []
    photo = '<image href="cat.png" width="451" height="300" clip-path="url(#c)"/></svg>'
    assert fast(keep=keep.replace("</svg>", "").replace('clip-path="url(#c)"', "") + photo).warnings(451, 300) == [
        "keep: it is 210x297 where the photo is 451x300 pixels: its coordinates are taken as the photo's pixels "
        "all the same (draw over the photo opened at its own size, or use the Inkscape extension, which maps your "
        "paths onto the photo)"]


def test_paths_off_the_photo_are_ignored_with_a_warning_or_refused():
    half = ('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 10 10 L 50 50"/>'
            '<path d="M 900 900 L 990 990"/></svg>')
    keep, refine, warnings = fast(keep=half).validated().drawn_on_photo(451, 300)
    assert len(keep) == 1 and refine == () and warnings == [
        "keep: 1 of its 2 paths lies off the 451x300 photo and is ignored"]
    with pytest.raises(InputError, match="its path does not lie on the 40x40 photo"):
        fast(refine=half.replace('<path d="M 10 10 L 50 50"/>', "")).validated().drawn_on_photo(40, 40)


def test_a_ladder_refining_paths_partly_off_the_photo_has_its_finest_count(cat, monkeypatch):
    """The finest level counts the strokes to refine that lie on the photo: one off it is made up by a new
    stroke (the level held one stroke too few)."""
    monkeypatch.setattr(ladder, "SETTLE_ITERATIONS", 1)
    refine = MINE.replace("</svg>", '<path d="M 5000 5 L 5100 5"/></svg>')
    result = sketch(cat, fast(refine=refine, levels=(4, 2), iterations=1))
    assert [len(result.levels[n]) for n in (4, 2)] == [4, 2]
