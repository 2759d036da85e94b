"""The extension's progress window and the ties that stop its jobs, run as Inkscape runs the extension.

The extension runs as a process of Inkscape's own Python (/usr/bin/python3 with Inkscape's inkex) against
the real backend on 127.0.0.1, with its window on a virtual X display (Xvfb). The tests find the window by
its title, look at it (screenshots: the photo with black strokes over it), and press its buttons with the
keyboard (their mnemonics), or close it the way a window manager does. What they check is what the user
gets: the document the extension hands back, and the job's state on the backend.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from extension_support import DATA, EXTENSION_DIR, FAST, INKSCAPE_PYTHON, extension_env, import_extension, missing
from PIL import Image
from servers import free_port
from Xlib import X, protocol
from Xlib import display as xdisplay

import_extension()

from inkex.utils import ABORT_STATUS  # noqa: E402

TOOLS = {name: shutil.which(name) for name in ("Xvfb", "xdotool", "import")}
#: A job that runs far longer than these tests take to stop it (its stop rule ends it after ~40 s here).
ENDLESS = ["--encoder=lite0", "--strokes=8", "--iterations=10000"]
#: Bounds of each wait below; they stop a broken test, they are not what is being tested.
WAIT_S = 120.0


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A virtual X display of its own (Xvfb picks a free number and writes it to a pipe when it is ready)."""
    if INKSCAPE_PYTHON is None or not all(TOOLS.values()):
        missing(f"Inkscape's Python, Xvfb, xdotool or ImageMagick's import is missing: {TOOLS}")
    gtk = subprocess.run([INKSCAPE_PYTHON, "-c", "import gi; gi.require_version('Gtk', '3.0')"], capture_output=True)
    if gtk.returncode != 0:
        missing("GTK 3 for Inkscape's Python (python3-gi, gir1.2-gtk-3.0) is missing")
    read, write = os.pipe()
    xvfb = subprocess.Popen([TOOLS["Xvfb"], "-displayfd", str(write), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()  # empty if Xvfb failed to start
    if not number:
        xvfb.kill()
        pytest.fail("Xvfb did not start")
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(30)


def start(url: str, display: str | None, document: str, *args: str, pythonpath: str = "") -> subprocess.Popen:
    """The extension, started as Inkscape starts it, on `display` (None: no display at all)."""
    env = extension_env()
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    if display:
        env["DISPLAY"] = display
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env["PYTHONPATH"]])
    return subprocess.Popen(
        [INKSCAPE_PYTHON, str(EXTENSION_DIR / "clipasso_sketch.py"), *args, f"--backend_url={url}", str(DATA / document)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=EXTENSION_DIR,
    )


def finish(proc: subprocess.Popen) -> tuple[int, bytes, str]:
    """(exit status, the document the extension hands back, what it wrote on stderr)."""
    try:
        out, err = proc.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the extension did not end within {WAIT_S:.0f} s; stderr: {err.decode()}")
    return proc.returncode, out, err.decode()


class Extension:
    """The extension running against the real backend, with what the tests look at: its jobs and its window."""

    def __init__(self, backend, display: str | None, document: str, *args: str, pythonpath: str = "") -> None:
        self.backend = backend
        self.display = display
        self.known = {job["id"] for job in httpx.get(f"{backend.url}/jobs").json()["jobs"]}
        self.proc = start(backend.url, display, document, *args, pythonpath=pythonpath)

    def finish(self) -> tuple[int, bytes, str]:
        return finish(self.proc)

    def jobs(self, count: int = 1) -> list[str]:
        """The ids of the `count` jobs this run submitted, oldest first, once the backend has them all."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            jobs = [j["id"] for j in httpx.get(f"{self.backend.url}/jobs").json()["jobs"] if j["id"] not in self.known]
            if len(jobs) >= count:
                return jobs[::-1]
            assert self.proc.poll() is None, self.proc.communicate()[1].decode()
            time.sleep(0.1)
        pytest.fail(f"the extension did not submit {count} job(s) within {WAIT_S:.0f} s")

    def job(self, job_id: str) -> dict:
        return httpx.get(f"{self.backend.url}/jobs/{job_id}").json()

    def running(self, job_id: str, iterations: int = 1) -> dict:
        """The job's view once it has run `iterations` iterations."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            view = self.job(job_id)
            if view["state"] == "running" and view["iteration"] >= iterations:
                return view
            assert view["state"] in ("queued", "running"), view
            time.sleep(0.1)
        pytest.fail(f"job {job_id} did not reach iteration {iterations} within {WAIT_S:.0f} s")

    # ----- the window ------------------------------------------------------------------------------

    def x(self, *args: str) -> str:
        """Run an X tool on the display; its output."""
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, "DISPLAY": self.display})
        return done.stdout

    def window(self) -> str:
        """The id of the extension's window, once it is shown."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            found = self.x(TOOLS["xdotool"], "search", "--onlyvisible", "--name", "^CLIPasso").split()
            if found:
                return found[0]
            assert self.proc.poll() is None, self.proc.communicate()[1].decode()
            time.sleep(0.1)
        pytest.fail(f"no CLIPasso window appeared within {WAIT_S:.0f} s")

    def screenshot(self, window: str) -> Image.Image:
        png = subprocess.run([TOOLS["import"], "-window", window, "png:-"], capture_output=True, timeout=60,
                             env={**os.environ, "DISPLAY": self.display}).stdout
        return Image.open(io.BytesIO(png)).convert("RGB")

    def strokes_shown(self, window: str, keep: Path) -> Image.Image:
        """A screenshot of the window once strokes show over the photo (saved as `keep` to look at)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            shot = self.screenshot(window)
            if ink(shot) >= 100:
                shot.save(keep)
                return shot
            time.sleep(0.2)
        pytest.fail(f"no strokes appeared in the window within {WAIT_S:.0f} s")

    def press(self, window: str, keys: str) -> None:
        self.x(TOOLS["xdotool"], "windowfocus", "--sync", window)
        self.x(TOOLS["xdotool"], "key", "--clearmodifiers", keys)

    def close(self, window: str) -> None:
        """Ask the window to close as a window manager does (WM_DELETE_WINDOW), which xdotool cannot."""
        conn = xdisplay.Display(self.display)
        target = conn.create_resource_object("window", int(window))
        delete = conn.intern_atom("WM_DELETE_WINDOW")
        target.send_event(protocol.event.ClientMessage(
            window=target, client_type=conn.intern_atom("WM_PROTOCOLS"), data=(32, [delete, X.CurrentTime, 0, 0, 0])))
        conn.sync()  # the server has it before the connection goes
        conn.close()


