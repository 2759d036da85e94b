#!/usr/bin/env python3
"""Extensions > CLIPasso > Line sketch: each selected photo becomes a layer of editable pen strokes.

Inkscape runs this with its own Python (standard library, lxml and inkex; no torch), so the sketching is
done by the `clipasso serve` backend over HTTP. For each selected <image> the extension sends the pixels,
follows the job, and inserts the strokes as a new layer directly above the layer that holds the image,
lying exactly over it: the strokes come in the image's pixel coordinates and one group transform maps
them through the image's preserveAspectRatio, x, y, width, height and every transform up the tree.

The document is only changed once every job has succeeded; any problem is one AbortExtension message,
and Inkscape then leaves the document as it was. Nothing is printed to stdout but the document.
"""

from __future__ import annotations

import os
import re
import time

import inkex
from lxml import etree

from clipasso_client import Backend, BackendError, JobTimeout, ensure_backend
from clipasso_geometry import AspectRatio, parse_aspect_ratio, viewbox_to_viewport
from clipasso_images import ImageError, Picture, load_picture

HERE = os.path.dirname(os.path.abspath(__file__))
#: Written by `clipasso install-inkscape` next to this file: how to start the backend it belongs to.
CONFIG = os.path.join(HERE, "clipasso_backend.json")
SVG_NS = "http://www.w3.org/2000/svg"
STROKE_STYLE = "fill:none;stroke:#000000;stroke-linecap:round;stroke-linejoin:round;stroke-width:{:.6g}"


class Sketch(inkex.EffectExtension):
    """Sketch the selected images with the CLIPasso backend."""

    def add_arguments(self, pars):
        pars.add_argument("--tab", default="options")
        pars.add_argument("--strokes", type=int, default=16)
        pars.add_argument("--iterations", type=int, default=0)
        pars.add_argument("--seed", type=int, default=0)
        pars.add_argument("--encoder", default="auto")
        pars.add_argument("--renderer", default="auto")
        pars.add_argument("--stroke_width", type=float, default=1.0)
        pars.add_argument("--backend_url", default="http://127.0.0.1:8765")
        pars.add_argument("--token", default="")
        pars.add_argument("--timeout", type=int, default=1800)
        pars.add_argument("--job_id", default="")

    def effect(self):
        try:
            self._sketch_selection()
        except (ImageError, BackendError) as exc:
            raise inkex.AbortExtension(str(exc)) from None

    def _sketch_selection(self) -> None:
        opts = self.options
        images = self.selected_images()
        job_id = opts.job_id.strip()
        if job_id and len(images) != 1:
            raise ImageError(f"Fetch job {job_id} places one result: select the one image it was made from")
        # Inkscape hands over a copy of the document whose relative links it rebased to the copy's folder;
        # run by hand, the input is the document itself.
        inputs = [self.options.input_file, self.document_path()]
        base_dirs = list(dict.fromkeys(os.path.dirname(os.path.abspath(p)) for p in inputs if isinstance(p, str) and p))
        # Read every image before any backend work, so that a bad one is reported at once.
        pictures = [
            load_picture(img.get("xlink:href") or img.get("href"), describe(img), base_dirs, img.get("sodipodi:absref"))
            for img in images
        ]
        viewports = [image_viewport(img, pic) for img, pic in zip(images, pictures)]
        backend = Backend(opts.backend_url, opts.token)
        ensure_backend(backend, CONFIG, os.path.join(HERE, "clipasso_backend.log"), os.path.join(HERE, "clipasso_backend.pid"))
        deadline = time.monotonic() + opts.timeout
        fields = {"strokes": opts.strokes, "seed": opts.seed, "encoder": opts.encoder, "renderer": opts.renderer}
        if opts.iterations > 0:
            fields["iterations"] = opts.iterations
        jobs: list[str] = [job_id] if job_id else []
        finished: list[str] = []
        try:
            if not job_id:
                for img, pic in zip(images, pictures):
                    try:
                        jobs.append(backend.submit(pic.data, pic.filename, pic.mime, fields))
                    except BackendError as exc:
                        raise BackendError(f"The backend refused {describe(img)}: {exc}") from None
            results = []
            for img, job in zip(images, jobs):
                results.append(self._result(backend, job, img, deadline))
                finished.append(job)
        except JobTimeout as exc:
            pending = [j for j in jobs if j not in finished]
            raise BackendError(
                f"The sketch did not finish within {opts.timeout} s: {exc}. The backend keeps working, and the "
                f"result can still be fetched later: select the image and run Line sketch again with 'Fetch job' "
                f"set to {pending[0]} on the Backend page (or download {backend.url}/jobs/{pending[0]}/result.svg)."
                + (f" Jobs still running: {', '.join(pending)}." if len(pending) > 1 else "")
            ) from None
        except BaseException:
            for job in jobs:
                if job not in finished and job != job_id:
                    backend.cancel(job)  # a failure or Ctrl-C: nobody will collect these results
            raise
        for img, pic, viewport, (viewbox, strokes) in zip(images, pictures, viewports, results):
            self.insert_sketch(img, pic, viewport, viewbox, strokes)

    def selected_images(self) -> list:
        """The <image> elements in the selection, also those inside selected groups, in selection order."""
        if not self.svg.selection:
            raise ImageError("Nothing is selected: select one or more photos (bitmap images) and run Line sketch again")
        found: list = []
        for element in self.svg.selection.values():
            found += [image for image in element.iter(f"{{{SVG_NS}}}image") if image not in found]
        if not found:
            raise ImageError(
                "The selection has no image in it: select a photo (a bitmap image, imported with File > Import) "
                "and run Line sketch again"
            )
        return found

    def _result(self, backend: Backend, job_id: str, image, deadline: float) -> tuple:
        """Wait for one job and read its strokes; BackendError when it failed."""
        job = backend.wait(job_id, deadline)
        if job.get("state") != "succeeded":
            reason = job.get("error") or job.get("state")
            raise BackendError(f"The sketch of {describe(image)} failed on the backend (job {job_id}): {reason}")
        return parse_result(backend.result_svg(job_id), job_id)

    def insert_sketch(self, image, picture: Picture, viewport: tuple, viewbox: tuple, strokes: list) -> None:
        """A new layer right above the image's layer, with the strokes placed exactly over the image."""
        anchor = layer_anchor(image, self.svg)
        parent = anchor.getparent()
        aspect = parse_aspect_ratio(image.get("preserveAspectRatio"))
        pixels = (0.0, 0.0, float(picture.width), float(picture.height))
        # result coordinates -> the image's pixels -> the image's user space (its viewport)
        local = inkex.Transform(viewbox_to_viewport(pixels, viewport, aspect)) @ inkex.Transform(
            viewbox_to_viewport(viewbox, pixels, AspectRatio("none", False))
        )
        placement = -composed_transform(parent) @ composed_transform(image) @ local

        layer = inkex.Layer.new(f"CLIPasso sketch - {len(strokes)} strokes")
        layer.set("id", self.svg.get_unique_id("clipasso-sketch"))
        group = inkex.Group()
        # Straight into the attribute: inkex would round the matrix to 6 digits.
        group.attrib["transform"] = "matrix({})".format(" ".join(f"{v:.12g}" for v in placement.to_hexad()))
        if aspect.slice:  # the image is cut to its viewport; so are the strokes
            group.set("clip-path", f"url(#{self._clip(-local, viewport)})")
        for d, width in strokes:
            path = inkex.PathElement()
            path.set("d", d)
            path.set("style", STROKE_STYLE.format(width * self.options.stroke_width))
            group.append(path)
        layer.append(group)
        anchor.addnext(layer)

    def _clip(self, inverse: inkex.Transform, viewport: tuple) -> str:
        """A clipPath of the image's viewport, in the strokes' coordinates; returns its id."""
        x, y, w, h = viewport
        (x0, y0), (x1, y1) = inverse.apply_to_point((x, y)), inverse.apply_to_point((x + w, y + h))
        clip = inkex.ClipPath()
        clip.set("id", self.svg.get_unique_id("clipasso-clip"))
        clip.set("clipPathUnits", "userSpaceOnUse")
        clip.append(inkex.Rectangle.new(min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0)))
        self.svg.defs.append(clip)
        return clip.get("id")


