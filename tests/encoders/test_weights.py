"""CLIP weights from the Hugging Face Hub, against a stand-in of the hub's file endpoint on 127.0.0.1.

huggingface_hub itself does the download (cache, resume, progress, locking); these tests check what we
add and what a user meets: verification against the hub's SHA-256, `auto`'s choice and its reason, the
fallback source, `clipasso models`, and one-line errors. The weights are random: nothing here judges a
sketch.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from huggingface_hub import constants as hub_constants
from hub import HubServer, save_random_open_clip, sha256_of
from tiny_clip import save_tiny_clip

from clipasso.encoders import weights
from clipasso.encoders.weights import (
    HUB_WEIGHTS,
    WeightsUnavailable,
    cache_dir,
    clip_weights_status,
    readiness,
    resolve_clip_weights,
)
from clipasso.options import CLIP_ARCHS

with warnings.catch_warnings():  # clip-anytorch imports the deprecated pkg_resources
    warnings.simplefilter("ignore")
    from clip.clip import _MODELS

RN101 = HUB_WEIGHTS["RN101"]
RN50 = HUB_WEIGHTS["RN50"]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def rn101_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight RN101 in open_clip's layout, as the hub holds OpenAI's (479 MB)."""
    return save_random_open_clip("RN101", tmp_path_factory.mktemp("hubfiles") / "open_clip_model.safetensors")


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bytes that stand in for RN50's weights where only the download is under test."""
    path = tmp_path_factory.mktemp("hubfiles") / "small.bin"
    path.write_bytes(os.urandom(3 << 20))
    return path


@pytest.fixture()
def hub(rn101_file: Path, small_file: Path) -> Iterator[HubServer]:
    server = HubServer()
    server.add_hub_file(RN101.repo_id, RN101.filename, rn101_file)
    server.add_hub_file(RN50.repo_id, RN50.filename, small_file)
    yield server
    server.close()