def ink(shot: Image.Image) -> int:
    """Black pixels in the picture area (the photo is faded, the texts are below it): the strokes drawn."""
    area = shot.crop((0, 0, shot.width, min(shot.height, 330))).convert("L")
    return sum(area.histogram()[:60])


def wait_for_state(extension: Extension, job_id: str, state: str, within: float) -> dict:
    """The job's view once it is in `state`, looked at for `within` seconds at most."""
    deadline = time.monotonic() + within
    while True:
        view = extension.job(job_id)
        if view["state"] == state or time.monotonic() >= deadline:
            return view
        time.sleep(0.1)


def layers(document: bytes) -> list[tuple[str, int]]:
    """The sketch layers in a document: (label, number of strokes)."""
    found = re.findall(rb'inkscape:label="(CLIPasso sketch[^"]*)"(.*?)</g>\s*</g>', document, re.S)
    return [(label.decode(), body.count(b"<path")) for label, body in found]


def test_the_window_shows_strokes_forming_and_stop_and_place_places_them(backend, display, tmp_path) -> None:
    """Two photos, one after the other: Stop and place during the first keeps its best strokes so far, and
    the second, still waiting, is cancelled before it starts and gets nothing."""
    run = Extension(backend, display, "two.svg", "--id=cat", "--id=group", *ENDLESS)
    first, second = run.jobs(2)
    window = run.window()
    assert run.x(TOOLS["xdotool"], "getwindowname", window).strip() == "CLIPasso - Line sketch"
    run.strokes_shown(window, tmp_path / "window.png")
    assert run.job(second)["state"] == "queued" and run.job(second)["queue_position"] == 0
    run.press(window, "alt+s")
    status, document, err = run.finish()
    assert (status, err) == (0, "")
    assert layers(document) == [("CLIPasso sketch - 8 strokes - cat.jpg", 8)]
    stopped, waiting = run.job(first), run.job(second)
    assert stopped["state"] == "cancelled" and stopped["drawn"] and stopped["iteration"] < stopped["iterations"]
    assert waiting["state"] == "cancelled" and waiting["error"] == "cancelled before it started"


