"""Click to first strokes: how soon the Inkscape extension's progress window shows the sketch forming.

Starts a real backend (lite0 preloaded, as a backend started by an earlier run is) and a virtual X display,
then `--runs` times: starts the extension as Inkscape does (the system python3 with Inkscape's inkex) on
`examples/chelsea.jpg` with the lite0 encoder, and watches the display by grabbing the window's pixels
every `--poll` seconds until black strokes show over the faded photo. Then it cancels through the window
(Alt+C) and checks the job was cancelled. Prints one JSON object: per run, the seconds from starting the
extension to its job being queued, to its window being shown and to the first strokes drawn in it.
Inkscape's own part of a click (writing the document for the extension) is not included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from PIL import Image
from Xlib import X
from Xlib import display as xdisplay

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "chelsea.jpg"
INKSCAPE_PYTHON = shutil.which("python3", path=os.defpath)
WAIT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inkex_dir() -> Path:
    """Inkscape's bundled extensions folder, as the installed Inkscape reports it."""
    out = subprocess.run(["inkscape", "--system-data-directory"], capture_output=True, text=True, timeout=60)
    return Path(out.stdout.strip()) / "extensions"


def start_display() -> tuple[subprocess.Popen, str]:
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        return xvfb, f":{pipe.readline().strip()}"


def find_window(conn: xdisplay.Display) -> object | None:
    """The extension's window (title CLIPasso...), if it is mapped."""
    for child in conn.screen().root.query_tree().children:
        name = child.get_wm_name()
        if name and name.startswith("CLIPasso") and child.get_attributes().map_state == X.IsViewable:
            return child
    return None


def black_pixels(window) -> int:
    """Black pixels in the window's picture area (the photo is faded; the texts are below it)."""
    geometry = window.get_geometry()
    height = min(geometry.height, 330)
    raw = window.get_image(0, 0, geometry.width, height, X.ZPixmap, 0xFFFFFFFF)
    image = Image.frombytes("RGB", (geometry.width, height), raw.data, "raw", "BGRX").convert("L")
    return sum(image.histogram()[:60])


def one_run(url: str, display: str, document: Path, poll: float) -> dict:
    env = dict(os.environ, DISPLAY=display, PYTHONPATH=str(inkex_dir()))
    conn = xdisplay.Display(display)
    clicked_wall, clicked = time.time(), time.perf_counter()
    extension = subprocess.Popen(
        [INKSCAPE_PYTHON, str(ROOT / "inkscape_extension" / "clipasso_sketch.py"), "--id=photo", "--encoder=lite0",
         f"--backend_url={url}", str(document)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT / "inkscape_extension",
    )
    shown = strokes = None
    window = None
    while strokes is None and time.perf_counter() - clicked < WAIT_S and extension.poll() is None:
        if window is None:
            window = find_window(conn)
            if window is not None:
                shown = time.perf_counter() - clicked
        elif black_pixels(window) >= 100:
            strokes = time.perf_counter() - clicked
        time.sleep(poll)
    job = httpx.get(f"{url}/jobs").json()["jobs"][0]
    queued = datetime.fromisoformat(job["created"].replace("Z", "+00:00")).timestamp() - clicked_wall
    subprocess.run(["xdotool", "windowfocus", "--sync", str(window.id), "key", "--clearmodifiers", "alt+c"],
                   env=env, timeout=60, check=True)
    extension.communicate(timeout=WAIT_S)
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/jobs/{job['id']}").json()["state"] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.1)
    conn.close()
    return {
        "to_job_queued_s": round(queued, 2),
        "to_window_s": round(shown, 2) if shown is not None else None,
        "to_first_strokes_s": round(strokes, 2) if strokes is not None else None,
        "job_cancelled_after": httpx.get(f"{url}/jobs/{job['id']}").json()["state"] == "cancelled",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between looks at the window")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clipasso-bench-") as tmp:
        document = Path(tmp) / "photo.svg"
        document.write_text(
            '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="451" '
            f'height="300"><image id="photo" width="451" height="300" xlink:href="{PHOTO}"/></svg>'
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, CLIPASSO_OFFLINE="1")
        with open(Path(tmp) / "server.log", "wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "clipasso", "serve", "--port", str(port), "--data-dir",
                                       str(Path(tmp) / "data"), "--preload", "lite0"], stdout=log,
                                      stderr=subprocess.STDOUT, env=env)
        xvfb, display = start_display()
        try:
            deadline = time.monotonic() + WAIT_S
            # Ready as after an earlier run: answering, with lite0 loaded (the worker logs it).
            while "preloaded" not in (Path(tmp) / "server.log").read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start:\n{(Path(tmp) / 'server.log').read_text()}")
                time.sleep(0.2)
            runs = [one_run(url, display, document, args.poll) for _ in range(args.runs)]
        finally:
            server.terminate()
            server.wait(60)
            xvfb.terminate()
            xvfb.wait(30)
    firsts = [r["to_first_strokes_s"] for r in runs if r["to_first_strokes_s"] is not None]
    print(json.dumps({
        "benchmark": "window",
        "photo": PHOTO.name,
        "encoder": "lite0",
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "runs": runs,
        "median_click_to_first_strokes_s": statistics.median(firsts) if firsts else None,
    }, indent=1))
    return 0 if len(firsts) == args.runs and all(r["job_cancelled_after"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
