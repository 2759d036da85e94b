"""The backend against a hostile web page and an unlucky disk: a real `clipasso serve` on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from PIL import Image
from disks import fill, tmpfs
from images_support import huge_png
from servers import SERVE, ServerProcess, wait_for

from clipasso.images import DECODE_BUDGET, WORKING_SIDE

QUICK = {"encoder": "lite0", "strokes": "4", "iterations": "2"}
ENDLESS = {"encoder": "lite0", "strokes": "4", "iterations": "10000"}


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory) -> Iterator[ServerProcess]:
    started = server_factory(tmp_path_factory.mktemp("hardening") / "data")
    yield started
    started.stop()


def submit(client: httpx.Client, png: bytes, **extra) -> httpx.Response:
    return client.post("/jobs", files={"image": ("photo.png", png, "image/png")}, **extra)


def test_web_pages_cannot_drive_the_backend(server, server_photo_png):
    port = server.port
    with server.client() as client:
        before = len(client.get("/jobs").json()["jobs"])
        cross_site = submit(client, server_photo_png, data=QUICK, headers={"Origin": "https://evil.example"})
        assert cross_site.status_code == 403
        assert cross_site.json() == {"error": "refused: requests from web pages of other origins are not accepted"}
        rebound = client.get("/jobs", headers={"Host": f"rebind.evil.example:{port}"})
        assert rebound.status_code == 403 and "not 'rebind.evil.example:" in rebound.json()["error"]
        lookalike = client.get("/health", headers={"Host": f"127.evil.example:{port}"})
        assert lookalike.status_code == 403
        assert len(client.get("/jobs").json()["jobs"]) == before
        # What the extension, curl and the server's own page send is accepted.
        for headers in ({}, {"Host": f"localhost:{port}"}, {"Origin": f"http://127.0.0.1:{port}"}):
            assert client.get("/health", headers=headers).status_code == 200, headers
        assert client.head("/").status_code == 200


def test_a_text_field_over_the_svg_limit_is_one_line(server, server_photo_png):
    """Starlette stops a form field at FORM_LIMITS' part size; its message becomes one that names the limit."""
    with server.client() as client:
        response = client.post("/jobs", files={"image": ("p.png", server_photo_png)}, data={"keep": "x" * 2_100_000})
    assert response.status_code == 400
    assert response.json() == {"error": "a text field is over 2 MB; the SVGs of keep, refine and subject may "
                                        "hold at most that"}


def test_uploads_are_decoded_once_and_kept_small(server, server_photo_png):
    """The job keeps the upload decoded, as a PNG at working size, never the upload's bytes; the job's
    size stays the upload's, for the strokes' coordinates."""
    photo = Image.open(io.BytesIO(server_photo_png)).convert("RGB").resize((3000, 2000))
    upload = io.BytesIO()
    photo.save(upload, format="JPEG", quality=90)
    with server.client() as client:
        response = client.post("/jobs", files={"image": ("photo.jpg", upload.getvalue(), "image/jpeg")}, data=QUICK)
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["width"], job["height"]) == (3000, 2000)
    folder = server.data_dir / "jobs" / job["id"]
    kept = (folder / "photo.png").read_bytes()
    assert kept != upload.getvalue()
    with Image.open(io.BytesIO(kept)) as stored:
        assert stored.format == "PNG" and stored.size == (WORKING_SIDE, round(WORKING_SIDE * 2000 / 3000))
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) in (
        ["job.json", "photo.png"], ["job.json", "photo.png", "preview.svg"],
        ["job.json", "photo.png", "preview.svg", "result.svg"], ["job.json", "photo.png", "result.svg"])
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {"0o600"}


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")


