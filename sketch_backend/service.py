"""`clipasso serve`: the local HTTP backend that the Inkscape extension (and the page at `/`) talk to.

Endpoints (JSON unless noted; the OpenAPI schema is at /openapi.json):
  GET    /health                  status, version, device, encoders, queue length
  GET    /jobs                    every job, newest first
  POST   /jobs                    multipart: image (file), strokes, iterations, seed, seeds, encoder, preset
                                  -> 202 {"id", "state": "queued", ...}
  GET    /jobs/{id}               state, progress 0..1, iteration, iterations, loss, error, encoder, created,
                                  finished
  GET    /jobs/{id}/events        the same fields as server-sent events, until the job has finished
  GET    /jobs/{id}/preview.svg   the strokes as they are now (SVG)
  GET    /jobs/{id}/result.svg    the final SVG; 409 until the job has finished
  DELETE /jobs/{id}               cancel: 200 when a queued job is cancelled at once, 202 when a running
                                  job was asked to stop (it turns `cancelled` at its next iteration)
  GET    /                        a page that lists the jobs and draws a running job's strokes live

Every error is JSON `{"error": "one line"}` with these statuses: 400 bad input (missing or malformed
field, value out of range, unknown encoder or preset, not an image, corrupt image, too many pixels),
401 missing or wrong token, 404 unknown job or path, 405 wrong method, 409 no result yet / already
finished, 413 upload too large, 429 too many queued jobs.

Security: binds to 127.0.0.1 by default; any other address needs a token, and once a token is set
every request must carry `Authorization: Bearer TOKEN`, on localhost too. The one exception is the
page at `/`, a static file with no data in it: browsers cannot add headers when opening a page, so
the page takes the token from its URL fragment (`/#token=...`, never sent to the server) and sends it
with each of its own requests.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import secrets
import socket
import sys
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__
from .encoders import ENCODER_NAMES
from .errors import InputError
from .jobs import FINAL_STATES, JobStateError, JobStore, QueueFull, UnknownJob, Worker
from .sketch import MAX_ITERATIONS, MAX_STROKES, PRESETS, SketchOptions

log = logging.getLogger("clipasso.service")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 50
DEFAULT_MAX_QUEUE = 100
MIN_TOKEN_LENGTH = 16
#: How often an event stream looks for changes, and how long it stays silent before a keep-alive.
EVENT_POLL_SECONDS = 0.1
KEEPALIVE_SECONDS = 15.0
#: How long a clean shutdown waits for the running job to reach its next iteration.
SHUTDOWN_WAIT_SECONDS = 30.0


# ----- response shapes (for the OpenAPI schema) ------------------------------------------------------


class ErrorBody(BaseModel):
    error: str


class JobView(BaseModel):
    id: str
    state: str
    progress: float
    iteration: int
    iterations: int
    loss: float | None
    error: str | None
    encoder: str
    created: str
    finished: str | None


class JobList(BaseModel):
    jobs: list[JobView]


class Health(BaseModel):
    status: str
    version: str
    device: str
    encoders: list[str]
    queue: int


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


# ----- errors and authentication ----------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line, e.g. `strokes: input should be a valid integer`."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        if err.get("type") == "missing":
            parts.append(f"missing field {field!r}" if field else "missing request body")
        else:
            msg = str(err.get("msg", "invalid value"))
            parts.append(f"{field}: {msg[:1].lower()}{msg[1:]}" if field else msg)
    return "; ".join(parts) or "invalid request"


class BearerAuth:
    """Refuse every request without `Authorization: Bearer TOKEN` (constant-time compare), except `/`."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not (scope["path"] == "/" and scope["method"] in ("GET", "HEAD")):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                response = _error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                                  {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class UploadTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"upload too large: the limit is {limit / 1e6:g} MB")


