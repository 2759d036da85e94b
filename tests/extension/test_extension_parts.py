"""The extension's standard-library helpers: reading images and their sizes, the viewBox mapping, the
HTTP client's error messages, and what the progress window says about a run. No inkex needed."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from extension_support import import_extension
from PIL import Image, features

import_extension(with_inkex=False)

from clipasso_client import Backend, BackendError, check_job_id, how_to_start  # noqa: E402
from clipasso_geometry import AspectRatio, parse_aspect_ratio, viewbox_to_viewport  # noqa: E402
from clipasso_images import ImageError, Picture, decode_data_uri, load_picture  # noqa: E402
from clipasso_jobs import Phase, Photo, SketchRun, clock  # noqa: E402


def encode(fmt: str, size: tuple[int, int] = (7, 5), mode: str = "RGB", **options) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 120, 40) if mode == "RGB" else (200, 120, 40, 128)).save(out, fmt, **options)
    return out.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def top_down_bmp() -> bytes:
    data = bytearray(encode("BMP"))
    data[22:26] = (-5).to_bytes(4, "little", signed=True)  # rows stored top to bottom
    return bytes(data)


def hand_tiff(width: int, height: int, order: str = "<") -> bytes:
    """An uncompressed RGB TIFF with its directory after the pixels (as many writers put it), in either
    byte order ('<' II, '>' MM): Pillow writes its directory first and little-endian only."""
    pixels = bytes(range(256)) * (width * height * 3 // 256) + bytes(width * height * 3 % 256)
    directory = 8 + len(pixels)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, directory + 2 + 10 * 12 + 4), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, len(pixels)),
               (284, 3, 1, 1)]
    data = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "I", directory) + pixels
    data += struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        short = kind == 3 and count == 1
        data += struct.pack(order + "HHI", tag, kind, count) + struct.pack(order + ("HH" if short else "I"),
                                                                           *((value, 0) if short else (value,)))
    return data + b"\0\0\0\0" + struct.pack(order + "HHH", 8, 8, 8)


FORMATS = {
    "png": (encode("PNG"), "image/png", (7, 5)),
    "jpeg": (encode("JPEG"), "image/jpeg", (7, 5)),
    "progressive jpeg": (encode("JPEG", progressive=True), "image/jpeg", (7, 5)),
    # Inkscape shows a JPEG turned by its EXIF orientation (and so does the backend): 7x5 stored, 5x7 shown
    "jpeg rotated by exif": (encode("JPEG", exif=exif_orientation(6)), "image/jpeg", (5, 7)),
    "jpeg mirrored by exif": (encode("JPEG", exif=exif_orientation(2)), "image/jpeg", (7, 5)),
    "gif": (encode("GIF"), "image/gif", (7, 5)),
    "bmp": (encode("BMP"), "image/bmp", (7, 5)),
    "top-down bmp": (top_down_bmp(), "image/bmp", (7, 5)),
    "tiff": (encode("TIFF"), "image/tiff", (7, 5)),
    "tiff, deflated": (encode("TIFF", compression="tiff_adobe_deflate"), "image/tiff", (7, 5)),
    "big-endian tiff": (hand_tiff(7, 5, ">"), "image/tiff", (7, 5)),
    # Inkscape shows a TIFF turned by its orientation tag (and Pillow, so the backend, opens it turned)
    "tiff rotated by its orientation": (encode("TIFF", exif=exif_orientation(8)), "image/tiff", (5, 7)),
}
if features.check("webp"):
    FORMATS.update({
        "webp lossy": (encode("WEBP"), "image/webp", (7, 5)),
        "webp lossless": (encode("WEBP", lossless=True), "image/webp", (7, 5)),
        "webp with alpha": (encode("WEBP", mode="RGBA"), "image/webp", (7, 5)),
    })


@pytest.mark.parametrize("name", list(FORMATS))
def test_embedded_formats_and_their_displayed_size(name: str) -> None:
    data, mime, size = FORMATS[name]
    picture = load_picture(data_uri(data, mime), "image", [])
    assert (picture.mime, (picture.width, picture.height), picture.data) == (mime, size, data)
    assert picture.filename == "embedded" + {"image/jpeg": ".jpg", "image/tiff": ".tif"}.get(mime, "." + mime.split("/")[1])


def test_data_uris_with_line_breaks_or_percent_escapes() -> None:
    png = encode("PNG")
    wrapped = base64.encodebytes(png).decode()  # Inkscape may wrap base64 every 76 characters
    assert load_picture(f"data:image/png;base64,{wrapped}", "image", []).data == png
    assert decode_data_uri("data:image/png," + quote(png), "image") == png
    unpadded = base64.b64encode(png).decode().rstrip("=")
    assert len(unpadded) % 4 and load_picture(f"data:image/png;base64,{unpadded}", "image", []).data == png


@pytest.mark.parametrize(
    "href, message",
    [
        ("data:image/png;base64", r"corrupt \(no comma before the data\)"),
        ("data:image/png;base64,", "is empty"),
        ("data:image/png;base64,iVBORw0K#@!", r"corrupt \(not valid base64\)"),
        (data_uri(encode("PNG")[:20]), "PNG data is corrupt or truncated"),
        (data_uri(encode("JPEG")[:30], "image/jpeg"), "JPG data is corrupt or truncated"),
        (data_uri(b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
         r"is an SVG \(vector\) image"),
        (data_uri(b"\x1f\x8b\x08\x00compressed svg", "image/svg+xml"), r"is an SVG \(vector\) image"),
        (data_uri(encode("PPM"), "image/x-portable-pixmap"),
         "is not a supported image; CLIPasso reads PNG, JPEG, GIF, BMP, TIFF or WebP"),
        ("", "has no pixels: its href is empty"),
        ("https://example.com/cat.jpg", r"is linked from https: \(not a local file\)"),
    ],
)
def test_unusable_hrefs(href: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_picture(href, 'image "x"', [])


def test_linked_files(tmp_path: Path) -> None:
    png = encode("PNG")
    (tmp_path / "my photo.png").write_bytes(png)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for href in ("my photo.png", "my%20photo.png", (tmp_path / "my photo.png").as_uri(), str(tmp_path / "my photo.png")):
        picture = load_picture(href, "image", [str(elsewhere), str(tmp_path)])
        assert (picture.data, picture.filename) == (png, "my photo.png")
    odd = tmp_path / "what? #1.png"
    odd.write_bytes(png)
    assert load_picture("file://" + str(odd), "image", []).data == png  # '?' is part of a file's name
    # Inkscape's sodipodi:absref is the fallback for a link that moved
    assert load_picture("gone/my photo.png", "image", [str(elsewhere)], absref=str(tmp_path / "my photo.png")).data == png


def test_a_linked_tiff_with_its_tags_after_the_pixels(tmp_path: Path) -> None:
    """A TIFF's directory may follow megabytes of pixels: the file is read on to find its size."""
    width, height = 800, 600
    data = hand_tiff(width, height)
    assert Image.open(io.BytesIO(data)).size == (width, height)  # a TIFF Pillow reads
    (tmp_path / "scan.tif").write_bytes(data)
    picture = load_picture("scan.tif", "image", [str(tmp_path)])
    assert (picture.mime, picture.width, picture.height) == ("image/tiff", 800, 600)


