"""One run of Line sketch on the backend: its jobs, followed live, and how the run ends.

A `SketchRun` reaches the backend, sends each photo as an *attached* job, and follows every job over its
event stream in a thread of its own. The open streams are what keeps the jobs alive: if this process is
killed, the streams close and the backend cancels the jobs within seconds. Inkscape does not kill it when
Inkscape itself is killed, crashes or closes (it starts extensions detached from itself); the run then
sees that nothing reads its standard output any more, and cancels as Cancel does. The run ends in one final `Phase`; the effect acts on it, and the progress window
shows the run while it lasts. Standard library only, no GTK: the run works the same with or without the
window.
"""

from __future__ import annotations

import enum
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from clipasso_client import FINAL_STATES, Backend, BackendError
from clipasso_images import Picture
from clipasso_strokes import StrokeError, Strokes, read_strokes

#: The window asks for the strokes at most this often while a job runs.
PREVIEW_INTERVAL_S = 0.25
#: How often a broken event stream is opened again before the run gives up on the backend.
STREAM_RETRIES = 3
#: How long Stop and place waits for the jobs to stop (a running one stops at its next iteration).
STOP_WAIT_S = 120.0
#: How often the run looks whether Inkscape still reads its standard output.
READER_CHECK_S = 0.5


class Phase(enum.Enum):
    """Where a run stands. The last four are final: the run is over and the effect acts on it."""

    STARTING = "starting"  # reaching (or starting) the backend, sending the photos
    WORKING = "working"  # the jobs wait or run on the backend
    STOPPING = "stopping"  # Stop and place: the jobs were asked to stop with their best strokes so far
    CANCELLING = "cancelling"  # Cancel: the jobs are being cancelled
    DONE = "done"  # every job ended; the photos' strokes are ready to place
    CANCELLED = "cancelled"  # the user cancelled; nothing is placed
    FAILED = "failed"  # `error` says why; nothing is placed
    TIMED_OUT = "timed_out"  # the timeout passed; the jobs go on on the backend (`error` says how to place their results)

    @property
    def final(self) -> bool:
        return self in (Phase.DONE, Phase.CANCELLED, Phase.FAILED, Phase.TIMED_OUT)


@dataclass
class Photo:
    """One selected image and its job. The run's threads write the fields; the window only reads them."""

    name: str  # how messages name the image
    picture: Picture
    fields: dict = field(default_factory=dict)  # this photo's own job fields (the artist's paths over it)
    job_id: str = ""
    view: dict = field(default_factory=dict)  # the backend's latest view of the job
    running_since: float | None = None  # time.monotonic() when the job started running
    preview: bytes = b""  # the backend's SVG of the latest strokes, while the window wants them
    strokes: Strokes | None = None  # the result; None after a stop before any strokes were laid

    @property
    def state(self) -> str:
        return self.view.get("state", "")

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


