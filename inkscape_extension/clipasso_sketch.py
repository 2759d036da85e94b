#!/usr/bin/env python3
"""Extensions > CLIPasso > Line sketch: each selected photo becomes a layer of editable pen strokes.

Inkscape runs this with its own Python (standard library, lxml and inkex; no torch), so the sketching is
done by the `clipasso serve` backend over HTTP. For each selected <image> the extension sends the pixels,
follows the job, and inserts the strokes as a new layer directly above the layer that holds the image,
lying exactly over it: the strokes come in the image's pixel coordinates and one group transform maps
them through the image's preserveAspectRatio, x, y, width, height and every transform up the tree.

While the backend works, a progress window (clipasso_window) shows the strokes forming over the photo;
its Stop and place places the best strokes so far, its Cancel (or closing it) places nothing. The jobs are
tied to this process (clipasso_jobs), so that the backend stops them when Inkscape kills it. Without GTK
or a display the extension waits as it always did, and says in one line where to watch the job live.

The document is only changed once every job has ended as it should; any problem is one AbortExtension
message, and Inkscape then leaves the document as it was. Nothing is printed to stdout but the document.
"""

from __future__ import annotations

import enum
import math
import os
import re
import sys
import warnings
from urllib.parse import unquote
from xml.sax.saxutils import quoteattr

import inkex

from clipasso_client import Backend, BackendError, NotFound, ensure_backend, unready_encoder, version_note
from clipasso_geometry import AspectRatio, parse_aspect_ratio, viewbox_to_viewport
from clipasso_images import ImageError, Picture, load_picture
from clipasso_jobs import Phase, Photo, SketchRun
from clipasso_strokes import Strokes

HERE = os.path.dirname(os.path.abspath(__file__))
#: Shapes drawn with Inkscape's tools that count as the artist's strokes beside paths, when they have a
#: stroke (a rectangle filled behind the photo as its backdrop or frame is no stroke).
SHAPES = (inkex.Circle, inkex.Ellipse, inkex.Rectangle, inkex.Line, inkex.Polyline, inkex.Polygon)
#: Written by `clipasso install-inkscape` next to this file: how to start the backend it belongs to.
CONFIG = os.path.join(HERE, "clipasso_backend.json")
#: Where a backend the extension starts has its pid written (beside its log; clipasso_client).
PID_FILE = os.path.join(HERE, "clipasso_backend.pid")
SVG_NS = "http://www.w3.org/2000/svg"
#: Points sampled along each cubic to tell whether a path passes over the photo: as many as the backend
#: samples (clipasso/paths.py), so that both judge a path alike.
CROSSING_SAMPLES = 32
STROKE_STYLE = "fill:none;stroke:#000000;stroke-linecap:round;stroke-linejoin:round;stroke-width:{:.6g}"


class PathUse(str, enum.Enum):
    """What the sketch does with the paths selected together with the photo."""

    KEEP = "keep"  # they stay as drawn and take part; new strokes complete them
    REFINE = "refine"  # the sketch starts from them (a copy: the artist's own stay as they are)
    IGNORE = "ignore"