def test_a_linked_file_is_identified_from_its_header_and_read_only_when_sent(tmp_path: Path) -> None:
    jpeg = encode("JPEG", (40, 30))
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg + b"\0" * (3 << 20))  # 3 MB of trailing bytes: only the first MB is read
    picture = load_picture(str(path), "image", [])
    assert (picture.width, picture.height, picture.size, picture.embedded) == (40, 30, len(jpeg) + (3 << 20), None)
    path.write_bytes(b"changed")  # read at the last moment, when it is sent
    assert picture.data == b"changed"


def test_job_ids_are_checked_and_quoted() -> None:
    assert check_job_id("A" * 20 + "-_") == "A" * 20 + "-_"
    for bad in ("abc def", "../health", "A" * 21, "A" * 21 + "/"):
        with pytest.raises(BackendError, match="is not a job id: the backend's ids are 22 letters"):
            check_job_id(bad)
    assert Backend("http://127.0.0.1:1").live_page("a/b c") == "http://127.0.0.1:1/#job=a%2Fb%20c"
    # Without the token the page could only say "not reachable: 401".
    assert Backend("http://127.0.0.1:1", "s3cret+token/x").live_page("j") == "http://127.0.0.1:1/#job=j&token=s3cret%2Btoken%2Fx"


def test_missing_and_unresolvable_links(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=rf'image "x": the linked file {tmp_path}/nope.png is missing'):
        load_picture("nope.png", 'image "x"', [str(tmp_path)])
    with pytest.raises(ImageError, match="the document has not been saved; save the document or embed"):
        load_picture("nope.png", 'image "x"', [])


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, ("xMidYMid", False)),
        ("none", ("none", False)),
        ("xMinYMax slice", ("xMinYMax", True)),
        ("defer xMaxYMin meet", ("xMaxYMin", False)),
        ("  xMaxYMid  ", ("xMaxYMid", False)),
        ("sideways", ("xMidYMid", False)),  # invalid: the default
        ("xMinYMin crop", ("xMidYMid", False)),
    ],
)
def test_parse_aspect_ratio(value: str | None, expected: tuple) -> None:
    assert parse_aspect_ratio(value) == AspectRatio(*expected)


