"""End to end in the real Inkscape, headless: install with `clipasso install-inkscape --dir`, run the effect
with `--batch-process` and `.noprefs`, and let the extension start the backend it was installed with (and
show its progress window on the virtual display until the job ends).

`.noprefs` runs with the settings saved in Inkscape's preferences, so the test gives Inkscape a profile
folder of its own (INKSCAPE_PROFILE_DIR) whose preferences.xml points the extension at a free port and
at quick settings; the extension, finding nothing there, starts the recorded backend command on it.
The export is Inkscape SVG (not plain SVG) so that the new layer's label and layer mode can be checked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from extension_support import DATA, INKSCAPE, XVFB_RUN, import_extension, missing, stop_backend
from servers import free_port

import_extension()

import inkex  # noqa: E402

STROKES = 4
#: Inkscape, starting the backend (PyTorch), and one short job; a message dialog would block forever.
INKSCAPE_TIMEOUT_S = 300


#: Line sketch, and Place a job's result.
SKETCH, PLACE = "org.clipasso.sketch", "org.clipasso.place"


def preferences(port: int, effect: str = SKETCH, **extra: object) -> str:
    quick = {"encoder": "lite0", "strokes": STROKES, "iterations": 1} if effect == SKETCH else {}
    settings = {"backend_url": f"http://127.0.0.1:{port}", "timeout": 600, **quick, **extra}
    attributes = " ".join(f'{effect}.{k}="{v}"' for k, v in settings.items())
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        '<inkscape version="1" xmlns:inkscape="http://www.inkscape.org/namespaces/inkscape">\n'
        f'  <group id="extensions" {attributes}/>\n</inkscape>\n'
    )


def run_inkscape(tmp_path: Path, document: str, ids: str, before: str = "", effect: str = SKETCH,
                 port: int | None = None, **settings: object) -> inkex.SvgDocumentElement:
    """Install the extension, run `effect` in Inkscape on a copy of `document` (after Inkscape's `before`
    actions) with `ids` selected, and return the exported document. Without a `port` of a running backend,
    the extension starts the one it was installed with (which is stopped at the end)."""
    if INKSCAPE is None or XVFB_RUN is None:
        missing("Inkscape or xvfb-run is not installed")
    profile, docs = tmp_path / "profile", tmp_path / "docs"
    extensions = profile / "extensions"
    subprocess.run([sys.executable, "-m", "clipasso", "install-inkscape", "--dir", str(extensions)],
                   check=True, capture_output=True, timeout=120)
    started = port is None
    port = free_port() if started else port
    (profile / "preferences.xml").write_text(preferences(port, effect, **settings))
    docs.mkdir()
    for name in (document, "cat.jpg"):
        shutil.copy(DATA / name, docs / name)
    out = tmp_path / "out.svg"
    env = dict(
        os.environ,
        INKSCAPE_PROFILE_DIR=str(profile),
        XDG_DATA_HOME=str(tmp_path / "data"),  # the backend's jobs
        CLIPASSO_OFFLINE="1",
        CLIPASSO_CACHE=str(tmp_path / "cache"),
        OMP_NUM_THREADS="2",
    )
    actions = f"{before}select-by-id:{ids};{effect}.noprefs;export-filename:{out};export-do"
    pid_file = extensions / "clipasso" / "clipasso_backend.pid"
    inkscape = subprocess.Popen(
        [XVFB_RUN, "-a", INKSCAPE, "--with-gui", "--batch-process", f"--actions={actions}", str(docs / document)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        try:
            log = inkscape.communicate(timeout=INKSCAPE_TIMEOUT_S)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(inkscape.pid, signal.SIGKILL)
            inkscape.wait()
            backend_log = extensions / "clipasso" / "clipasso_backend.log"
            pytest.fail(f"Inkscape did not finish in {INKSCAPE_TIMEOUT_S} s (an extension message dialog blocks "
                        f"batch mode); backend log:\n{backend_log.read_text() if backend_log.exists() else '-'}")
        assert inkscape.returncode == 0, log
        # Batch mode with a display (Xvfb here) shows the progress window, which closes by itself at the end.
        assert "no progress window" not in log
        # The extension started the backend it was installed with, on the port from the preferences.
        assert pid_file.exists() == started
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["status"] == "ok"
    finally:
        stop_backend(pid_file)
    return inkex.load_svg(out.read_bytes()).getroot()


def test_inkscape_sketches_a_linked_photo_with_the_installed_extension(tmp_path: Path) -> None:
    svg = run_inkscape(tmp_path, "linked.svg", "cat")
    image = svg.getElementById("cat")
    assert (image.get("x"), image.get("y"), image.get("width"), image.get("height")) == ("10", "20", "240", "160")
    photo_layer = image.getparent()
    layer = photo_layer.getnext()
    assert layer is not None and layer.get("inkscape:groupmode") == "layer"
    assert layer.get("inkscape:label") == f"CLIPasso sketch - {STROKES} strokes - cat.jpg"
    paths = list(layer.iter("{http://www.w3.org/2000/svg}path"))
    assert len(paths) == STROKES
    # Over the image: the result's pixel box (the 120x80 photo) lands on the image's box on the canvas.
    to_canvas = paths[0].composed_transform()
    corners = [tuple(to_canvas.apply_to_point(p)) for p in ((0, 0), (120, 80))]
    assert corners == [pytest.approx((10, 20)), pytest.approx((250, 180))]


def test_inkscape_keeps_the_selected_path_and_makes_a_ladder(tmp_path: Path) -> None:
    """The photo and one of the artist's paths selected, keep and a 2-level ladder: the path stays as it was,
    the new layer has one sub-layer per level, the finest shown."""
    svg = run_inkscape(tmp_path, "mixed.svg", "cat,outline", paths="keep", levels="2,1")
    original = inkex.load_svg(str(DATA / "mixed.svg")).getroot()
    assert svg.getElementById("outline").get("d") == original.getElementById("outline").get("d")
    assert svg.getElementById("layer2").get("transform") == original.getElementById("layer2").get("transform")
    layer = svg.getElementById("layer1").getnext()
    assert layer.get("inkscape:label") == "CLIPasso sketch - 2/1 strokes - cat.jpg"
    levels = [(g.get("inkscape:label"), g.get("style"), len(list(g.iter("{http://www.w3.org/2000/svg}path"))))
              for g in layer]
    assert levels == [("2 strokes", None, 2), ("1 stroke", "display:none", 1)]


def test_inkscape_places_a_jobs_result_from_its_own_menu_item(tmp_path: Path, server_factory) -> None:
    """Extensions > CLIPasso > Place a job's result, with the job's id in its preferences, places that job's
    strokes over the photo (a job id was a field of Line sketch, and stayed set for every later sketch)."""
    server = server_factory(tmp_path / "backend")
    job = httpx.post(f"{server.url}/jobs", files={"image": ("cat.jpg", (DATA / "cat.jpg").read_bytes())},
                     data={"encoder": "lite0", "strokes": "3", "iterations": "1"}, timeout=60).json()["id"]
    svg = run_inkscape(tmp_path, "linked.svg", "cat", effect=PLACE, port=server.port, job_id=job)
    layer = svg.getElementById("cat").getparent().getnext()
    assert layer.get("inkscape:label") == "CLIPasso sketch - 3 strokes - cat.jpg"
    assert len(list(layer.iter("{http://www.w3.org/2000/svg}path"))) == 3


@pytest.mark.parametrize("action, attribute", [("object-set-clip", "clip-path"), ("object-set-mask", "mask")])
def test_inkscape_sends_the_photos_clip_or_mask_as_its_subject(tmp_path: Path, action: str, attribute: str) -> None:
    """Inkscape clips or masks the photo to its right half (Object > Clip > Set Clip, or Mask > Set Mask, with
    a rectangle over it): every stroke ends in that half."""
    svg = run_inkscape(tmp_path, "uncut.svg", "cat", before=f"select-by-id:cat,frame;{action};select-clear;",
                       iterations=3)
    assert svg.getElementById("cat").get(attribute, "").startswith("url(#")  # Inkscape's own clip or mask
    paths = list(svg.getElementById("layer1").getnext().iter("{http://www.w3.org/2000/svg}path"))
    assert len(paths) == STROKES
    for path in paths:  # in the photo's pixels (the group's transform places them): M x0,y0 C ... x3,y3
        ends = list(path.path.end_points)
        assert ends[0].x > 60 - 6 and ends[-1].x > 60 - 6, path.get("d")