@pytest.fixture()
def env(tmp_path: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A user's environment with empty caches and the stand-in hub as HF_ENDPOINT, in this process too."""
    values = {"HF_HOME": str(tmp_path / "hf"), "CLIPASSO_CACHE": str(tmp_path / "clipasso"), "HF_ENDPOINT": hub.url}
    for name in ("CLIPASSO_OFFLINE", "HF_HUB_OFFLINE", "CLIPASSO_CLIP_WEIGHTS", "CLIPASSO_CLIP_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(weights, "_FAILED_DOWNLOADS", {})  # no failure remembered from another test
    return {k: v for k, v in os.environ.items() if k not in ("CLIPASSO_OFFLINE", "HF_HUB_OFFLINE")} | values


def clipasso(*args: str, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipasso", *args], env={**env, **extra}, capture_output=True,
                          text=True, timeout=600)


def blobs(env: dict[str, str], hub_file) -> list[Path]:
    folder = Path(env["HF_HOME"]) / "hub" / f"models--{hub_file.repo_id.replace('/', '--')}" / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


# --- through the real command line ------------------------------------------------------------------


def test_download_then_sketch_with_the_network_gone(env, hub, rn101_file, tmp_path, server_photo_png):
    done = clipasso("models", "download", "clip:RN101", env=env)
    assert done.returncode == 0, done.stderr
    assert [b.name for b in blobs(env, RN101)] == [sha256_of(rn101_file)]
    listed = {m["name"]: m for m in json.loads(clipasso("models", "--json", env=env).stdout)}
    assert listed["clip:RN101"]["state"] == "cached" and listed["clip:RN101"]["ready"] is True
    assert listed["clip:RN101"]["size"] == rn101_file.stat().st_size
    assert listed["lite0"]["state"] == "built in" and listed["clip:RN50"]["state"] == "downloadable"

    hub.close()  # the network is gone
    photo = tmp_path / "photo.png"
    photo.write_bytes(server_photo_png)
    gone = {"HF_ENDPOINT": closed_port_url(), "HF_HUB_OFFLINE": "1"}
    auto = clipasso("sketch", str(photo), "-o", str(tmp_path / "b.svg"), "--strokes", "4", "--iterations", "1",
                    "--json", env=env, **gone)
    assert auto.returncode == 0, auto.stderr
    assert json.loads(auto.stdout)["encoder"] == "clip:RN101"
    assert "encoder clip:RN101 (CLIP RN101 weights: " in auto.stderr  # auto chose it, offline, from the cache


def test_one_ctrl_c_stops_a_download(env, hub, small_file, tmp_path, server_photo_png):
    """Before the first step there are no strokes to keep: Ctrl-C ends the run at once (it took a second
    Ctrl-C, or the whole download). The download was said first, and leaves nothing in the cache."""
    hub.add_hub_file(RN50.repo_id, RN50.filename, small_file, pace=0.5)  # 3 MB in about 24 s
    photo = tmp_path / "photo.png"
    photo.write_bytes(server_photo_png)
    svg = tmp_path / "o.svg"
    run = subprocess.Popen([sys.executable, "-m", "clipasso", "sketch", str(photo), "-o", str(svg),
                            "--encoder", "clip:RN50", "--strokes", "2"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        said = run.stderr.readline()
        assert said == f"clipasso: downloading the CLIP RN50 weights from {hub.url.split('//')[1]} (about 408 MB)\n"
        run.send_signal(signal.SIGINT)
        rest = run.communicate(timeout=60)[1]
    finally:
        run.kill()
    assert run.returncode == 130 and rest.splitlines()[-1] == "clipasso: interrupted", rest
    assert not svg.exists() and blobs(env, RN50) == []


def test_a_corrupt_download_is_refused_and_leaves_the_cache(env, hub, small_file):
    """The stand-in advertises one SHA-256 and serves other bytes of the same size (huggingface_hub alone
    would cache them)."""
    hub.add_hub_file(RN50.repo_id, RN50.filename, small_file, advertise="ab" * 32)
    done = clipasso("models", "download", "clip:RN50", env=env)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("clipasso: error: CLIP RN50 weights from 127.0.0.1:") and "are corrupt" in message
    assert "removed from the cache" in message and "Traceback" not in done.stderr
    assert blobs(env, RN50) == []
    snapshots = Path(env["HF_HOME"]) / "hub" / "models--timm--resnet50_clip.openai" / "snapshots"
    assert not any(p.is_file() for p in snapshots.rglob("*"))


def test_a_cache_without_symlinks_is_verified_and_used_offline(env, hub, small_file):
    """Where huggingface_hub cannot make symlinks (Windows without developer mode) the file is not named
    after its SHA-256: the one the hub advertised is asked for and recorded, so the file is verified once
    and then used offline (before, it was refused as unverifiable, forever)."""
    flat = {"HF_HUB_DISABLE_SYMLINKS": "1", "HF_HUB_DISABLE_SYMLINKS_WARNING": "1"}
    done = clipasso("models", "download", "clip:RN50", env=env, **flat)
    assert done.returncode == 0, done.stderr
    snapshot = next((Path(env["HF_HOME"]) / "hub" / "models--timm--resnet50_clip.openai" / "snapshots").rglob(
        RN50.filename))
    assert not snapshot.is_symlink() and sha256_of(snapshot) == sha256_of(small_file)
    records = Path(env["CLIPASSO_CACHE"]) / "verified"
    for record in records.glob("path-*"):  # as a cache made before, or copied from another machine
        record.unlink()
    again = clipasso("models", "download", "clip:RN50", env=env, **flat)  # online: the hub is asked
    assert again.returncode == 0, again.stderr
    hub.close()
    offline = clipasso("models", "download", "clip:RN50", env=env, HF_HUB_OFFLINE="1", **flat)
    assert offline.returncode == 0, offline.stderr
    for record in records.glob("path-*"):
        record.unlink()
    unknown = clipasso("models", "download", "clip:RN50", env=env, HF_HUB_OFFLINE="1", **flat)
    assert unknown.returncode == 2 and "connect once without HF_HUB_OFFLINE=1" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and snapshot.is_file()  # kept, to be checked later


def test_two_processes_fetching_at_once_end_with_one_good_copy(env, hub, small_file):
    """The file is sent slowly (about 12 s), so that the second process asks while the first downloads; it
    waits for that download instead of fetching the file again."""
    hub.add_hub_file(RN50.repo_id, RN50.filename, small_file, pace=0.25)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: clipasso("models", "download", "clip:RN50", env=env), range(2)))
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    # One download, and every request of both processes came before it ended: the second process asked
    # while the first downloaded, and waited for that file instead of fetching it again.
    assert hub.sent_after == [len(hub.requests)], hub.requests
    assert [method for method, _ in hub.requests].count("GET") == 1
    assert [b.name for b in blobs(env, RN50)] == [sha256_of(small_file)]
    assert sha256_of(blobs(env, RN50)[0]) == sha256_of(small_file)


def test_auto_falls_back_to_lite0_when_the_hub_is_unreachable(env, tmp_path, server_photo_png):
    photo = tmp_path / "photo.png"
    photo.write_bytes(server_photo_png)
    ran = clipasso("sketch", str(photo), "-o", str(tmp_path / "a.svg"), "--strokes", "4", "--iterations", "1",
                   "--json", env=env, HF_ENDPOINT=closed_port_url())
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["encoder"] == "lite0"
    assert "encoder lite0, the built-in offline encoder (CLIP RN101 weights are not in the cache and" in ran.stderr
    assert "cannot be reached (connection refused)" in ran.stderr


def test_auto_runs_lite0_when_the_download_fails_and_waits_before_trying_again(env, hub, small_file):
    """A failed download under auto is the built-in encoder with the reason, not an error; and a service's
    next jobs do not each fetch hundreds of MB to fail again. Asked for by name, it is tried again."""
    from clipasso.encoders import load_encoder

    hub.add_hub_file(RN50.repo_id, RN50.filename, small_file, advertise="ab" * 32)
    encoder, reason = load_encoder("auto", "cpu", preferred="clip:RN50")
    assert encoder.name == "lite0" and reason.startswith("encoder lite0, the built-in offline encoder (CLIP RN50")
    assert "are corrupt" in reason
    asked = len(hub.requests)
    encoder, reason = load_encoder("auto", "cpu", preferred="clip:RN50")
    assert encoder.name == "lite0" and "their download failed 0 min ago" in reason and len(hub.requests) == asked
    with pytest.raises(WeightsUnavailable, match="are corrupt"):
        load_encoder("clip:RN50", "cpu")
    assert len(hub.requests) > asked


def test_offline_without_weights_is_one_line(env, tmp_path, server_photo_png):
    photo = tmp_path / "photo.png"
    photo.write_bytes(server_photo_png)
    ran = clipasso("sketch", str(photo), "-o", str(tmp_path / "a.svg"), "--encoder", "clip:RN101", env=env,
                   CLIPASSO_OFFLINE="1")
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1
    assert "not in the cache and CLIPASSO_OFFLINE=1" in ran.stderr
    assert "clipasso models download clip:RN101" in ran.stderr
    assert not (tmp_path / "a.svg").exists()
    listed = clipasso("models", env=env, HF_HUB_OFFLINE="1")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["lite0", "built", "in"]
    assert any(line.startswith("clip:RN101") and "unavailable" in line and "HF_HUB_OFFLINE=1" in line for line in lines)


@pytest.mark.parametrize("content, says", [
    (b"these are not weights", "not a CLIP checkpoint PyTorch can read"),
    # a .pt that is no checkpoint: not torch's advice to load it unsafely, nor its warning about the pickle
    (("photo.pt", b"\xff\xd8\xff\xe0 a JPEG"), "not a CLIP checkpoint (a pickle of more than tensors, or not a PyTorch"),
    (("list.pt", pickle.dumps({"a": [1, 2]}, protocol=4)), "not a CLIP checkpoint (a pickle of more than tensors"),
    ("truncated", "not a complete safetensors file"),
    ("other-arch", "holds a CLIP ResNet with blocks 1-1-1-1, width 8, 224 px, not CLIP RN101"),
])
def test_a_bad_weights_file_is_one_line(env, tmp_path, server_photo_png, content, says):
    bad = tmp_path / (content[0] if isinstance(content, tuple) else "bad.safetensors")
    if isinstance(content, tuple):
        bad.write_bytes(content[1])
    elif content == "truncated":
        whole = tmp_path / "tiny.safetensors"
        save_tiny_clip(whole, "RN", safetensors=True)
        bad.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    elif content == "other-arch":
        save_tiny_clip(bad, "RN", safetensors=True)
    else:
        bad.write_bytes(content)
    photo = tmp_path / "photo.png"
    photo.write_bytes(server_photo_png)
    ran = clipasso("sketch", str(photo), "-o", str(tmp_path / "a.svg"), "--encoder", "clip:RN101", "--weights",
                   str(bad), env=env)
    assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1, ran.stderr
    assert str(bad) in ran.stderr and says in ran.stderr


# --- in this process --------------------------------------------------------------------------------


def test_status_says_why_for_each_way_it_can_fail(env, hub, monkeypatch):
    ok, why = clip_weights_status("RN101")
    assert ok and why.endswith(f"will be downloaded from 127.0.0.1:{hub.url.rsplit(':', 1)[1]}/{RN101.repo_id} "
                               "(about 479 MB)")
    hub.files.clear()
    assert clip_weights_status("RN101") == (False, "CLIP RN101 weights are not in the cache and "
                                                   f"{hub.url[7:]} answered HTTP 404 for them")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert clip_weights_status("RN101") == (False, "CLIP RN101 weights are not in the cache and HF_HUB_OFFLINE=1")
    assert not any(path.startswith("/timm/") for _, path in hub.requests[2:])  # offline asked nothing


def test_a_named_file_wins_and_is_not_downloaded(env, tmp_path, monkeypatch):
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"mine")
    assert resolve_clip_weights("RN101", str(mine)) == mine
    monkeypatch.setenv("CLIPASSO_CLIP_WEIGHTS", str(mine))
    assert resolve_clip_weights("RN101") == mine
    assert clip_weights_status("RN101") == (True, f"CLIP RN101 weights: {mine}")
    with pytest.raises(WeightsUnavailable, match="missing.pt: no such file"):
        resolve_clip_weights("RN101", tmp_path / "missing.pt")


def test_a_file_corrupted_in_the_cache_is_caught_before_use(env, small_file):
    path = resolve_clip_weights("RN50")
    assert path.read_bytes() == small_file.read_bytes()
    blob = path.resolve()
    blob.write_bytes(b"x" * blob.stat().st_size)  # same size, other bytes: the record no longer vouches
    (cache_dir() / "verified" / blob.name).unlink()
    with pytest.raises(WeightsUnavailable, match="in the cache are corrupt"):
        resolve_clip_weights("RN50")
    assert not blob.exists()


def test_the_fallback_source_is_verified_too(env, hub, tmp_path, monkeypatch):
    """With the hub answering 404, OpenAI's URL (here a stand-in) is tried; its SHA-256 is the table's."""
    hub.files.clear()
    good = save_tiny_clip(tmp_path / "RN50.pt", "RN")
    digest = sha256_of(good)
    hub.add(f"/openai/{digest}/RN50.pt", good)
    monkeypatch.setattr(weights, "OPENAI_URLS", {"RN50": f"https://openai.example/clip/{digest}/RN50.pt"})
    monkeypatch.setenv("CLIPASSO_CLIP_BASE_URL", f"{hub.url}/openai")
    path = resolve_clip_weights("RN50")
    assert path == cache_dir() / "RN50.pt" and path.read_bytes() == good.read_bytes()

    monkeypatch.setattr(weights, "OPENAI_URLS", {"RN50": f"https://openai.example/clip/{'0' * 64}/RN50.pt"})
    hub.add(f"/openai/{'0' * 64}/RN50.pt", good)
    path.unlink()
    with pytest.raises(WeightsUnavailable) as info:
        resolve_clip_weights("RN50")
    assert "HTTP 404" in str(info.value) and "sent a corrupt file" in str(info.value)
    assert list(cache_dir().glob("RN50.pt*")) == [cache_dir() / "RN50.pt.lock"]


def test_readiness_asks_no_network(env, hub):
    states = {s.name: s for s in readiness()}
    assert states["lite0"].ready and not states["clip:RN101"].ready
    assert states["clip:RN101"].state == "downloadable" and hub.requests == []


def test_a_named_weights_file_that_is_not_there(env, tmp_path, monkeypatch, capsys):
    """$CLIPASSO_CLIP_WEIGHTS is checked as --weights is: listed unavailable, refused at the start in one line."""
    from clipasso.cli import main

    monkeypatch.setenv("CLIPASSO_CLIP_WEIGHTS", str(tmp_path / "RN101.pt"))
    states = {s.name: s for s in readiness()}
    assert states["clip:RN101"].state == "unavailable" and "RN101.pt: no such file" in states["clip:RN101"].detail
    assert main(["sketch", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "out.svg")]) == 2
    assert capsys.readouterr().err == f"clipasso: error: CLIPASSO_CLIP_WEIGHTS: {tmp_path / 'RN101.pt'}: no such file\n"
    # the built-in encoder needs none: the photo's own problem is what is said
    assert main(["sketch", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "out.svg"), "--encoder", "lite0"]) == 2
    assert "CLIPASSO_CLIP_WEIGHTS" not in capsys.readouterr().err