class Sketch(inkex.EffectExtension):
    """Sketch the selected images with the CLIPasso backend."""

    def add_arguments(self, pars):
        self.add_placing_arguments(pars)
        pars.add_argument("--strokes", type=int, default=16)
        pars.add_argument("--iterations", type=int, default=0)
        pars.add_argument("--seed", type=int, default=0)
        pars.add_argument("--encoder", default="auto")
        pars.add_argument("--renderer", default="auto")
        pars.add_argument("--focus", default="auto")
        pars.add_argument("--paths", default=PathUse.KEEP.value, choices=[u.value for u in PathUse])
        pars.add_argument("--levels", default="")

    @staticmethod
    def add_placing_arguments(pars) -> None:
        """What Line sketch and Place a job's result share: the backend, following the job, the strokes' width."""
        pars.add_argument("--tab", default="options")
        pars.add_argument("--stroke_width", type=float, default=1.0)
        pars.add_argument("--backend_url", default="http://127.0.0.1:8765")
        pars.add_argument("--token", default="")
        pars.add_argument("--timeout", type=int, default=1800)
        pars.add_argument("--window", type=inkex.Boolean, default=True)

    def effect(self):
        try:
            self._sketch_selection()
        except (ImageError, BackendError) as exc:
            raise inkex.AbortExtension(str(exc)) from None

    def _sketch_selection(self) -> None:
        opts = self.options
        images = self.selected_images()
        job_id = self.wanted_job()
        if job_id and len(images) != 1:
            raise ImageError(f"Job {job_id} has one result: select the one image it was made from")
        # Inkscape hands over a copy of the document whose relative links it rebased to the copy's folder;
        # run by hand, the input is the document itself.
        inputs = [self.options.input_file, self.document_path()]
        base_dirs = list(dict.fromkeys(os.path.dirname(os.path.abspath(p)) for p in inputs if isinstance(p, str) and p))
        # Identify every image before any backend work, so that a bad one is reported at once.
        pictures = [
            load_picture(href(img), describe(img), base_dirs, img.get("sodipodi:absref"))
            for img in images
        ]
        viewports = [image_viewport(img, pic) for img, pic in zip(images, pictures)]
        backend = Backend(opts.backend_url, opts.token)
        fields = {} if job_id else self.job_fields()
        paths = [] if job_id or opts.paths == PathUse.IGNORE.value else self.selected_paths()
        drawn = [drawn_paths(paths, img, pic, vp) for img, pic, vp in zip(images, pictures, viewports)]
        if not job_id and opts.strokes == 0 and not opts.levels.strip():
            bare = [img for img, on in zip(images, drawn) if opts.paths != PathUse.REFINE.value or not on]
            if bare:
                why = ("\"Your selected paths\" is not Refine" if opts.paths != PathUse.REFINE.value
                       else f"no selected path lies on {describe(bare[0])}")
                raise ImageError(f"Strokes is 0, which adds no new stroke: it is for refining selected paths, and "
                                 f"{why}. Set Strokes above 0 and run Line sketch again")
        off = [p for p in paths if not any(p is element for on in drawn for element, _, _ in on)]
        if off:
            which = "the selected path" if len(paths) == 1 else f"{len(off)} of the {len(paths)} selected paths"
            one = len(off) == 1
            sys.stderr.write(f"CLIPasso: {which} {'lies' if one else 'lie'} off the photo and {'is' if one else 'are'} "
                             "ignored\n")
        if not job_id and opts.paths != PathUse.IGNORE.value and (unused := self.unused_selection()):
            sys.stderr.write(f"CLIPasso: not used as strokes: {unused}\n")
        clipped = sum(is_clipped(element) for on in drawn for element, _, _ in on)
        if clipped:
            sys.stderr.write(f"CLIPasso: {'1 of your paths is' if clipped == 1 else f'{clipped} of your paths are'} "
                             "clipped or masked; clips and masks are not applied, so the whole of "
                             f"{'it' if clipped == 1 else 'each'} is used\n")

        def prepare() -> None:
            """Reach (or start) the backend, and refuse an encoder it cannot use before any job is sent."""
            ensure_backend(backend, CONFIG, os.path.join(HERE, "clipasso_backend.log"), PID_FILE)
            health = backend.health()
            if note := version_note(health, CONFIG, PID_FILE):
                sys.stderr.write(f"CLIPasso: {note}\n")
            if job_id:
                check_made_from(backend, job_id, images[0], pictures[0])
            unready = None if job_id else unready_encoder(health, opts.encoder)
            if unready:
                raise BackendError(unready)
            limit = health.get("max_upload_bytes")
            for img, pic in zip(images, pictures):
                if not job_id and isinstance(limit, int) and pic.size > limit:
                    raise BackendError(
                        f"{describe(img)} is {pic.size / 1e6:.3g} MB; the backend accepts photos of up to "
                        f"{limit / 1e6:g} MB. Save a smaller copy (or start the backend with a larger "
                        "--max-upload-mb) and run Line sketch again."
                    )

        # A photo shown through a clip or mask (Object > Clip or Mask > Set) is outlined: its shapes are the subject.
        outlined = [[] if job_id or opts.focus != "auto" else subject_outline(img, pic, vp, self.svg)
                    for img, pic, vp in zip(images, pictures, viewports)]
        for img, outline in zip(images, outlined):
            if not job_id and opts.focus == "auto" and not outline and (cover := outline_cover(img, self.svg)[1]) is not None:
                why = ("is in objectBoundingBox units, which are not read" if in_box_units(cover) else
                       "has no shape over the photo to read as an outline (text is not read: Path > Object to Path)")
                sys.stderr.write(f"CLIPasso: the clip or mask of {describe(img)} {why}; the backend finds the subject "
                                 "itself\n")
        photos = [Photo(describe(img), pic, {} if job_id else {**drawn_fields(opts.paths, on, pic),
                                                               **drawn_fields("subject", outline, pic), **shown_as_stored(pic)})
                  for img, pic, on, outline in zip(images, pictures, drawn, outlined)]
        run = SketchRun(backend, photos, fields, opts.timeout, prepare=prepare, job_id=job_id)
        follow(run, opts.window)
        if run.phase in (Phase.FAILED, Phase.TIMED_OUT):
            raise BackendError(run.error)
        if run.phase != Phase.DONE:
            return  # cancelled: the document stays as it was, and inkex writes nothing back
        refined = [not job_id and opts.paths == PathUse.REFINE.value and bool(on) for on in drawn]
        done = [(img, pic, vp, photo.strokes, was) for img, pic, vp, photo, was
                in zip(images, pictures, viewports, run.photos, refined) if photo.strokes is not None]
        if not done:
            raise BackendError("Stopped before the backend had drawn any strokes: nothing was placed")
        for img, pic, viewport, strokes, was in done:
            self.insert_sketch(img, pic, viewport, strokes, refined=was)
        for photo in run.photos:  # the backend's own (a photo too narrow for its canvas, say)
            for warning in photo.view.get("warnings") or []:
                sys.stderr.write(f"CLIPasso: {photo.name}: {warning}\n")

    def job_fields(self) -> dict:
        """The sketch's options as the backend's job fields (the same for every photo)."""
        opts = self.options
        fields = {"strokes": opts.strokes, "seed": opts.seed, "encoder": opts.encoder, "renderer": opts.renderer,
                  "focus": opts.focus}
        if opts.iterations > 0:
            fields["iterations"] = opts.iterations
        if opts.levels.strip():
            fields["levels"] = opts.levels.strip()
        return fields

    def wanted_job(self) -> str:
        """The existing job whose result to place instead of sketching ('' here: see clipasso_place)."""
        return ""

    def selected_paths(self) -> list:
        """The artist's strokes in the selection (`is_drawn`: an eye drawn with the ellipse tool too), also
        those inside selected groups, each sent as its outline; not hidden ones (a ladder's hidden levels)."""
        found: list = []
        for element in self.svg.selection.values():
            found += [p for p in element.iter() if is_drawn(p) and not is_hidden(p) and p not in found]
        return found

    def unused_selection(self) -> str:
        """What of the selection is neither a photo nor a stroke to use, in a few words ('' for nothing):
        text, shapes and paths without a stroke, hidden paths."""
        kinds: dict[str, int] = {}
        seen: set = set()
        for element in self.svg.selection.values():
            for item in element.iter():
                if id(item) in seen or not isinstance(item, (inkex.TextElement, inkex.PathElement, *SHAPES)):
                    continue
                seen.add(id(item))
                kind = ("text" if isinstance(item, inkex.TextElement) else "shape" if not is_drawn(item)
                        else "hidden" if is_hidden(item) and not in_ladder_level(item) else None)
                if kind:
                    kinds[kind] = kinds.get(kind, 0) + 1
        names = {"text": ("text", "texts"),
                 "shape": ("shape or path without a stroke", "shapes or paths without a stroke"),
                 "hidden": ("hidden path", "hidden paths")}
        return ", ".join(f"{n} {names[kind][n > 1]}" for kind, n in kinds.items())

    def selected_images(self) -> list:
        """The <image> elements in the selection, also those inside selected groups, in selection order."""
        if not self.svg.selection:
            raise ImageError("Nothing is selected: select one or more photos (bitmap images) and run Line sketch again")
        found: list = []
        for element in self.svg.selection.values():
            found += [image for image in element.iter(f"{{{SVG_NS}}}image") if image not in found]
        if not found:
            cloned = [use.href if use.href is not None else self.svg.getElementById((use.get("href") or "").lstrip("#"))
                      for element in self.svg.selection.values() for use in element.iter() if isinstance(use, inkex.Use)]
            if any(ref is not None and next(ref.iter(f"{{{SVG_NS}}}image"), None) is not None for ref in cloned):
                raise ImageError(
                    "The selection holds a clone of a photo, not the photo: select the original, or turn the "
                    "clone into a copy (Edit > Clone > Unlink Clone), and run Line sketch again"
                )
            raise ImageError(
                "The selection has no image in it: select a photo (a bitmap image, imported with File > Import) "
                "and run Line sketch again"
            )
        return found

    def insert_sketch(self, image, picture: Picture, viewport: tuple, strokes: Strokes, refined: bool = False) -> None:
        """A new layer right above the image's layer, with the strokes placed exactly over the image; for a
        ladder, one sub-layer per level, the finest shown and the others hidden. A sketch `refined` from the
        artist's paths says so in its name (it had its source's name, over it)."""
        anchor = layer_anchor(image, self.svg)
        parent = anchor.getparent()
        aspect = parse_aspect_ratio(image.get("preserveAspectRatio"))
        pixels = (0.0, 0.0, float(picture.width), float(picture.height))
        # result coordinates -> the image's pixels -> the image's user space (its viewport)
        local = inkex.Transform(viewbox_to_viewport(pixels, viewport, aspect)) @ inkex.Transform(
            viewbox_to_viewport(strokes.viewbox, pixels, AspectRatio("none", False))
        )
        placement = -composed_transform(parent) @ composed_transform(image) @ local
        layer_id = self.svg.get_unique_id("clipasso-sketch")
        clip = self._clip(-local, viewport) if aspect.slice else None  # the image is cut to its viewport; so are the strokes

        def placed(paths: list) -> inkex.Group:
            group = inkex.Group()
            # Straight into the attribute: inkex would round the matrix to 6 digits.
            group.attrib["transform"] = "matrix({})".format(" ".join(f"{v:.12g}" for v in placement.to_hexad()))
            if clip:
                group.set("clip-path", f"url(#{clip})")
            for d, width in paths:
                path = inkex.PathElement()
                path.set("d", d)
                path.set("style", STROKE_STYLE.format(width * self.options.stroke_width))
                group.append(path)
            return group

        of = photo_name(image) if not refined else f"refined - {photo_name(image)}"
        if strokes.levels:
            counts = "/".join(str(n) for n, _ in strokes.levels)
            plural = "" if counts == "1" else "s"
            layer = inkex.Layer.new(f"CLIPasso sketch - {counts} stroke{plural} - {of}")
            for i, (n, paths) in enumerate(strokes.levels):
                level = inkex.Layer.new(f"{n} stroke" if n == 1 else f"{n} strokes")
                level.set("id", self.svg.get_unique_id(f"clipasso-level-{n}-"))
                if i > 0:
                    level.set("style", "display:none")  # the eye icon in Layers shows it
                level.append(placed(paths))
                layer.append(level)
        else:
            n = len(strokes.paths)
            layer = inkex.Layer.new(f"CLIPasso sketch - {n} stroke{'' if n == 1 else 's'} - {of}")
            layer.append(placed(strokes.paths))
        layer.set("id", layer_id)
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