@needs_root
def test_a_full_disk_degrades_the_server_and_it_recovers(server_factory, tmp_path, server_photo_png):
    """... and the log lines it cannot write are dropped, not printed with a traceback each (1,100 lines a
    minute while a job ran)."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        (tmp_path / "data").symlink_to(disk)  # the server's own output goes beside the link, off the tmpfs
        server = server_factory(tmp_path / "data")
        with server.client() as client:
            running = submit(client, server_photo_png, data=ENDLESS).json()
            wait_for(lambda: client.get(f"/jobs/{running['id']}").json()["iteration"] > 0, "the job to run")
            with open(disk / "serve.log", "a") as log:  # to the end of its last page: the next line needs a new one
                log.write(" " * (-(log.tell() + 1) % 4096) + "\n")
            filler = fill(disk)
            health = wait_for(lambda: (h := client.get("/health").json())["status"] == "degraded" and h,
                              "the failed checkpoint to show in /health")
            assert "No space left on device" in health["problem"]
            full = submit(client, server_photo_png, data=QUICK)
            assert full.status_code == 507 and "No space left on device" in full.json()["error"]

            client.delete(f"/jobs/{running['id']}")  # its result cannot be written now
            ended = wait_for(lambda: (v := client.get(f"/jobs/{running['id']}").json())["state"] != "running" and v,
                             "the cancelled job to end")
            assert ended["state"] == "failed" and "the result could not be saved" in ended["error"]

            filler.unlink()  # space again: the state reaches the disk and new jobs run
            wait_for(lambda: client.get("/health").json()["status"] == "ok", "/health to be ok again")
            record = json.loads((disk / "jobs" / running["id"] / "job.json").read_text())
            assert record["state"] == "failed"
            again = submit(client, server_photo_png, data=QUICK).json()
            done = wait_for(lambda: (v := client.get(f"/jobs/{again['id']}").json())["state"] in
                            ("succeeded", "failed") and v, "a new job after the disk was freed")
            assert done["state"] == "succeeded"
        server.stop()
    assert "Logging error" not in server.output.read_text()


@needs_root
def test_health_finds_a_full_disk_before_any_job_does(server_factory, tmp_path):
    """/health writes to the data folder to know it can take a job: no job's checkpoint need fail first."""
    with tmpfs(tmp_path / "disk", "4m") as disk:
        server = server_factory(disk / "data")
        with server.client() as client:
            assert client.get("/health").json()["status"] == "ok"
            filler = fill(disk)
            health = wait_for(lambda: (h := client.get("/health").json())["status"] == "degraded" and h,
                              "/health to find the disk full (it looks every 2 s at most)")
            assert "No space left on device" in health["problem"]
            filler.unlink()
            wait_for(lambda: client.get("/health").json()["status"] == "ok", "/health to be ok again")
        server.stop()


