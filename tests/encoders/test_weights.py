"""Finding and downloading CLIP weights, against a real HTTP server on 127.0.0.1 serving a tiny checkpoint.

The real files cannot be downloaded here; the tiny checkpoint goes through the same download and load
code, and checksum failures are provoked by serving it under OpenAI's real checksum.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import torch

from clipasso.encoders.clip import load_clip
from clipasso.errors import InputError
from clipasso.encoders.weights import (
    WeightsUnavailable,
    cache_dir,
    clip_release,
    clip_weights_status,
    download,
    resolve_clip_weights,
)
from tiny_clip import save_tiny_clip


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    sent: int = 0


@dataclass
class FileServer:
    """What the test server serves and how it misbehaves; it records every request."""

    files: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = True
    drop_first_get: bool = False
    fail_first_get: int | None = None
    requests: list[Request] = field(default_factory=list)
    base: str = ""

    def gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET"]


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            record = Request(self.command, self.path, self.headers.get("Range"))
            state.requests.append(record)
            first_get = body and len(state.gets()) == 1
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            if first_get and state.fail_first_get:
                self.send_error(state.fail_first_get)
                return
            start = 0
            if record.range and state.ranges:
                start = int(record.range.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            chunk = data[start:]
            if first_get and state.drop_first_get:
                chunk = chunk[: len(chunk) // 2]  # then the connection closes (HTTP/1.0)
            # Recorded before writing: the client may finish reading, and the test check, before this
            # thread runs again after the write.
            record.sent = len(chunk)
            self.wfile.write(chunk)

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny") / "tiny.pt", "RN").read_bytes()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test gets its own cache folder and none of the user's settings."""
    for name in ("CLIPASSO_CLIP_WEIGHTS", "CLIPASSO_OFFLINE", "CLIPASSO_CLIP_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPASSO_CACHE", str(cache))
    return cache


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- where the files are --------------------------------------------------------------------------


def test_release_urls_and_checksums_come_from_the_clip_package(monkeypatch):
    from clip.clip import _MODELS

    for arch, filename in (("RN101", "RN101.pt"), ("RN50", "RN50.pt"), ("ViT-B/32", "ViT-B-32.pt")):
        release = clip_release(arch)
        assert release.url == _MODELS[arch]
        assert release.filename == filename
        assert len(release.sha256) == 64 and release.sha256 in release.url
    moved = clip_release("RN101", base_url="http://mirror.example/clip/")
    assert moved.url == f"http://mirror.example/clip/{moved.sha256}/RN101.pt"
    monkeypatch.setenv("CLIPASSO_CLIP_BASE_URL", "http://other.example")
    assert clip_release("RN101").url.startswith("http://other.example/")
    with pytest.raises(InputError, match="unknown CLIP architecture"):
        clip_release("ViT-H/14")


def test_cache_folder_per_platform(monkeypatch, tmp_path):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("CLIPASSO_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    assert cache_dir() == tmp_path / ".cache" / "clipasso"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "clipasso"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cache_dir() == tmp_path / "Library" / "Caches" / "clipasso"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert cache_dir() == tmp_path / "Local" / "clipasso" / "cache"


def test_a_named_file_wins_over_the_cache(monkeypatch, clean_env, tmp_path):
    cached = clean_env / "RN101.pt"
    cached.parent.mkdir()
    cached.write_bytes(b"cached")
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"mine")
    assert resolve_clip_weights("RN101") == cached
    assert resolve_clip_weights("RN101", str(mine)) == mine
    monkeypatch.setenv("CLIPASSO_CLIP_WEIGHTS", str(mine))
    assert resolve_clip_weights("RN101") == mine
    assert clip_weights_status("RN101") == (True, f"CLIP RN101 weights: {mine}")
    with pytest.raises(WeightsUnavailable, match="missing.pt: no such file"):
        resolve_clip_weights("RN101", tmp_path / "missing.pt")
    assert clip_weights_status("RN101", tmp_path / "missing.pt")[0] is False


