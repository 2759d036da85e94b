"""`clipasso serve`: the local HTTP backend that the Inkscape extension (and the page at `/`) talk to.

Endpoints (JSON unless noted; the OpenAPI schema is at /openapi.json):
  GET    /health                  status, version, device, encoders, renderers (those usable here), queue length
  GET    /jobs                    every job, newest first
  POST   /jobs                    multipart: image (file), strokes, iterations, seed, seeds, encoder, preset,
                                  attach, renderer, focus, levels, orientation (exif or stored), and keep,
                                  refine, subject (SVG text of at most 2 MB each) -> 202 {"id", ...}
  GET    /jobs/{id}               state, progress 0..1, iteration, iterations, loss, error, encoder, created,
                                  finished, attached, queue_position, warnings
  GET    /jobs/{id}/events        the same fields as server-sent events, until the job has finished; an
                                  attached job (attach=true) is cancelled once no such stream has been open
                                  for 2 s (its client was killed), other jobs run on whoever watches
  POST   /jobs/{id}/detach        an attached job runs to its end without a stream
  GET    /jobs/{id}/preview.svg   the strokes as they are now (SVG)
  GET    /jobs/{id}/result.svg    the final SVG; 409 until the job has finished
  DELETE /jobs/{id}               cancel: 200 when a queued job is cancelled at once, 202 when a running
                                  job was asked to stop (it turns `cancelled` at its next iteration)
  GET    /                        a page that lists the jobs and draws a running job's strokes live
                                  (/#job=ID opens that job)

Security: binds to 127.0.0.1 by default; any other address needs a token, and once a token is set
every request must carry `Authorization: Bearer TOKEN`, on localhost too. The one exception is the
page at `/`, a static file with no data in it: browsers cannot add headers when opening a page, so
the page takes the token from its URL fragment (`/#token=...`, never sent to the server) and sends it
with each of its own requests.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import shutil
import socket
import stat
import sys
import threading
from pathlib import Path

from filelock import FileLock, Timeout

from .. import __version__
from ..errors import InputError
from ..files import FILE_MODE, check_writable, write_atomic
from ..options import DEFAULT_KEEP_DAYS, DEFAULT_MAX_QUEUE, DEFAULT_MAX_UPLOAD_MB, check_encoder_name, check_weights
from .hosts import is_loopback_host

log = logging.getLogger("clipasso.service")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MIN_TOKEN_LENGTH = 16
#: The address the running server answers at, in its data folder (a second start on the folder names it).
ADDRESS = "serve.address"


#: The open-files limit serve raises its own to, where the system's hard limit allows.
OPEN_FILES = 65536
MACOS_OPEN_MAX = 10240


def _more_open_files() -> None:
    """Raise this process's soft limit of open files towards OPEN_FILES: each connection holds one, and
    1,100 half-sent requests under a desktop's usual 1,024 kept the server from accepting any."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES)
    # macOS says its hard limit is infinite but refuses more than OPEN_MAX (10,240): then that.
    for limit in (want, min(want, MACOS_OPEN_MAX)):
        if soft == resource.RLIM_INFINITY or soft >= limit:
            return
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            return
        except (ValueError, OSError) as exc:
            log.info("could not raise the open-files limit from %d to %d: %s", soft, limit, exc)


