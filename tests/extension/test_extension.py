"""The Inkscape extension with inkex's own test tools, against the real backend on 127.0.0.1.

Comparison tests run the effect on documents in tests/data/extension and compare the output with the
references in tests/data/extension/refs (EXPORT_COMPARE=1 writes missing ones, 3 overwrites; read them
before committing). Error tests check that each problem is one message, exit status 1, no output (so
Inkscape leaves the document as it was) and nothing on stdout.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time

import httpx
import pytest
from extension_support import DATA, FAST, import_extension, stroke_shapes
from servers import free_port

import_extension()

import inkex  # noqa: E402
from inkex.tester import ComparisonMixin, TestCase  # noqa: E402
from inkex.tester.mock import Capture  # noqa: E402
from inkex.utils import ABORT_STATUS  # noqa: E402
from lxml import etree  # noqa: E402

from clipasso_place import Place  # noqa: E402
from clipasso_sketch import Sketch  # noqa: E402


@pytest.fixture(scope="class")
def backend_url(request: pytest.FixtureRequest, backend) -> None:
    request.cls.backend_url = backend.url


@pytest.mark.usefixtures("backend_url")
class TestSketchComparisons(ComparisonMixin, TestCase):
    effect_class = Sketch
    compare_filters = [stroke_shapes]
    backend_url = ""
    test_all_comparisons = None  # the mixin's one-file loop; each document here has its own test below

    @classmethod
    def datadir(cls) -> str:
        return str(DATA)

    def compare(self, document: str, *args: str) -> None:
        """Compare one run; the reference's name leaves out the backend's port, which changes every run."""
        args = (*args, *FAST)
        cmpfile = self.get_compare_cmpfile(args, addout=document)
        self.assertCompare(document, cmpfile, [*args, f"--backend_url={self.backend_url}", "--window=false"])

    def test_embedded_image_in_a_mm_document(self) -> None:
        self.compare("embedded.svg", "--id=photo")

    def test_linked_image(self) -> None:
        self.compare("linked.svg", "--id=cat")

    def test_transformed_image_in_a_transformed_layer(self) -> None:
        self.compare("transformed.svg", "--id=photo", "--stroke_width=2.5")

    def test_rotated_image_with_slice_is_clipped(self) -> None:
        self.compare("rotated.svg", "--id=photo")

    def test_two_images_one_selected_by_its_group(self) -> None:
        self.compare("two.svg", "--id=cat", "--id=group")

    def test_selected_paths_are_kept_and_only_new_strokes_added(self) -> None:
        self.compare("mixed.svg", "--id=cat", "--id=outline", "--id=eyes")

    def test_a_ladder_in_sub_layers(self) -> None:
        self.compare("linked.svg", "--id=cat", "--levels=3,1")


def run_sketch(document: str, *args: str, effect: type = Sketch) -> tuple[int, str, bytes]:
    """Run the effect (Line sketch, or Place a job's result) as Inkscape does, without the progress window
    (test_extension_window.py has it): (exit status, what it wrote to stderr, the output document)."""
    output = io.BytesIO()
    status = 0
    with Capture("stdout") as stdout, Capture("stderr") as stderr:
        try:
            effect().run([str(DATA / document), *args, "--window=false"], output=output)
        except SystemExit as exc:
            status = exc.code
    assert stdout.getvalue() == "", "the extension printed to stdout, where Inkscape expects the document"
    return status, stderr.getvalue(), output.getvalue()


def new_strokes(document: bytes) -> list[list[float]]:
    """The numbers of each stroke path the effect added (in the photo's pixels, as the backend wrote them)."""
    root = etree.fromstring(document)
    layers = root.findall(".//{http://www.w3.org/2000/svg}g[@id]")
    sketch = next(g for g in layers if g.get("id").startswith("clipasso-sketch"))
    return [[float(v) for v in re.findall(r"-?[0-9.]+(?:e-?[0-9]+)?", p.get("d"))]
            for p in sketch.iter("{http://www.w3.org/2000/svg}path")]


class TestSubjectOutline:
    """A photo shown through a clip: the clip is the subject's outline, sent in the photo's pixels."""

    def test_the_clip_is_mapped_into_the_photos_pixels(self) -> None:
        import inkex

        from clipasso_images import load_picture
        from clipasso_sketch import image_viewport, subject_outline

        svg = inkex.load_svg(str(DATA / "clipped.svg")).getroot()
        image = svg.getElementById("cat")
        picture = load_picture(image.get("xlink:href"), "cat", [str(DATA)])
        (element, d, _), = subject_outline(image, picture, image_viewport(image, picture), svg)
        box = inkex.Path(d).bounding_box()
        # The clip's rectangle, x 130-250 and y 30-190 in the image's own (rotated) user space, is the right
        # half of the 120 x 80 photo from its sixteenth row down: the rotation cancels out.
        assert element.get("id") == "outline"
        assert [round(v, 6) for v in (box.left, box.top, box.right, box.bottom)] == [60, 5, 120, 85]
        unclipped = inkex.load_svg(str(DATA / "linked.svg")).getroot()
        assert subject_outline(unclipped.getElementById("cat"), picture, (10, 20, 240, 160), unclipped) == []

    def test_a_mask_is_read_as_a_clip_is(self) -> None:
        """Object > Mask > Set Mask: the mask's shapes are the outline; on an element with both, the clip's."""
        import inkex

        from clipasso_images import load_picture
        from clipasso_sketch import image_viewport, subject_outline

        def box(svg) -> list:
            image = svg.getElementById("cat")
            picture = load_picture(image.get("xlink:href"), "cat", [str(DATA)])
            (_, d, _), = subject_outline(image, picture, image_viewport(image, picture), svg)
            found = inkex.Path(d).bounding_box()
            return [round(v, 6) for v in (found.left, found.top, found.right, found.bottom)]

        masked = inkex.load_svg(str(DATA / "clipped.svg")).getroot()
        mask = masked.getElementById("right-half")
        mask.tag, mask.attrib["maskUnits"] = inkex.addNS("mask", "svg"), "userSpaceOnUse"
        del mask.attrib["clipPathUnits"]
        image = masked.getElementById("cat")
        image.set("mask", image.pop("clip-path"))
        assert box(masked) == [60, 5, 120, 85]  # the same rectangle as the clip's
        image.set("clip-path", "url(#no-such-clip)")  # a dangling clip is passed over for the mask
        assert box(masked) == [60, 5, 120, 85]
        both = inkex.load_svg(str(DATA / "clipped.svg")).getroot()
        left = inkex.Mask(inkex.Rectangle.new(10, 20, 10, 10))
        left.set("id", "left-corner")
        both.defs.append(left)
        both.getElementById("cat").set("mask", "url(#left-corner)")
        assert box(both) == [60, 5, 120, 85]  # the clip's, not the mask's
        fractions = inkex.load_svg(str(DATA / "clipped.svg")).getroot()
        fractions.getElementById("right-half").set("clipPathUnits", "objectBoundingBox")
        image = fractions.getElementById("cat")
        picture = load_picture(image.get("xlink:href"), "cat", [str(DATA)])
        assert subject_outline(image, picture, image_viewport(image, picture), fractions) == []  # not misread

    def test_the_strokes_stay_in_the_clipped_part(self, backend) -> None:
        # Unclipped, the segmentation takes the cat's left eye and cheek, and most strokes go there.
        status, err, out = run_sketch("clipped.svg", "--id=cat", f"--backend_url={backend.url}",
                                      "--encoder=lite0", "--strokes=4", "--iterations=3")
        assert status == 0, err
        strokes = new_strokes(out)
        assert len(strokes) == 4
        for n in strokes:  # M x0,y0 C x1,y1 x2,y2 x3,y3, in the photo's pixels: ends in its right half
            assert n[0] > 60 - 6 and n[6] > 60 - 6, n

    @pytest.mark.parametrize("change, why", [
        (lambda clip: clip.set("clipPathUnits", "objectBoundingBox"), "is in objectBoundingBox units, which are not read"),
        (lambda clip: clip.replace(clip[0], inkex.TextElement.new("cat", x="130", y="100")),
         "has no shape over the photo to read as an outline (text is not read: Path > Object to Path)"),
    ])
    def test_a_clip_that_cannot_be_read_is_said(self, backend, tmp_path, change, why) -> None:
        """It was left out without a word: the backend found the subject itself, not where the artist said."""
        svg = inkex.load_svg(str(DATA / "clipped.svg")).getroot()
        change(svg.getElementById("right-half"))
        (tmp_path / "cat.jpg").write_bytes((DATA / "cat.jpg").read_bytes())
        (tmp_path / "doc.svg").write_bytes(etree.tostring(svg))
        status, err, out = run_sketch(str(tmp_path / "doc.svg"), "--id=cat", *FAST, f"--backend_url={backend.url}")
        assert (status, err) == (0, f'CLIPasso: the clip or mask of image "cat" {why}; the backend finds the subject '
                                    "itself\n"), err

    def test_with_focus_on_the_whole_photo_the_clip_is_not_sent(self, backend) -> None:
        status, err, out = run_sketch("clipped.svg", "--id=cat", f"--backend_url={backend.url}", "--focus=none",
                                      "--encoder=lite0", "--strokes=4", "--iterations=1")
        assert status == 0 and len(new_strokes(out)) == 4, err


def assert_refused(document: str, *args: str, message: str, effect: type = Sketch) -> str:
    """The run stops with one message matching `message`, and leaves no output."""
    status, err, out = run_sketch(document, *args, effect=effect)
    assert status == ABORT_STATUS and out == b""
    assert re.search(message, err), err
    assert "Traceback" not in err
    return err


@pytest.fixture()
def broken_images(tmp_path):
    """A document whose images each fail in their own way; returns its path relative to DATA."""
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (1, 1)).save(png, "PNG")
    tiny = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    svg_image = "data:image/svg+xml;base64," + base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg"/>').decode()
    tiff = "data:image/tiff;base64," + base64.b64encode(b"II*\x00\x08\x00\x00\x00" + bytes(32)).decode()
    ppm = "data:image/x-portable-pixmap;base64," + base64.b64encode(b"P6\n1 1\n255\n\0\0\0").decode()
    images = {
        "tiny": tiny,
        "vector": svg_image,
        "tiff": tiff,
        "ppm": ppm,
        "corrupt": "data:image/png;base64,iVBORw0KG!!*not base64*",
        "missing": "no-such-photo.png",
        "web": "https://example.com/photo.jpg",
    }
    body = "".join(f'<image id="{k}" x="0" y="0" width="10" height="10" xlink:href="{v}"/>' for k, v in images.items())
    body += f'<image id="flat" width="10" height="0" xlink:href="{tiny}"/>'
    body += f'<image id="percent" width="50%" height="10" xlink:href="{tiny}"/>'
    body += '<use id="clone" xlink:href="#tiny" x="50"/>'
    path = tmp_path / "broken.svg"
    path.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="100" '
        f'height="100"><rect id="box" width="5" height="5"/>{body}</svg>'
    )
    return str(path)