def check_made_from(backend: Backend, job_id: str, image, picture: Picture) -> None:
    """BackendError unless the backend has the job and it was made from a photo of this image's size: the
    strokes are in that photo's pixels, and would be stretched over another one."""
    try:
        view = backend.job(job_id)
    except NotFound:
        raise BackendError(f"The backend at {backend.url} has no job {job_id}: check the id (the message of the "
                           "Line sketch that ran past its Timeout names it). A backend knows only its own jobs, "
                           "and removes each some days after it ends (clipasso serve --keep-days)") from None
    size = (view.get("width"), view.get("height"))
    if None not in size and size != (picture.width, picture.height):
        raise BackendError(f"Job {job_id} was made from a {size[0]}x{size[1]} photo, and {describe(image)} is "
                           f"{picture.width}x{picture.height} pixels: select the image it was made from")


def is_hidden(element) -> bool:
    """Whether an element is not drawn: display none on it or on a group or layer above it, or hidden by
    visibility."""
    if any(isinstance(e, inkex.BaseElement) and e.cascaded_style().get("display") == "none"
           for e in (element, *element.iterancestors())):
        return True
    return element.specified_style().get("visibility") in ("hidden", "collapse")


def is_drawn(element) -> bool:
    """Whether a selected element is one of the artist's strokes: a path or a shape with a stroke. A filled
    path without one (lettering turned into paths, a traced bitmap) is no stroke: the letters of a word
    were refined into six scribbles across it."""
    return (isinstance(element, (inkex.PathElement, *SHAPES))
            and element.specified_style().get("stroke", "none") not in ("none", ""))


