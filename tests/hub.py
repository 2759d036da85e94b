"""A stand-in for the Hugging Face Hub's file endpoint on 127.0.0.1, answering the way huggingface_hub asks.

`HEAD` and `GET /{repo_id}/resolve/{revision}/{filename}` with X-Repo-Commit, ETag and X-Linked-Etag (the
file's SHA-256, as the hub gives for LFS files), X-Linked-Size, Content-Length and byte ranges. Each file
can advertise another SHA-256 than its bytes have (a corrupt download), answer with an HTTP error, or
come slowly (a download that is still going when the test acts).
Also serves plain URLs (`/openai/...`) for the fallback source.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    path: Path
    sha256: str  # what the server advertises
    status: int = 200
    pace: float = 0.0  # seconds between 64 kB pieces of the body (0: at full speed)


@dataclass
class HubServer:
    files: dict[str, Served] = field(default_factory=dict)  # URL path -> what to serve
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: how many requests had come when each file's body was sent whole
    sent_after: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        hub, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                with lock:
                    hub.requests.append((self.command, self.path))
                served = hub.files.get(self.path)
                if served is None or served.status != 200:
                    self.send_response(404 if served is None else served.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = served.path.stat().st_size
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match and int(match.group(1)) < size:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(size - start))
                self.send_header("ETag", f'"{served.sha256}"')
                self.send_header("X-Linked-Etag", f'"{served.sha256}"')
                self.send_header("X-Linked-Size", str(size))
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if body:
                    with open(served.path, "rb") as f:
                        f.seek(start)
                        while chunk := f.read(64 << 10 if served.pace else 1 << 20):
                            self.wfile.write(chunk)
                            time.sleep(served.pace)
                    with lock:
                        hub.sent_after.append(len(hub.requests))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, url_path: str, path: Path, advertise: str | None = None, status: int = 200,
            pace: float = 0.0) -> None:
        self.files[url_path] = Served(path, advertise or sha256_of(path), status, pace)

    def add_hub_file(self, repo_id: str, filename: str, path: Path, **kw) -> None:
        self.add(f"/{repo_id}/resolve/main/{filename}", path, **kw)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_random_open_clip(arch: str, path: Path, seed: int = 0) -> Path:
    """Random weights in exactly open_clip's layout (names, shapes, dtypes of `create_model(arch)`) as
    safetensors, the way the hub holds OpenAI's CLIP. The model is laid out on the meta device and filled
    with small random numbers (batch-norm statistics kept sane), which takes seconds instead of the
    minute open_clip's own initialisation takes for RN101."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model(arch, pretrained=None, device="meta")
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, meta in model.state_dict().items():
        if not meta.is_floating_point():
            tensors[name] = torch.zeros(meta.shape, dtype=meta.dtype)
        elif name.endswith("running_var") or (("bn" in name or ".ln_" in name) and name.endswith("weight")):
            tensors[name] = torch.ones(meta.shape, dtype=meta.dtype)
        elif name.endswith("running_mean") or name.endswith("bias"):
            tensors[name] = torch.zeros(meta.shape, dtype=meta.dtype)
        else:
            tensors[name] = (torch.randn(meta.shape, generator=gen) * 0.02).to(meta.dtype)
    save_file(tensors, str(path))
    return path