# A 40x30 image into the viewport x=10, y=20, 100x60: meet scales by 2 (80x60, 20 to spare across),
# slice by 2.5 (100x75, 15 cut off down). Worked out by hand from SVG 1.1, section 7.8.
@pytest.mark.parametrize("x_align, meet_tx", [("Min", 10.0), ("Mid", 20.0), ("Max", 30.0)])
@pytest.mark.parametrize("y_align, slice_ty", [("Min", 20.0), ("Mid", 12.5), ("Max", 5.0)])
def test_viewbox_to_viewport_by_hand(x_align: str, meet_tx: float, y_align: str, slice_ty: float) -> None:
    align = f"x{x_align}Y{y_align}"
    meet = viewbox_to_viewport((0, 0, 40, 30), (10, 20, 100, 60), AspectRatio(align, False))
    assert meet == pytest.approx((2, 0, 0, 2, meet_tx, 20))
    cut = viewbox_to_viewport((0, 0, 40, 30), (10, 20, 100, 60), AspectRatio(align, True))
    assert cut == pytest.approx((2.5, 0, 0, 2.5, 10, slice_ty))


def test_viewbox_to_viewport_stretch_and_offset_viewbox() -> None:
    assert viewbox_to_viewport((0, 0, 40, 30), (10, 20, 100, 60), AspectRatio("none", False)) == pytest.approx(
        (2.5, 0, 0, 2, 10, 20))
    # a viewBox with an origin: its (5, 5) lands on the viewport's corner
    assert viewbox_to_viewport((5, 5, 40, 30), (0, 0, 80, 60), AspectRatio("xMidYMid", False)) == pytest.approx(
        (2, 0, 0, 2, -10, -10))
    with pytest.raises(ValueError):
        viewbox_to_viewport((0, 0, 0, 30), (0, 0, 80, 60), AspectRatio("none", False))


# ----- the client's messages, from a server that answers like other HTTP backends (FastAPI's "detail") ----