class UploadLimit:
    """Refuse request bodies over `limit` bytes while they arrive, never buffering more than that.

    A declared Content-Length over the limit is refused before reading; a chunked body is counted
    and refused at the first chunk past the limit (raised from `receive`, so the handler stops).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await _error(413, UploadTooLarge(self.limit).detail)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise UploadTooLarge(self.limit)
            return message

        await self.app(scope, counting_receive, send)


# ----- the application --------------------------------------------------------------------------------


def create_app(
    store: JobStore,
    worker: Worker,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1_000_000,
) -> FastAPI:
    """The service as an ASGI app. The lifespan loads the store and runs the worker."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(store.load)
        worker.start()
        yield
        store.close()
        if not await run_in_threadpool(worker.join, SHUTDOWN_WAIT_SECONDS):
            log.warning("the running job did not stop in %.0f s; it will be marked failed on restart",
                        SHUTDOWN_WAIT_SECONDS)

    app = FastAPI(
        title="clipasso",
        version=__version__,
        description="CLIPasso line sketches from photos, as SVG strokes. Errors are JSON {\"error\": \"...\"}.",
        lifespan=lifespan,
        form_limits={"max_files": 1, "max_fields": 16, "max_part_size": 1024},
    )
    page = resources.files("sketch_backend").joinpath("static/index.html").read_text("utf-8")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such path: {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(exc))

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(429, str(exc), {"Retry-After": "10"})

    @app.exception_handler(JobStateError)
    async def conflict(request: Request, exc: JobStateError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(UnknownJob)
    async def unknown_job(request: Request, exc: UnknownJob) -> JSONResponse:
        return _error(404, "unknown job id")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error; the server log has the details")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/health", response_model=Health, responses=_errors(401))
    async def health() -> dict:
        """Whether the service is up, and what it runs on (the Inkscape extension's discovery call)."""
        return {
            "status": "ok",
            "version": __version__,
            "device": store.device,
            "encoders": list(ENCODER_NAMES),
            "queue": store.queued_count(),
        }

    @app.get("/jobs", response_model=JobList, responses=_errors(401))
    async def list_jobs() -> dict:
        """Every job, newest first."""
        return {"jobs": store.list()}

    @app.post("/jobs", status_code=202, response_model=JobView, responses=_errors(400, 401, 413, 429))
    async def submit(
        image: UploadFile = File(..., description="the photo: PNG, JPEG, WebP, TIFF, GIF or BMP"),
        strokes: int | None = Form(None, json_schema_extra={"minimum": 1, "maximum": MAX_STROKES}),
        iterations: int | None = Form(None, json_schema_extra={"minimum": 1, "maximum": MAX_ITERATIONS}),
        seed: int | None = Form(None, json_schema_extra={"minimum": 0, "maximum": 2**31 - 1}),
        seeds: int | None = Form(None, json_schema_extra={"minimum": 1, "maximum": 16}),
        encoder: str | None = Form(None, json_schema_extra={"enum": list(ENCODER_NAMES)}),
        preset: str | None = Form(None, json_schema_extra={"enum": list(PRESETS)}),
    ) -> JSONResponse:
        """Queue a sketch of the uploaded photo. Values left out take the preset's defaults."""
        given = {"strokes": strokes, "iterations": iterations, "seed": seed, "seeds": seeds,
                 "encoder": encoder, "preset": preset}
        options = SketchOptions(**{k: v for k, v in given.items() if v is not None})
        data = await image.read()
        view = await run_in_threadpool(store.submit, data, options)
        return JSONResponse(view, status_code=202, headers={"Location": f"/jobs/{view['id']}"})

    @app.get("/jobs/{job_id}", response_model=JobView, responses=_errors(401, 404))
    async def get_job(job_id: str) -> dict:
        """The job's state and progress."""
        return store.snapshot(job_id)[1]

    @app.get("/jobs/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}, **_errors(401, 404)})
    async def job_events(job_id: str) -> StreamingResponse:
        """Server-sent events, one `data:` line of the same JSON as GET /jobs/{id} per change.

        The stream ends after the event with a final state (succeeded, failed or cancelled).
        Disconnecting does not cancel the job.
        """
        store.snapshot(job_id)  # 404 before the stream starts

        async def stream() -> AsyncIterator[str]:
            last, quiet = -1, 0.0
            while True:
                version, view = store.snapshot(job_id)
                if version != last:
                    last, quiet = version, 0.0
                    yield f"id: {version}\ndata: {json.dumps(view)}\n\n"
                    if view["state"] in FINAL_STATES:
                        return
                elif quiet >= KEEPALIVE_SECONDS:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENT_POLL_SECONDS)
                quiet += EVENT_POLL_SECONDS

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @app.get("/jobs/{job_id}/preview.svg", responses={200: {"content": {"image/svg+xml": {}}}, **_errors(401, 404)})
    def preview(job_id: str) -> Response:
        """The strokes as they are now; an empty drawing before the first iteration."""
        return Response(store.preview_svg(job_id), media_type="image/svg+xml", headers={"Cache-Control": "no-cache"})

    @app.get("/jobs/{job_id}/result.svg",
             responses={200: {"content": {"image/svg+xml": {}}}, **_errors(401, 404, 409)})
    def result(job_id: str) -> Response:
        """The final SVG (for a cancelled job: the best strokes before it stopped)."""
        return Response(store.result_svg(job_id), media_type="image/svg+xml")

    @app.delete("/jobs/{job_id}", response_model=JobView, responses={202: {"model": JobView}, **_errors(401, 404, 409)})
    def cancel(job_id: str) -> JSONResponse:
        """Cancel a job. A running job stops at its next iteration and keeps its best strokes so far."""
        view = store.cancel(job_id)
        return JSONResponse(view, status_code=200 if view["state"] == "cancelled" else 202)

    app.add_middleware(UploadLimit, limit=max_upload_bytes)
    if token:
        app.add_middleware(BearerAuth, token=token)  # outermost: nothing is read before the token is checked
        schema = app.openapi()
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return app