def in_ladder_level(element) -> bool:
    """Whether the element is in a level of a sketch's abstraction ladder (insert_sketch's sub-layers): its
    hidden levels are left out as a matter of course, and naming them brought up Inkscape's message dialog."""
    return any((e.get("id") or "").startswith("clipasso-level-") for e in element.iterancestors())


def is_clipped(element) -> bool:
    """Whether a clip or mask on the element or a group above it hides part of it (not applied to strokes)."""
    return any(e.get("clip-path") or e.get("mask") for e in (element, *element.iterancestors())
               if isinstance(e, inkex.BaseElement))


def drawn_paths(paths: list, image, picture: Picture, viewport: tuple) -> list:
    """Of the artist's paths, those that lie on the image, each as (element, path data in the image's
    pixels, stroke width in its pixels): mapped through every transform from the document to the photo."""
    to_pixels = document_to_pixels(image, picture, viewport)
    return [found for element in paths
            if (found := in_pixels(element, to_pixels @ composed_transform(element), picture, touching=True))]


def outline_cover(image, svg) -> tuple:
    """(holder, cover): the clipPath or mask the image is shown through, its own or the nearest clipped or
    masked group's above it (a clip before a mask on the same element), and the element it covers;
    (None, None) without either."""
    found = ((holder, svg.getElementById(ref.group(1)))
             for holder in (image, *image.iterancestors()) for attribute in ("clip-path", "mask")
             if (ref := re.match(r"\s*url\(\s*#([^)\s]+)\s*\)", holder.get(attribute) or "")))
    return next(((h, c) for h, c in found if c is not None), (None, None))