def test_a_download_is_told_to_the_sketch_before_it_starts(env, hub, monkeypatch, server_photo_png):
    """The service shows it as the job's `activity`: a running job at iteration 0 for minutes said nothing."""
    import io

    from PIL import Image

    from clipasso.encoders import registry
    from clipasso.engine.optimise import SketchRequest, sketch_batch
    from clipasso.options import SketchOptions

    monkeypatch.setattr(registry, "_LOADED", {})
    photo = Image.open(io.BytesIO(server_photo_png)).convert("RGB")
    options = SketchOptions(encoder="clip:RN101", strokes=2, iterations=1, device="cpu")
    heard: list[str] = []
    outcome = sketch_batch([SketchRequest(photo, options, on_activity=heard.append)])[0]
    assert not isinstance(outcome, Exception), outcome
    assert heard == [f"downloading the CLIP RN101 weights from {hub.url.split('//')[1]} (about 479 MB)"]
    heard.clear()
    sketch_batch([SketchRequest(photo, options, on_activity=heard.append)])  # loaded now: nothing to wait for
    assert heard == []


def test_the_service_reports_readiness_and_runs_clip_jobs(env, hub, small_file, server_factory, server_photo_png,
                                                          tmp_path):
    hub.add_hub_file(RN50.repo_id, RN50.filename, small_file, advertise="cd" * 32)
    server = server_factory(tmp_path / "data")
    with server.client() as client:
        models = {m["name"]: m for m in client.get("/health").json()["models"]}
        assert models["lite0"]["ready"] and models["clip:RN101"]["state"] == "downloadable"
        assert "path" not in models["lite0"]  # no file paths leave the machine

        def run(encoder: str) -> dict:
            job = client.post("/jobs", files={"image": ("photo.png", server_photo_png, "image/png")},
                              data={"encoder": encoder, "strokes": "4", "iterations": "1"}).json()
            for _ in range(600):  # bounded: at most 10 minutes on a loaded machine
                view = client.get(f"/jobs/{job['id']}").json()
                if view["state"] in ("succeeded", "failed", "cancelled"):
                    return view
                time.sleep(1)
            raise AssertionError(f"job {job['id']} did not finish")

        corrupt = run("clip:RN50")
        assert corrupt["state"] == "failed" and "are corrupt" in corrupt["error"]
        good = run("clip:RN101")
        assert good["state"] == "succeeded" and good["encoder"] == "clip:RN101"
        models = {m["name"]: m for m in client.get("/health").json()["models"]}
        assert models["clip:RN101"]["state"] == "cached" and models["clip:RN50"]["state"] == "downloadable"
    server.stop()