def test_offline_never_touches_the_network(monkeypatch, server, tiny_bytes, clean_env):
    release = clip_release("RN101", server.base)
    server.files[f"/{release.sha256}/RN101.pt"] = tiny_bytes
    monkeypatch.setenv("CLIPASSO_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as info:
        resolve_clip_weights("RN101", base_url=server.base)
    message = str(info.value)
    assert "CLIPASSO_OFFLINE=1" in message and release.url in message and "--encoder lite0" in message
    assert "--weights FILE" in message and "about 278 MB" in message and "\n" not in message
    available, reason = clip_weights_status("RN101", base_url=server.base)
    assert not available and "CLIPASSO_OFFLINE=1" in reason
    assert server.requests == []
    # A cached file is used offline as it is.
    (clean_env / "RN101.pt").parent.mkdir()
    (clean_env / "RN101.pt").write_bytes(tiny_bytes)
    assert resolve_clip_weights("RN101", base_url=server.base) == clean_env / "RN101.pt"
    assert server.requests == []


def test_downloads_can_be_turned_off(server):
    with pytest.raises(WeightsUnavailable, match="downloading is turned off"):
        resolve_clip_weights("RN101", allow_download=False, base_url=server.base)
    assert server.requests == []


# --- downloading ----------------------------------------------------------------------------------


def test_download_lands_verified_and_loads(server, tiny_bytes, clean_env, capsys):
    server.files["/x/tiny.pt"] = tiny_bytes
    dest = clean_env / "tiny.pt"
    assert download(f"{server.base}/x/tiny.pt", dest, sha(tiny_bytes), label="tiny CLIP") == dest
    assert dest.read_bytes() == tiny_bytes
    assert not dest.with_name("tiny.pt.part").exists()
    err = capsys.readouterr().err
    assert f"downloading tiny CLIP (2 MB) from {server.base}/x/tiny.pt" in err
    assert [r.method for r in server.requests] == ["GET"] and server.requests[0].range is None
    encoder = load_clip("RN101", "cpu", dest, check_arch=False)
    assert encoder.features(torch.rand(1, 3, 224, 224))[1].shape == (1, 32)


def test_checksum_mismatch_fails_clearly_and_leaves_no_file(server, tiny_bytes, clean_env):
    # The tiny file served where OpenAI's RN101 should be: its checksum cannot match.
    release = clip_release("RN101", server.base)
    server.files[f"/{release.sha256}/RN101.pt"] = tiny_bytes
    with pytest.raises(WeightsUnavailable) as info:
        resolve_clip_weights("RN101", base_url=server.base)
    message = str(info.value)
    assert "is corrupt (SHA256" in message and "was deleted" in message and "\n" not in message
    assert sorted(p.name for p in clean_env.iterdir() if not p.name.endswith(".lock")) == []


def test_a_partial_download_is_resumed_with_range(server, tiny_bytes, clean_env, capsys):
    server.files["/tiny.pt"] = tiny_bytes
    dest = clean_env / "tiny.pt"
    clean_env.mkdir()
    have = len(tiny_bytes) * 2 // 5
    dest.with_name("tiny.pt.part").write_bytes(tiny_bytes[:have])
    download(f"{server.base}/tiny.pt", dest, sha(tiny_bytes))
    assert dest.read_bytes() == tiny_bytes
    [get] = server.gets()
    assert get.range == f"bytes={have}-" and get.sent == len(tiny_bytes) - have
    assert "resuming at" in capsys.readouterr().err


def test_a_server_without_range_support_restarts_the_download(server, tiny_bytes, clean_env):
    server.files["/tiny.pt"] = tiny_bytes
    server.ranges = False
    dest = clean_env / "tiny.pt"
    clean_env.mkdir()
    dest.with_name("tiny.pt.part").write_bytes(b"stale bytes from another file")
    download(f"{server.base}/tiny.pt", dest, sha(tiny_bytes))
    assert dest.read_bytes() == tiny_bytes
    assert [r.sent for r in server.gets()] == [len(tiny_bytes)]


def test_a_complete_part_file_is_verified_and_kept(server, tiny_bytes, clean_env):
    server.files["/tiny.pt"] = tiny_bytes
    dest = clean_env / "tiny.pt"
    clean_env.mkdir()
    dest.with_name("tiny.pt.part").write_bytes(tiny_bytes)
    download(f"{server.base}/tiny.pt", dest, sha(tiny_bytes))  # the server answers 416
    assert dest.read_bytes() == tiny_bytes
    assert [r.sent for r in server.gets()] == [0]


def test_a_dropped_connection_is_retried_and_resumed(server, tiny_bytes, clean_env, capsys):
    server.files["/tiny.pt"] = tiny_bytes
    server.drop_first_get = True
    dest = clean_env / "tiny.pt"
    download(f"{server.base}/tiny.pt", dest, sha(tiny_bytes), backoff_s=0)
    assert dest.read_bytes() == tiny_bytes
    first, second = server.gets()
    assert first.range is None and second.range == f"bytes={first.sent}-"
    assert first.sent + second.sent == len(tiny_bytes)
    assert "retrying" in capsys.readouterr().err


def test_a_server_error_is_retried(server, tiny_bytes, clean_env):
    server.files["/tiny.pt"] = tiny_bytes
    server.fail_first_get = 503
    download(f"{server.base}/tiny.pt", clean_env / "tiny.pt", sha(tiny_bytes), backoff_s=0)
    assert len(server.gets()) == 2


def test_a_missing_file_fails_at_once(server, clean_env):
    with pytest.raises(WeightsUnavailable, match="answered HTTP 404"):
        download(f"{server.base}/nothing.pt", clean_env / "nothing.pt", "0" * 64, backoff_s=0)
    assert len(server.gets()) == 1
    assert not (clean_env / "nothing.pt").exists() and not (clean_env / "nothing.pt.part").exists()


def test_an_unreachable_server_fails_clearly(clean_env):
    base = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(WeightsUnavailable) as info:
        resolve_clip_weights("RN50", base_url=base)
    message = str(info.value)
    assert message.startswith(f"could not download CLIP RN50 weights from {base}/")
    assert "(connection refused) after 4 tries" in message and "--encoder lite0" in message
    assert not (clean_env / "RN50.pt").exists()


# --- the "auto" encoder's question ----------------------------------------------------------------


def test_status_asks_the_server_with_head(server, tiny_bytes):
    release = clip_release("ViT-B/32", server.base)
    server.files[f"/{release.sha256}/ViT-B-32.pt"] = tiny_bytes
    available, reason = clip_weights_status("ViT-B/32", base_url=server.base)
    assert available and "can be downloaded from 127.0.0.1" in reason
    assert [r.method for r in server.requests] == ["HEAD"]
    available, reason = clip_weights_status("RN101", base_url=server.base)
    assert not available and "answers HTTP 404" in reason


def test_status_without_an_answer_is_false():
    available, reason = clip_weights_status("RN101", base_url=f"http://127.0.0.1:{closed_port()}")
    assert not available and "cannot be reached (connection refused)" in reason
    # A host that accepts the connection and then never answers: bounded by the timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        available, reason = clip_weights_status(
            "RN101", base_url=f"http://127.0.0.1:{silent.getsockname()[1]}", connect_timeout=0.2
        )
    assert not available and "cannot be reached" in reason