def in_box_units(cover) -> bool:
    """Whether a clipPath's or mask's shapes are in fractions of a bounding box (other tools' way)."""
    return "objectBoundingBox" in (cover.get("clipPathUnits"), cover.get("maskContentUnits"))


def subject_outline(image, picture: Picture, viewport: tuple, svg) -> list:
    """The shapes of the clip or mask the image is shown through (outline_cover), as drawn_paths gives them:
    the artist's outline of the subject; none without either, or in a bounding box's units (not read)."""
    holder, cover = outline_cover(image, svg)
    if cover is None or in_box_units(cover):
        return []
    # The shapes are in the user space of the element they cover (userSpaceOnUse, Inkscape's way).
    to_pixels = document_to_pixels(image, picture, viewport) @ composed_transform(holder)
    outlines = []
    for shape in cover.iterdescendants():
        if isinstance(shape, inkex.ShapeElement) and not isinstance(shape, inkex.Group):
            # Up to the clipPath or mask, not through it: Inkscape 1.2 draws them without their own
            # transform (it writes its transforms on the shapes), and the outline follows what it shows.
            found = in_pixels(shape, to_pixels @ composed_transform(shape, below=cover), picture)
            if found is not None:
                outlines.append(found)
    return outlines


def document_to_pixels(image, picture: Picture, viewport: tuple) -> inkex.Transform:
    """From the document's root user space to the image's pixels, through its preserveAspectRatio."""
    aspect = parse_aspect_ratio(image.get("preserveAspectRatio"))
    pixels = (0.0, 0.0, float(picture.width), float(picture.height))
    return -(composed_transform(image) @ inkex.Transform(viewbox_to_viewport(pixels, viewport, aspect)))


def in_pixels(element, m: inkex.Transform, picture: Picture, touching: bool = False) -> tuple | None:
    """(element, its path data mapped by `m` into the image's pixels, its stroke width there), or None
    when it lies off the image: its box wholly off it, or with `touching` (a stroke to keep or refine, as
    the backend judges those) no point along it on it, as a frame drawn around the photo."""
    # As cubics (arcs too), then mapped: an arc does not stay an arc under a skew.
    data = inkex.Path(reachable_arcs(element.path).to_superpath()).transform(m)
    box = data.bounding_box()
    if box is None or box.right < 0 or box.bottom < 0 or box.left > picture.width or box.top > picture.height:
        return None
    if touching and not any(0 <= x <= picture.width and 0 <= y <= picture.height for x, y in along(data)):
        return None
    return element, str(data), stroke_width(element) * math.sqrt(abs(m.a * m.d - m.b * m.c))