class TestSketchErrors:
    """Each error the issue lists: one clear message, the document unchanged, no traceback."""

    def test_nothing_selected(self, backend) -> None:
        assert_refused("embedded.svg", f"--backend_url={backend.url}", message=r"^Nothing is selected: select")

    def test_selection_without_an_image(self, backend) -> None:
        assert_refused("embedded.svg", "--id=frame", "--id=caption", f"--backend_url={backend.url}",
                       message=r"no image in it: select a photo")

    @pytest.mark.parametrize(
        "image, message",
        [
            ("vector", r'image "vector" is an SVG \(vector\) image; .* select a bitmap'),
            ("ppm", r'image "ppm" is not a supported image; CLIPasso reads PNG, JPEG, GIF, BMP, TIFF or WebP'),
            ("tiff", r'image "tiff": the TIF data is corrupt or truncated \(no valid size\)'),
            ("clone", r"^The selection holds a clone of a photo, not the photo: select the original, or .*Unlink Clone"),
            ("corrupt", r'image "corrupt": its embedded data: URI is corrupt \(not valid base64\)'),
            ("missing", r'image "missing": the linked file .*no-such-photo.png is missing'),
            ("web", r'image "web" is linked from https: \(not a local file\)'),
            ("flat", r'image "flat" has no area on the canvas \(width 10, height 0\)'),
            ("percent", r'image "percent" has a width in percent; set it in px, mm'),
        ],
    )
    def test_unusable_image(self, broken_images: str, image: str, message: str) -> None:
        # Refused before any backend work: nothing answers at this URL, and the message is not about that.
        assert_refused(broken_images, f"--id={image}", f"--backend_url=http://127.0.0.1:{free_port()}", message=message)

    def test_backend_refuses_the_image(self, backend, broken_images: str) -> None:
        assert_refused(broken_images, "--id=tiny", f"--backend_url={backend.url}",
                       message=r'^The backend refused image "tiny": .*1x1 is too small')

    def test_backend_unreachable_says_how_to_start_it(self) -> None:
        port = free_port()
        err = assert_refused("linked.svg", "--id=cat", f"--backend_url=http://127.0.0.1:{port}",
                             message="does not answer")
        assert f"clipasso serve --host 127.0.0.1 --port {port}\n" in err

    def test_wrong_token(self, server_factory, tmp_path) -> None:
        server = server_factory(tmp_path / "data", token="a-token-of-24-characters")
        try:
            assert_refused("linked.svg", "--id=cat", f"--backend_url={server.url}", "--token=not-the-token",
                           message=r"refused the token .*set Token on the Backend page")
        finally:
            server.stop()

    def test_an_encoder_the_backend_cannot_use_is_refused_before_any_job(self, backend) -> None:
        # The backend runs offline without CLIP weights: /health says so, and nothing is submitted.
        queued = httpx.get(f"{backend.url}/jobs").json()["jobs"]
        assert_refused("linked.svg", "--id=cat", f"--backend_url={backend.url}", "--encoder=clip:RN101",
                       message=r"^The backend cannot use the encoder clip:RN101: not in the cache and "
                               r"CLIPASSO_OFFLINE=1\. Ready there: lite0\. .*clipasso models download clip:RN101")
        assert httpx.get(f"{backend.url}/jobs").json()["jobs"] == queued

    def test_a_photo_over_the_backends_upload_limit_is_refused_before_sending(self, server_factory, tmp_path):
        server = server_factory(tmp_path / "data", "--max-upload-mb", "0.001")
        try:
            assert_refused("linked.svg", "--id=cat", f"--backend_url={server.url}",
                           message=r'^image "cat" is 0.00342 MB; the backend accepts photos of up to 0.001 MB')
            assert httpx.get(f"{server.url}/jobs").json()["jobs"] == []
        finally:
            server.stop()

    def test_a_job_id_to_place_that_is_not_one_is_one_message(self) -> None:
        assert_refused("linked.svg", "--id=cat", f"--backend_url=http://127.0.0.1:{free_port()}",
                       "--job_id=abc def", message=r"^'abc def' is not a job id", effect=Place)
        assert_refused("linked.svg", "--id=cat", message=r"^Type the id of the job to place", effect=Place)

    def test_a_job_the_backend_does_not_have_or_of_another_photo_is_refused(self, backend, coffee_job) -> None:
        """It was 'Lost the CLIPasso backend while following job ...: unknown job id'; and a job of another
        photo was placed over the selected one, stretched to it."""
        assert_refused("linked.svg", "--id=cat", f"--backend_url={backend.url}", "--job_id=" + "A" * 22,
                       message=rf"^The backend at {backend.url} has no job A{{22}}: check the id", effect=Place)
        assert_refused("linked.svg", "--id=cat", f"--backend_url={backend.url}", f"--job_id={coffee_job}",
                       message=rf'^Job {coffee_job} was made from a 90x60 photo, and image "cat" is 120x80 pixels: '
                               "select the image it was made from", effect=Place)

    def test_job_fails(self, server_factory, tmp_path) -> None:
        # Online, CLIP weights are fetched on first use; the hub (a closed port here) does not answer, so the
        # job starts, then fails with the reason.
        server = server_factory(tmp_path / "data")
        try:
            assert_refused("linked.svg", "--id=cat", f"--backend_url={server.url}", "--encoder=clip:RN101",
                           "--iterations=1", message=r'The sketch of image "cat" failed on the backend .*RN101 .*'
                                                     r"connection refused")
        finally:
            server.stop()

    def test_timeout_names_the_job_and_its_result_can_be_fetched_later(self, backend) -> None:
        # A timeout of 0 gives up at the first look at the job, which cannot have finished by then.
        err = assert_refused("linked.svg", "--id=cat", f"--backend_url={backend.url}", "--timeout=0", *FAST,
                             message=r"did not finish within 0 s: job \S+ is still (queued|running)")
        job = re.search(r"run Extensions > CLIPasso > Place a job's result with the job (\S+) ", err).group(1)
        assert f"{backend.url}/jobs/{job}/result.svg" in err
        status, err, out = run_sketch("linked.svg", "--id=cat", f"--backend_url={backend.url}", f"--job_id={job}",
                                      effect=Place)
        assert (status, err) == (0, "")
        assert out.count(b"<path") == 4 and b"CLIPasso sketch - 4 strokes" in out
        assert httpx.get(f"{backend.url}/jobs/{job}").json()["state"] == "succeeded"


    def test_a_timeout_over_several_images_names_each_ones_job(self, backend) -> None:
        """Nothing is placed after a timeout, so every image's job is named with its image, to fetch each."""
        err = assert_refused("two.svg", "--id=cat", "--id=coffee", f"--backend_url={backend.url}", "--timeout=0",
                             *FAST, message=r"did not finish within 0 s")
        jobs = dict(re.findall(r'image "(\w+)": (\S+) \((?:finished|still (?:queued|running), \d+% done)\)', err))
        assert set(jobs) == {"cat", "coffee"} and len(set(jobs.values())) == 2, err
        status, err, out = run_sketch("two.svg", "--id=coffee", f"--backend_url={backend.url}",
                                      f"--job_id={jobs['coffee']}", effect=Place)
        assert (status, err) == (0, "") and out.count(b"<path") == 4


