"""Where CLIP weights come from: a file the user names, the cache, or a verified download from OpenAI.

Failed weight downloads are what users of CLIPasso complain about most, so every way this can fail ends
in one actionable line (`WeightsUnavailable`), downloads resume and retry, and nothing reaches the cache
before its SHA256 matches. The URLs and checksums are the `clip` package's own table, never copied here.

Environment: CLIPASSO_CACHE (cache folder), CLIPASSO_CLIP_WEIGHTS (a weights file), CLIPASSO_OFFLINE=1
(never touch the network), CLIPASSO_CLIP_BASE_URL (a mirror laid out as <base>/<sha256>/<file>).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

with warnings.catch_warnings():  # clip-anytorch imports the deprecated pkg_resources
    warnings.simplefilter("ignore")
    from clip.clip import _MODELS

from .. import __version__
from ..errors import InputError, one_line
from ..options import CLIP_ARCHS

try:
    import fcntl
except ImportError:  # Windows: concurrent downloads of one file are not guarded there
    fcntl = None

#: Sizes of OpenAI's files in MiB, only for messages written before any server has been asked.
APPROX_MB = {"RN50": 244, "RN101": 278, "ViT-B/32": 338}
USER_AGENT = f"clipasso-inkscape/{__version__}"
CHUNK = 1 << 20


class WeightsUnavailable(InputError):
    """CLIP weights cannot be had; the message says why and what to do, in one line."""


@dataclass(frozen=True)
class ClipRelease:
    """One of OpenAI's released checkpoints."""

    arch: str
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def clip_release(arch: str, base_url: str | None = None) -> ClipRelease:
    """The URL and SHA256 of OpenAI's checkpoint for `arch`, from the `clip` package's table.

    `base_url` (or CLIPASSO_CLIP_BASE_URL) replaces OpenAI's host and folder; the checksum and file
    name stay, so a mirror serves <base>/<sha256>/<file>.
    """
    if arch not in CLIP_ARCHS:
        raise InputError(f"unknown CLIP architecture {arch!r}; choose one of: {', '.join(CLIP_ARCHS)}")
    url = _MODELS[arch]
    folder, sha256, filename = url.rsplit("/", 2)
    base = base_url or os.environ.get("CLIPASSO_CLIP_BASE_URL") or folder
    return ClipRelease(arch, f"{base.rstrip('/')}/{sha256}/{filename}", sha256)


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


def offline() -> bool:
    """CLIPASSO_OFFLINE=1: never touch the network."""
    return os.environ.get("CLIPASSO_OFFLINE", "").strip() == "1"


def resolve_clip_weights(
    arch: str,
    weights: str | os.PathLike | None = None,
    allow_download: bool = True,
    progress: bool = True,
    base_url: str | None = None,
) -> Path:
    """The weights file for CLIP `arch`: the named file (argument, then CLIPASSO_CLIP_WEIGHTS), else the
    cached download, else a new download when allowed. Raises WeightsUnavailable saying what to do."""
    release = clip_release(arch, base_url)
    named = _named_file(weights)
    if named is not None:
        if not named.is_file():
            what = "not a file" if named.exists() else "no such file"
            raise WeightsUnavailable(f"CLIP {arch} weights {_show(named)}: {what}")
        return named
    cached = cache_dir() / release.filename
    if cached.is_file():
        return cached
    if offline() or not allow_download:
        why = "CLIPASSO_OFFLINE=1 forbids downloading" if offline() else "downloading is turned off"
        raise WeightsUnavailable(f"CLIP {arch} weights are not in {_show(cache_dir())} and {why}; {_advice(release)}")
    return download(release.url, cached, release.sha256, progress=progress, label=f"CLIP {arch} weights",
                    advice=_advice(release, with_url=False))


def clip_weights_status(
    arch: str,
    weights: str | os.PathLike | None = None,
    connect_timeout: float = 2.0,
    base_url: str | None = None,
) -> tuple[bool, str]:
    """Whether CLIP `arch` weights can be had, and why, in one line, for the "auto" encoder choice.

    True for a local file, or when the download host answers a HEAD request within `connect_timeout`
    seconds (bounded even where name lookup hangs); CLIPASSO_OFFLINE=1 skips the network entirely.
    """
    release = clip_release(arch, base_url)
    named = _named_file(weights)
    if named is not None:
        if named.is_file():
            return True, f"CLIP {arch} weights: {_show(named)}"
        return False, f"CLIP {arch} weights {_show(named)}: no such file"
    cached = cache_dir() / release.filename
    if cached.is_file():
        return True, f"CLIP {arch} weights: {_show(cached)}"
    where = f"CLIP {arch} weights are not in {_show(cache_dir())}"
    if offline():
        return False, f"{where} and CLIPASSO_OFFLINE=1"
    host = urllib.parse.urlsplit(release.url).netloc
    answer = _head(release.url, connect_timeout)
    if isinstance(answer, int) and answer < 400:
        return True, f"{where}; they can be downloaded from {host} (about {APPROX_MB[arch]} MB)"
    if isinstance(answer, int):
        return False, f"{where} and {host} answers HTTP {answer} for them"
    return False, f"{where} and {host} cannot be reached ({answer})"