def default_data_dir() -> Path:
    """Where jobs are kept unless --data-dir says otherwise: the platform's per-user data folder."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "clipasso"


#: Jobs a GPU optimises together by default: 16 sketches cost it about what one does.
GPU_BATCH = 16
MAX_BATCH = 256


def default_threads() -> int:
    """All cores but one: the HTTP side and the desktop keep a core, and PyTorch threads do not fight
    other busy processes (on a loaded 2-core machine 1 thread ran the engine 3-4x faster than 2)."""
    return max(1, (os.cpu_count() or 2) - 1)


def finite(text: str) -> float:
    """A number option's value: `inf` and `nan` are refused in argparse's one line (they were tracebacks)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; any other needs --token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"where jobs, results and serve.log are kept (default {default_data_dir()})")
    parser.add_argument("--token", default=os.environ.get("CLIPASSO_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' on every request (default: $CLIPASSO_TOKEN)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--weights", default=None, help="a CLIP weights file, as for `clipasso sketch`")
    parser.add_argument("--preload", default="auto", metavar="ENCODER",
                        help="encoder to load at start so the first job is quick, or 'none' (default auto); never "
                             "downloads: the first job that needs CLIP weights does")
    parser.add_argument("--max-upload-mb", type=finite, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help=f"queued jobs beyond which submissions get 429 (default {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--keep-days", type=finite, default=DEFAULT_KEEP_DAYS,
                        help=f"remove finished jobs older than this many days (default {DEFAULT_KEEP_DAYS:g})")
    parser.add_argument("--max-data-gb", type=finite, default=None,
                        help="remove the oldest finished jobs while the data folder holds more (default: no limit)")
    parser.add_argument("--batch", type=int, default=None,
                        help=f"most jobs optimised together (same encoder), on one device (default "
                             f"{GPU_BATCH} on a GPU, 1 elsewhere: a CPU gains nothing from it)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for the engine (default: all cores but one, here %(default)s)")


def _close_store_first(server, store) -> None:
    """Make uvicorn's `server` close the job store as soon as it is asked to stop, not once the open
    connections have ended: event streams then end by themselves (uvicorn cancelled them after its grace
    period, with a traceback in the log) and the running job stops at its next step."""
    handle_exit = server.handle_exit

    def stop(sig: int, frame: object) -> None:
        handle_exit(sig, frame)
        # Not here: the handler runs on the event loop's thread, which may hold the store's lock right now.
        threading.Thread(target=store.close, name="clipasso-close", daemon=True).start()

    server.handle_exit = stop  # uvicorn installs its signal handlers from this attribute when it starts


def _address(data_dir: Path) -> str | None:
    """Where the server that holds `data_dir` answers, as it wrote it when it started."""
    try:
        return (data_dir / ADDRESS).read_text().strip() or None
    except OSError:
        return None


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, so that a taken port is a one-line error rather than a uvicorn exit."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    if sys.platform == "win32":  # there SO_REUSEADDR would let a second server take the same port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        taken = exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", None))
        why = "the port is in use" if taken else exc.strerror  # fixed words: the extension looks for them
        raise InputError(f"cannot listen on {host}:{port}: {why} (is another server running there?)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class _LogFile(logging.FileHandler):
    """serve.log, whose lines are dropped while they cannot be written (a full disk) instead of each
    printing a traceback; any other logging error is reported as usual."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


def _private(path: Path) -> None:
    """Make `path` (created if missing) readable by the user alone, when it is a plain file of theirs: not
    through a symlink (serve.log -> /dev/null), and not one another user owns."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: left as it is
            return
        raise InputError(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        # POSIX only: Python 3.13 has os.fchmod on Windows too, but no os.getuid there.
        if hasattr(os, "getuid") and stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _setup_logging(log_file: Path) -> None:
    """Log lines go to the terminal and to DATA/serve.log (readable by the user alone: it names jobs);
    uvicorn's loggers share the same handlers. A line that cannot be written (a full disk) is dropped
    without the traceback per line that logging prints by default: GET /health says why."""
    _private(log_file)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr), _LogFile(log_file, encoding="utf-8")]
    root = logging.getLogger()
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def run(args: argparse.Namespace) -> int:
    """Check the settings, then serve until interrupted (Ctrl-C or SIGTERM shut down cleanly)."""
    # Here, not at the top: `clipasso --help` and `clipasso sketch` should not pay for the server's imports.
    import torch
    import uvicorn
    from huggingface_hub.utils import disable_progress_bars

    from ..encoders import resolve_device
    from .app import create_app
    from .jobs import JobStore
    from .routes import SHUTDOWN_GRACE_SECONDS
    from .worker import Worker

    token = args.token or None
    if token is not None and (len(token) < MIN_TOKEN_LENGTH or token.strip() != token or " " in token):
        raise InputError(f"--token must be at least {MIN_TOKEN_LENGTH} characters without spaces; "
                         "`python -c 'import secrets; print(secrets.token_urlsafe())'` makes a good one")
    if not is_loopback_host(args.host) and token is None:
        raise InputError(f"listening on {args.host} lets other machines in: set --token (or $CLIPASSO_TOKEN)")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_queue < 1:
        raise InputError("--max-upload-mb must be above 0 and --max-queue at least 1")
    if args.preload != "none":
        check_encoder_name(args.preload)
    check_weights(args.weights)
    if args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    disable_progress_bars()  # a weight download's bar would garble serve.log; the job's state says it waits
    device = str(resolve_device(args.device))
    batch = args.batch if args.batch is not None else (GPU_BATCH if device.startswith("cuda") else 1)
    if not 1 <= batch <= MAX_BATCH:
        raise InputError(f"--batch must be between 1 and {MAX_BATCH}, got {args.batch}")
    if args.keep_days <= 0 or (args.max_data_gb is not None and args.max_data_gb <= 0):
        raise InputError("--keep-days and --max-data-gb must be above 0")
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    fresh = not data_dir.exists()  # made by this start: not left behind when the start fails below
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_writable(data_dir)
    except OSError as exc:
        raise InputError(f"cannot write to the data folder {data_dir}: {exc.strerror}") from None
    # One server per data folder: a second would take the first one's running jobs for a crash's and run its
    # queue again. The operating system lets go of the lock when this process ends, however it ends.
    lock = FileLock(str(data_dir / "serve.lock"), mode=FILE_MODE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        at = _address(data_dir)
        raise InputError(f"another `clipasso serve`{f' (at {at})' if at else ''} uses the data folder {data_dir}; "
                         "use that one, stop it, or give this one its own --data-dir") from None
    _private(data_dir / "serve.lock")  # one an older version made, readable by all

    try:
        sock = _bind(args.host, args.port)
    except InputError:
        lock.release()
        if fresh and {p.name for p in data_dir.iterdir()} <= {"serve.lock"}:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    host, port = sock.getsockname()[:2]
    try:  # for a second start on this folder to name (the extension then says where this one answers)
        here = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # where this machine reaches it
        write_atomic(data_dir / ADDRESS, f"http://{f'[{here}]' if ':' in here else here}:{port}\n", FILE_MODE)
    except OSError:
        pass
    _setup_logging(data_dir / "serve.log")
    max_bytes = None if args.max_data_gb is None else int(args.max_data_gb * 1e9)
    store = JobStore(data_dir, device=device, weights=args.weights, max_queued=args.max_queue,
                     keep_days=args.keep_days, max_bytes=max_bytes)
    worker = Worker(store, preload=None if args.preload == "none" else args.preload, batch=batch)
    app = create_app(store, worker, token=token, max_upload_bytes=int(args.max_upload_mb * 1_000_000))
    log.info("clipasso %s serving on http://%s:%d (device %s, %d engine threads, batches of up to %d jobs, "
             "data in %s, token %s)", __version__, host, port, device, args.threads, batch, data_dir,
             "required" if token else "off")
    _more_open_files()
    config = uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS, lifespan="on")
    try:
        server = uvicorn.Server(config)
        _close_store_first(server, store)
        server.run(sockets=[sock])
    finally:
        lock.release()
    return 0