def test_the_log_and_the_lock_are_the_users_alone_in_a_folder_of_others(server_factory, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    (shared / "serve.log").write_text("an older server's line\n")
    (shared / "serve.lock").write_text("")
    for name in ("serve.log", "serve.lock"):
        (shared / name).chmod(0o644)
    server = server_factory(shared)
    assert {name: (shared / name).stat().st_mode & 0o777 for name in ("serve.log", "serve.lock")} == {
        "serve.log": 0o600, "serve.lock": 0o600}
    assert (shared / "serve.log").read_text().startswith("an older server's line\n")
    server.stop()


def test_a_log_linked_elsewhere_is_left_as_it_is(server_factory, tmp_path):
    """serve.log -> /dev/null (a container's way to drop it): the link's target keeps its mode."""
    elsewhere = tmp_path / "elsewhere.log"
    elsewhere.write_text("")
    elsewhere.chmod(0o644)
    data = tmp_path / "data"
    data.mkdir()
    (data / "serve.log").symlink_to(elsewhere)
    server = server_factory(data)
    assert elsewhere.stat().st_mode & 0o777 == 0o644 and (data / "serve.log").is_symlink()
    server.stop()


@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:x"])
def test_an_unknown_device_is_one_line(tmp_path, device):
    """Before, torch's own error for 'tpu' was a traceback, and 'meta' started a server whose every job failed."""
    done = subprocess.run([*SERVE, "--data-dir", str(tmp_path / "data"), "--port", "0", "--device", device],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"clipasso: error: unknown device '{device}'; choose auto, cpu, cuda, cuda:N or mps"]


@needs_root
def test_a_read_only_data_folder_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        done = subprocess.run([*SERVE, "--data-dir", str(folder), "--port", "0"], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"clipasso: error: cannot write to the data folder {folder}: Read-only file system"]


def test_a_second_server_on_the_same_data_folder_is_refused(server):
    """It would take the first one's running job for a crash's and run its queue again."""
    done = subprocess.run([*SERVE, "--data-dir", str(server.data_dir), "--port", "0"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [  # where the first answers: the extension passes that on
        f"clipasso: error: another `clipasso serve` (at {server.url}) uses the data folder {server.data_dir}; use "
        "that one, stop it, or give this one its own --data-dir"]
    with server.client() as client:
        assert client.get("/health").json()["status"] == "ok"


def test_weights_that_are_not_there_are_refused_at_start(tmp_path):
    """With encoder auto a mistyped --weights would pass as CLIP being unavailable, and jobs run lite0."""
    done = subprocess.run([*SERVE, "--data-dir", str(tmp_path / "data"), "--port", "0", "--weights",
                           str(tmp_path / "RN101.pt")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"clipasso: error: weights: {tmp_path / 'RN101.pt'}: no such file"]


@pytest.mark.parametrize("token", [" " * 16, "short", "sixteen chars but spaces"])
def test_weak_tokens_are_refused(token):
    done = subprocess.run([*SERVE, "--token", token, "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--token must be at least 16 characters without spaces" in done.stderr


def test_ten_worst_case_uploads_at_once_stay_within_the_decode_budget(server_factory, tmp_path, worst_png):
    """Ten 100-megapixel RGB PNGs of a few hundred kilobytes each, sent together: each decodes once, band by
    band, within the shared budget, and the server's peak memory grows by about that budget, not ten decodes."""
    server = server_factory(tmp_path / "data")
    with server.client() as client:
        # The worker sketches all along (its memory steady), so that what grows is the decoding.
        busy = submit(client, worst_png, data=ENDLESS).json()
        wait_for(lambda: client.get(f"/jobs/{busy['id']}").json()["iteration"] >= 5, "the worker to be busy")
        before = _peak_rss(server.proc.pid)
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: submit(client, worst_png, data=QUICK), range(10)))
    # On a connection of its own: the pool's, idle since their uploads ended, may be the very ones the
    # server is closing after its 5-s keep-alive (a reused one was reset by the server once in CI).
    with server.client() as client:
        client.delete(f"/jobs/{busy['id']}")
    assert [a.status_code for a in answers] == [202] * 10, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 10
    grew = _peak_rss(server.proc.pid) - before
    server.stop()
    # About the shared budget's worth of PNG bands (150 MB here), not one whole decode (375 MB before).
    assert grew < DECODE_BUDGET + 150e6, f"peak memory grew by {grew / 1e6:.0f} MB"


def _peak_rss(pid: int) -> float:
    """The process's peak resident memory so far (Linux: VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def worst_png() -> bytes:
    return huge_png(10_000, 10_000, "RGB")


if sys.platform != "linux":
    pytestmark = pytest.mark.skip(reason="reads /proc and mounts tmpfs")


def test_private_files_without_posix_owners(tmp_path, monkeypatch):
    """Python 3.13 has os.fchmod on Windows too, but no os.getuid: making serve.log private raised
    AttributeError there, and serve did not start."""
    from clipasso.server import command

    monkeypatch.delattr(os, "getuid")
    command._private(tmp_path / "serve.log")  # no owner to compare: left as it is
    assert (tmp_path / "serve.log").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has no open-files limit to raise")
def test_serve_raises_its_open_files_limit():
    """Each connection holds a file: 1,100 half-sent requests under a desktop's usual 1,024 kept the server
    from accepting any. Started with 256, it takes what the hard limit allows, up to 65,536."""
    import resource

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    code = ("import resource; from clipasso.server.command import _more_open_files, OPEN_FILES, MACOS_OPEN_MAX; "
            "_more_open_files(); soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
            "print(soft, hard, MACOS_OPEN_MAX if __import__('sys').platform == 'darwin' else OPEN_FILES)")
    done = subprocess.run([sys.executable, "-c", code], preexec_fn=low, capture_output=True, text=True, timeout=120)
    soft, hard, most = (int(v) for v in done.stdout.split())
    assert soft == (most if hard == resource.RLIM_INFINITY else min(hard, most)) and soft > 256