class _Answers(BaseHTTPRequestHandler):
    replies = {
        "/detail-list": (422, {"detail": [{"loc": ["body", "strokes"], "msg": "value is not a valid integer"}]}),
        "/detail-text": (400, {"detail": "image too large"}),
        "/error": (400, {"error": "the uploaded image is empty"}),
        "/crash": (500, None),
        "/other": (404, None),  # another web server on the address: python3 -m http.server, say
        "/not-json": (200, None),
    }

    def do_GET(self) -> None:
        status, body = self.replies[self.path.rsplit("/health", 1)[0]]
        raw = json.dumps(body).encode() if body else b"<html>oops</html>"
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def other_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "path, message",
    [
        ("/detail-list", "^value is not a valid integer$"),
        ("/detail-text", "^image too large$"),
        ("/error", "^the uploaded image is empty$"),
        ("/crash", r"/crash/health answered HTTP 500 Internal Server Error, not as a CLIPasso backend does"),
        ("/other", r"^http://127.0.0.1:\d+/other/health answered HTTP 404 Not Found, not as a CLIPasso backend does; "
                   r"is `clipasso serve` the server at that address\?$"),
        ("/not-json", "did not answer with JSON; is this a CLIPasso backend"),
    ],
)
def test_error_messages_from_the_backend(other_server: str, path: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        Backend(other_server + path).health()


def test_backend_urls() -> None:
    with pytest.raises(BackendError, match="is not an http:// or https:// address"):
        Backend("127.0.0.1:8765")
    assert [Backend(u).is_local for u in ("http://127.0.0.1:1", "http://localhost:2", "http://[::1]:3")] == [True] * 3
    assert not Backend("https://sketch.example.org").is_local
    assert not Backend("http://127.evil.example:8765").is_local  # a name, not the loopback address
    assert Backend("https://sketch.example.org").port == 443
    local = Backend("http://localhost:9000/", token="s3cret-token-of-16+")
    assert how_to_start(local, None) == "clipasso serve --host localhost --port 9000 --token s3cret-token-of-16+"
    assert how_to_start(local, ["/opt/my env/python", "-m", "clipasso", "serve"]).startswith(
        "'/opt/my env/python' -m clipasso serve --host localhost --port 9000")


def test_what_the_window_says_as_a_run_goes_on() -> None:
    """The texts of the progress window, from reaching the backend to stopping, for a run of two photos."""
    picture = Picture(b"", "image/png", 7, 5, "photo.png")
    first, second = Photo('image "cat"', picture), Photo('image "coffee"', picture)
    run = SketchRun(Backend("http://127.0.0.1:8765"), [first, second], {}, 60, prepare=lambda: None)
    starting = run.report(now=100.0)
    assert starting.title == 'Sketching image "cat" (photo 1 of 2)' and starting.fraction == 0.0
    assert starting.details == "Reaching the CLIPasso backend at http://127.0.0.1:8765 (starting it can take a minute)"
    run.asked = Phase.STOPPING  # Stop and place while the backend starts: it said "Starting" until it answered
    assert run.report(now=100.0)[2:4] == ("Stopping", "Stopping once the backend answers: nothing is drawn yet, so "
                                                      "nothing will be placed")
    run.asked = None

    run.phase = Phase.WORKING
    first.job_id, second.job_id = "a", "b"
    first.view = {"state": "queued", "queue_position": 2, "progress": 0.0}
    second.view = {"state": "queued", "queue_position": 3, "progress": 0.0}
    assert run.report(100.0)[2:4] == ("Queued", "Waiting: 2 jobs ahead of it in the backend's queue")
    first.view = {**first.view, "queue_position": 0}
    assert run.report(100.0).details == "Waiting: next in the backend's queue"

    first.running_since = 100.0
    first.view = {"state": "running", "iteration": 0, "iterations": 500, "progress": 0.0, "encoder": "clip:RN101",
                  "activity": "downloading the CLIP RN101 weights from huggingface.co (about 479 MB)"}
    assert run.report(190.0)[1:4] == (0.0, "Preparing", "1:30 elapsed - the backend is downloading the CLIP RN101 "
                                                        "weights from huggingface.co (about 479 MB)")
    first.view = {"state": "running", "iteration": 1, "iterations": 500, "progress": 0.002, "encoder": "lite0"}
    assert run.report(103.0)[1:4] == (0.002, "Iteration 1 of 500", "0:03 elapsed, estimating the time left - encoder lite0")
    first.view = {**first.view, "iteration": 100, "progress": 0.2}
    report = run.report(120.0)
    assert report.details == "0:20 elapsed, about 1:20 left - encoder lite0" and report.overall == "All photos: 10%"
    first.view = {**first.view, "iteration": 500, "progress": 1.0,
                  "activity": "making the abstraction ladder: 8 strokes (level 3 of 4)"}
    assert run.report(160.0)[1:4] == (1.0, "Finishing", "1:00 elapsed - the backend is making the abstraction "
                                                        "ladder: 8 strokes (level 3 of 4)")
    first.view = {key: value for key, value in first.view.items() if key != "activity"}

    first.view = {**first.view, "state": "succeeded", "progress": 1.0}
    second.view = {"state": "running", "iteration": 0, "iterations": 500, "progress": 0.0, "encoder": "lite0"}
    assert run.current() is second and run.report(121.0).title == 'Sketching image "coffee" (photo 2 of 2)'
    assert run.progress() == 0.5
    run.phase = Phase.STOPPING
    assert run.report(122.0)[2:4] == ("Stopping", "Stopping: keeping the best strokes so far")


def test_cancel_overrides_stop_and_place_and_a_final_run_ignores_both() -> None:
    def asked(*presses: str, phase: Phase = Phase.WORKING) -> Phase | None:
        run = SketchRun(Backend("http://127.0.0.1:8765"), [], {}, 60, prepare=lambda: None)
        run.phase = phase
        for press in presses:
            getattr(run, press)()
        return run.asked

    assert asked("stop") == Phase.STOPPING
    assert asked("stop", "cancel") == asked("cancel", "stop") == Phase.CANCELLING
    assert asked("stop", phase=Phase.DONE) is None


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (59.6, "1:00"), (61, "1:01"), (3599, "59:59"), (3725, "1:02:05")])
def test_clock(seconds: float, text: str) -> None:
    assert clock(seconds) == text


