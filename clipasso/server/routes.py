"""The HTTP API: every route of `clipasso serve`, on one router that reads the job store from the app."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from importlib import resources
from typing import AsyncIterator

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from .. import __version__
from ..encoders.weights import readiness
from ..errors import InputError
from ..options import (
    ENCODER_NAMES, FOCUSES, MAX_ITERATIONS, MAX_LEVELS, MAX_SEED, MAX_SEEDS, MAX_STROKE_WIDTH, MAX_STROKES, PRESETS,
    RENDERERS, SketchOptions, available_renderers, parse_levels,
)
from .jobs import ATTACH_GRACE_SECONDS, JobStore, UnknownJob
from .schemas import FINAL_STATES, Health, JobList, JobState, JobView, error_responses

#: How an uploaded photo is turned: as its EXIF orientation says (the default), or as stored (Inkscape's way
#: with a PNG or WebP; images.load_photo).
ORIENTATIONS = ("exif", "stored")
#: How often an event stream looks for changes, and how long it stays silent before a keep-alive.
EVENT_POLL_SECONDS = 0.1
KEEPALIVE_SECONDS = 15.0
#: How long uvicorn lets open connections finish once the server is asked to stop (then it cancels them,
#: with a traceback in the log), and how long an event stream waits meanwhile to tell what became of its job.
SHUTDOWN_GRACE_SECONDS = 3.0
CLOSING_STREAM_SECONDS = SHUTDOWN_GRACE_SECONDS - 1.0

PAGE = resources.files(__package__).joinpath("static/index.html").read_text("utf-8")

router = APIRouter()


def get_store(request: Request) -> JobStore:
    """The app's job store (set by create_app)."""
    return request.app.state.store


Store = Depends(get_store)


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache"})


@router.head("/health", include_in_schema=False)
@router.get("/health", response_model=Health, responses=error_responses(401))
async def health(request: Request, store: JobStore = Store) -> dict:
    """Whether the service is up, and what it runs on (the Inkscape extension's discovery call).

    `status` is "degraded", with the `problem` in one line, while the worker is not running, a job's
    state could not be written, or the data folder cannot be written now (a full disk, say)."""
    problem = None if request.app.state.worker.alive else "the worker thread has stopped; restart the server"
    problem = problem or store.write_error or await run_in_threadpool(store.storage_problem)
    return {
        "status": "degraded" if problem else "ok",
        "problem": problem,
        "version": __version__,
        "device": store.device,
        "encoders": list(ENCODER_NAMES),
        "models": [s.to_dict() for s in readiness(store.weights)],
        "renderers": available_renderers(),
        "queue": store.queued_count(),
        "max_upload_bytes": request.app.state.max_upload_bytes,
    }


@router.get("/jobs", response_model=JobList, responses=error_responses(401))
async def list_jobs(store: JobStore = Store) -> dict:
    """Every job, newest first."""
    return {"jobs": store.list()}


@router.post("/jobs", status_code=202, response_model=JobView, responses=error_responses(400, 401, 403, 413, 429, 503, 507))
async def submit(
    request: Request,
    store: JobStore = Store,
    image: UploadFile = File(..., description="the photo: PNG, JPEG, WebP, TIFF, GIF or BMP"),
    strokes: int | None = Form(None, json_schema_extra={"minimum": 1, "maximum": MAX_STROKES}),
    iterations: int | None = Form(None, json_schema_extra={"minimum": 1, "maximum": MAX_ITERATIONS}),
    seed: int | None = Form(None, json_schema_extra={"minimum": 0, "maximum": MAX_SEED}),
    seeds: int | None = Form(None, json_schema_extra={"minimum": 1, "maximum": MAX_SEEDS}),
    stroke_width: float | None = Form(None, json_schema_extra={"exclusiveMinimum": 0, "maximum": MAX_STROKE_WIDTH},
                                      description="in the photo's pixels (default: the keep or refine paths' median width, within half to "
                                      "twice 3 px per 224 px of its longest side; without them, that)"),
    encoder: str | None = Form(None, json_schema_extra={"enum": list(ENCODER_NAMES)}),
    preset: str | None = Form(None, json_schema_extra={"enum": list(PRESETS)}),
    attach: bool = Form(False, description=(
        "tie the job to its event stream: once no GET /jobs/{id}/events of it has been open for "
        f"{ATTACH_GRACE_SECONDS:g} s, it is cancelled (for clients that may be killed mid-job)")),
    renderer: str | None = Form(None, json_schema_extra={"enum": list(RENDERERS)},
                                description="auto (ours), torch, or diffvg where /health lists it"),
    focus: str | None = Form(None, json_schema_extra={"enum": list(FOCUSES)}, description=(
        "auto (default): strokes on the subject (the photo's transparency, else a segmentation); none: "
        "wherever the encoder looks")),
    keep: str | None = Form(None, description=(
        "SVG text of your own paths, in the photo's pixels: they stay as drawn, take part in the sketch and "
        "come first in the result; `strokes` new ones are added")),
    refine: str | None = Form(None, description=(
        "SVG text of strokes to start from (each path's first segment); `strokes` more are added (default 0)")),
    subject: str | None = Form(None, description=(
        "SVG text of closed paths in the photo's pixels around its subject: with focus auto, the subject is "
        "what they enclose (instead of the photo's transparency or the segmentation)")),
    orientation: str = Form(ORIENTATIONS[0], json_schema_extra={"enum": list(ORIENTATIONS)}, description=(
        "exif (default): the photo turned as its EXIF orientation says, as most viewers show it; stored: its "
        "pixels as stored, as Inkscape shows a PNG or WebP (the strokes then lie over what Inkscape shows); a TIFF is "
        "always turned (Pillow turns it as it opens it, and Inkscape shows it so)")),
    levels: str | None = Form(None, description=(
        f"an abstraction ladder, stroke counts like 32,16,8,4 (at most {MAX_LEVELS}): one layer (group) level-N "
        "per level in the result, the finest shown, each coarser level a subset of the finer one")),
) -> JSONResponse:
    """Queue a sketch of the uploaded photo. Values left out take the preset's defaults; a field this server
    does not know is refused (a misspelt one, or one of a newer version), not ignored."""
    unknown = sorted(set((await request.form()).keys()) - set(SUBMIT_FIELDS))
    if unknown:
        raise InputError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"POST /jobs takes {', '.join(SUBMIT_FIELDS)}")
    if strokes is None and refine is not None:
        strokes = 0  # refining adds no strokes unless asked
    given = {"strokes": strokes, "iterations": iterations, "seed": seed, "seeds": seeds, "stroke_width": stroke_width,
             "encoder": encoder, "preset": preset, "renderer": renderer, "focus": focus, "keep": keep, "refine": refine,
             "subject": subject,
             "levels": parse_levels(levels) if levels is not None else None}
    if orientation not in ORIENTATIONS:
        raise InputError(f"orientation must be {' or '.join(ORIENTATIONS)}, got {orientation!r}")
    options = SketchOptions(**{k: v for k, v in given.items() if v is not None})
    view = await run_in_threadpool(store.submit, image.file, options, attach,  # spooled to disk when large
                                   orientation == ORIENTATIONS[0])
    return JSONResponse(view, status_code=202, headers={"Location": f"/jobs/{view['id']}"})