def download(
    url: str,
    dest: Path,
    sha256: str,
    *,
    progress: bool = True,
    retries: int = 3,
    backoff_s: float = 0.25,
    timeout_s: float = 30.0,
    label: str | None = None,
    advice: str = "try again later",
) -> Path:
    """Download `url` to `dest` through `dest`.part, resuming a partial file with an HTTP Range request,
    retrying connection failures (backoff doubling from `backoff_s`), and renaming into place only once
    the SHA256 matches. One process downloads a given file at a time. Raises WeightsUnavailable."""
    label = label or dest.name
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsUnavailable(f"cannot create the cache folder {_show(dest.parent)}: {one_line(exc)}") from None
    with _exclusive(dest.with_name(dest.name + ".lock")):
        if dest.is_file():  # another process finished it while we waited
            return dest
        for attempt in range(retries + 1):
            try:
                _fetch(url, part, label, progress, timeout_s)
                break
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt == retries:
                    raise WeightsUnavailable(f"could not download {label}: {url} answered HTTP {exc.code}; "
                                             f"{advice}") from None
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, http.client.HTTPException, _Incomplete) as exc:
                reason = _reason(exc)
                if attempt == retries or _no_such_host(exc):
                    tries = f" after {attempt + 1} tries" if attempt else ""
                    raise WeightsUnavailable(f"could not download {label} from {url} ({reason}){tries}; "
                                             f"{advice}") from None
            wait = backoff_s * 2**attempt
            print(f"clipasso: download interrupted ({reason}); retrying in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
        got = _file_sha256(part)
        if got != sha256:
            part.unlink()
            raise WeightsUnavailable(
                f"the download of {label} from {url} is corrupt (SHA256 {got[:12]}..., expected "
                f"{sha256[:12]}...) and was deleted; try again, or {advice}"
            )
        os.replace(part, dest)
    print(f"clipasso: saved {label} to {_show(dest)}", file=sys.stderr)
    return dest


class _Incomplete(Exception):
    """The server closed the connection before sending the whole file."""


def _fetch(url: str, part: Path, label: str, progress: bool, timeout_s: float) -> None:
    """One attempt: continue `part` from where it ends when the server honours Range, else restart."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after `have`: the part file is whole; the checksum decides
            return
        raise
    with response:
        resumed = have and response.status == 206 and _range_start(response) == have
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        size = f" ({total / 2**20:.0f} MB)" if total else ""
        verb = f"resuming at {start / 2**20:.0f} MB:" if resumed else "downloading"
        print(f"clipasso: {verb} {label}{size} from {url}", file=sys.stderr)
        shown = progress and sys.stderr.isatty()
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
            disable=not shown, desc=label,
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise _Incomplete(f"connection closed at {part.stat().st_size} of {total} bytes")


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """First byte of a 206 answer, from its Content-Range header ("bytes 100-199/200")."""
    value = response.headers.get("Content-Range", "")
    unit, _, span = value.partition(" ")
    first = span.split("-", 1)[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _head(url: str, timeout_s: float) -> int | str:
    """The HTTP status a HEAD request gets, or why none came, within `timeout_s` whatever happens (name
    lookup ignores socket timeouts, so the request runs in a thread that is abandoned if late)."""
    result: list[int | str] = []

    def ask() -> None:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                result.append(response.status)
        except urllib.error.HTTPError as exc:
            result.append(exc.code)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            result.append(_reason(exc))

    thread = threading.Thread(target=ask, name="clip-weights-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return result[0] if result else f"no answer within {timeout_s:g} s"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (POSIX), so two processes never write one part file."""
    with open(lock_path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _named_file(weights: str | os.PathLike | None) -> Path | None:
    named = weights or os.environ.get("CLIPASSO_CLIP_WEIGHTS")
    return Path(named).expanduser() if named else None


def _advice(release: ClipRelease, with_url: bool = True) -> str:
    """What to do instead: fetch the file elsewhere and name it, or use the built-in encoder."""
    what = f"{release.url} (about {APPROX_MB[release.arch]} MB) on a machine with network" if with_url else (
        f"it yourself (about {APPROX_MB[release.arch]} MB)")
    return f"download {what} and pass --weights FILE, or use --encoder lite0"


def _reason(exc: BaseException) -> str:
    """A short reason from urllib's nested errors ("connection refused", "timed out" ...)."""
    inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(inner, socket.gaierror):
        return "no such host, or no network"
    return one_line(inner if isinstance(inner, BaseException) else exc)


def _no_such_host(exc: BaseException) -> bool:
    """Name lookup failed: the machine is offline or the host does not exist; retrying will not help."""
    return isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, socket.gaierror)


def _show(path: Path) -> str:
    """A path as people write it: ~/.cache/clipasso rather than /home/name/.cache/clipasso."""
    try:
        return "~/" + Path(path).resolve().relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return str(path)