def describe(image) -> str:
    """How messages name an image: its label, else its id."""
    return f'image "{image.label or image.get("id") or "without id"}"'


def layer_anchor(image, root):
    """The element the new layer goes right after: the layer holding the image, or (with no layer) the
    image's top-level ancestor."""
    node = image
    while True:
        parent = node.getparent()
        if parent is None or parent is root:
            return node
        if parent.get("inkscape:groupmode") == "layer":
            return parent
        node = parent


def composed_transform(element) -> inkex.Transform:
    """The element's transform and every one above it, read from the attributes as they are.

    (inkex's own composed_transform() rewrites each transform attribute it reads, rounded to 6 digits;
    the document must stay untouched.)
    """
    total = inkex.Transform()
    while element is not None:
        total = inkex.Transform(element.attrib.get("transform")) @ total
        element = element.getparent()
    return total


def image_viewport(image, picture: Picture) -> tuple:
    """The image's x, y, width, height in its user units; a missing or 'auto' size is the pixel size."""

    def length(name: str, auto: float) -> float:
        value = (image.get(name) or "").strip()
        if value in ("", "auto"):
            return auto
        if value.endswith("%"):
            raise ImageError(f"{describe(image)} has a {name} in percent; set it in px, mm or another absolute unit")
        return image.to_dimensionless(value)

    width, height = length("width", float(picture.width)), length("height", float(picture.height))
    if width <= 0 or height <= 0:
        raise ImageError(f"{describe(image)} has no area on the canvas (width {width:g}, height {height:g})")
    return length("x", 0.0), length("y", 0.0), width, height


def parse_result(svg: bytes, job_id: str) -> tuple:
    """The result SVG's viewBox and its strokes as (path data, stroke width) in viewBox units."""
    try:
        root = etree.fromstring(svg, parser=etree.XMLParser(resolve_entities=False, no_network=True))
        box = root.get("viewBox") or f"0 0 {root.get('width')} {root.get('height')}"
        viewbox = tuple(float(v) for v in re.split(r"[\s,]+", box.strip()))
        if len(viewbox) != 4 or viewbox[2] <= 0 or viewbox[3] <= 0:
            raise ValueError(box)
    except (etree.XMLSyntaxError, ValueError, TypeError):
        raise BackendError(f"The backend's result for job {job_id} is not an SVG with a size") from None
    strokes = [(p.get("d"), _stroke_width(p)) for p in root.iter(f"{{{SVG_NS}}}path") if p.get("d")]
    return viewbox, strokes


def _stroke_width(element) -> float:
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


if __name__ == "__main__":
    Sketch().run()