# ----- the command ------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """Where jobs are kept unless --data-dir says otherwise: the platform's per-user data folder."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "clipasso"


def default_threads() -> int:
    """All cores but one: the HTTP side and the desktop keep a core, and PyTorch threads do not fight
    other busy processes (on a loaded 2-core machine 1 thread ran the engine 3-4x faster than 2)."""
    return max(1, (os.cpu_count() or 2) - 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; any other needs --token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"where jobs, results and serve.log are kept (default {default_data_dir()})")
    parser.add_argument("--token", default=os.environ.get("CLIPASSO_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' on every request (default: $CLIPASSO_TOKEN)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--weights", default=None, help="CLIP weights file or folder, as for `clipasso sketch`")
    parser.add_argument("--preload", default="auto", metavar="ENCODER",
                        help="encoder to load at start so the first job is quick, or 'none' (default auto)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help=f"queued jobs beyond which submissions get 429 (default {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="CPU threads for the engine (default: all cores but one, here %(default)s)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, so that a taken port is a one-line error rather than a uvicorn exit."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror} (is another server running there?)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _setup_logging(log_file: Path) -> None:
    """Log lines go to the terminal and to DATA/serve.log; uvicorn's loggers share the same handlers."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr), logging.FileHandler(log_file, encoding="utf-8")]
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
    import torch
    import uvicorn

    from .encoders import check_encoder_name, resolve_device

    token = args.token or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise InputError(f"--token must be at least {MIN_TOKEN_LENGTH} characters; "
                         "`python -c 'import secrets; print(secrets.token_urlsafe())'` makes a good one")
    if not _is_loopback(args.host) and token is None:
        raise InputError(f"listening on {args.host} lets other machines in: set --token (or $CLIPASSO_TOKEN)")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_queue < 1:
        raise InputError("--max-upload-mb must be above 0 and --max-queue at least 1")
    if args.preload != "none":
        check_encoder_name(args.preload)
    if args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the data folder {data_dir}: {exc.strerror}") from None

    sock = _bind(args.host, args.port)
    _setup_logging(data_dir / "serve.log")
    store = JobStore(data_dir, device=device, weights=args.weights, max_queued=args.max_queue)
    worker = Worker(store, preload=None if args.preload == "none" else args.preload)
    app = create_app(store, worker, token=token, max_upload_bytes=int(args.max_upload_mb * 1_000_000))
    host, port = sock.getsockname()[:2]
    log.info("clipasso %s serving on http://%s:%d (device %s, %d engine threads, data in %s, token %s)",
             __version__, host, port, device, args.threads, data_dir, "required" if token else "off")
    config = uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=3, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
    return 0