@pytest.mark.parametrize("how", ["Cancel", "closing the window"])
def test_cancel_changes_nothing_and_cancels_the_job(backend, display, how: str) -> None:
    run = Extension(backend, display, "linked.svg", "--id=cat", *ENDLESS)
    (job,) = run.jobs()
    window = run.window()
    run.running(job)
    if how == "Cancel":
        run.press(window, "alt+c")
    else:
        run.close(window)
    status, document, err = run.finish()
    assert (status, document, err) == (0, b"", "")  # no document back: Inkscape keeps its own
    assert wait_for_state(run, job, "cancelled", within=WAIT_S)["state"] == "cancelled"


@pytest.mark.parametrize("window", [True, False], ids=["with the window", "without it"])
def test_killing_the_extension_cancels_its_job(backend, display, window: bool) -> None:
    """Inkscape's Cancel, a crash or closing Inkscape kill the extension outright: its job must not go on.
    The backend cancels it because its event stream closed (the job is attached), after a grace of 2 s."""
    run = Extension(backend, display, "linked.svg", "--id=cat", *ENDLESS, f"--window={window}")
    (job,) = run.jobs()
    if window:
        run.window()
    run.running(job)
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(60)
    killed = time.monotonic()
    view = wait_for_state(run, job, "cancelled", within=WAIT_S)
    assert view["state"] == "cancelled", f"job still {view['state']} {time.monotonic() - killed:.1f} s after the kill"
    assert view["error"].endswith("(no client followed this attached job any more)"), view["error"]


@pytest.mark.parametrize("window", [True, False], ids=["with the window", "without it"])
def test_inkscape_gone_cancels_the_job_and_ends_the_extension(backend, display, window: bool) -> None:
    """Inkscape killed, crashed or closed leaves the extension running (Inkscape starts it detached): the
    reader of its standard output is gone, and it cancels its job and ends, window and all. Before, the
    job ran to its end with the window still up."""
    run = Extension(backend, display, "linked.svg", "--id=cat", *ENDLESS, f"--window={window}")
    (job,) = run.jobs()
    if window:
        run.window()
    run.running(job)
    run.proc.stdout.close()  # what Inkscape's end does to the pipe it reads the document from
    run.proc.wait(WAIT_S)  # it ends by itself, having asked the backend to cancel its job
    assert wait_for_state(run, job, "cancelled", within=WAIT_S)["state"] == "cancelled"


@pytest.fixture()
def no_gi(tmp_path) -> str:
    """A folder that shadows PyGObject with a module that fails to import, as in a Python without GTK."""
    (tmp_path / "gi").mkdir()
    (tmp_path / "gi" / "__init__.py").write_text('raise ImportError("No module named \'gi\'")\n')
    return str(tmp_path)


@pytest.mark.parametrize("without", ["a display", "GTK"])
def test_without_a_window_it_waits_and_names_the_live_page(backend, display, no_gi, without: str) -> None:
    """No display (a headless run) or no GTK (a minimal Python): the sketch is placed as before, and stderr
    (which Inkscape shows) has exactly one line: where the backend shows the job live."""
    if without == "a display":
        run = Extension(backend, None, "linked.svg", "--id=cat", *FAST)
        why = "no display to show it on"
    else:
        run = Extension(backend, display, "linked.svg", "--id=cat", *FAST, pythonpath=no_gi)
        why = "GTK 3 cannot be loaded: No module named 'gi'"
    status, document, err = run.finish()
    (job,) = run.jobs()
    assert status == 0 and layers(document) == [("CLIPasso sketch - 4 strokes - cat.jpg", 4)]
    assert err == f"CLIPasso: no progress window ({why}); watch the sketch live at {backend.url}/#job={job}\n"
    assert httpx.get(f"{backend.url}/").status_code == 200 and run.job(job)["state"] == "succeeded"


def test_a_backend_that_does_not_answer_is_one_message_with_the_window_too(display) -> None:
    """The run fails before the window has even been drawn: the window goes, and the message is Inkscape's."""
    status, document, err = finish(start(f"http://127.0.0.1:{free_port()}", display, "linked.svg", "--id=cat"))
    assert (status, document) == (ABORT_STATUS % 256, b"")
    assert err.startswith("The CLIPasso backend does not answer: nothing answers at") and "Traceback" not in err