def along(path: inkex.Path, samples: int = CROSSING_SAMPLES):
    """Points (x, y) along a path's cubics, `samples` a cubic: a line across the photo whose ends lie off it
    has no control point on it."""
    for sub in path.to_superpath():
        for (_, p0, c1), (c2, p3, _) in zip(sub, sub[1:]):
            for i in range(samples + 1):
                t = i / samples
                a, b, c, d = (1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t * t * (1 - t), t**3
                yield (a * p0[0] + b * c1[0] + c * c2[0] + d * p3[0], a * p0[1] + b * c1[1] + c * c2[1] + d * p3[1])


def reachable_arcs(path: inkex.Path) -> inkex.Path:
    """The path with each arc's radii scaled up until they reach its end point, as SVG draws it (1.1, F.6.6):
    Inkscape 1.2's inkex takes radii as given and ends such an arc short of its end point."""
    fixed = []
    for segment in path.to_absolute().proxy_iterator():
        arc = segment.command
        if isinstance(arc, inkex.paths.Arc) and arc.rx and arc.ry:
            start, phi = segment.previous_end_point, math.radians(arc.x_axis_rotation)
            dx, dy = (start.x - arc.x) / 2, (start.y - arc.y) / 2
            x1, y1 = math.cos(phi) * dx + math.sin(phi) * dy, -math.sin(phi) * dx + math.cos(phi) * dy
            rx, ry = abs(arc.rx), abs(arc.ry)
            grow = math.sqrt(max(1.0, (x1 / rx) ** 2 + (y1 / ry) ** 2))
            arc = inkex.paths.Arc(rx * grow, ry * grow, arc.x_axis_rotation, arc.large_arc, arc.sweep, arc.x, arc.y)
        fixed.append(arc)
    return inkex.Path(fixed)


def stroke_width(element) -> float:
    """The element's stroke width in its user units; a percentage is of the document's normalised diagonal,
    as SVG defines it (inkex reads one as 0)."""
    given = (element.specified_style().get("stroke-width") or "1").strip()
    if given.endswith("%"):
        root = element.root
        return float(given[:-1]) / 100 * math.hypot(root.viewbox_width, root.viewbox_height) / math.sqrt(2)
    return element.to_dimensionless(given)


def shown_as_stored(picture: Picture) -> dict:
    """The job field that keeps a PNG's or WebP's pixels as stored: Inkscape shows those without turning
    them as their EXIF orientation says (a JPEG it turns, as the backend does by default)."""
    return {"orientation": "stored"} if picture.mime in ("image/png", "image/webp") else {}


def drawn_fields(use: str, drawn: list, picture: Picture) -> dict:
    """The job fields that send the artist's paths over one photo: an SVG in the photo's pixels."""
    if not drawn:
        return {}
    w, h = picture.width, picture.height
    body = "".join(f"<path d={quoteattr(d)} stroke-width=\"{width:.6g}\"/>" for _, d, width in drawn)
    return {use: f'<svg xmlns="{SVG_NS}" width="{w}" height="{h}" viewBox="0 0 {w} {h}">{body}</svg>'}


def follow(run: SketchRun, window: bool) -> None:
    """Do the run with the progress window; without one (not wanted, or GTK or a display is missing), wait
    for it as before, and where the window was wanted say in one line where the backend shows the job live."""
    show_progress, why = progress_window() if window else (None, "")
    if show_progress is not None:
        show_progress(run)
        return
    if window:
        said = []

        def say_where_to_watch() -> None:
            job_id = run.photos[0].job_id
            if job_id and not said:
                said.append(job_id)
                sys.stderr.write(f"CLIPasso: no progress window ({why}); watch the sketch live at "
                                 f"{run.backend.live_page(job_id)}\n")

        run.on_change = say_where_to_watch
    run.run()


def progress_window() -> tuple:
    """(show_progress, "") where GTK 3 and a display are available, else (None, why not)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportWarning)  # gi's importer warns; inkex's filter would print it
        try:
            import gi  # here, not at the top: GTK is optional, and a minimal Python has none

            gi.require_version("Gtk", "3.0")
            from gi.repository import Gtk
        except (ImportError, ValueError) as exc:
            return None, f"GTK 3 cannot be loaded: {exc}"
        if not Gtk.init_check()[0]:
            return None, "no display to show it on"
        from clipasso_window import show_progress  # only now: inkex.gui prints GTK warnings without a display

    return show_progress, ""


def describe(image) -> str:
    """How messages name an image: its label, else its id."""
    return f'image "{image.label or image.get("id") or "without id"}"'


def href(image) -> str | None:
    """What an <image> shows: its xlink:href (SVG 1.1, Inkscape's) or href (SVG 2)."""
    return image.get("xlink:href") or image.get("href")


def photo_name(image) -> str:
    """How a sketch's layer names its photo: the image's label, else its linked file's name, else its id."""
    link = (href(image) or "").strip()
    linked = "" if link[:5].lower() == "data:" else re.split(r"[/\\]", unquote(link.rstrip("/\\")))[-1]
    return image.label or linked or image.get("id") or "photo"


def layer_anchor(image, root):
    """The element the new layer goes right after: the layer holding the image, or (with no layer) the
    image's top-level ancestor, or the outermost hidden or locked layer around them; past the sketch layers
    placed there before, so the newest is on top."""
    node = image
    while True:
        parent = node.getparent()
        if parent is None or parent is root or parent.get("inkscape:groupmode") == "layer":
            break
        node = parent
    anchor = node if parent is None or parent is root else parent
    # Inside a hidden or locked layer the new layer would be hidden or locked too: it goes beside the outermost.
    while (up := anchor.getparent()) is not None and up is not root and (
            is_hidden(up) or any(a.get("sodipodi:insensitive") == "true" for a in (up, *up.iterancestors()))):
        anchor = up
    while (after := anchor.getnext()) is not None and (after.get("id") or "").startswith("clipasso-sketch") \
            and after.get("inkscape:groupmode") == "layer":
        anchor = after
    return anchor


def composed_transform(element, below=None) -> inkex.Transform:
    """The element's transform and every one above it (up to, not including, `below`), read from the
    attributes as they are, with the viewport of each nested <svg> on the way (its x, y and viewBox).

    (inkex's own composed_transform() rewrites each transform attribute it reads, rounded to 6 digits,
    and passes over nested viewports; the document must stay untouched.)
    """
    total = inkex.Transform()
    while element is not None and element is not below:
        parent = element.getparent()
        if parent is not None and element.tag == f"{{{SVG_NS}}}svg":
            # (a transform on a nested <svg> is SVG 2, which Inkscape 1.2 does not draw: nor is it read here)
            total = inkex.Transform(nested_viewport(element)) @ total
        else:
            total = inkex.Transform(element.attrib.get("transform")) @ total
        element = parent
    return total


def nested_viewport(svg) -> tuple:
    """A nested <svg>'s content to its parent's user space: its viewBox drawn into x, y, width, height."""
    x, y, width, height = _viewport(svg)
    box = _viewbox(svg)
    if box is None or width <= 0 or height <= 0:  # (an <svg> of no area shows nothing: placed anywhere)
        return (1.0, 0.0, 0.0, 1.0, x, y)
    return viewbox_to_viewport(box, (x, y, width, height), parse_aspect_ratio(svg.get("preserveAspectRatio")))


#: A length inkex converts (Inkscape takes anything else, em and ex too, for 100 %).
_LENGTH = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*(px|pt|pc|mm|cm|in|%)?$")


def _viewport(svg) -> tuple:
    """A nested <svg>'s x, y, width, height in its parent's user units: percentages of the enclosing
    viewport; width and height 100 % where missing, 'auto' or not a length (as browsers and Inkscape)."""
    around = _user_size(next(a for a in svg.iterancestors() if a.tag == f"{{{SVG_NS}}}svg"))

    def length(name: str, of: float, missing: str) -> float:
        value = (svg.get(name) or "").strip()
        value = value if _LENGTH.match(value) else missing
        return float(value[:-1]) / 100 * of if value.endswith("%") else svg.to_dimensionless(value)

    return (length("x", around[0], "0"), length("y", around[1], "0"),
            length("width", around[0], "100%"), length("height", around[1], "100%"))


def _user_size(svg) -> tuple:
    """The width and height of the user space an <svg>'s children are laid out in."""
    box = _viewbox(svg)
    if box is not None:
        return box[2], box[3]
    if svg.getparent() is None:
        return svg.viewport_width, svg.viewport_height
    return _viewport(svg)[2:]


def _viewbox(svg) -> tuple | None:
    values = re.split(r"[\s,]+", (svg.get("viewBox") or "").strip())
    try:
        box = tuple(float(v) for v in values)
    except ValueError:
        return None
    return box if len(box) == 4 and box[2] > 0 and box[3] > 0 else None


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


if __name__ == "__main__":
    Sketch().run()