class SketchRun:
    """The jobs of one run, from reaching the backend to a final phase.

    `run()` does the work in the calling thread and returns when the phase is final; `stop()` and
    `cancel()` may be called from any other thread, and `on_change` is called from the run's threads after
    every change. An existing job (`job_id`, fetched after a timeout) is followed, not submitted; Cancel
    leaves it on the backend.
    """

    def __init__(self, backend: Backend, photos: list[Photo], fields: dict, timeout: float,
                 prepare: Callable[[], None], job_id: str = "") -> None:
        self.backend = backend
        self.photos = photos
        self.fields = fields
        self.timeout = timeout
        self.prepare = prepare  # makes sure the backend answers (may start it)
        self.job_id = job_id
        self.previews = False  # whether to fetch each job's strokes as they form (for the window)
        self.phase = Phase.STARTING
        self.error = ""
        self.asked: Phase | None = None  # STOPPING or CANCELLING, once the user asked
        self.on_change: Callable[[], None] = lambda: None
        self._changed = threading.Condition()
        self._lost: str = ""  # why an event stream could not be kept open

    # ----- from other threads ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop and place: stop every job, keep and place the best strokes each has so far."""
        self._ask(Phase.STOPPING)

    def cancel(self) -> None:
        """Cancel every job and place nothing."""
        self._ask(Phase.CANCELLING)

    def _ask(self, phase: Phase) -> None:
        """Note what the user asked; Cancel overrides an earlier Stop and place, not the other way round."""
        with self._changed:
            if self.phase.final or self.asked in (phase, Phase.CANCELLING):
                return
            self.asked = phase
            self._changed.notify_all()

    # ----- the run ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Do the whole run; returns in a final phase (never raises for backend problems)."""
        threading.Thread(target=self._watch_reader, name="watch-inkscape", daemon=True).start()
        try:
            self._run()
        except BackendError as exc:
            self._cancel_jobs(include_fetched=False)
            self._end(Phase.FAILED, str(exc))
        except BaseException:
            self._cancel_jobs(include_fetched=False)  # a bug or Ctrl-C: nobody will collect these results
            self._end(Phase.FAILED, "the extension stopped unexpectedly")
            raise

    def _run(self) -> None:
        self.prepare()
        deadline = time.monotonic() + self.timeout
        for photo in self.photos:
            if self.asked is not None:
                break
            if self.job_id:
                photo.job_id = self.job_id
            else:
                try:
                    photo.view = self.backend.submit(photo.picture.data, photo.picture.filename, photo.picture.mime,
                                                     {**self.fields, **photo.fields}, attach=True)
                except BackendError as exc:
                    raise BackendError(f"The backend refused {photo.name}: {exc}") from None
                photo.job_id = str(photo.view["id"])
            threading.Thread(target=self._follow, args=(photo,), name=f"follow-{photo.job_id}", daemon=True).start()
            self._set(Phase.WORKING)
        try:
            asked = self._wait(deadline, until_asked=True)
        except _TimedOut:
            self._end(Phase.TIMED_OUT, self._give_up())
            return
        if asked == Phase.STOPPING:
            self._set(Phase.STOPPING)
            self._cancel_jobs(include_fetched=True)
            try:
                self._wait(time.monotonic() + STOP_WAIT_S, until_asked=False)
            except _TimedOut:
                raise BackendError(f"The backend did not stop the sketch within {STOP_WAIT_S:.0f} s") from None
        if self.asked == Phase.CANCELLING:  # also when it came while stopping
            self._set(Phase.CANCELLING)
            self._cancel_jobs(include_fetched=False)
            self._end(Phase.CANCELLED)
            return
        self._collect(stopped=asked == Phase.STOPPING)
        self._end(Phase.DONE)

    def _wait(self, deadline: float, until_asked: bool) -> Phase | None:
        """Until every job has finished (None) or, `until_asked`, the user asks (the phase asked);
        _TimedOut once the deadline passes, BackendError when the backend is lost."""
        with self._changed:
            while True:
                if self._lost:
                    raise BackendError(self._lost)
                if until_asked and self.asked is not None:
                    return self.asked
                if all(p.finished for p in self.photos if p.job_id):
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _TimedOut()
                self._changed.wait(left)

    def _give_up(self) -> str:
        """Past the timeout: detach the unfinished jobs, so that they go on, and say how to place their results later."""
        pending = [p for p in self.photos if p.job_id and not p.finished]
        for photo in pending:
            try:
                self.backend.detach(photo.job_id)
            except BackendError:
                pass  # its stream closes with this process, and the backend then cancels it
        first = pending[0]

        def state(photo: Photo) -> str:
            if photo.finished:
                return "finished"
            return f"still {photo.state or 'queued'}, {float(photo.view.get('progress') or 0):.0%} done"

        message = (
            f"The sketch did not finish within {self.timeout:g} s: job {first.job_id} is {state(first)}. The "
            f"backend keeps working, and its result can be placed later: select the image and run Extensions > "
            f"CLIPasso > Place a job's result with the job {first.job_id} (or download "
            f"{self.backend.url}/jobs/{first.job_id}/result.svg)."
        )
        if len(self.photos) > 1:  # every image's job, finished ones too: nothing was placed
            message += " Each image's job, to place the same way: " + "; ".join(
                f"{p.name}: {p.job_id} ({state(p)})" for p in self.photos if p.job_id) + "."
        return message

    def _collect(self, stopped: bool) -> None:
        """Read each job's strokes; a job that failed (or was cancelled by someone else) fails the run."""
        for photo in self.photos:
            if not photo.job_id:
                continue  # the user asked before this photo was sent
            view, job = photo.view, photo.job_id
            if photo.state == "succeeded" or (photo.state == "cancelled" and stopped):
                if photo.state == "cancelled" and not view.get("drawn"):
                    continue  # stopped before its strokes were laid: nothing to place
                svg = self.backend.result_svg(job)
                try:
                    photo.strokes = read_strokes(svg)
                except StrokeError:
                    raise BackendError(f"The backend's result for job {job} is not an SVG with a size") from None
            else:
                reason = view.get("error") or photo.state
                raise BackendError(f"The sketch of {photo.name} failed on the backend (job {job}): {reason}")

    def _cancel_jobs(self, include_fetched: bool) -> None:
        """Ask the backend to stop every unfinished job (best effort); the fetched one only if asked to."""
        for photo in self.photos:
            if photo.job_id and not photo.finished and (include_fetched or photo.job_id != self.job_id):
                self.backend.cancel(photo.job_id)

    def _watch_reader(self) -> None:
        """Cancel the run once Inkscape, which reads the document from our standard output, has gone."""
        while not self.phase.final:
            if reader_gone():
                self.cancel()
                return
            time.sleep(READER_CHECK_S)

    # ----- following the jobs (one thread each) ---------------------------------------------------

    def _follow(self, photo: Photo) -> None:
        """Keep the job's event stream open until the job ends; opened again when it breaks off."""
        failures, last_preview, previewed = 0, 0.0, -1
        while True:
            try:
                for view in self.backend.events(photo.job_id):
                    failures = 0
                    if view.get("state") == "running" and photo.running_since is None:
                        # By the backend's clock: a fetched job may have run for minutes already.
                        photo.running_since = time.monotonic() - float(view.get("elapsed") or 0.0)
                    photo.view = view
                    iteration = int(view.get("iteration") or 0)
                    due = time.monotonic() - last_preview >= PREVIEW_INTERVAL_S
                    if self.previews and view.get("drawn") and iteration != previewed and due:
                        last_preview, previewed = time.monotonic(), iteration
                        photo.preview = self._preview(photo)
                    self._notify()
                if photo.finished:
                    return
                problem = "its event stream ended before the job did"
            except BackendError as exc:
                problem = str(exc)
            failures += 1
            if failures >= STREAM_RETRIES:
                with self._changed:
                    self._lost = f"Lost the CLIPasso backend while following job {photo.job_id}: {problem}"
                self._notify()
                return
            time.sleep(0.5)

    def _preview(self, photo: Photo) -> bytes:
        try:
            return self.backend.preview_svg(photo.job_id)
        except BackendError:
            return photo.preview  # keep the last one; the next event tries again

    # ----- state changes ---------------------------------------------------------------------------

    def _set(self, phase: Phase) -> None:
        with self._changed:
            self.phase = phase
        self._notify()

    def _end(self, phase: Phase, error: str = "") -> None:
        with self._changed:
            self.phase, self.error = phase, error
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()
        self.on_change()

    # ----- what the window shows -------------------------------------------------------------------

    def current(self) -> Photo:
        """The photo the backend works on now (its jobs run in order): the first unfinished one."""
        return next((p for p in self.photos if not p.finished), self.photos[-1])

    def progress(self) -> float:
        """The whole run's progress, 0 to 1: each photo counts the same."""
        return sum(1.0 if p.finished else float(p.view.get("progress") or 0.0) for p in self.photos) / len(self.photos)

    def report(self, now: float) -> Report:
        """What the window says about the run at time.monotonic() `now`."""
        photo = self.current()
        count = len(self.photos)
        title = f"Sketching {photo.name}" + (f" (photo {self.photos.index(photo) + 1} of {count})" if count > 1 else "")
        overall = f"All photos: {self.progress():.0%}"
        view = photo.view
        iteration, iterations = int(view.get("iteration") or 0), int(view.get("iterations") or 0)
        fraction = min(1.0, iteration / iterations) if iterations else 0.0
        if self.phase == Phase.STARTING and not photo.job_id:
            if self.asked == Phase.STOPPING:  # said at once: the run can only stop once the backend answers
                return Report(title, 0.0, "Stopping", "Stopping once the backend answers: nothing is drawn yet, "
                              "so nothing will be placed", overall)
            return Report(title, 0.0, "Starting", f"Reaching the CLIPasso backend at {self.backend.url} "
                          "(starting it can take a minute)", overall)
        if self.phase == Phase.STOPPING:
            return Report(title, fraction, "Stopping", "Stopping: keeping the best strokes so far", overall)
        if photo.state == "running" or photo.finished:
            encoder = f"encoder {view.get('encoder', '?')}"
            elapsed = now - photo.running_since if photo.running_since is not None else 0.0
            if view.get("activity") and not photo.finished:  # downloading weights, or making the ladder's levels
                stage = "Finishing" if iteration else "Preparing"
                return Report(title, fraction, stage, f"{clock(elapsed)} elapsed - the backend is "
                              f"{view['activity']}", overall)
            if iteration >= 2 and iterations > iteration:
                left = elapsed / iteration * (iterations - iteration)
                timing = f"{clock(elapsed)} elapsed, about {clock(left)} left"
            else:
                timing = f"{clock(elapsed)} elapsed, estimating the time left"
            return Report(title, fraction, f"Iteration {iteration} of {iterations}", f"{timing} - {encoder}", overall)
        ahead = view.get("queue_position")
        if ahead:
            waiting = f"{ahead} job{'s' if ahead > 1 else ''} ahead of it in the backend's queue"
        else:
            waiting = "next in the backend's queue"
        return Report(title, 0.0, "Queued", f"Waiting: {waiting}", overall)


def reader_gone(fd: int = 1) -> bool:
    """Whether the pipe on `fd` (standard output) has lost its reader: Inkscape was killed, crashed or
    closed. A file or terminal there never says so; nor does a system without poll() (Windows)."""
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)  # a pipe without a reader answers POLLERR
    try:
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except OSError:
        return False


class Report(NamedTuple):
    """The window's texts and bars for one moment of a run."""

    title: str
    fraction: float  # the current photo's progress bar
    bar: str  # the text on that bar
    details: str
    overall: str  # the text on the bar of all photos (shown when there are several)


def clock(seconds: float) -> str:
    """m:ss (h:mm:ss past an hour)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _TimedOut(Exception):
    """The deadline passed while jobs were still unfinished."""