#: The fields of POST /jobs, from its signature.
SUBMIT_FIELDS = tuple(name for name in inspect.signature(submit).parameters if name not in ("request", "store"))


@router.get("/jobs/{job_id}", response_model=JobView, responses=error_responses(401, 404))
async def get_job(job_id: str, store: JobStore = Store) -> dict:
    """The job's state and progress."""
    return store.snapshot(job_id)[1]


@router.get("/jobs/{job_id}/events",
            responses={200: {"content": {"text/event-stream": {}}}, **error_responses(401, 404, 503)})
async def job_events(job_id: str, request: Request, store: JobStore = Store) -> StreamingResponse:
    """Server-sent events, one `data:` line of the same JSON as GET /jobs/{id} per change.

    The stream ends after the event with a final state (succeeded, failed or cancelled), or, when the server
    stops, after the event that says what became of the job (queued again; an attached job cancelled).
    Disconnecting does not cancel the job, unless it was submitted with attach=true and no other stream
    of it opens within the grace period.
    """
    store.snapshot(job_id)  # 404 before the stream starts
    store.may_stream()  # 503 where too many are open
    return StreamingResponse(
        _events(store, job_id, request), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(store: JobStore, job_id: str, request: Request) -> AsyncIterator[str]:
    last, quiet, closing = None, 0.0, None
    store.watch(job_id)  # here, so that it is undone in `finally` however the stream ends
    try:
        # Noticed even while the job waits and nothing is sent. A server stopping ends the stream once the
        # job's view says what became of it (queued again, or cancelled where attached), or after
        # CLOSING_STREAM_SECONDS, before uvicorn's grace for open connections runs out.
        while not await request.is_disconnected():
            if store.closed and closing is None:
                closing = time.monotonic()
            try:
                version, view = store.snapshot(job_id)
            except UnknownJob:  # removed meanwhile (the data folder's size limit): the stream ends
                return
            if view != last:  # its own changes, and its place in the queue
                last, quiet = view, 0.0
                yield f"id: {version}\ndata: {json.dumps(view)}\n\n"
                if view["state"] in FINAL_STATES:
                    return
            if closing is not None and (view["state"] == JobState.QUEUED
                                        or time.monotonic() - closing >= CLOSING_STREAM_SECONDS):
                return
            if quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(EVENT_POLL_SECONDS)
            quiet += EVENT_POLL_SECONDS
    finally:
        store.unwatch(job_id)


@router.get("/jobs/{job_id}/preview.svg",
            responses={200: {"content": {"image/svg+xml": {}}}, **error_responses(401, 404)})
def preview(job_id: str, store: JobStore = Store) -> Response:
    """The strokes as they are now; an empty drawing before the first iteration."""
    return Response(store.preview_svg(job_id), media_type="image/svg+xml", headers={"Cache-Control": "no-cache"})


@router.head("/jobs/{job_id}/result.svg", include_in_schema=False)  # whether it is there, without the body
@router.get("/jobs/{job_id}/result.svg",
            responses={200: {"content": {"image/svg+xml": {}}}, **error_responses(401, 404, 409)})
def result(job_id: str, store: JobStore = Store) -> Response:
    """The final SVG (for a cancelled job: the best strokes before it stopped)."""
    return Response(store.result_svg(job_id), media_type="image/svg+xml")


@router.post("/jobs/{job_id}/detach", response_model=JobView, responses=error_responses(401, 404))
def detach(job_id: str, store: JobStore = Store) -> dict:
    """Untie a job submitted with attach=true from its event stream: it runs to its end whoever follows it."""
    return store.detach(job_id)


@router.delete("/jobs/{job_id}", response_model=JobView,
               responses={202: {"model": JobView}, **error_responses(401, 404, 409)})
def cancel(job_id: str, store: JobStore = Store) -> JSONResponse:
    """Cancel a job. A running job stops at its next iteration and keeps its best strokes so far."""
    view = store.cancel(job_id)
    return JSONResponse(view, status_code=200 if view["state"] == "cancelled" else 202)
