"""Durable sketch jobs: the store on disk that HTTP handlers and the worker share. No torch here.

Each job lives in `DATA/jobs/<id>/`: `photo.png` (the upload decoded once, at working size; `alpha.png` its transparency, if any), `job.json`
(parameters and state), `preview.svg` (the strokes at the last checkpoint) and `result.svg` (the final
sketch); a job cancelled before it started keeps its job.json alone. Every file is
written atomically, so a crash leaves either the old or the new version. After a restart, finished jobs
are served as they were; queued jobs are queued again; a job that was stopped by a clean shutdown is
queued again too, while one that was running when the process died is marked failed with the reason
(it may be what killed the process, so it is not retried blindly).

An *attached* job (submitted with attach=true) belongs to the client that follows its event stream:
once no stream of it has been open for ATTACH_GRACE_SECONDS, it is cancelled like DELETE would, so a
client that is killed (Inkscape's Cancel kills the extension) leaves no work behind. Other jobs run to
the end whoever watches. The grace lets a client reconnect, and covers the moment between submitting and
opening the stream. A clean shutdown ends every stream, so it cancels the attached jobs (see close).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import one_line
from ..files import FILE_MODE, FOLDER_MODE, check_writable, write_atomic
from ..images import ImageSource, Photo, load_photo
from ..options import DEFAULT_KEEP_DAYS, SketchOptions, SketchResult, image_stroke_width
from ..svg import KEPT_PREVIEW_COLOUR, strokes_to_svg
from .schemas import JobState, JobView

log = logging.getLogger("clipasso.jobs")

#: The job's photo, decoded once at submit and kept at working size.
PHOTO = "photo.png"
#: The photo's transparency, where it has some (the subject's outline for focus auto).
ALPHA = "alpha.png"
#: What `secrets.token_urlsafe(16)` gives; anything else is refused before it can name a path.
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
#: A running job's state and preview go to disk at most this often (state changes go at once).
CHECKPOINT_SECONDS = 2.0
#: How long an attached job may go without an open event stream before it is cancelled.
ATTACH_GRACE_SECONDS = 2.0
#: Why an attached job ends when the server stops.
SERVER_STOPPED = "the server stopped, ending the event stream that kept this attached job"

#: Event streams the server keeps open at once. Each looks for changes 10 times a second on the event loop:
#: 2000 of them slowed /health from 3 ms to over a second. The extension opens one a sketch, the page one.
#: A stream is counted once it runs, so many opened at the same moment may pass together (300 at once
#: opened 118): a bound on what a flood costs, not an exact count.
MAX_EVENT_STREAMS = 100


class TooManyStreams(Exception):
    """MAX_EVENT_STREAMS are open; poll GET /jobs/{id} instead, or retry later (HTTP 503)."""


class QueueFull(Exception):
    """Too many jobs are waiting; the client should retry later (HTTP 429)."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new job; a restarted one will (HTTP 503)."""

    def __init__(self, message: str = "the server is shutting down; submit the job again once it has restarted") -> None:
        super().__init__(message)


class UnknownJob(LookupError):
    """No job has this id, or the id is not one we could have made (HTTP 404)."""


class StorageError(Exception):
    """The data folder cannot be written (HTTP 507 when it is full, else 500); the message is one line."""

    def __init__(self, message: str, full: bool) -> None:
        super().__init__(message)
        self.full = full


#: How long GET /health trusts its last look at whether the data folder can be written.
STORAGE_CHECK_SECONDS = 2.0


def storage_error(folder: Path, exc: OSError) -> StorageError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return StorageError(f"cannot write to the data folder {folder}: {exc.strerror or exc}", full)


class JobStateError(Exception):
    """The job is not in a state that allows this (HTTP 409)."""