@pytest.fixture(scope="module")
def coffee_job(backend) -> str:
    """A finished job for coffee.jpg, to place with --job_id."""
    reply = httpx.post(f"{backend.url}/jobs", files={"image": ("coffee.jpg", (DATA / "coffee.jpg").read_bytes())},
                       data={"encoder": "lite0", "strokes": "4", "iterations": "1"}, timeout=60)
    job = reply.json()["id"]
    deadline = time.monotonic() + 300
    while (view := httpx.get(f"{backend.url}/jobs/{job}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"the coffee job did not end within 300 s: {view}"
        time.sleep(0.2)
    assert view["state"] == "succeeded", view  # else the tests that place it would fail for another reason
    return job


@pytest.mark.parametrize("document", ["embedded.svg", "transformed.svg", "rotated.svg"])
def test_everything_else_stays_untouched(document: str, coffee_job: str, backend) -> None:
    """Take the new layer and its clip path out of the result, and the document is the one that went in."""
    status, err, out = run_sketch(document, "--id=photo", f"--job_id={coffee_job}", f"--backend_url={backend.url}",
                                  effect=Place)
    assert (status, err) == (0, "")
    result = etree.fromstring(out)
    added = result.xpath("//svg:g[starts-with(@inkscape:label, 'CLIPasso sketch')] | //svg:clipPath[starts-with(@id, "
                         "'clipasso-clip')]", namespaces={"svg": "http://www.w3.org/2000/svg",
                                                          "inkscape": "http://www.inkscape.org/namespaces/inkscape"})
    assert len(added) == (2 if document == "rotated.svg" else 1)
    for element in added:
        element.getparent().remove(element)
    original = etree.parse(str(DATA / document)).getroot()
    assert etree.tostring(result, method="c14n") == etree.tostring(original, method="c14n")


def newest_record(backend) -> dict:
    """The backend's most recent job, as its job.json holds it."""
    records = [json.loads(p.read_text()) for p in (backend.data_dir / "jobs").glob("*/job.json")]
    return max(records, key=lambda r: r["created"])


def newest_job(backend) -> dict:
    """The options of the backend's most recent job."""
    return newest_record(backend)["options"]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_a_png_or_webp_with_an_exif_turn_is_sketched_as_inkscape_shows_it(fmt: str, backend, tmp_path) -> None:
    """Inkscape 1.2 shows a PNG or WebP as stored, whatever its EXIF orientation says (a JPEG it turns): the
    backend is asked for the stored pixels, so the strokes come back in the frame the image is placed in."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # "turn a quarter clockwise to view"
    Image.open(DATA / "cat.jpg").save(tmp_path / f"cat.{fmt.lower()}", fmt, exif=exif.tobytes())
    document = tmp_path / "turned.svg"
    document.write_text((DATA / "linked.svg").read_text().replace('"cat.jpg"', f'"cat.{fmt.lower()}"'))
    status, err, out = run_sketch(str(document), "--id=cat", f"--backend_url={backend.url}", *FAST)
    assert status == 0, err
    job = newest_record(backend)
    assert (job["width"], job["height"]) == (120, 80)  # as stored; turned it would be 80 x 120
    group = etree.fromstring(out).xpath("//*[starts-with(@id, 'clipasso-sketch')]/*[local-name()='g']")[0]
    m = inkex.Transform(group.get("transform"))
    assert (m.a, m.b, m.c, m.d) == pytest.approx((2, 0, 0, 2))  # 240 x 160 units over 120 x 80 pixels, unstretched


def test_a_tiff_with_an_orientation_tag_is_sketched_turned_as_inkscape_shows_it(backend, tmp_path) -> None:
    """Inkscape (and Pillow) show a TIFF turned by its orientation tag: the strokes come back in that frame."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(DATA / "cat.jpg").save(tmp_path / "cat.tif", "TIFF", exif=exif)
    document = tmp_path / "turned.svg"
    document.write_text((DATA / "linked.svg").read_text().replace('"cat.jpg"', '"cat.tif"'))
    status, err, out = run_sketch(str(document), "--id=cat", f"--backend_url={backend.url}", *FAST)
    assert (status, err) == (0, "")
    job = newest_record(backend)
    assert (job["width"], job["height"]) == (80, 120)
    group = etree.fromstring(out).xpath("//*[starts-with(@id, 'clipasso-sketch')]/*[local-name()='g']")[0]
    m = inkex.Transform(group.get("transform"))  # 80 x 120 pixels met into 240 x 160 units, centred
    assert (m.a, m.d, m.e, m.f) == pytest.approx((4 / 3, 4 / 3, 10 + (240 - 80 * 4 / 3) / 2, 20))


def test_each_run_goes_on_top_of_the_last_and_names_its_photo(backend, tmp_path) -> None:
    """Sketching a photo again adds a layer above the earlier sketches of it (the newest on top, as drawn
    last), each named with the photo it was made from."""
    (tmp_path / "cat.jpg").write_bytes((DATA / "cat.jpg").read_bytes())
    document = tmp_path / "again.svg"
    document.write_bytes((DATA / "linked.svg").read_bytes())
    for strokes in (4, 2):
        status, err, out = run_sketch(str(document), "--id=cat", f"--backend_url={backend.url}", *FAST,
                                      f"--strokes={strokes}")
        assert (status, err) == (0, "")
        document.write_bytes(out)
    root = etree.fromstring(document.read_bytes())
    labels = [g.get("{http://www.inkscape.org/namespaces/inkscape}label") for g in root
              if g.get("{http://www.inkscape.org/namespaces/inkscape}groupmode") == "layer"]
    assert labels == ["Layer 1", "CLIPasso sketch - 4 strokes - cat.jpg", "CLIPasso sketch - 2 strokes - cat.jpg"]


def test_nested_svg_viewports_in_percent_auto_or_invalid() -> None:
    """Nested <svg> sizes as browsers and Inkscape read them: percentages of the enclosing viewport, 'auto',
    missing or invalid as 100 %; one of no area (it shows nothing) does not break the mapping."""
    from clipasso_sketch import composed_transform

    svg = inkex.load_svg(io.BytesIO(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300">'
        b'<svg x="10" y="10" width="50%" height="200"><svg x="5%" width="auto" viewBox="0 0 10 10">'
        b'<rect id="in-two" width="1" height="1"/></svg></svg>'
        b'<svg width="abc" viewBox="0 0 1 1"><rect id="invalid"/></svg>'
        b'<svg x="7" width="0" viewBox="0 0 1 1"><rect id="empty"/></svg>'
        b'<svg x="20" y="30" width="2em" transform="translate(100,0)"><rect id="em-moved"/></svg></svg>')).getroot()
    m = {name: composed_transform(svg.getElementById(name)).to_hexad()
         for name in ("in-two", "invalid", "empty", "em-moved")}
    assert list(m["in-two"]) == pytest.approx([20, 0, 0, 20, 20, 10])  # 200 px wide, 10 units: x 10 + 10, y 10
    assert list(m["invalid"]) == pytest.approx([300, 0, 0, 300, 50, 0])  # 400 x 300 met, centred
    assert list(m["empty"]) == pytest.approx([1, 0, 0, 1, 7, 0])
    # em (which inkex cannot convert) as 100 %, and the <svg>'s own transform (SVG 2) unread, as Inkscape 1.2
    assert list(m["em-moved"]) == pytest.approx([1, 0, 0, 1, 20, 30])


def test_a_path_drawn_with_the_pencil_reaches_the_backend(backend) -> None:
    """drawn.svg: a loop of 240 curves around the cat, as Inkscape's pencil draws one (9 kB of path data),
    goes whole to the backend as the path to keep."""
    status, err, out = run_sketch("drawn.svg", "--id=cat", "--id=pencil", "--paths=keep", *FAST, "--strokes=1",
                                  f"--backend_url={backend.url}")
    assert status == 0, err
    sent, = etree.fromstring(newest_job(backend)["keep"].encode()).findall("{http://www.w3.org/2000/svg}path")
    assert len(sent.get("d")) > 9000 and len(inkex.Path(sent.get("d"))) >= 241  # the move and its 240 curves


def test_shapes_drawn_with_inkscapes_tools_are_strokes_too(backend) -> None:
    """drawn.svg: an ellipse and a rectangle (2 units per photo pixel, the photo at (10, 20)) go to the
    backend as paths around the same boxes in the photo's pixels; the filled backdrop without a stroke
    does not, nor the frame drawn around the photo (none of its points on it, as the backend judges)."""
    status, err, out = run_sketch("drawn.svg", "--id=cat", "--id=backdrop", "--id=frame", "--id=eye", "--id=box",
                                  "--paths=keep", *FAST, "--strokes=1", f"--backend_url={backend.url}")
    assert status == 0 and err == ("CLIPasso: 1 of the 3 selected paths lies off the photo and is ignored\n"
                                   "CLIPasso: not used as strokes: 1 shape or path without a stroke\n"), err
    sent = etree.fromstring(newest_job(backend)["keep"].encode()).findall("{http://www.w3.org/2000/svg}path")
    boxes = [inkex.Path(p.get("d")).bounding_box() for p in sent]
    assert [v for b in boxes for v in (b.left, b.top, b.right, b.bottom)] == pytest.approx(
        [20, 15, 40, 25, 60, 40, 80, 50], abs=1e-3)  # the ellipse as cubics: within a thousandth of a pixel
    assert [float(p.get("stroke-width")) for p in sent] == pytest.approx([1, 2])
    # The frame alone: a sketch from nothing, not the backend refusing a path that is not on the photo.
    status, err, out = run_sketch("drawn.svg", "--id=cat", "--id=frame", *FAST, "--strokes=1",
                                  f"--backend_url={backend.url}")
    assert status == 0 and err == "CLIPasso: the selected path lies off the photo and is ignored\n", err


def test_a_selection_is_read_as_inkscape_draws_it(backend) -> None:
    """selection.svg (the photo at (10, 20), 2 units per pixel): a line across the photo with both ends off it
    is kept (it was dropped as off the photo); an arc whose radii are too small is sent as the half circle
    Inkscape draws (it ended at x 45 px instead of 65); paths hidden in a selected group are not sent (a
    sketch layer's hidden ladder levels were); what is not used is named."""
    status, err, out = run_sketch("selection.svg", "--id=cat", "--id=across", "--id=arc", "--id=mixed-group",
                                  "--id=unstroked", "--id=label", "--paths=keep", *FAST, "--strokes=1",
                                  f"--backend_url={backend.url}")
    assert status == 0 and err == "CLIPasso: not used as strokes: 2 hidden paths, 2 shapes or paths without a stroke, 1 text\n", err
    across, arc, shown = (inkex.Path(p.get("d")) for p in etree.fromstring(newest_job(backend)["keep"].encode())
                          .findall("{http://www.w3.org/2000/svg}path"))
    # Lettering turned into a filled path is no stroke (a word was refined into six scribbles across it); a
    # clipped group's path is used whole, and said to be (the command line said it, the extension did not).
    status, err, out = run_sketch("selection.svg", "--id=cat", "--id=letters", "--id=whiskers", "--paths=keep", *FAST,
                                  "--strokes=1", f"--backend_url={backend.url}")
    assert status == 0 and err == (
        "CLIPasso: not used as strokes: 1 shape or path without a stroke\n"
        "CLIPasso: 1 of your paths is clipped or masked; clips and masks are not applied, so the whole of it is "
        "used\n"), err
    (whisker,) = etree.fromstring(newest_job(backend)["keep"].encode()).findall("{http://www.w3.org/2000/svg}path")
    assert numbers(whisker.get("d"))[:2] == pytest.approx([35, 35])  # (80, 90) in the photo's pixels, unclipped
    # An earlier sketch's ladder: its shown level is used, its hidden levels without a word (naming them
    # brought up Inkscape's message dialog, which reads like an error).
    status, err, out = run_sketch("selection.svg", "--id=cat", "--id=clipasso-sketch-1", "--paths=keep", *FAST,
                                  "--strokes=1", f"--backend_url={backend.url}")
    assert status == 0 and err == "", err
    assert len(etree.fromstring(newest_job(backend)["keep"].encode()).findall("{http://www.w3.org/2000/svg}path")) == 2
    assert numbers(str(across))[:2] == pytest.approx([-5, 40]) and numbers(str(across))[-2:] == pytest.approx([125, 40])
    assert numbers(str(arc))[-2:] == pytest.approx([65, 20])
    top = arc.bounding_box()
    assert (top.left, top.right, top.top, top.bottom) == pytest.approx((25, 65, 0, 20), abs=1e-3)  # radius 20 px
    assert numbers(str(shown))[:2] == pytest.approx([10, 65])


@pytest.mark.parametrize("use, why", [("keep", '"Your selected paths" is not Refine'),
                                      ("refine", 'no selected path lies on image "cat"')])
def test_no_strokes_and_nothing_to_refine_says_why(use: str, why: str, backend) -> None:
    """Strokes 0 with nothing to refine was the backend's 'strokes must be between 1 and 512, got 0'."""
    assert_refused("selection.svg", "--id=cat", "--id=label", f"--paths={use}", "--strokes=0",
                   f"--backend_url={backend.url}", message=rf"^Strokes is 0, which adds no new stroke: .*{why}")


def test_a_photo_in_a_hidden_or_locked_layer_gets_a_visible_unlocked_sketch(backend, tmp_path) -> None:
    """The new layer went beside the photo's layer, inside its hidden and locked parent: hidden and locked."""
    (tmp_path / "cat.jpg").write_bytes((DATA / "cat.jpg").read_bytes())
    (tmp_path / "doc.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'xmlns:inkscape="http://www.inkscape.org/namespaces/inkscape" '
        'xmlns:sodipodi="http://sodipodi.sourceforge.net/DTD/sodipodi-0.dtd" width="400" height="300">'
        '<g id="outer" inkscape:groupmode="layer" style="display:none" sodipodi:insensitive="true">'
        '<g id="inner" inkscape:groupmode="layer">'
        '<image id="cat" x="10" y="20" width="240" height="160" xlink:href="cat.jpg"/></g></g></svg>')
    status, err, out = run_sketch(str(tmp_path / "doc.svg"), "--id=cat", *FAST, f"--backend_url={backend.url}")
    assert status == 0, err
    svg = inkex.load_svg(io.BytesIO(out)).getroot()
    layer = svg.getElementById("outer").getnext()
    assert layer.get("inkscape:label").startswith("CLIPasso sketch") and layer.getparent() is svg


def test_the_backends_warnings_are_said(backend, tmp_path) -> None:
    """A panorama is a thin band on the square canvas: the backend warns, and the extension says it."""
    from PIL import Image

    Image.new("RGB", (900, 100), (200, 180, 150)).save(tmp_path / "pano.png")
    (tmp_path / "pano.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="900" height="100">'
        '<image id="pano" x="0" y="0" width="900" height="100" xlink:href="pano.png"/></svg>')
    status, err, out = run_sketch(str(tmp_path / "pano.svg"), "--id=pano", *FAST, f"--backend_url={backend.url}")
    assert status == 0 and err.startswith('CLIPasso: image "pano": the photo is 9.0 times as wide as it is tall'), err
    assert b"CLIPasso sketch" in out


def test_a_stroke_width_in_percent_is_of_the_documents_diagonal() -> None:
    """SVG's rule: 2 % of sqrt((400^2 + 300^2) / 2) user units, here 2 units per photo pixel."""
    from clipasso_images import load_picture
    from clipasso_sketch import drawn_paths, image_viewport

    svg = inkex.load_svg(str(DATA / "linked.svg")).getroot()
    image = svg.getElementById("cat")
    path = inkex.PathElement.new("M 20 30 L 100 90", style="fill:none;stroke:#000;stroke-width:2%")
    image.getparent().append(path)
    picture = load_picture(image.get("xlink:href"), "cat", [str(DATA)])
    (_, _, width), = drawn_paths([path], image, picture, image_viewport(image, picture))
    assert width == pytest.approx(0.02 * (400**2 / 2 + 300**2 / 2) ** 0.5 / 2)


def numbers(d: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?[0-9.]+(?:e-?[0-9]+)?", d)]


@pytest.mark.parametrize("use", ["keep", "refine"])
def test_selected_paths_reach_the_backend_in_the_photo_pixels(use: str, backend) -> None:
    """mixed.svg: the 120x80 photo is drawn at (10, 20), 2 units per pixel; the artist's layer is moved by
    (10, 20) and one path is scaled by 2 in a group; a third path lies off the photo."""
    status, err, out = run_sketch("mixed.svg", "--id=cat", "--id=layer2", f"--paths={use}", *FAST, "--strokes=1",
                                  f"--backend_url={backend.url}")
    assert status == 0 and err == "CLIPasso: 1 of the 3 selected paths lies off the photo and is ignored\n"
    options = newest_job(backend)
    sent = etree.fromstring(options[use].encode())
    assert sent.get("viewBox") == "0 0 120 80" and options["keep" if use == "refine" else "refine"] is None
    outline, eye = sent.findall("{http://www.w3.org/2000/svg}path")
    assert numbers(outline.get("d"))[:2] == pytest.approx([20, 15]) and numbers(outline.get("d"))[-2:] == pytest.approx([80, 70])
    assert float(outline.get("stroke-width")) == pytest.approx(2)  # 4 units, at 2 units per pixel
    assert numbers(eye.get("d"))[:2] == pytest.approx([40, 30]) and float(eye.get("stroke-width")) == pytest.approx(1)
    # The artist's layer is as it was; the new layer holds only the new strokes (with refine: theirs moved).
    result = etree.fromstring(out)
    mine = result.xpath("//*[@id='layer2']")[0]
    assert etree.tostring(mine, method="c14n") == etree.tostring(
        etree.parse(str(DATA / "mixed.svg")).getroot().xpath("//*[@id='layer2']")[0], method="c14n")
    layer = result.xpath("//*[starts-with(@inkscape:label, 'CLIPasso sketch')]",
                         namespaces={"inkscape": "http://www.inkscape.org/namespaces/inkscape"})[0]
    assert len(layer.findall(".//{http://www.w3.org/2000/svg}path")) == (1 if use == "keep" else 3)
    # A refined sketch says so: it had the name of the sketch it was refined from, over it.
    label = layer.get("{http://www.inkscape.org/namespaces/inkscape}label")
    assert label == ("CLIPasso sketch - 1 stroke - cat.jpg" if use == "keep" else
                     "CLIPasso sketch - 3 strokes - refined - cat.jpg")
