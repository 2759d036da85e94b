"""The strokes lie exactly over the image: checked against Inkscape's own rendering.

A 40x30 test image has five single coloured pixels. Inkscape renders each test document (pixelated, so a
marker stays one colour); the markers' centres on the PNG give the affine map Inkscape uses from image
pixels to the canvas. The extension then places one real backend result over the same image in each
document, and every stroke control point (in image pixels) must land where that map puts it.
"""

from __future__ import annotations

import base64
import io
import subprocess

import numpy as np
import pytest
from extension_support import INKSCAPE, import_extension, missing

import_extension()

import inkex  # noqa: E402
from inkex.tester.mock import Capture  # noqa: E402

from clipasso_place import Place  # noqa: E402

SIZE = (40, 30)
MARKERS = {  # pixel (u, v) -> colour
    (4, 4): (255, 0, 0),
    (35, 5): (0, 255, 0),
    (5, 25): (0, 0, 255),
    (34, 24): (255, 0, 255),
    (20, 15): (0, 255, 255),
}
#: Worst distance allowed between where a stroke point is drawn and where the image shows that point,
#: in image pixels. A pixelated marker's centre is found to within half a rendered pixel, so the render
#: has at least 7 rendered pixels per image pixel (measured: at most 0.01); a wrong mapping is off by
#: whole pixels.
TOLERANCE = 0.05
DPI = 4 * 96

# name: (svg width, height, viewBox, body with {image} for the <image> element's attributes)
CASES = {
    "stretched (preserveAspectRatio none)": (
        400, 300, "0 0 400 300",
        '<g inkscape:groupmode="layer" id="l1"><image {image} x="20" y="30" width="300" height="150" '
        'preserveAspectRatio="none"/></g>'),
    "meet, user unit = 4 px": (
        480, 360, "0 0 120 90",
        '<g inkscape:groupmode="layer" id="l1"><image {image} x="10" y="5" width="100" height="60"/></g>'),
    "xMaxYMax meet in a tall viewport": (
        300, 300, "0 0 300 300",
        '<g inkscape:groupmode="layer" id="l1"><image {image} x="10" y="10" width="100" height="200" '
        'preserveAspectRatio="xMaxYMax meet"/></g>'),
    "rotated, xMinYMid slice, in a translated layer": (
        300, 300, "0 0 300 300",
        '<g inkscape:groupmode="layer" id="l1" transform="translate(30,20)"><image {image} x="60" y="50" '
        'width="80" height="80" transform="rotate(25,100,90)" preserveAspectRatio="xMinYMid slice"/></g>'),
    "skewed and scaled groups, xMidYMin meet": (
        400, 300, "0 0 400 300",
        '<g inkscape:groupmode="layer" id="l1"><g transform="matrix(1.2,0.3,-0.4,0.9,50,20)">'
        '<g transform="scale(1.5,0.8)"><image {image} x="0" y="0" width="60" height="60" '
        'transform="translate(5,5)" preserveAspectRatio="xMidYMin meet"/></g></g></g>'),
    "sub-layer in a viewBox with an offset origin": (
        800, 600, "-50 -40 200 150",
        '<g inkscape:groupmode="layer" id="l1" transform="translate(-10,5)"><g inkscape:groupmode="layer" '
        'id="l2" transform="scale(0.5,1.25)"><image {image} x="-40" y="-30" width="160" height="60" '
        'preserveAspectRatio="none"/></g></g>'),
    "no width and height (the image's own size)": (
        400, 300, "0 0 200 150",
        '<g inkscape:groupmode="layer" id="l1"><image {image} x="30" y="40"/></g>'),
    "in a nested <svg> with x, y and a viewBox": (
        400, 300, "0 0 400 300",
        '<g inkscape:groupmode="layer" id="l1"><svg x="50" y="40" width="200" height="200" viewBox="0 0 100 100">'
        '<image {image} x="10" y="20" width="60" height="40"/></svg></g>'),
    "in a nested <svg> without a viewBox, in a rotated group": (
        400, 300, "0 0 400 300",
        '<g inkscape:groupmode="layer" id="l1"><g transform="translate(20,10) rotate(10)">'
        '<svg x="100" y="80" width="250" height="180"><image {image} x="5" y="5" width="120" height="90"/></svg>'
        '</g></g>'),
    "in a nested <svg> sized in percent, xMaxYMid meet": (
        400, 300, "0 0 400 300",
        '<g inkscape:groupmode="layer" id="l1"><svg x="10%" y="20" width="50%" height="60%" viewBox="-20 -10 80 60" '
        'preserveAspectRatio="xMaxYMid meet"><image {image} x="-10" y="0" width="60" height="45"/></svg></g>'),
}