def new_job_id() -> str:
    """An unguessable id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Marks the fields of a Job that live in memory only (not in job.json).
RUNTIME = {"runtime": True}


@dataclass(eq=False)
class Job:
    """One sketch request. Mutated only under the store's lock; `version` counts changes for watchers.

    job.json holds every field not marked RUNTIME (`to_record`/`from_record`); clients see `view()`.
    """

    id: str
    options: SketchOptions  # validated, with the server's device
    width: int
    height: int
    created: float
    state: JobState = JobState.QUEUED
    started: float | None = None
    finished: float | None = None
    iteration: int = 0
    loss: float | None = None
    error: str | None = None
    encoder: str | None = None  # the encoder that ran, once known; the requested one before
    encoder_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    attached: bool = False  # cancelled when no event stream of it stays open (see the module notes)
    warnings: list[str] = field(default_factory=list)  # what of the submission is ignored or will disappoint
    version: int = field(default=0, metadata=RUNTIME)
    strokes: np.ndarray | None = field(default=None, metadata=RUNTIME)  # latest strokes in image pixels
    activity: str | None = field(default=None, metadata=RUNTIME)  # long work outside the steps (SketchRequest)
    cancel_requested: bool = field(default=False, metadata=RUNTIME)
    cancel_reason: str = field(default="", metadata=RUNTIME)  # why, when not a client's DELETE
    has_result: bool = field(default=False, metadata=RUNTIME)  # result.svg is written (known again at load)
    watchers: int = field(default=0, metadata=RUNTIME)  # event streams open now
    unwatched_since: float = field(default_factory=time.monotonic, metadata=RUNTIME)

    @property
    def iterations(self) -> int:
        """Planned iterations over all seeds and raced starts (the engine may stop early when the loss settles)."""
        return self.options.planned_iterations

    @cached_property
    def stroke_width(self) -> float:
        """The stroke width the engine draws with, in image pixels (from the options and the photo's size,
        which do not change: reading the artist's paths again for every preview took up to 27 ms)."""
        return image_stroke_width(self.options, self.width, self.height)

    def svg(self, strokes: np.ndarray) -> str:
        """Strokes as an SVG of this job's image size (previews; results carry their metadata too), over
        the artist's kept paths in grey."""
        kept = self.options.drawn_on_photo(self.width, self.height)[0]
        return strokes_to_svg(strokes, self.width, self.height, self.stroke_width, kept=kept,
                              kept_colour=KEPT_PREVIEW_COLOUR)

    def view(self, queue_position: int | None = None) -> dict:
        """The fields clients see (GET /jobs/{id} and each server-sent event), as JSON values.

        `queue_position`: how many jobs wait ahead of this one, while it is queued.
        """
        if self.state == JobState.SUCCEEDED:
            progress = 1.0
        else:
            progress = min(1.0, self.iteration / self.iterations) if self.iterations else 0.0
        return JobView(
            id=self.id,
            state=self.state,
            progress=round(progress, 4),
            iteration=self.iteration,
            iterations=self.iterations,
            drawn=self.strokes is not None,
            loss=None if self.loss is None or not np.isfinite(self.loss) else round(float(self.loss), 6),
            error=self.error,
            encoder=self.encoder or self.options.encoder,
            created=_iso(self.created),
            finished=_iso(self.finished),
            attached=self.attached,
            queue_position=queue_position if self.state == JobState.QUEUED else None,
            warnings=self.warnings,
            activity=self.activity if self.state == JobState.RUNNING else None,
            width=self.width,
            height=self.height,
            elapsed=None if self.started is None else round((self.finished or time.time()) - self.started, 1),
            result=self.has_result,
        ).model_dump(mode="json")

    def to_record(self) -> dict:
        """What job.json holds: enough to serve the job and to run it again after a restart."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("runtime")}
        record["options"] = self.options.to_dict()
        record["state"] = self.state.value
        if record["loss"] is not None and not np.isfinite(record["loss"]):
            record["loss"] = None
        return record

    @classmethod
    def from_record(cls, record: dict) -> "Job":
        """The job a job.json holds; KeyError, TypeError or ValueError for one that is not valid."""
        kept = {f.name for f in fields(cls) if not f.metadata.get("runtime")}
        values = {k: v for k, v in record.items() if k in kept}
        values.update(
            options=SketchOptions(**record["options"]),
            state=JobState(record["state"]),
            iteration=int(record.get("iteration") or 0),
            timings=dict(record.get("timings") or {}),
            warnings=[str(w) for w in record.get("warnings") or []],
        )
        return cls(**values)


class JobStore:
    """All jobs, their files and the queue. Thread-safe: HTTP handlers and the worker share it."""

    def __init__(self, data_dir: str | os.PathLike, device: str = "cpu", weights: str | None = None,
                 max_queued: int = 100, keep_days: float = DEFAULT_KEEP_DAYS, max_bytes: int | None = None) -> None:
        self.root = Path(data_dir) / "jobs"
        self.device = device
        self.weights = weights
        self.max_queued = max_queued
        self.keep_seconds = keep_days * 86400
        self.max_bytes = max_bytes
        #: Why the last write failed, while any job's state is not on disk yet (GET /health shows it).
        self.write_error: str | None = None
        self._unsaved: set[str] = set()
        self._lock = threading.Lock()  # guards job state and the queue; held briefly, never over I/O
        self._write_lock = threading.Lock()  # orders job.json writes
        self._wake = threading.Condition(self._lock)
        self._pruning = threading.Lock()  # one prune at a time (see prune)
        self._jobs: dict[str, Job] = {}
        self._streams = 0  # event streams open, of every job
        self._queue: deque[str] = deque()
        self._reserved = 0
        self._closed = False
        self._last_checkpoint: dict[str, float] = {}
        self._preview_cache: dict[str, tuple[int, str]] = {}
        self._storage_checked: tuple[float, str | None] = (-STORAGE_CHECK_SECONDS, None)

    # ----- files -----------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        """The job's folder; the id is checked against JOB_ID first, so it cannot name another path."""
        if not JOB_ID.fullmatch(job_id):
            raise UnknownJob(job_id)
        return self.root / job_id

    def _persist(self, job: Job, preview: np.ndarray | None = None) -> None:
        """Write job.json (and a preview) from the job's state as it is now, outside the state lock.

        Writers queue on their own lock and each takes a fresh copy of the state, so an older state can
        never overwrite a newer one, and readers of the state never wait for the disk.
        """
        folder = self.job_dir(job.id)
        with self._write_lock:
            try:
                if preview is not None:
                    write_atomic(folder / "preview.svg", job.svg(preview), FILE_MODE)
                with self._lock:
                    record = job.to_record()
                write_atomic(folder / "job.json", json.dumps(record, indent=1, sort_keys=True), FILE_MODE)
            except OSError as exc:
                self.write_error = str(storage_error(self.root, exc))
                self._unsaved.add(job.id)
                log.warning("job %s: state not saved, will retry: %s", job.id, self.write_error)
                return
            self._unsaved.discard(job.id)
            if not self._unsaved:
                self.write_error = None

    def storage_problem(self) -> str | None:
        """Why the data folder cannot take a job's files now (a full disk, permissions), found by writing
        to it at most every STORAGE_CHECK_SECONDS (a write waits for the disk); None when it can."""
        checked, problem = self._storage_checked
        if time.monotonic() - checked >= STORAGE_CHECK_SECONDS:
            try:
                check_writable(self.root)
                problem = None
            except OSError as exc:
                problem = str(storage_error(self.root, exc))
            self._storage_checked = (time.monotonic(), problem)
        return problem

    def retry_unsaved(self) -> None:
        """Write again the states that could not be written (the worker calls this between jobs)."""
        for job_id in list(self._unsaved):
            self._persist(self._jobs[job_id])

    def load(self) -> None:
        """Read every job on disk and queue again the ones that had not finished (see module notes).

        Leftovers of submits that were killed half-way (a folder without job.json, temporary `.part`
        files) are removed; then old finished jobs are (see prune).
        """
        self.root.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        self.root.chmod(FOLDER_MODE)
        jobs = []
        for entry in self.root.iterdir():
            if not entry.is_dir() or not JOB_ID.fullmatch(entry.name):
                continue
            for part in entry.glob(".*.part"):
                part.unlink(missing_ok=True)
            if not (entry / "job.json").exists():
                log.info("removing %s: a submit that did not finish", entry.name)
                shutil.rmtree(entry, ignore_errors=True)
                continue
            try:
                job = Job.from_record(json.loads((entry / "job.json").read_text("utf-8")))
                if job.id != entry.name:
                    raise ValueError("id does not match its folder")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping job folder %s: unreadable job.json (%s)", entry.name, one_line(exc))
                continue
            job.has_result = (entry / "result.svg").is_file()
            jobs.append(job)
        requeued = failed = 0
        for job in sorted(jobs, key=lambda j: j.created):
            if job.state == JobState.RUNNING:
                job.state, job.finished = JobState.FAILED, time.time()
                job.error = (
                    f"the server stopped while this job was running (at iteration {job.iteration} of "
                    f"{job.iterations}); submit it again"
                )
                self._persist(job)
                failed += 1
            elif job.state == JobState.QUEUED:
                # It runs on this server's device, which may not be the one it was submitted to.
                job.options = replace(job.options, device=self.device, weights=self.weights)
                job.iteration, job.loss = 0, None
                self._queue.append(job.id)
                requeued += 1
            self._jobs[job.id] = job
        log.info("loaded %d jobs from %s: %d queued again, %d interrupted marked failed",
                 len(jobs), self.root, requeued, failed)
        self.prune()

    def prune(self, now: float | None = None, spare: str | None = None) -> list[str]:
        """Remove finished jobs older than keep_days, then the oldest finished ones while the data folder
        holds more than max_bytes. Queued and running jobs are never removed, nor `spare` (the job that has
        just finished: its client has yet to fetch the result). The ids removed."""
        with self._pruning:  # the 10-minute sweep and a finishing job's prune, one after the other
            return self._prune(time.time() if now is None else now, spare)

    def _prune(self, now: float, spare: str | None) -> list[str]:
        with self._lock:
            done = sorted((j for j in self._jobs.values() if j.state.final and j.id != spare),
                          key=lambda j: j.finished or j.created)
        doomed = [j.id for j in done if now - (j.finished or j.created) > self.keep_seconds]
        if self.max_bytes is not None:
            kept = [j.id for j in done if j.id not in doomed]
            total = sum(_folder_bytes(self.root / job_id) for job_id in list(self._jobs) if job_id not in doomed)
            while kept and total > self.max_bytes:
                oldest = kept.pop(0)
                total -= _folder_bytes(self.root / oldest)
                doomed.append(oldest)
        for job_id in doomed:
            with self._lock:
                self._jobs.pop(job_id, None)
                self._preview_cache.pop(job_id, None)
            shutil.rmtree(self.root / job_id, ignore_errors=True)
        if doomed:
            log.info("removed %d finished jobs (older than %g days or over the size limit)", len(doomed),
                     self.keep_seconds / 86400)
        return doomed

    # ----- client side -----------------------------------------------------------------------------

    def check_options(self, options: SketchOptions) -> SketchOptions:
        """The options as the worker will run them (server device and weights); InputError if invalid."""
        return replace(options, device=self.device, weights=self.weights).validated()

    def submit(self, upload: ImageSource, options: SketchOptions, attached: bool = False, orient: bool = True) -> dict:
        """Check the options and the image, write them to disk and queue the job; its public fields.

        `attached`: the job lives only while a client follows its event stream (see the module notes).
        `orient`: apply the image's EXIF orientation (false: its pixels as stored; see images.load_photo).
        The upload is decoded once, here, within the decode budget; the job keeps the decoded photo at
        working size (`photo.png`), never the upload. Raises InputError for bad input, QueueFull when too
        many jobs wait, DecoderBusy when other large uploads hold the decode budget too long. Blocking:
        call it from a worker thread, not the event loop.
        """
        opts = self.check_options(options)
        with self._lock:
            if self._closed:
                raise ShuttingDown()
            waiting = len(self._queue) + self._reserved
            if waiting >= self.max_queued:
                raise QueueFull(f"too many queued jobs ({waiting}); wait for some to finish or cancel some")
            self._reserved += 1  # holds a place in the queue while the image is decoded and written
        try:
            photo = load_photo(upload, orient=orient)
            job = Job(id=new_job_id(), options=opts, width=photo.width, height=photo.height, created=time.time(),
                      attached=attached, warnings=opts.warnings(photo.width, photo.height))
            for warning in job.warnings:
                log.warning("job %s: %s", job.id, warning)
            folder = self.job_dir(job.id)
            try:
                folder.mkdir(mode=FOLDER_MODE, parents=True)
                for name, image in ((PHOTO, photo.image), (ALPHA, photo.alpha)):
                    if image is not None:
                        buffer = io.BytesIO()
                        image.save(buffer, format="PNG")
                        write_atomic(folder / name, buffer.getvalue(), FILE_MODE)
                with self._lock:
                    record = job.to_record()
                write_atomic(folder / "job.json", json.dumps(record, indent=1, sort_keys=True), FILE_MODE)
            except OSError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise storage_error(self.root, exc) from None
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        finally:
            with self._lock:
                self._reserved -= 1
        with self._lock:
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._wake.notify_all()
            view = job.view(len(self._queue) - 1)
        log.info("job %s queued: %dx%d image, %d strokes, %d iterations, encoder %s%s",
                 job.id, job.width, job.height, opts.strokes, job.iterations, opts.encoder,
                 ", attached to its event stream" if attached else "")
        return view

    def photo(self, job: Job) -> Photo:
        """The job's photo as submit decoded it (InputError if the file was lost or damaged)."""
        folder = self.job_dir(job.id)
        alpha = load_photo(folder / ALPHA).image.convert("L") if (folder / ALPHA).exists() else None
        return Photo(load_photo(folder / PHOTO).image, job.width, job.height, alpha)

    def get(self, job_id: str) -> Job:
        """The job; UnknownJob if the id is malformed or unknown."""
        job = self._jobs.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise UnknownJob(job_id)
        return job

    def snapshot(self, job_id: str) -> tuple[int, dict]:
        """(version, public fields) of one job, read consistently."""
        with self._lock:
            job = self.get(job_id)
            position = self._queue.index(job_id) if job.state == JobState.QUEUED else None
            return job.version, job.view(position)

    def list(self) -> list[dict]:
        """Every job's public fields, newest first."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)
            positions = {job_id: i for i, job_id in enumerate(self._queue)}
            return [j.view(positions.get(j.id)) for j in jobs]

    def queued_count(self) -> int:
        with self._lock:
            return len(self._queue)

    def cancel(self, job_id: str, reason: str = "") -> dict:
        """Cancel a queued job at once, or ask a running one to stop at its next iteration; `reason` goes into
        its error (where no client asked: an attached job nobody follows any more).

        Raises UnknownJob for an unknown job and JobStateError for one that already finished.
        """
        with self._lock:
            job = self.get(job_id)
            if job.state.final:
                raise JobStateError(f"job {job_id} already finished ({job.state}); there is nothing to cancel")
            job.cancel_requested, job.cancel_reason = True, f" ({reason})" if reason else ""
            queued = job.state == JobState.QUEUED
            if queued:
                self._queue.remove(job_id)
                job.state, job.finished = JobState.CANCELLED, time.time()
                job.error = f"cancelled before it started{job.cancel_reason}"
                job.version += 1
        if queued:
            self._persist(job)
            for name in (PHOTO, ALPHA):  # nothing will read them: a client submitting and cancelling in a
                try:  # loop filled 10 MB/s of disk
                    (self.job_dir(job_id) / name).unlink(missing_ok=True)
                except OSError as exc:  # Windows: the next batch's preparation may have it open; pruned later
                    log.debug("job %s: %s stays for now (%s)", job_id, name, exc)
        log.info("job %s: cancel requested (%s)", job_id, "cancelled" if queued else "stopping")
        return self.snapshot(job_id)[1]

    def may_stream(self) -> None:
        """TooManyStreams where MAX_EVENT_STREAMS event streams are open."""
        with self._lock:
            if self._streams >= MAX_EVENT_STREAMS:
                raise TooManyStreams(f"too many event streams open ({self._streams}); poll GET /jobs/{{id}} "
                                     "instead, or try again later")

    def watch(self, job_id: str) -> None:
        """An event stream of the job opened (it keeps an attached job alive)."""
        with self._lock:
            self.get(job_id).watchers += 1
            self._streams += 1

    def unwatch(self, job_id: str) -> None:
        """An event stream of the job closed; the last one starts an attached job's grace period."""
        with self._lock:
            self._streams -= 1
            job = self._jobs.get(job_id)
            if job is None:  # removed meanwhile (pruned): nothing to keep alive
                return
            job.watchers -= 1
            if job.watchers == 0:
                job.unwatched_since = time.monotonic()

    def abandoned(self) -> list[str]:
        """Attached jobs, not finished nor already stopping, that nobody has followed for the grace period;
        queued ones first, so that cancelling them in this order never lets the worker start one of them."""
        now = time.monotonic()
        with self._lock:
            jobs = [
                job for job in self._jobs.values()
                if job.attached and not job.state.final and not job.cancel_requested and job.watchers == 0
                and now - job.unwatched_since >= ATTACH_GRACE_SECONDS
            ]
            return [job.id for job in sorted(jobs, key=lambda j: j.state != JobState.QUEUED)]

    def detach(self, job_id: str) -> dict:
        """Let the job run to its end whoever follows it (as jobs submitted without attach=true do)."""
        with self._lock:
            job = self.get(job_id)
            changed = job.attached
            if changed:
                job.attached = False
                job.version += 1
        if changed:
            self._persist(job)
            log.info("job %s detached: it runs to its end", job_id)
        return self.snapshot(job_id)[1]

    def preview_svg(self, job_id: str) -> str:
        """The strokes as they are now: live while running, else the result or the last checkpoint."""
        with self._lock:
            job = self.get(job_id)
            version, strokes = job.version, job.strokes
            cached = self._preview_cache.get(job_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        if strokes is None:
            folder = self.job_dir(job_id)
            for name in ("result.svg", "preview.svg"):
                try:
                    return (folder / name).read_text("utf-8")
                except FileNotFoundError:
                    continue
            strokes = np.zeros((0, 4, 2))
        svg = job.svg(strokes)
        self._preview_cache[job_id] = (version, svg)
        return svg

    def result_svg(self, job_id: str) -> str:
        """The final SVG; JobStateError while the job runs or when it ended without strokes."""
        with self._lock:
            job = self.get(job_id)
            state, error = job.state, job.error
        if not state.final:
            raise JobStateError(f"job {job_id} is {state}; its result is ready when it has finished")
        try:
            return (self.job_dir(job_id) / "result.svg").read_text("utf-8")
        except FileNotFoundError:
            raise JobStateError(f"job {job_id} {state} without a result: {error}") from None

    # ----- worker side -----------------------------------------------------------------------------

    def next_jobs(self, limit: int, timeout: float) -> list[Job]:
        """Take the oldest queued job and up to `limit` - 1 more queued jobs that use the same encoder (the
        next in queue order), and mark them running; [] after `timeout` or once closed."""
        with self._wake:
            if not self._queue and not self._closed:
                self._wake.wait(timeout)
            jobs = self._next(limit)
            now = time.time()
            for job in jobs:
                self._queue.remove(job.id)
                job.state, job.started, job.iteration, job.loss = JobState.RUNNING, now, 0, None
                job.version += 1
                self._last_checkpoint[job.id] = time.monotonic()
        for job in jobs:
            self._persist(job)
        return jobs

    def peek_jobs(self, limit: int) -> list[Job]:
        """The jobs next_jobs would take now, left queued: the worker prepares them while a batch runs."""
        with self._lock:
            return self._next(limit)

    def _next(self, limit: int) -> list[Job]:
        """The oldest queued job and up to `limit` - 1 more queued jobs that use the same encoder (call with
        the lock held)."""
        if self._closed or not self._queue:
            return []
        choice = self._jobs[self._queue[0]].options.encoder_choice
        return [self._jobs[i] for i in self._queue if self._jobs[i].options.encoder_choice == choice][:limit]

    def should_stop(self, job: Job) -> bool:
        return job.cancel_requested or self._closed

    def encoder_chosen(self, job: Job, name: str, reason: str) -> None:
        """The encoder the running job uses (clients see what `auto` chose before the job ends)."""
        with self._lock:
            job.encoder, job.encoder_reason, job.activity = name, reason, None
            job.version += 1

    def activity(self, job: Job, text: str) -> None:
        """Long work of the running job outside its steps: a weights download (until its encoder is loaded),
        the abstraction ladder's levels (until it ends)."""
        with self._lock:
            job.activity = text
            job.version += 1

    def progress(self, job: Job, iteration: int, loss: float, strokes: np.ndarray) -> None:
        """Record one iteration; checkpoint state and preview to disk every CHECKPOINT_SECONDS."""
        now = time.monotonic()
        with self._lock:
            job.iteration, job.loss, job.strokes = int(iteration), float(loss), np.array(strokes, dtype=np.float64)
            job.version += 1
            due = now - self._last_checkpoint.get(job.id, 0.0) >= CHECKPOINT_SECONDS
            if due:
                self._last_checkpoint[job.id] = now
        if due:
            self._persist(job, preview=job.strokes)

    def finish(self, job: Job, result: SketchResult | None = None, error: str | None = None) -> None:
        """Write the result (if any) and the final state. A run stopped by shutdown is queued again."""
        # Stopped by shutdown, not by the user: it runs again from the start after the restart.
        requeue = result is not None and result.cancelled and not job.cancel_requested
        if result is not None and not requeue:
            try:
                write_atomic(self.job_dir(job.id) / "result.svg", result.svg, FILE_MODE)
            except OSError as exc:
                result, error = None, f"the result could not be saved: {storage_error(self.root, exc)}"
        with self._lock:
            self._last_checkpoint.pop(job.id, None)
            if requeue:  # in the queue again, first: its view (and the event stream) tell its place
                job.state, job.started, job.iteration, job.loss, job.strokes = JobState.QUEUED, None, 0, None, None
                self._queue.appendleft(job.id)
            elif result is None:
                job.state, job.error, job.finished = JobState.FAILED, error, time.time()
            else:
                job.has_result = True
                job.strokes = result.strokes
                job.iteration, job.loss = result.iterations, float(result.loss)
                job.encoder, job.encoder_reason = result.encoder, result.encoder_reason
                job.timings = {k: round(v, 4) for k, v in result.timings.items()}
                job.state = JobState.CANCELLED if result.cancelled else JobState.SUCCEEDED
                job.finished = time.time()
                if result.cancelled:
                    job.error = f"cancelled at iteration {result.iterations} of {job.iterations}{job.cancel_reason}"
            job.version += 1
        self._persist(job)
        log.info("job %s %s%s", job.id, job.state, f": {job.error}" if job.error else "")
        if job.state.final:
            self.prune(spare=job.id)

    def close(self) -> None:
        """Stop handing out jobs and ask the running one to stop (it is queued again, see finish). Attached
        jobs are cancelled instead: the event streams that keep them end with the server, so after a restart
        they would start over only to be cancelled for want of a client (a running one keeps its best
        strokes)."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
            attached = [job.id for job in self._jobs.values()
                        if job.attached and not job.state.final and not job.cancel_requested]
        for job_id in attached:
            try:
                self.cancel(job_id, SERVER_STOPPED)
            except (UnknownJob, JobStateError):  # finished or pruned meanwhile
                pass

    @property
    def closed(self) -> bool:
        return self._closed


def _folder_bytes(folder: Path) -> int:
    """The bytes of the files in a job's folder; a file renamed or removed meanwhile (a checkpoint's
    atomic write, a prune) counts as nothing."""
    total = 0
    for f in folder.glob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except OSError:
            continue
    return total