def test_the_backend_starts_without_inkscapes_own_environment() -> None:
    """Inkscape's Python settings never reach the backend; on macOS neither does Inkscape.app's DYLD_* (the
    backend's Python would load Inkscape's libraries) nor its XDG_* folders (huggingface_hub's cache would
    not be the one `clipasso models download` filled). The token goes its own way."""
    from clipasso_client import backend_env

    bundle = "/Users/a/Library/Application Support/org.inkscape.Inkscape"
    environ = {"PYTHONPATH": "/inkscape/share", "PYTHONHOME": "/inkscape", "CLIPASSO_TOKEN": "old",
               "DYLD_LIBRARY_PATH": "/Applications/Inkscape.app/Contents/Resources/lib",
               "XDG_CACHE_HOME": f"{bundle}/cache", "XDG_CONFIG_HOME": "/Users/a/.config", "HOME": "/Users/a"}
    assert backend_env(environ, "darwin") == {"XDG_CONFIG_HOME": "/Users/a/.config", "HOME": "/Users/a"}
    assert backend_env(environ, "linux") == {k: v for k, v in environ.items()
                                             if k not in ("PYTHONPATH", "PYTHONHOME", "CLIPASSO_TOKEN")}


def test_a_file_uri_with_a_host_is_a_network_share_on_windows(monkeypatch) -> None:
    """file://server/share/cat.jpg (a photo on a network share) lost its host: it became \\share\\cat.jpg on
    the current drive. On Windows it is the UNC path; elsewhere the host is dropped, as before."""
    import clipasso_images
    from clipasso_images import ImageError, load_picture

    monkeypatch.setattr(clipasso_images.sys, "platform", "win32")
    with pytest.raises(ImageError, match=r"//server/share/cat\.jpg"):
        load_picture("file://server/share/cat.jpg", "image", [])