@pytest.mark.parametrize("preload, said", [
    ("auto", "preloaded encoder lite0, the built-in offline encoder (CLIP RN101 weights are not in the cache; "
             "the first job that needs them downloads them)"),
    ("clip:RN101", "could not preload encoder clip:RN101: CLIP RN101 weights are not in the cache and a preload "
                   "does not download (the first job that needs them does)"),
])
def test_a_preload_never_downloads(env, hub, server_factory, tmp_path, preload, said):
    """`serve` preloads `auto` by default, and the extension starts it so: the preload downloaded 479 MB
    before the worker took any job, and the queue waited for it with no word of why. The first job that
    needs the weights downloads them and says so (its activity)."""
    server = server_factory(tmp_path / "data", "--preload", preload)
    for _ in range(240):  # bounded: at most 2 minutes on a loaded machine
        if said in server.output.read_text():
            break
        time.sleep(0.5)
    server.stop()
    assert said in server.output.read_text()
    assert hub.requests == []  # not even a look at the hub


def test_auto_takes_whichever_clip_the_users_file_holds(rn101_file, monkeypatch):
    """`--weights ViT-B-32.pt` without `--encoder` failed: auto asked the file for RN101, the preset's choice.
    A file for another release than the encoder named says which encoder it is for."""
    from clipasso.encoders import load_encoder, registry
    from clipasso.encoders.clip import load_clip
    from clipasso.errors import InputError

    monkeypatch.setattr(registry, "_LOADED", {})
    encoder, reason = load_encoder("auto", "cpu", str(rn101_file), preferred="clip:RN50")
    assert encoder.name == "clip:RN101" and reason == f"encoder clip:RN101 (CLIP RN101 weights: {rn101_file})"
    assert load_encoder("clip:RN101", "cpu", str(rn101_file))[0] is encoder  # loaded once
    with pytest.raises(InputError, match=r"holds CLIP RN101 weights, not CLIP RN50's; choose the encoder "
                                         r"clip:RN101 for it, or pass the RN50 weights file"):
        load_clip("RN50", "cpu", rn101_file)


def test_openai_releases_are_the_clip_packages():
    """The table is kept here so that the `clip` package (and torchvision) is imported only for CLIP."""
    assert {arch: _MODELS[arch] for arch in CLIP_ARCHS} == weights.OPENAI_URLS
