"""The service as an ASGI app: the routes, the guards, and every error as one line of JSON.

Every error is JSON `{"error": "one line"}` with these statuses: 400 bad input (missing or malformed
field, value out of range, unknown encoder or preset, not an image, corrupt image, too many pixels),
401 missing or wrong token, 404 unknown job or path, 405 wrong method, 409 no result yet / already
finished, 413 upload too large, 429 too many queued jobs, 503 decoder busy, too many event streams or shutting down.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import InputError
from ..images import DecoderBusy
from ..options import DEFAULT_MAX_UPLOAD_MB, MAX_DRAWN_SVG_BYTES
from .jobs import JobStateError, JobStore, QueueFull, ShuttingDown, StorageError, TooManyStreams, UnknownJob
from .middleware import RETRY_AFTER_SHUTDOWN, BearerAuth, BrowserGuard, UploadLimit, error_response
from .routes import router
from .worker import Worker

log = logging.getLogger("clipasso.service")

#: How long a clean shutdown waits for the running job to reach its next iteration.
SHUTDOWN_WAIT_SECONDS = 30.0
#: How often attached jobs that nobody follows any more are looked for (and cancelled).
ABANDONED_SWEEP_SECONDS = 0.5
#: How often finished jobs past --keep-days (or over --max-data-gb) are removed while the server idles; a job
#: that finishes removes them too.
PRUNE_SECONDS = 600.0
#: Multipart limits of POST /jobs: one file (the photo), the form's fields, and any text field as large as
#: the SVG of the artist's paths may be (keep, refine, subject); the whole body is bounded by UploadLimit.
FORM_LIMITS = {"max_files": 1, "max_fields": 16, "max_part_size": MAX_DRAWN_SVG_BYTES}
_TOO_LONG = (f"a text field is over {MAX_DRAWN_SVG_BYTES / 1e6:g} MB; the SVGs of keep, refine and subject may "
             "hold at most that")
#: Starlette's messages when a form passes FORM_LIMITS (multipart's and urlencoded's), by their start, and
#: what to do instead.
FORM_LIMIT_MESSAGES = {
    "Too many files": "only the photo is sent as a file (field `image`); send keep, refine and subject as text "
                      "fields (with curl: -F 'subject=<outline.svg')",
    "Too many fields": f"too many form fields; POST /jobs takes at most {FORM_LIMITS['max_fields']}",
    "Part exceeded maximum size": _TOO_LONG,
    "Field exceeded maximum size": _TOO_LONG,
}


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
        sweepers = [asyncio.create_task(cancel_abandoned(store)), asyncio.create_task(prune_now_and_then(store))]
        yield
        for sweeper in sweepers:
            sweeper.cancel()
        store.close()
        if not await run_in_threadpool(worker.join, SHUTDOWN_WAIT_SECONDS):
            log.warning("the running job did not stop in %.0f s; it will be marked failed on restart",
                        SHUTDOWN_WAIT_SECONDS)

    app = FastAPI(
        title="clipasso",
        version=__version__,
        description="CLIPasso line sketches from photos, as SVG strokes. Errors are JSON {\"error\": \"...\"}.",
        lifespan=lifespan,
        form_limits=FORM_LIMITS,
    )
    app.state.store = store
    app.state.worker = worker
    app.state.max_upload_bytes = max_upload_bytes
    for kind, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.include_router(router)
    app.add_middleware(UploadLimit, limit=max_upload_bytes, closing=lambda: store.closed)
    app.add_middleware(BrowserGuard, check_host=not token)
    schema = app.openapi()
    _without_422(schema)
    if token:
        app.add_middleware(BearerAuth, token=token)  # outermost: nothing is read before the token is checked
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return app


def _without_422(schema: dict) -> None:
    """Take FastAPI's own 422 out of the schema: every invalid request gets a 400 with one line here
    (validation_error), and a client generated from the schema should not expect another shape."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)


async def cancel_abandoned(store: JobStore) -> None:
    """Cancel attached jobs whose client stopped following them (see jobs.py), as long as the app runs."""
    while True:
        await asyncio.sleep(ABANDONED_SWEEP_SECONDS)
        for job_id in store.abandoned():
            log.info("job %s: no client follows this attached job any more; cancelling it", job_id)
            try:
                await run_in_threadpool(store.cancel, job_id, "no client followed this attached job any more")
            except JobStateError:
                pass  # it finished meanwhile


async def prune_now_and_then(store: JobStore) -> None:
    """Remove old finished jobs every PRUNE_SECONDS: an idle server kept them past --keep-days."""
    while True:
        await asyncio.sleep(PRUNE_SECONDS)
        try:
            await run_in_threadpool(store.prune)
        except OSError as exc:  # the next round tries again; /health tells a folder that cannot be written
            log.warning("removing old jobs failed: %s", exc)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such path: {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 400:
        message = next((m for start, m in FORM_LIMIT_MESSAGES.items() if message.startswith(start)), message)
    return error_response(exc.status_code, message, getattr(exc, "headers", None))


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(400, _validation_message(exc))


async def input_error(request: Request, exc: InputError) -> JSONResponse:
    return error_response(400, str(exc))


async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
    return error_response(429, str(exc), {"Retry-After": "10"})


async def storage_error(request: Request, exc: StorageError) -> JSONResponse:
    return error_response(507 if exc.full else 500, str(exc))


async def decoder_busy(request: Request, exc: DecoderBusy) -> JSONResponse:
    return error_response(503, str(exc), {"Retry-After": "5"})


async def too_many_streams(request: Request, exc: TooManyStreams) -> JSONResponse:
    return error_response(503, str(exc), {"Retry-After": "10"})


async def shutting_down(request: Request, exc: ShuttingDown) -> JSONResponse:
    return error_response(503, str(exc), {"Retry-After": RETRY_AFTER_SHUTDOWN})


async def conflict(request: Request, exc: JobStateError) -> JSONResponse:
    return error_response(409, str(exc))


async def unknown_job(request: Request, exc: UnknownJob) -> JSONResponse:
    return error_response(404, "unknown job id")


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; the server log has the details")


ERROR_HANDLERS: dict[type[Exception], Callable] = {
    StarletteHTTPException: http_error,
    RequestValidationError: validation_error,
    InputError: input_error,
    QueueFull: queue_full,
    ShuttingDown: shutting_down,
    TooManyStreams: too_many_streams,
    DecoderBusy: decoder_busy,
    StorageError: storage_error,
    JobStateError: conflict,
    UnknownJob: unknown_job,
    Exception: internal_error,
}


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