def marker_png() -> bytes:
    from PIL import Image

    image = Image.new("RGB", SIZE, (255, 255, 255))
    for pixel, colour in MARKERS.items():
        image.putpixel(pixel, colour)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def document(case: str) -> str:
    width, height, viewbox, body = CASES[case]
    image = (f'id="img" style="image-rendering:optimizeSpeed" '
             f'xlink:href="data:image/png;base64,{base64.b64encode(marker_png()).decode()}"')
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'xmlns:inkscape="http://www.inkscape.org/namespaces/inkscape" '
        f'width="{width}" height="{height}" viewBox="{viewbox}">'
        f'<rect x="-1000" y="-1000" width="3000" height="3000" fill="#ffffff"/>{body.format(image=image)}</svg>'
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """Each case's document, rendered by Inkscape: {case: (svg path, RGB array)}."""
    if INKSCAPE is None:
        missing("Inkscape is not installed")
    from PIL import Image

    folder = tmp_path_factory.mktemp("placement")
    paths = {case: folder / f"case{i}.svg" for i, case in enumerate(CASES)}
    for case, path in paths.items():
        path.write_text(document(case))
    subprocess.run([INKSCAPE, "--export-type=png", "--export-area-page", f"--export-dpi={DPI}", *map(str, paths.values())],
                   check=True, capture_output=True, timeout=120)
    return {case: (path, np.asarray(Image.open(path.with_suffix(".png")).convert("RGB")).astype(np.int16))
            for case, path in paths.items()}


@pytest.fixture(scope="module")
def job(backend) -> str:
    """One real result for the marker image, placed over every case with --job_id."""
    import httpx

    reply = httpx.post(f"{backend.url}/jobs", files={"image": ("markers.png", marker_png(), "image/png")},
                       data={"encoder": "lite0", "strokes": "8", "iterations": "1"}, timeout=60)
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def inkscape_map(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """The least-squares affine map from image pixels to PNG pixels, fitted on the visible markers, and
    the PNG pixels per image pixel."""
    sources, targets = [], []
    for (u, v), colour in MARKERS.items():
        ys, xs = np.nonzero(np.abs(pixels - colour).sum(axis=-1) < 90)
        if len(xs):  # a slice can cut markers off
            sources.append((u + 0.5, v + 0.5, 1.0))
            targets.append((xs.mean() + 0.5, ys.mean() + 0.5))
    assert len(sources) >= 3, "fewer than three markers are visible"
    matrix = np.linalg.lstsq(np.array(sources), np.array(targets), rcond=None)[0]  # (3, 2)
    return matrix, float(np.sqrt(abs(np.linalg.det(matrix[:2]))))


def placed_points(svg_path, job_id: str, backend_url: str) -> tuple[np.ndarray, np.ndarray]:
    """Run the extension; every stroke control point, in image pixels and as drawn on the canvas."""
    out = io.BytesIO()
    with Capture("stderr") as err:
        Place().run([str(svg_path), "--id=img", f"--job_id={job_id}", f"--backend_url={backend_url}", "--window=false"],
                     output=out)
    assert err.getvalue() == ""
    svg = inkex.load_svg(out.getvalue()).getroot()
    layer = svg.xpath("//svg:g[starts-with(@inkscape:label, 'CLIPasso sketch')]")[0]
    image_px, canvas = [], []
    for path in layer.iter("{http://www.w3.org/2000/svg}path"):
        to_canvas = path.composed_transform()
        for point in path.path.control_points:
            image_px.append((point.x, point.y))
            canvas.append(tuple(to_canvas.apply_to_point(point)))
    return np.array(image_px), np.array(canvas)


@pytest.mark.parametrize("case", list(CASES))
def test_strokes_land_where_inkscape_draws_the_image(case: str, rendered: dict, job: str, backend) -> None:
    svg_path, pixels = rendered[case]
    matrix, png_per_pixel = inkscape_map(pixels)
    image_px, canvas = placed_points(svg_path, job, backend.url)
    assert len(image_px) == 8 * 4
    # user units -> PNG pixels: the exported page is the viewBox
    width, height, viewbox, _ = CASES[case]
    vx, vy, vw, vh = map(float, viewbox.split())
    png_h, png_w = pixels.shape[:2]
    drawn = (canvas - (vx, vy)) * (png_w / vw, png_h / vh)
    expected = np.column_stack([image_px, np.ones(len(image_px))]) @ matrix
    error = np.linalg.norm(drawn - expected, axis=1).max() / png_per_pixel
    assert error < TOLERANCE, f"{case}: a stroke point is {error:.3f} image pixels off"
